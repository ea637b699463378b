"""`triage canary --gateway`: the canary moves a real local gateway 10 → 25 → 50 → 100, or back to 0 on a breach."""

from __future__ import annotations

import itertools
import json
import threading
from contextlib import contextmanager

import httpx
import pytest

from shared.canary import observer, start_canary
from shared.canary.gateway import GatewayTraffic
from shared.canary.observe import GatewayMetricsSource, PrometheusSource
from shared.config import CanaryPolicy
from tests.shared.canary.test_observe import FakePrometheus
from tests.shared.canary.test_policy import NOW
from tests.stack.upstream import Upstream
from triage.canary import run_canary
from triage.cli import main
from triage.stack.admin_token import write_token
from triage.stack.gateway import Gateway, GatewayServer, Route

ADMIN_TOKEN = "canary-admin-token"


@pytest.fixture(autouse=True)
def admin_token_env(monkeypatch, tmp_path):
    """`triage canary` takes the gateway's admin token from GATEWAY_ADMIN_TOKEN (else the run dir's file)."""
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "run"))


HEALTHY = {"requests": {"champion": "400", "challenger": "80"}, "errors": {"challenger": "0"},
           "p99": {"champion": "0.040", "challenger": "0.045"}}


@pytest.fixture
def gateway():
    revisions = {"champion": "http://127.0.0.1:9", "challenger": "http://127.0.0.1:9"}
    server = GatewayServer(Gateway({
        "predict": Route("predict", dict(revisions)),
        "explain": Route("explain", dict(revisions)),
        "feedback": Route("feedback", {"default": "http://127.0.0.1:9"}),
    }), admin_token=ADMIN_TOKEN).start()
    yield server
    server.stop()


def test_healthy_challenger_is_stepped_to_100_and_promoted(gateway, capsys):
    prom = FakePrometheus(HEALTHY)
    splits: list[dict[str, int]] = []
    try:
        policy = CanaryPolicy(steps=(10, 25, 50, 100), min_requests=20)
        state, _ = start_canary(None, "7", None, policy, NOW)
        source = PrometheusSource(prom.url, flavor="gateway", window="1m")
        state, decision = run_canary(
            state, policy, observer(source, None, ("predict", "explain")),
            GatewayTraffic(gateway.url, admin_token=ADMIN_TOKEN),
            interval_s=0.01, max_duration_s=60, emit=lambda line: None,
            sleep=lambda _s: splits.append(gateway.gateway.traffic()["predict"]))
        assert [s["challenger"] for s in splits] == [10, 25, 50, 100]
        assert state.status == "promoted" and decision.outcome == "promote"
        assert gateway.gateway.traffic()["explain"] == {"champion": 0, "challenger": 100}
        assert gateway.gateway.traffic()["feedback"] == {"default": 100}  # no challenger there: untouched

        gateway.gateway.set_traffic({"champion": 100, "challenger": 0})
        code = main(["canary", "--gateway", gateway.url, "--prometheus", prom.url, "--interval", "0.01",
                     "--steps", "10,25,50,100", "--json"])
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 0
        result = json.loads(out[-1])
        assert result["status"] == "promoted" and result["weight"] == 100
        assert result["decisions"] == ["start", "hold", "advance", "advance", "advance", "promote"]
        assert any(" 25 %" in line for line in out) and gateway.gateway.traffic()["predict"]["challenger"] == 100
    finally:
        prom.close()


def test_a_breach_rolls_the_gateway_back_to_zero(gateway, capsys):
    failing = {**HEALTHY, "errors": {"challenger": "8"}}  # 10 % of the challenger's answers are 5xx
    prom = FakePrometheus(failing)
    try:
        code = main(["canary", "--gateway", gateway.url, "--prometheus", prom.url, "--interval", "0.01",
                     "--max-error-rate", "0.02", "--json"])
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 1 and result["status"] == "rolled_back" and result["weight"] == 0
        assert "error rate 0.100 > 0.02" in result["reason"]
        assert gateway.gateway.traffic()["predict"] == {"champion": 100, "challenger": 0}
        assert gateway.gateway.traffic()["explain"] == {"champion": 100, "challenger": 0}
    finally:
        prom.close()


def test_bad_options_exit_2_and_a_quiet_challenger_times_out(gateway, capsys):
    assert main(["canary", "--gateway", gateway.url, "--steps", "10,50"]) == 2
    assert "steps" in capsys.readouterr().err
    prom = FakePrometheus({"requests": {"challenger": "3"}})  # never enough requests to judge
    try:
        code = main(["canary", "--gateway", gateway.url, "--prometheus", prom.url, "--interval", "0.05",
                     "--max-duration", "0.3", "--json"])
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 1 and result["status"] == "rolled_back" and "not promoted within" in result["reason"]
        assert gateway.gateway.traffic()["predict"] == {"champion": 100, "challenger": 0}
    finally:
        prom.close()


