"""The gateway's admin token: who may move traffic and start revisions (`/admin/traffic`, `/admin/revisions`).

The local stack generates one at start (like the reviewers' tokens) unless GATEWAY_ADMIN_TOKEN is set, hands
it to its processes as GATEWAY_ADMIN_TOKEN (the canary function steps the gateway with it), and the gateway
writes it to `<run dir>/gateway-admin-token` (mode 0600), where `triage canary` finds it. A caller presents it
as `Authorization: Bearer <token>`; it is compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path

__all__ = ["TOKEN_FILE", "admin_refusal", "new_token", "read_token", "write_token"]

TOKEN_FILE = "gateway-admin-token"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def write_token(run_dir: Path, token: str) -> Path:
    """Keep `token` in the run dir, readable by its owner only."""
    path = Path(run_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(token + "\n")
    return path


def read_token(run_dir: Path) -> str | None:
    """The token a local stack in `run_dir` uses; None when there is none."""
    try:
        return (Path(run_dir) / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def admin_refusal(authorization: str | None, token: str) -> tuple[int, str, str] | None:
    """None when `authorization` carries `token`; else (status, code, message): 401 without one, 403 wrong."""
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return 401, "unauthorized", "the admin API needs Authorization: Bearer <gateway admin token>"
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return 403, "forbidden", "the admin token is not valid"
    return None
