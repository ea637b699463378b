"""`triage up` configuration: ports from the environment, model and function names checked before anything starts."""

from __future__ import annotations

import pytest

from shared.errors import UserError
from triage.config import TriageEnv
from triage.stack import Stack, StackConfig, StackPorts


def test_ports_come_from_the_environment():
    env = TriageEnv.from_env({"S3_PORT": "19000", "GATEWAY_PORT": "18080", "FUNCTION_BASE_PORT": "18100"})
    ports = StackPorts.from_env(env)
    assert (ports.s3, ports.gateway, ports.function_base, ports.mlflow) == (19000, 18080, 18100, 5000)


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1"])
def test_a_bad_port_variable_is_named(value):
    with pytest.raises(UserError, match=f"BROKER_PORT={value!r}"):
        StackPorts.from_env(TriageEnv.from_env({"BROKER_PORT": value}))


def test_unknown_function_is_rejected(tmp_path):
    with pytest.raises(UserError, match="unknown function 'predikt'"):
        Stack(StackConfig(run_dir=tmp_path, model_uri=str(tmp_path), functions=("predikt",)), echo=None)


def test_missing_model_path_is_a_clear_error_and_nothing_keeps_running(tmp_path):
    config = StackConfig(run_dir=tmp_path / "run", model_uri=str(tmp_path / "nope"), functions=("predict",),
                         ports=StackPorts.free(), mlflow=False, prometheus=False)
    stack = Stack(config, echo=None)
    with pytest.raises(UserError, match=r"--model / MODEL_URI: .*nope does not exist"), stack:
        pass
    assert stack.supervisor.children == {}  # checked before anything started


def test_without_registry_a_model_is_required(tmp_path):
    config = StackConfig(run_dir=tmp_path, functions=("predict",), ports=StackPorts.free(), mlflow=False,
                         prometheus=False)
    with pytest.raises(UserError, match="no model: pass --model"), Stack(config, echo=None):
        pass


def test_free_ports_cover_every_function_and_revision_slot():
    from triage.stack.ports import FUNCTION_PORT_ORDER
    from triage.stack.processes import port_is_free

    ports = StackPorts.free()
    taken = [ports.s3, ports.s3_notify, ports.mlflow, ports.gateway, ports.broker, ports.prometheus]
    taken += [ports.function_base + i for i in range(len(FUNCTION_PORT_ORDER))]
    assert len(set(taken)) == len(taken) and all(port_is_free(port) for port in taken)


def test_broker_triggers_and_ticks_come_from_the_topology(tmp_path):
    from shared.topology import PING_SCHEDULES, SUBSCRIPTIONS

    config = StackConfig(run_dir=tmp_path, model_uri=str(tmp_path), functions=("ingest", "monitor", "canary"),
                         ports=StackPorts.free(), mlflow=False, prometheus=False, canary_tick_s=1.0)
    stack = Stack(config, echo=None)
    broker = stack.broker_config()
    by_name = {trigger["name"]: trigger for trigger in broker["triggers"]}
    routed = {s.name for s in SUBSCRIPTIONS if s.subscriber in ("ingest", "monitor", "canary")}
    assert set(by_name) == routed | {p.name for p in PING_SCHEDULES}
    ingest = next(s for s in SUBSCRIPTIONS if s.subscriber == "ingest")
    # ingest's events go through the gateway, so its revisions split them
    assert by_name[ingest.name]["subscriber"] == stack.urls["gateway"] + "/ingest"
    assert by_name[ingest.name]["filter"] == {"type": ingest.event_type, "bucket": ingest.bucket}
    ticks = {p["name"]: p["every_s"] for p in broker["pings"]}
    assert ticks["canary-tick"] == 1.0 and ticks["monitor-tick"] == 60.0
    env = stack.env()
    assert env["CANARY_GATEWAY_URL"] == stack.urls["gateway"] and env["K_SINK"] == stack.urls["broker"]
    assert env["MLFLOW_TRACKING_URI"] == ""  # no registry of the caller's leaks in


def test_the_de_identification_secret_is_made_once_per_installation(tmp_path):
    """Replaced DICOM UIDs stay consistent across restarts: the keyed hash's secret is kept in the run folder."""
    from triage.stack.stack import installation_secret

    first = installation_secret(tmp_path / "run", "deid-secret")
    assert len(first) >= 40 and installation_secret(tmp_path / "run", "deid-secret") == first
    assert (tmp_path / "run" / "deid-secret").stat().st_mode & 0o777 == 0o600
    assert installation_secret(tmp_path / "other", "deid-secret") != first
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["deid-secret"]
