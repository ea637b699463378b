"""Input-side security: size-capped body reading, SSRF-safe fetching of `{"url": ...}` images, bearer-token checks.

`bearer_token` is the one parser of `Authorization: Bearer <token>`; `check_bearer` checks it against a few
configured tokens (reviewers), `shared.api_auth` against the API token table (predict, explain).

`read_body` is the one reader of a request body (or an uploaded file) with a size cap: 413 above it.

The fetcher resolves the host itself, refuses any address that is not public unicast, and connects to exactly
the address it checked (so a DNS answer that changes between check and connect cannot redirect it inside).
Redirects are followed by hand, each hop checked again. Tests and the local stack may allow extra networks
only by passing `allow_networks` explicitly; nothing is allowed by default.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import socket
import time
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO, Protocol
from urllib.parse import urljoin, urlsplit

from shared.errors import Forbidden, InvalidField, PayloadTooLarge, Unauthorized, UnsupportedMediaType, UserError

__all__ = [
    "IPAddress",
    "IPNetwork",
    "UrlRefused",
    "bearer_token",
    "check_address",
    "check_bearer",
    "content_coding",
    "fetch_url",
    "is_public_address",
    "parse_networks",
    "parse_tokens",
    "read_body",
    "resolve_checked",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class Body(Protocol):
    """What `read_body` reads: a flask request, or an uploaded file of a multipart form."""

    stream: BinaryIO
    content_length: int | None


def read_body(body: Body, limit: int, *, what: str = "body") -> bytes:
    """The bytes of a request body or upload, at most `limit`: PayloadTooLarge (413) when it declares or holds more.

    A request body sent with `Content-Encoding: gzip` (or `deflate`) is decoded, the limit applying to both the
    bytes sent and the bytes they decode to (a small gzip of a huge body is a 413, never decoded in full); any other
    coding is a 415 naming it.
    """
    coding = content_coding(body)
    declared = body.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"{what}: {declared} bytes is over the limit of {limit}")
    data = body.stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"{what}: over the limit of {limit} bytes")
    return data if coding is None else _decoded(data, coding, limit, what)


def content_coding(body: object) -> str | None:
    """The request's `Content-Encoding` (gzip or deflate), None for identity; UnsupportedMediaType (415) else.

    Only a whole request has one (an upload inside a multipart form is read as sent).
    """
    headers = getattr(body, "headers", None) if hasattr(body, "environ") else None
    coding = (headers.get("Content-Encoding", "") if headers is not None else "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in _ZLIB_WBITS:
        return coding
    raise UnsupportedMediaType(f"content-encoding: {coding!r} is not accepted; send the body as is, or gzip / deflate")


# zlib's window bits per HTTP content coding: gzip (RFC 1952; x-gzip its old name), deflate (RFC 9110: the zlib
# format; a raw deflate stream, which some clients send, is tried when the zlib header is not there).
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _decoded(data: bytes, coding: str, limit: int, what: str) -> bytes:
    wbits = _ZLIB_WBITS[coding]
    if coding == "deflate" and (len(data) < 2 or ((data[0] << 8) | data[1]) % 31 or data[0] & 0x0F != 8):
        wbits = -zlib.MAX_WBITS  # no zlib header: a raw deflate stream
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(data, limit + 1)  # at most limit + 1 bytes are ever made
        if len(out) > limit:
            raise PayloadTooLarge(f"{what}: decodes ({coding}) to over the limit of {limit} bytes")
        if not decoder.eof:
            raise UserError(f"{what}: the {coding} stream is cut short (content-encoding: {coding})")
    except zlib.error as exc:
        raise UserError(f"{what}: not valid {coding} data (content-encoding: {coding}): {exc}") from exc
    return out


class UrlRefused(UserError):
    """A URL input that is not allowed or could not be fetched (the caller's fault: 400 / 422)."""

    code = "bad_url"


def parse_networks(spec: str | Iterable[str] | None) -> tuple[IPNetwork, ...]:
    """'127.0.0.1/32,::1' (or a list of such strings) → networks; for an explicit test / local allow-list."""
    if not spec:
        return ()
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def is_public_address(address: IPAddress) -> bool:
    """True only for global unicast addresses (not loopback, private, link-local, multicast, reserved, ...)."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is None and address in _NAT64:  # 64:ff9b::a.b.c.d reaches a.b.c.d through a NAT64 gateway
            mapped = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if mapped is not None:
            return is_public_address(mapped)
    return address.is_global and not (
        address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_reserved
        or address.is_unspecified
    )


def check_address(address: IPAddress, allow_networks: tuple[IPNetwork, ...] = ()) -> None:
    """Raise UrlRefused unless the address is public or inside an explicitly allowed network."""
    if any(address.version == network.version and address in network for network in allow_networks):
        return
    if not is_public_address(address):
        raise UrlRefused(f"url: the host resolves to a non-public address ({address})", status=422)


def resolve_checked(host: str, port: int, allow_networks: tuple[IPNetwork, ...] = ()) -> str:
    """Resolve a host name and return one address to connect to; refuse when ANY answer is not allowed."""
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        check_address(literal, allow_networks)
        return str(literal)
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlRefused(f"url: cannot resolve host {host!r}", status=422) from exc
    addresses = [ipaddress.ip_address(answer[4][0].split("%")[0]) for answer in answers]
    if not addresses:
        raise UrlRefused(f"url: cannot resolve host {host!r}", status=422)
    for address in addresses:  # a host with one private answer is refused outright (rebinding-style tricks)
        check_address(address, allow_networks)
    return str(addresses[0])


@functools.cache
def _checked_backend() -> type:
    """httpcore network backend that connects only to addresses that pass the check (TLS still uses the name);
    made on the first {"url"}: httpcore (and the trio it finds installed) stays off every function's cold start."""
    import httpcore

    class _CheckedBackend(httpcore.SyncBackend):
        def __init__(self, allow_networks: tuple[IPNetwork, ...]) -> None:
            self.allow_networks = allow_networks

        def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> Any:
            return super().connect_tcp(resolve_checked(host, port, self.allow_networks), port, timeout, **kwargs)

    return _CheckedBackend


def _check_url(url: str) -> None:
    if not url.isascii():
        raise UrlRefused("url: must be ASCII (percent-encode the path, punycode the host)", status=422)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check (out of range raises)
    except ValueError as exc:
        raise UrlRefused(f"url: malformed ({exc})", status=422) from exc
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"url: only http and https are allowed, not {parts.scheme or 'no scheme'!r}", status=422)
    if not parts.hostname:
        raise UrlRefused("url: has no host", status=422)
    if parts.username or parts.password:
        raise UrlRefused("url: credentials in the URL are not allowed", status=422)


