"""JSON request bodies: the one place a body becomes a JSON value, with the design's errors (400 / 422)."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import InvalidField, UserError

__all__ = ["parse_json", "parse_json_object"]


def parse_json(body: bytes) -> Any:
    """The JSON value of `body`; 400 `invalid_json` when it is not JSON (or not UTF-8)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError("body: invalid JSON", code="invalid_json") from exc


def parse_json_object(body: bytes, expected: str) -> dict[str, Any]:
    """The JSON object of `body`; 400 for invalid JSON, 422 naming `expected` (e.g. '{"key", "label"}') otherwise."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise InvalidField(f"body: expected a JSON object {expected}")
    return payload
