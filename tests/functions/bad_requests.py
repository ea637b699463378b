"""Issue 3's list of bad inputs, sent to every image-taking function, and the check of design §5's error JSON."""

from __future__ import annotations

import gzip
from typing import Any

from tests.functions.tiny_model import j2k_bomb_dicom_bytes, jpeg_bytes, jpeg_dicom_bytes, png_bomb, png_bytes

BODY_LIMIT = 50_000  # the clients under test run with MAX_BODY_BYTES=BODY_LIMIT


def bad_requests(url: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(case, test-client post kwargs, allow 127.0.0.1 as URL target) for each bad input of issue 3."""
    png, jpeg = png_bytes(), jpeg_bytes()
    return [
        ("empty body", {"data": b"", "content_type": "image/png"}, False),
        ("bytes that are no image", {"data": b"GIF89a not really" * 10, "content_type": "image/png"}, False),
        ("truncated png", {"data": png[: len(png) // 2], "content_type": "image/png"}, False),
        ("truncated jpeg", {"data": jpeg[: len(jpeg) // 2], "content_type": "image/jpeg"}, False),
        ("decompression bomb", {"data": png_bomb(), "content_type": "image/png"}, False),
        ("over the size limit", {"data": b"\x89PNG" + b"\0" * BODY_LIMIT, "content_type": "image/png"}, False),
        ("wrong content type", {"data": png, "content_type": "text/plain"}, False),
        ("invalid json", {"data": b'{"url": ', "content_type": "application/json"}, False),
        ("url to loopback", {"json": {"url": url + "/image.png"}}, False),
        ("url to localhost", {"json": {"url": (url + "/image.png").replace("127.0.0.1", "localhost")}}, False),
        ("url to a private address", {"json": {"url": "http://10.0.0.1/x.png"}}, False),
        ("url to link-local metadata", {"json": {"url": "http://169.254.169.254/latest/meta-data/"}}, False),
        ("url that is not http(s)", {"json": {"url": "file:///etc/passwd"}}, False),
        ("url with ftp", {"json": {"url": "ftp://example.com/x.png"}}, False),
        ("url redirecting to metadata", {"json": {"url": url + "/to-metadata"}}, True),
        ("url redirecting to loopback", {"json": {"url": url + "/to-loopback"}}, False),
        ("url redirecting to file", {"json": {"url": url + "/to-file"}}, True),
        ("url to a text page", {"json": {"url": url + "/text"}}, True),
        ("a content coding not accepted", {"data": png, "content_type": "image/png",
                                           "headers": {"Content-Encoding": "br"}}, False),
        ("gzip that is not gzip", {"data": png, "content_type": "image/png",
                                   "headers": {"Content-Encoding": "gzip"}}, False),
        ("gzip cut short", {"data": gzip.compress(png)[:-12], "content_type": "image/png",
                            "headers": {"Content-Encoding": "gzip"}}, False),
        ("gzip decoding over the size limit", {"data": gzip.compress(b"\x89PNG" + b"\0" * 2 * BODY_LIMIT),
                                               "content_type": "image/png",
                                               "headers": {"Content-Encoding": "gzip"}}, False),
        ("a JPEG DICOM that aborts its decoder", {"data": jpeg_dicom_bytes(hostile=True),
                                                  "content_type": "application/dicom"}, False),
        ("a JPEG 2000 codestream declaring 40,000 x 40,000 in a 64 x 64 DICOM",
         {"data": j2k_bomb_dicom_bytes(), "content_type": "application/dicom"}, False),
        ("a gzipped multipart form", {"data": gzip.compress(b"--b\r\n\r\n--b--\r\n"),
                                      "content_type": "multipart/form-data; boundary=b",
                                      "headers": {"Content-Encoding": "gzip"}}, False),
    ]


def assert_json_error(response: Any, case: str) -> None:
    assert 400 <= response.status_code < 500, f"{case}: HTTP {response.status_code} {response.get_data()[:200]!r}"
    assert response.mimetype == "application/json", case
    error = response.get_json()["error"]
    assert set(error) == {"code", "message"} and error["code"] and error["message"], case


def assert_every_bad_request_is_a_json_4xx(client: Any, server_url: str, monkeypatch: Any) -> None:
    """POST every bad request to a function's test client; URL cases that need it may reach the local server."""
    from shared.security import parse_networks

    for case, kwargs, allow_local in bad_requests(server_url):
        monkeypatch.setattr(client.module, "URL_ALLOW_NETWORKS", parse_networks("127.0.0.1/32") if allow_local else ())
        assert_json_error(client.post("/", **kwargs), case)
