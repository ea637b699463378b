"""Revisions the gateway starts (PUT /admin/revisions): real processes on port slots, routed at 0 %, retired idle."""

from __future__ import annotations

import sys

import httpx
import pytest

from shared.canary.errors import CanaryError
from shared.canary.gateway import GatewayTraffic
from tests.stack.upstream import Upstream
from triage.stack.gateway import Gateway, GatewayServer, Route
from triage.stack.processes import port_is_free, unused_port_block
from triage.stack.revisions import RevisionLauncher, RevisionTemplate

ADMIN_TOKEN = "revisions-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# A stand-in function process: healthy at once, answers every POST with the model it was started with.
FAKE_FUNCTION = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
if "broken" in os.environ["MODEL_URI"]:
    sys.exit("cannot load " + os.environ["MODEL_URI"])
class H(BaseHTTPRequestHandler):
    def answer(self):
        body = json.dumps({"revision": os.environ["REVISION"], "model_uri": os.environ["MODEL_URI"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.answer()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer()
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def gateway(tmp_path):
    champions = {service: Upstream(f"{service}-champion") for service in ("predict", "ingest")}
    slots = iter(unused_port_block(4))
    templates = {service: RevisionTemplate((sys.executable, "-c", FAKE_FUNCTION, "{port}"), (next(slots), next(slots)))
                 for service in champions}
    launcher = RevisionLauncher(templates, tmp_path, ready_timeout_s=30)
    routes = {service: Route(service, {"champion": upstream.url}) for service, upstream in champions.items()}
    server = GatewayServer(Gateway(routes, launcher=launcher), admin_token=ADMIN_TOKEN).start()
    yield server, templates
    server.stop()
    launcher.stop_all()
    for upstream in champions.values():
        upstream.close()


def served_by(client: httpx.Client, service: str) -> tuple[str, str]:
    response = client.post(f"/{service}", content=b"{}")
    assert response.status_code == 200, response.text
    return response.headers["X-Triage-Revision"], response.json().get("model_uri", "")


def test_a_new_revision_of_every_service_starts_at_zero_percent_and_takes_traffic_when_routed(gateway):
    server, _ = gateway
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as client:
        created = client.put("/admin/revisions", json={"name": "v8", "model_uri": "models:/xray-vit/8"})
        assert created.status_code == 200, created.text
        for service in ("predict", "ingest"):
            assert created.json()[service] == {"traffic": {"champion": 100, "v8": 0}, "latest": "v8",
                                               "model_uris": {"v8": "models:/xray-vit/8"}}
        assert {served_by(client, "predict")[0] for _ in range(20)} == {"champion"}  # 0 % is never picked
        assert client.put("/admin/traffic", json={"champion": 0, "v8": 100}).status_code == 200
        assert served_by(client, "ingest") == ("v8", "models:/xray-vit/8")
        # The same request again changes nothing; the same name for another model is a conflict.
        again = client.put("/admin/revisions", json={"name": "v8", "model_uri": "models:/xray-vit/8"})
        assert again.status_code == 200 and again.json()["predict"]["traffic"] == {"champion": 0, "v8": 100}
        clash = client.put("/admin/revisions", json={"name": "v8", "model_uri": "models:/xray-vit/9"})
        assert clash.status_code == 409 and "serves models:/xray-vit/8" in clash.json()["error"]["message"]
        for bad in ({"name": "V8!", "model_uri": "x"}, {"name": "v9"}, ["v9"]):
            assert client.put("/admin/revisions", json=bad).status_code == 422


def test_revisions_at_zero_percent_are_retired_to_free_their_port_slots(gateway):
    server, templates = gateway
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as client:
        assert client.put("/admin/revisions", json={"name": "v8", "model_uri": "m8"}).status_code == 200
        assert client.put("/admin/traffic", json={"champion": 0, "v8": 100}).status_code == 200  # promoted
        assert client.put("/admin/revisions", json={"name": "v9", "model_uri": "m9"}).status_code == 200
        assert client.put("/admin/traffic", json={"v8": 100, "v9": 0}).status_code == 200  # v9 rolled back
        # Two slots per service: v10 fits only because v9 (0 % everywhere) is retired first.
        revisions = client.put("/admin/revisions", json={"name": "v10", "model_uri": "m10"}).json()
        assert revisions["predict"]["traffic"] == {"champion": 0, "v8": 100, "v10": 0}
        assert set(revisions["ingest"]["model_uris"]) == {"v8", "v10"}
        assert served_by(client, "predict") == ("v8", "m8")
    slots = [port for template in templates.values() for port in template.ports]
    assert sum(not port_is_free(port) for port in slots) == 4  # v8 and v10, two services each; v9's ports free


def test_a_revision_that_cannot_start_is_a_clear_503_and_changes_no_route(gateway):
    server, templates = gateway
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as client:
        failed = client.put("/admin/revisions", json={"name": "v8", "model_uri": "models:/broken/8"})
        assert failed.status_code == 503 and "v8 did not start" in failed.json()["error"]["message"]
        assert client.get("/admin/revisions").json()["predict"] == {"traffic": {"champion": 100}, "latest": None,
                                                                   "model_uris": {}}
    assert all(port_is_free(port) for template in templates.values() for port in template.ports)


def test_a_gateway_without_a_launcher_says_so():
    server = GatewayServer(Gateway({"predict": Route("predict", {"champion": "http://127.0.0.1:9"})}),
                           admin_token=ADMIN_TOKEN).start()
    try:
        response = httpx.put(server.url + "/admin/revisions", json={"name": "v8", "model_uri": "m"}, headers=ADMIN)
        assert response.status_code == 503 and "--launch" in response.json()["error"]["message"]
    finally:
        server.stop()


def test_the_canarys_gateway_traffic_prepares_the_version_and_splits_between_the_right_revisions(gateway):
    server, _ = gateway
    with pytest.raises(CanaryError, match="GATEWAY_ADMIN_TOKEN"):
        GatewayTraffic(server.url, model_uri="models:/xray-vit/{version}").prepare("8")
    traffic = GatewayTraffic(server.url, model_uri="models:/xray-vit/{version}", admin_token=ADMIN_TOKEN)
    traffic.prepare("8")
    pairs = traffic.revisions()
    assert pairs == {service: {"champion": "champion", "challenger": "v8"} for service in ("predict", "ingest")}
    traffic.set_weight(25, pairs)
    assert traffic.current()["ingest"] == {"champion": 75, "v8": 25}
    traffic.set_weight(100, pairs, promote=True)
    traffic.prepare("9")  # after a promotion the promoted revision is the champion of the next canary
    assert traffic.revisions()["predict"] == {"champion": "v8", "challenger": "v9"}
