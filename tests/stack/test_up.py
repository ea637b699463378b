"""`triage up` configuration: ports from the environment, model and function names checked before anything starts."""

from __future__ import annotations

import pytest

from shared.errors import UserError
from triage.stack.up import Stack, StackConfig, StackPorts


def test_ports_come_from_the_environment():
    ports = StackPorts.from_env({"S3_PORT": "19000", "GATEWAY_PORT": "18080", "FUNCTION_BASE_PORT": "18100"})
    assert (ports.s3, ports.gateway, ports.function_base, ports.mlflow) == (19000, 18080, 18100, 5000)


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1"])
def test_a_bad_port_variable_is_named(value):
    with pytest.raises(UserError, match=f"BROKER_PORT={value!r}"):
        StackPorts.from_env({"BROKER_PORT": value})


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
    from triage.stack.processes import port_is_free
    from triage.stack.up import FUNCTION_PORT_ORDER

    ports = StackPorts.free()
    taken = [ports.s3, ports.s3_notify, ports.mlflow, ports.gateway, ports.broker, ports.prometheus]
    taken += [ports.function_base + i for i in range(len(FUNCTION_PORT_ORDER))]
    assert len(set(taken)) == len(taken) and all(port_is_free(port) for port in taken)
