"""End to end on the local stack (real processes: moto S3 (written through to disk), relay, broker, functions, gateway).

One stack for the module, a tiny random-weight model (versions 7 and 8 as champion and challenger), no MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.errors import UserError
from shared.events import event_to_binary_http, object_created_event
from tests.functions.tiny_model import build_tiny_model_dir, png_bytes
from tests.local_http import LocalServer, QuietHandler
from triage.stack import Stack, StackConfig, StackPorts
from triage.stack.gateway import REVISION_HEADER

FUNCTIONS = ("predict", "explain", "feedback", "minio_source", "ingest", "monitor", "canary", "review")
# The canary judges steps on the gateway's own metrics; latency bounds are loose (a loaded CI machine is no breach).
CANARY_ENV = {"CANARY_STEPS": "50,100", "CANARY_MIN_REQUESTS": "3", "CANARY_MIN_FEEDBACK": "1000",
              "CANARY_MAX_P99_S": "60", "CANARY_MAX_P99_RATIO": "1000",
              "CANARY_REPLAY": "false"}  # random-weight models disagree; the replay: tests/stack/test_canary_replay.py


def tiny_model(directory: Path, version: str, seed: int) -> Path:
    build_tiny_model_dir(directory, seed=seed)
    card_path = directory / "model_card.json"
    card = json.loads(card_path.read_text())
    card["version"] = version  # what registering it would have written
    card_path.write_text(json.dumps(card))
    return directory


class FailingSubscriber(LocalServer):
    """A subscriber that always answers 500, counting the attempts."""

    def __init__(self) -> None:
        self.attempts = 0
        outer = self

        class Handler(QuietHandler):
            def do_POST(self):  # noqa: N802
                self.body()
                outer.attempts += 1
                self.reply(500)

        super().__init__(Handler)


@pytest.fixture(scope="module")
def failing():
    with FailingSubscriber() as subscriber:
        yield subscriber


@pytest.fixture(scope="module")
def stack(tmp_path_factory, failing):
    root = tmp_path_factory.mktemp("stack")
    champion = tiny_model(root / "champion", "7", seed=0)
    challenger = tiny_model(root / "challenger", "8", seed=1)
    # Without a registry the canary's new revisions serve models/<version> folders.
    extra_env = {"THREADS": "4", "CANARY_MODEL_URI": str(root / "models" / "{version}"), **CANARY_ENV}
    config = StackConfig(
        run_dir=root / "run", model_uri=str(champion), challenger_uri=str(challenger), functions=FUNCTIONS,
        ports=StackPorts.free(), mlflow=False, prometheus=False, extra_env=extra_env, monitor_tick_s=1.0,
        canary_tick_s=1.0,
        extra_triggers=({"name": "always-fails", "subscriber": failing.url, "filter": {"type": "test.fails"},
                         "delivery": {"retry": 2, "backoff_delay_s": 0.1}},),
    )
    with Stack(config, echo=None) as running:
        yield running


def wait_for_results(s3, keys, timeout_s: float = 30.0) -> dict[str, dict]:
    """Each key's committed result: written, and its heatmap no longer pending (the flag is written first)."""
    found: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(found) < len(keys):
        for key in keys:
            if key not in found:
                try:
                    result = json.loads(s3.get_object(Bucket="inference-results", Key=f"{key}.json")["Body"].read())
                except s3.exceptions.NoSuchKey:
                    continue
                if (result.get("heatmap") or {}).get("status") != "pending":
                    found[key] = result
        time.sleep(0.1)
    return found


def _heatmap_steps(stack: Stack) -> float:
    """How many heatmap requests ingest has completed (its own metrics)."""
    text = httpx.get(stack.function_urls["ingest"] + "/metrics").text
    line = 'triage_events_processed_total{function="ingest",outcome="completed",type="triage.heatmap.requested"}'
    return sum(float(row.rsplit(" ", 1)[1]) for row in text.splitlines() if row.startswith(line))


