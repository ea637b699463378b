"""HTTP framing of the local gateway and broker (`triage.stack.httpd`): every malformed or stalled request gets the
design's JSON error within a bounded time, closes, and leaves no traceback; a good connection stays kept alive."""

from __future__ import annotations

import json
import logging
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.stack.upstream import Upstream
from triage.stack.broker import Broker, BrokerServer, DeliveryQueue
from triage.stack.gateway import Gateway, GatewayServer, Route

IDLE_S = 1.0  # the handlers' timeouts in these tests (10 s by default)
HEAD_S = 1.5


@pytest.fixture(scope="module")
def upstream():
    server = Upstream("champion")
    yield server
    server.close()


@pytest.fixture
def gateway(upstream):
    server = GatewayServer(Gateway({"predict": Route("predict", {"champion": upstream.url})}), admin_token="t")
    handler = server.httpd.RequestHandlerClass
    handler.idle_timeout_s, handler.head_timeout_s, handler.max_body_bytes = IDLE_S, HEAD_S, 4096
    server.start()
    yield server
    server.stop()


def exchange(url: str, raw: bytes, *, read_s: float = 8.0) -> tuple[bytes, float]:
    """Send `raw`, read until the server closes (at most `read_s`); what came back and after how many seconds."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=read_s) as sock:
        started = time.monotonic()
        sock.sendall(raw)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received, time.monotonic() - started


def parse(answer: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


MALFORMED = [
    # (request bytes, status, error code, seconds it may take)
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b", 408, "request_timeout",
     IDLE_S + 2),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "bad_request", 1),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc", 400, "bad_request", 1),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400,
     "bad_request", 1),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400,
     "bad_request", 1),
    (b"GET /\r\n", 400, "bad_request", 1),  # HTTP/0.9: refused as soon as its line ends
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported", 1),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "header_fields_too_large", 1),
    (b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented", 1),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented", 1),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413, "payload_too_large", 1),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\n", 408, "request_timeout", HEAD_S + 2),  # the head never ends
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad_request", HEAD_S + 2),  # TLS at a plain port
]


@pytest.mark.parametrize("raw, status, code, within_s", MALFORMED, ids=[
    "length-over-body", "length-negative", "length-not-a-number", "two-lengths", "chunk-size-not-hex", "http-0.9",
    "http-2-text", "head-too-large", "unknown-method", "unknown-transfer-encoding", "body-over-cap", "slow-head",
    "tls-hello"])
def test_malformed_framing_gets_a_json_error_promptly_and_no_traceback(gateway, raw, status, code, within_s,
                                                                       caplog, capfd):
    caplog.set_level(logging.DEBUG)
    answer, seconds = exchange(gateway.url, raw)
    got_status, headers, body = parse(answer)
    assert (got_status, body["error"]["code"]) == (status, code), answer[:300]
    assert headers["content-type"] == "application/json" and body["error"]["message"]
    assert headers["connection"] == "close"
    assert seconds < within_s
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in capfd.readouterr().err


def test_a_kept_alive_connection_serves_requests_one_after_another(gateway):
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
    closing = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer, _ = exchange(gateway.url, request + chunked + closing)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.count(b'"bytes": 3') == 2  # both framings delivered the same body upstream


def test_a_silent_connection_is_closed_without_an_answer(gateway):
    answer, seconds = exchange(gateway.url, b"")
    assert answer == b"" and seconds < HEAD_S + 2


def test_the_broker_refuses_bad_framing_with_json_too(tmp_path):
    server = BrokerServer(Broker([], DeliveryQueue(tmp_path / "q.sqlite")))
    server.httpd.RequestHandlerClass.idle_timeout_s = IDLE_S
    server.start(workers=1)
    try:
        for raw, status in [(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
                            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{}", 408),
                            (b"GET /\r\n", 400)]:
            answer, seconds = exchange(server.url, raw)
            assert parse(answer)[0] == status and seconds < IDLE_S + 2
    finally:
        server.stop()
