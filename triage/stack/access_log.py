"""S3 request log lines without object keys: `PUT /inference-inputs/obj:1a2b3c4d5e6f HTTP/1.1` (issue 8, item 9).

The local S3 server (moto on werkzeug) logs one line per request with its path, and a path carries the key, which
a hospital names after the patient. `redact_access_log()` puts a filter on the `werkzeug` logger that rewrites each
request line: the bucket stays, the key becomes `names.key_ref(bucket, key)` (the same reference every other log
line uses, so a line can still be followed across processes), and a query keeps its parameter names only
(`?list-type&prefix`: a listing's prefix is part of a key). Error lines lose what they quote of the request.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, unquote

from shared.names import key_ref

__all__ = ["KeyRedactingFilter", "redact_access_log", "redact_request_target"]

_REQUEST_LINE = re.compile(r"\b([A-Z]{3,10}) (/\S*) (HTTP/\d(?:\.\d)?)")
_QUOTED = re.compile(r"\((['\"]).*\1\)", re.DOTALL)  # http.server's "Bad request syntax ('<the line>')"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's rule; anything else is named by reference too
_PARAMETER = re.compile(r"^[A-Za-z0-9_-]{1,40}$")


def redact_request_target(target: str) -> str:
    """`/bucket/key?query` → `/bucket/obj:<hash>?name&name` (path-style S3 addressing, as the local stack uses)."""
    path, _, query = target.partition("?")
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    shown = f"/{bucket}" if _BUCKET.match(bucket) or not bucket else f"/{key_ref('', bucket)}"
    if key:
        shown += f"/{key_ref(bucket, key)}"
    names = sorted({name if _PARAMETER.match(name) else "?" for name, _ in parse_qsl(query, keep_blank_values=True)})
    return shown + (f"?{'&'.join(names)}" if names else "")


class KeyRedactingFilter(logging.Filter):
    """Rewrites request lines (and what error lines quote of a request) before any handler sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _REQUEST_LINE.sub(lambda m: f"{m[1]} {redact_request_target(m[2])} {m[3]}", message)
        redacted = _QUOTED.sub("(…)", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_access_log(logger_name: str = "werkzeug") -> KeyRedactingFilter:
    """Install the filter on `logger_name` once (idempotent); returns it so a caller can remove it."""
    logger = logging.getLogger(logger_name)
    for existing in logger.filters:
        if isinstance(existing, KeyRedactingFilter):
            return existing
    installed = KeyRedactingFilter()
    logger.addFilter(installed)
    return installed
