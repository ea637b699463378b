"""The local gateway as a canary traffic backend: it starts revisions and splits traffic like a Knative route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from shared.canary.errors import CanaryError

__all__ = ["GatewayTraffic"]


class GatewayTraffic:
    """The local stack's gateway: `PUT /admin/revisions` makes the challenger, `PUT /admin/traffic` splits.

    With `model_uri` (e.g. "models:/xray-vit/{version}") `prepare` starts a revision `v<version>` serving it, as
    Knative makes one from a changed template; without, the gateway's running revisions are canaried as they are.
    The challenger is each service's latest revision, the champion the other one with the most traffic.
    `admin_token` is the gateway's admin token (GATEWAY_ADMIN_TOKEN), sent as a Bearer token on every call.
    """

    def __init__(self, url: str, *, admin_token: str | None = None, service: str | None = None,
                 model_uri: str | None = None, transport: httpx.BaseTransport | None = None,
                 timeout_s: float = 10.0, prepare_timeout_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.service = service
        self.model_uri = model_uri
        self.prepare_timeout_s = prepare_timeout_s  # a revision is ready once its processes loaded the model
        headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
        self._client = httpx.Client(transport=transport, timeout=timeout_s, headers=headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._client.request(method, f"{self.url}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise CanaryError(f"gateway {self.url} unreachable: {type(exc).__name__}") from exc
        if response.status_code in (401, 403):
            raise CanaryError(f"gateway {self.url} refused the admin token ({response.status_code}): set "
                              "GATEWAY_ADMIN_TOKEN to the gateway's (the local stack keeps it in its run dir)")
        if response.status_code != 200:
            raise CanaryError(f"gateway {self.url} answered {response.status_code} to {method} {path}: "
                              f"{response.text[:200]}")
        return response.json()

    def current(self) -> dict[str, dict[str, int]]:
        return self._call("GET", "/admin/traffic")

    def prepare(self, version: str) -> None:
        if self.model_uri:
            body = {"name": f"v{version}", "model_uri": self.model_uri.format(version=version)}
            self._call("PUT", "/admin/revisions", json=body, timeout=self.prepare_timeout_s)

    def revisions(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for name, route in self._call("GET", "/admin/revisions").items():
            traffic: dict[str, int] = route["traffic"]
            # A gateway started with --challenger names it so; later revisions are each service's latest.
            challenger = route.get("latest") or ("challenger" if "challenger" in traffic else None)
            others = sorted((-percent, rev != "champion", rev) for rev, percent in traffic.items() if rev != challenger)
            if challenger in traffic and others and self.service in (None, name):
                found[name] = {"champion": others[0][2], "challenger": challenger}
        return found

    def set_weight(self, weight: int, revisions: Mapping[str, Mapping[str, str]], *, promote: bool = False) -> None:
        for service, pair in revisions.items():
            self._call("PUT", "/admin/traffic", json={"service": service, pair["champion"]: 100 - weight,
                                                      pair["challenger"]: weight})