def test_each_upload_gets_its_flag_then_its_heatmap_through_the_broker(stack):
    s3 = stack.s3()
    before = _heatmap_steps(stack)
    keys = [f"e2e/upload-{i}.png" for i in range(4)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="inference-inputs", Key=key, Body=png_bytes(seed=i), ContentType="image/png")
    results = wait_for_results(s3, keys)
    assert sorted(results) == keys
    for key, result in results.items():
        assert result["model"]["version"] == "7"
        assert result["label"] in ("normal", "pneumonia")
        # The flag's time, then the picture's: the heatmap was its own step, after the label was readable.
        heatmap = result["heatmap"]
        assert heatmap["status"] == "ready" and heatmap["key"] == f"{key}.heatmap.png"
        assert heatmap["completed_at"] >= result["completed_at"]
    heatmaps = s3.list_objects_v2(Bucket="inference-results", Prefix="e2e/")["Contents"]
    assert len([o for o in heatmaps if o["Key"].endswith(".png")]) == 4
    # Each heatmap came to ingest as its own triage.heatmap.requested delivery (the ingest-heatmaps trigger).
    assert _heatmap_steps(stack) - before == 4


def test_the_same_event_delivered_twice_gives_one_result(stack):
    s3 = stack.s3()
    key = "e2e/twice.png"
    s3.put_object(Bucket="inference-inputs", Key=key, Body=png_bytes(seed=9), ContentType="image/png")
    first = wait_for_results(s3, [key])[key]
    etag = s3.head_object(Bucket="inference-inputs", Key=key)["ETag"].strip('"')
    headers, body = event_to_binary_http(object_created_event("inference-inputs", key, etag, None, None))
    before = httpx.get(stack.urls["broker"] + "/healthz").json()["queue"].get("done", 0)
    for _ in range(2):
        assert httpx.post(stack.urls["broker"], headers=headers, content=body).status_code == 202
    deadline = time.monotonic() + 20
    while httpx.get(stack.urls["broker"] + "/healthz").json()["queue"].get("done", 0) < before + 2:
        assert time.monotonic() < deadline, "the redelivered events were not delivered"
        time.sleep(0.1)
    after = json.loads(s3.get_object(Bucket="inference-results", Key=f"{key}.json")["Body"].read())
    assert after == first
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="inference-results", Prefix=key)["Contents"]] == [
        f"{key}.heatmap.png", f"{key}.json"]