# ---------------------------------------------------------------- no Prometheus: real traffic, the gateway's /metrics


@contextmanager
def real_gateway(challenger_status: int):
    champion, challenger = Upstream("champion", 200), Upstream("challenger", challenger_status)
    draws = itertools.cycle([i / 100 for i in range(100)])  # every 100 requests split exactly by the weights
    lock = threading.Lock()

    def draw() -> float:
        with lock:
            return next(draws)

    server = GatewayServer(Gateway({"predict": Route("predict", {"champion": champion.url,
                                                                 "challenger": challenger.url})}, draw=draw),
                           admin_token=ADMIN_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()
        champion.close()
        challenger.close()


def send(url: str, n: int) -> None:
    with httpx.Client(base_url=url) as client:
        for _ in range(n):
            client.post("/predict", content=b"x")


def test_gateway_metrics_alone_judge_each_step_of_real_traffic():
    with real_gateway(200) as server:
        policy = CanaryPolicy(steps=(10, 25, 50, 100), min_requests=10, max_p99_s=2.0, max_p99_ratio=None)
        state, _ = start_canary(None, "7", None, policy, NOW)
        splits = []

        def step(_seconds: float) -> None:
            splits.append(server.gateway.traffic()["predict"]["challenger"])
            send(server.url, 100)

        state, decision = run_canary(state, policy, observer(GatewayMetricsSource(server.url), None, ("predict",)),
                                     GatewayTraffic(server.url, admin_token=ADMIN_TOKEN), interval_s=0.01,
                                     max_duration_s=60,
                                     emit=lambda line: None, sleep=step)
        assert splits == [10, 25, 50, 100] and state.status == "promoted"
        assert server.gateway.traffic()["predict"] == {"champion": 0, "challenger": 100}


def test_cli_rolls_back_a_challenger_that_answers_5xx(capsys):
    with real_gateway(500) as server:
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                send(server.url, 20)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            code = main(["canary", "--gateway", server.url, "--interval", "0.3", "--min-requests", "5",
                         "--max-duration", "30", "--json"])
        finally:
            stop.set()
            loader.join(timeout=10)
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert code == 1 and result["status"] == "rolled_back"
        assert result["reason"].startswith("error rate 1.000 > 0.02")
        assert server.gateway.traffic()["predict"] == {"champion": 100, "challenger": 0}


def test_an_unreachable_gateway_is_retried_then_fails_not_reported_as_nothing_to_do(capsys):
    code = main(["canary", "--gateway", "http://127.0.0.1:9", "--interval", "0.05", "--max-duration", "0.2",
                 "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and any("unreachable" in line for line in out)
    assert json.loads(out[-1])["status"] == "rolled_back"


def test_no_challenger_revision_means_nothing_to_do(capsys):
    server = GatewayServer(Gateway({"predict": Route("predict", {"default": "http://127.0.0.1:9"})}),
                           admin_token=ADMIN_TOKEN).start()
    try:
        code = main(["canary", "--gateway", server.url, "--interval", "0.05", "--json"])
    finally:
        server.stop()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result["status"] == "nothing_to_do" and result["revisions"] == {}


def test_cli_reads_the_admin_token_from_the_run_dir_and_fails_clearly_without_it(capsys, monkeypatch, tmp_path):
    server = GatewayServer(Gateway({"predict": Route("predict", {"champion": "http://127.0.0.1:9",
                                                                 "challenger": "http://127.0.0.1:9"})}),
                           admin_token="the-stacks-own-token").start()
    args = ["canary", "--gateway", server.url, "--interval", "0.05", "--max-duration", "0.3", "--json"]
    try:
        monkeypatch.delenv("GATEWAY_ADMIN_TOKEN")
        code = main(args)  # no token anywhere: every call is refused, and the canary says why
        out = capsys.readouterr().out.strip().splitlines()
        assert code == 1 and any("refused the admin token (401)" in line for line in out)
        assert server.gateway.traffic()["predict"] == {"champion": 100, "challenger": 0}

        write_token(tmp_path / "run", "the-stacks-own-token")  # where the stack's gateway writes it
        splits = []
        original = server.gateway.set_traffic
        monkeypatch.setattr(server.gateway, "set_traffic", lambda t, s=None: splits.append(t) or original(t, s))
        main(args)
        assert splits and splits[0]["challenger"] == 10  # authorized: the first step was applied
    finally:
        server.stop()
