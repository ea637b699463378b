"""Errors with the HTTP status and code of design §5, shared by the functions and the CLI."""

from __future__ import annotations


class TriageError(Exception):
    """Base error: `status` is the HTTP status, `code` the machine-readable code of the JSON error."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class UserError(TriageError):
    """A mistake of the caller (bad file, bad option): the CLI prints it on one line and exits 2."""

    status = 400
    code = "bad_request"


class ImageError(UserError):
    """Bytes that are not a decodable, acceptable image."""

    code = "bad_image"


class UnsupportedMediaType(UserError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(UserError):
    status = 413
    code = "payload_too_large"


class InvalidField(UserError):
    status = 422
    code = "invalid_field"


class Unauthorized(UserError):
    status = 401
    code = "unauthorized"


class Forbidden(UserError):
    status = 403
    code = "forbidden"


class NotFound(UserError):
    status = 404
    code = "not_found"


class NotReady(TriageError):
    status = 503
    code = "not_ready"
