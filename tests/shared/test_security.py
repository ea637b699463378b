"""SSRF-safe URL fetching against a real local server, and bearer-token checks."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from shared import security
from shared.errors import Forbidden, PayloadTooLarge, Unauthorized
from tests.functions.image_server import image_server
from tests.local_http import LocalServer

LOCAL = security.parse_networks("127.0.0.1/32")


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with image_server() as running:
        yield running


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    with pytest.raises(security.UrlRefused, match="non-public"):
        security.check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    security.check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd", "ftp://example.com/x.png", "gopher://example.com/", "//example.com/x", "http:///x",
        "http://[::1", "http://example.com:99999/", "http://\u00e9xample.com/", "https://user:pw@example.com/",
    ],
)  # fmt: skip
def test_only_http_and_https_urls_with_a_host_are_fetched(url: str) -> None:
    with pytest.raises(security.UrlRefused) as error:
        security.fetch_url(url, max_bytes=1000)
    assert error.value.status == 422


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "169.254.169.254", "10.0.0.1"])
def test_internal_hosts_are_refused_before_connecting(host: str, server: LocalServer) -> None:
    before = len(server.paths)
    with pytest.raises(security.UrlRefused, match="non-public"):
        security.fetch_url(f"http://{host}:{server.port}/image.png", max_bytes=10_000, timeout_s=1)
    assert len(server.paths) == before


def test_an_explicitly_allowed_network_is_fetched(server: LocalServer) -> None:
    data, content_type = security.fetch_url(server.url + "/image.png", max_bytes=100_000, allow_networks=LOCAL)
    assert data.startswith(b"\x89PNG") and content_type == "image/png"


def test_redirects_are_followed_within_the_limit(server: LocalServer) -> None:
    data, _ = security.fetch_url(server.url + "/hop1", max_bytes=100_000, allow_networks=LOCAL)
    assert data.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("path", "message"), [("/to-metadata", "non-public"), ("/to-file", "http"), ("/loop", "redirects")]
)
def test_redirects_are_checked_at_every_hop(server: LocalServer, path: str, message: str) -> None:
    with pytest.raises(security.UrlRefused, match=message):
        security.fetch_url(server.url + path, max_bytes=100_000, timeout_s=2, allow_networks=LOCAL)


@pytest.mark.parametrize("path", ["/endless", "/declared-huge"])
def test_bodies_over_the_cap_are_cut_off(server: LocalServer, path: str) -> None:
    with pytest.raises(PayloadTooLarge):
        security.fetch_url(server.url + path, max_bytes=200_000, allow_networks=LOCAL)


def test_a_slow_server_times_out(server: LocalServer) -> None:
    with pytest.raises(security.UrlRefused, match="timed out"):
        security.fetch_url(server.url + "/slow", max_bytes=1000, timeout_s=0.5, allow_networks=LOCAL)


def test_an_error_status_is_refused(server: LocalServer) -> None:
    with pytest.raises(security.UrlRefused, match="404"):
        security.fetch_url(server.url + "/missing", max_bytes=1000, allow_networks=LOCAL)


def test_bearer_token_names_the_reviewer() -> None:
    tokens = "alice:s3cret,bob:other"
    assert security.check_bearer("Bearer s3cret", tokens) == "alice"
    assert security.check_bearer("bearer other", {"bob": "other"}) == "bob"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic s3cret", "Bearer wrong", "Bearer s3cretX"])
def test_missing_or_wrong_tokens_are_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized) as error:
        security.check_bearer(header, {"alice": "s3cret"})
    assert error.value.status == 401


def test_no_configured_tokens_refuses_everyone() -> None:
    with pytest.raises(Forbidden):
        security.check_bearer("Bearer anything", None)
    with pytest.raises(Forbidden):
        security.check_bearer("Bearer anything", {"alice": ""})


@pytest.mark.parametrize(
    "header, token", [("Bearer abc", "abc"), ("bearer  abc ", "abc"), (" BEARER xrt_1-2_3", "xrt_1-2_3")]
)
def test_the_bearer_token_is_parsed_once_for_every_check(header: str, token: str) -> None:
    assert security.bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "Token abc", "abc"])
def test_a_missing_or_malformed_authorization_is_401(header: str | None) -> None:
    with pytest.raises(Unauthorized) as error:
        security.bearer_token(header)
    assert error.value.status == 401 and "Bearer" in error.value.message