def test_a_failing_subscriber_is_retried_then_the_event_lands_in_dead_letter(stack, failing):
    body = {"specversion": "1.0", "id": "fail-1", "type": "test.fails", "source": "tests", "data": {"n": 1}}
    response = httpx.post(stack.urls["broker"], json=body, headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 202
    s3 = stack.s3()
    deadline = time.monotonic() + 20
    while True:
        try:
            record = json.loads(s3.get_object(Bucket="dead-letter", Key="always-fails/fail-1.json")["Body"].read())
            break
        except s3.exceptions.NoSuchKey:
            assert time.monotonic() < deadline, "the event never reached the dead-letter bucket"
            time.sleep(0.1)
    assert failing.attempts == 3  # first try + 2 retries
    assert record["attempts"] == 3 and record["error"]["status"] == "500"
    assert "HTTP 500" in record["error"]["message"] and record["subscriber"] == "always-fails"
    assert record["event"]["data"] == {"n": 1}


def test_a_function_killed_mid_stream_loses_nothing_once_back(stack):
    s3 = stack.s3()
    stack.kill("ingest")
    keys = [f"e2e/while-down-{i}.png" for i in range(3)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="inference-inputs", Key=key, Body=png_bytes(seed=20 + i), ContentType="image/png")
    time.sleep(1.0)
    assert wait_for_results(s3, keys, timeout_s=0.5) == {}  # nobody to do the work yet
    stack.restart("ingest")
    results = wait_for_results(s3, keys, timeout_s=40)
    assert sorted(results) == keys


def png_headers(stack: Stack) -> dict[str, str]:
    """A PNG body's headers for /predict and /explain, with the stack's API token."""
    return {"Content-Type": "image/png", **stack.api_headers}


def test_gateway_traffic_split_honours_weights(stack):
    gateway = stack.urls["gateway"]
    with httpx.Client(base_url=gateway, timeout=30) as client:
        assert client.put("/admin/traffic", json={"champion": 70, "challenger": 30},
                          headers=stack.admin_headers).status_code == 200
        served = []
        for i in range(80):
            response = client.post("/predict", content=png_bytes(seed=i % 5), headers=png_headers(stack))
            assert response.status_code == 200
            served.append((response.headers[REVISION_HEADER], response.json()["model"]["version"]))
        assert {(rev, ver) for rev, ver in served} <= {("champion", "7"), ("challenger", "8")}
        challenger_share = sum(rev == "challenger" for rev, _ in served) / len(served)
        assert 0.12 < challenger_share < 0.5
        assert client.put("/admin/traffic", json={"champion": 100, "challenger": 0},
                          headers=stack.admin_headers).status_code == 200
        revisions = {client.post("/explain", content=png_bytes(), headers=png_headers(stack))
                     .headers[REVISION_HEADER] for _ in range(10)}
        assert revisions == {"champion"}


def test_port_in_use_is_a_clear_error_before_anything_starts(tmp_path, stack):
    ports = StackPorts.free()
    taken = ports.__class__(**{**ports.__dict__, "gateway": stack.config.ports.gateway})
    config = StackConfig(run_dir=tmp_path, model_uri=str(tmp_path), functions=("predict",), ports=taken,
                         mlflow=False, prometheus=False)
    clash = Stack(config, echo=None)
    with pytest.raises(UserError, match=rf"port {taken.gateway} for gateway is already in use.*GATEWAY_PORT"):
        clash.start()
    assert clash.supervisor.children == {}


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_every_child(tmp_path, stack, sig):
    ports = StackPorts.free()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           **{var: str(getattr(ports, name)) for name, var in
              {"s3": "S3_PORT", "s3_notify": "S3_NOTIFY_PORT", "gateway": "GATEWAY_PORT", "broker": "BROKER_PORT",
               "function_base": "FUNCTION_BASE_PORT"}.items()}}
    model = stack.config.model_uri
    up = subprocess.Popen([sys.executable, "-m", "triage.cli", "up", "--model", model, "--no-mlflow",
                           "--no-prometheus", "--functions", "predict,minio_source", "--run-dir", str(tmp_path)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        for line in up.stdout:
            if "local stack is up" in line or time.monotonic() > deadline:
                break
        assert up.poll() is None, "triage up exited early"
        children = _descendants(up.pid)
        assert len(children) >= 5  # s3, broker, predict (+ its gunicorn worker), minio_source, gateway
        up.send_signal(sig)
        assert up.wait(timeout=30) == 0
        time.sleep(0.2)
        assert [pid for pid in children if _running(pid)] == []
    finally:
        if up.poll() is None:
            up.kill()


def test_demo_steps_triage_uploads_explain_and_take_feedback(stack, tmp_path):
    from triage.stack.demo import demo_images, run_demo

    images = demo_images(3, None, tmp_path)
    report = run_demo(stack, images, tmp_path / "heatmaps", timeout_s=30)
    assert report.failures == []
    assert len(report.results) == 3 and all(r["model"]["version"] == "7" for r in report.results)
    saved = sorted(p.name for p in (tmp_path / "heatmaps").iterdir())
    assert "explain-http.png" in saved and len([n for n in saved if n.endswith(".heatmap.png")]) == 3


def test_review_flow_explain_then_feedback_through_the_gateway(stack):
    with httpx.Client(base_url=stack.urls["gateway"], timeout=30) as client:
        assert "Confirm" in client.get("/review").text
        explained = client.post("/explain", content=png_bytes(seed=3), headers=png_headers(stack))
        assert explained.status_code == 200
        body = explained.json()
        assert body["heatmap_png"] and body["model"]["version"] == "7"
        label = "normal" if body["label"] == "pneumonia" else "pneumonia"  # the radiologist corrects it
        deadline = time.monotonic() + 5
        while True:  # the request index is written off the latency path, so it may lag a moment
            response = client.post("/feedback", json={"request_id": body["request_id"], "label": label,
                                                      "reviewer": "radiologist"},
                                    headers={"Authorization": f"Bearer {stack.reviewer_token}"})
            if response.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status_code == 200, response.text
        unauthorized = client.post("/feedback", json={"request_id": body["request_id"], "label": label,
                                                      "reviewer": "radiologist"})
        assert unauthorized.status_code == 401
    # explain's record went through its writer child process (botocore off the request threads' GIL)
    assert _descendants_running(stack.supervisor.pids()["explain"], "shared.record_writer")


def _descendants_running(pid: int, module: str) -> list[int]:
    """Pids of `pid`'s descendants whose command line runs `python -m <module>` (read from /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError):
                continue
    found = []
    for child, command in commands.items():
        ancestor = parents.get(child)
        while ancestor and ancestor != pid:
            ancestor = parents.get(ancestor)
        if ancestor == pid and f"-m {module}" in command:
            found.append(child)
    return found


def test_the_monitor_counts_each_prediction_and_reports_on_its_tick(stack):
    s3 = stack.s3()
    keys = [f"e2e/monitored-{i}.png" for i in range(3)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="inference-inputs", Key=key, Body=png_bytes(seed=20 + i), ContentType="image/png")
    assert len(wait_for_results(s3, keys)) == 3
    deadline = time.monotonic() + 20
    while True:  # prediction events reach the monitor through the broker; the ping source ticks every second
        try:
            state = json.loads(s3.get_object(Bucket="triage-state", Key="monitor/state.json")["Body"].read())
            report = json.loads(s3.get_object(Bucket="triage-state", Key="monitor/report.json")["Body"].read())
        except s3.exceptions.NoSuchKey:
            state, report = {"events_counted": 0}, {}
        if state["events_counted"] >= 3 and report.get("events_counted", 0) >= 3:
            break
        assert time.monotonic() < deadline, f"monitor state {state.get('events_counted')}, report {report.keys()}"
        time.sleep(0.2)
    assert "drift" in report and "live_accuracy" in report


def test_a_registered_model_goes_through_the_canary_to_all_traffic(stack):
    """Last in this module (it leaves v9 serving): registered → a new revision → 50 % → 100 % → promoted."""
    tiny_model(Path(stack.config.run_dir).parent / "models" / "9", "9", seed=2)
    event = {"specversion": "1.0", "id": "registered-9", "type": "triage.model.registered", "source": "triage/retrain",
             "datacontenttype": "application/json", "data": {"name": "xray-vit", "version": "9"}}
    response = httpx.post(stack.urls["broker"], json=event, headers={"content-type": "application/cloudevents+json"})
    assert response.status_code == 202
    s3, state = stack.s3(), {}
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=stack.urls["gateway"], timeout=30) as client:
        while state.get("status") != "promoted":  # live traffic for the canary to judge, between its ticks
            for seed in range(4):
                assert client.post("/predict", content=png_bytes(seed=seed),
                                   headers=png_headers(stack)).status_code == 200
            with contextlib.suppress(s3.exceptions.NoSuchKey):
                state = json.loads(s3.get_object(Bucket="triage-state", Key="canary/state.json")["Body"].read())
            assert state.get("status") in (None, "running", "promoted"), state
            assert time.monotonic() < deadline, f"canary still at {state.get('weight')} % after 120 s: {state}"
        assert [step["weight"] for step in state["history"]][:2] == [50, 50]  # routed, then judged on its data
        served = [client.post("/predict", content=png_bytes(seed=1), headers=png_headers(stack))
                  for _ in range(10)]
        assert {(r.headers[REVISION_HEADER], r.json()["model"]["version"]) for r in served} == {("v9", "9")}
        traffic = client.get("/admin/revisions", headers=stack.admin_headers).json()
    assert traffic["ingest"]["traffic"]["v9"] == 100 and traffic["explain"]["latest"] == "v9"
    # Bucket uploads follow the same split: ingest's events go through the gateway.
    s3.put_object(Bucket="inference-inputs", Key="e2e/after-canary.png", Body=png_bytes(seed=9),
                  ContentType="image/png")
    assert wait_for_results(s3, ["e2e/after-canary.png"])["e2e/after-canary.png"]["model"]["version"] == "9"
