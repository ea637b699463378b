"""The local gateway passes a caller's `Authorization` through to predict / explain, which check the API token."""

from __future__ import annotations

import json

import httpx

from tests.local_http import LocalServer, QuietHandler
from triage.stack.gateway import Gateway, GatewayServer, Route


class EchoAuthorization(QuietHandler):
    def do_POST(self):  # noqa: N802
        self.body()
        payload = json.dumps({"authorization": self.headers.get("Authorization")}).encode()
        self.reply(200, payload, "application/json")


def test_the_gateway_forwards_the_callers_authorization_header() -> None:
    upstream = LocalServer(EchoAuthorization)
    server = GatewayServer(Gateway({name: Route(name, {"champion": upstream.url}) for name in ("predict", "explain")}))
    server.start()
    try:
        for path in ("/predict", "/explain"):
            answer = httpx.post(server.url + path, content=b"x", headers={"Authorization": "Bearer xrt_abc"})
            assert answer.status_code == 200 and answer.json() == {"authorization": "Bearer xrt_abc"}
            assert httpx.post(server.url + path, content=b"x").json() == {"authorization": None}
    finally:
        server.stop()
        upstream.close()
