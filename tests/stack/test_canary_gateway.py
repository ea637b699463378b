"""`triage canary --gateway`: the canary moves a real local gateway 10 → 25 → 50 → 100, or back to 0 on a breach."""

from __future__ import annotations

import json

import pytest

from shared.canary import CanaryPolicy, GatewayTraffic, PrometheusSource, observer, start_canary
from tests.shared.test_canary import NOW, FakePrometheus
from triage.canary import run_canary
from triage.cli import main
from triage.stack.gateway import Gateway, GatewayServer, Route

HEALTHY = {"requests": {"champion": "400", "challenger": "80"}, "errors": {"challenger": "0"},
           "p99": {"champion": "0.040", "challenger": "0.045"}}


@pytest.fixture
def gateway():
    revisions = {"champion": "http://127.0.0.1:9", "challenger": "http://127.0.0.1:9"}
    server = GatewayServer(Gateway({
        "predict": Route("predict", dict(revisions)),
        "explain": Route("explain", dict(revisions)),
        "feedback": Route("feedback", {"default": "http://127.0.0.1:9"}),
    })).start()
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
            state, policy, observer(source, None, ("predict", "explain")), GatewayTraffic(gateway.url),
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