def fetch_url(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float = 5.0,
    allow_networks: tuple[IPNetwork, ...] = (),
    max_redirects: int = MAX_REDIRECTS,
) -> tuple[bytes, str | None]:
    """GET an image URL safely → (body, content type). Raises UrlRefused (422 / 400) or PayloadTooLarge (413)."""
    import httpcore

    if not isinstance(url, str) or not url:
        raise InvalidField("url: must be a non-empty string")
    deadline = time.monotonic() + timeout_s
    timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    with httpcore.ConnectionPool(network_backend=_checked_backend()(allow_networks), max_connections=2) as pool:
        for _hop in range(max_redirects + 1):
            _check_url(url)
            try:
                with pool.stream(
                    "GET", url, headers={"Accept": "image/*, application/dicom"}, extensions={"timeout": timeouts}
                ) as response:
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
                    if response.status in _REDIRECTS:
                        if "location" not in headers:
                            raise UrlRefused("url: redirect without a Location header")
                        url = urljoin(url, headers["location"])
                        continue
                    if response.status != 200:
                        raise UrlRefused(f"url: the server answered HTTP {response.status}")
                    declared = headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise PayloadTooLarge(f"url: the image is larger than {max_bytes} bytes")
                    body = bytearray()
                    for chunk in response.iter_stream():
                        body += chunk
                        if len(body) > max_bytes:
                            raise PayloadTooLarge(f"url: the image is larger than {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise UrlRefused(f"url: download took longer than {timeout_s:g} s")
                    return bytes(body), headers.get("content-type")
            except httpcore.TimeoutException as exc:
                raise UrlRefused(f"url: timed out after {timeout_s:g} s") from exc
            except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
                raise UrlRefused(f"url: cannot fetch ({type(exc).__name__})") from exc
    raise UrlRefused(f"url: more than {max_redirects} redirects")


def parse_tokens(spec: str | None) -> dict[str, str]:
    """'name:token,name2:token2' (REVIEWER_TOKENS) → {name: token}; a bare token gets the name 'default'."""
    tokens: dict[str, str] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, token = item.partition(":")
        if sep:
            tokens[name.strip()] = token.strip()
        else:
            tokens["default"] = item
    return tokens


def bearer_token(header_value: str | None) -> str:
    """The token of `Authorization: Bearer <token>`; Unauthorized (401) when the header is missing or malformed."""
    scheme, _, presented = (header_value or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("authorization: expected 'Authorization: Bearer <token>'")
    return presented.strip()


def check_bearer(header_value: str | None, expected_tokens: Mapping[str, str] | str | None) -> str:
    """The name of the token in `Authorization: Bearer <token>`.

    Raises Unauthorized (401) when the header is missing, malformed or the token is unknown, and Forbidden (403)
    when no token is configured at all (the service then refuses everyone rather than allowing everyone).
    Every configured token is compared in constant time, so the timing does not reveal which one was close.
    """
    tokens = (
        parse_tokens(expected_tokens)
        if isinstance(expected_tokens, str) or expected_tokens is None
        else dict(expected_tokens)
    )
    tokens = {name: token for name, token in tokens.items() if token}
    if not tokens:
        raise Forbidden("authorization: no tokens are configured for this service")
    presented_bytes = bearer_token(header_value).encode()
    matched: str | None = None
    for name, token in tokens.items():
        if hmac.compare_digest(presented_bytes, token.encode()) and matched is None:
            matched = name
    if matched is None:
        raise Unauthorized("authorization: unknown token")
    return matched
