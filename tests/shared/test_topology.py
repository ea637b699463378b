"""The topology is consistent: every function exists, every route ends at one, every env variable once."""

from __future__ import annotations

import pytest

from shared import names, topology
from shared.config import PROJECT_ROOT

FUNCTION_NAMES = {fn.name for fn in topology.FUNCTIONS}


def test_every_function_has_its_functions_framework_source() -> None:
    for fn in topology.FUNCTIONS:
        assert (PROJECT_ROOT / "functions" / fn.target / "main.py").is_file(), fn.name
    assert topology.DEAD_LETTER_SINK in FUNCTION_NAMES


def test_every_subscription_and_ping_ends_at_a_function() -> None:
    events = {names.OBJECT_CREATED, names.HEATMAP_REQUESTED, names.PREDICTION_CREATED, names.FEEDBACK_RECEIVED,
              names.MODEL_REGISTERED}
    for sub in topology.SUBSCRIPTIONS:
        assert sub.subscriber in FUNCTION_NAMES and sub.event_type in events, sub.name
        assert sub.bucket is None or sub.bucket in names.NOTIFYING_BUCKETS, sub.name
    assert len({sub.name for sub in topology.SUBSCRIPTIONS}) == len(topology.SUBSCRIPTIONS)
    for ping in topology.PING_SCHEDULES:
        assert ping.subscriber in FUNCTION_NAMES and ping.local_every_s > 0


def test_env_contract_names_each_variable_once() -> None:
    for fn in topology.FUNCTIONS:
        variables = [var.name for var in fn.env]
        assert len(variables) == len(set(variables)), fn.name
        assert ("K_SINK" in variables) == fn.emits_events
    assert "WEBHOOK_TOKEN" in {var.name for var in topology.function("minio_source").env}
    assert "REVIEWER_TOKENS" in {var.name for var in topology.function("feedback").env}


def test_environment_fills_the_contract_and_leaves_out_what_a_deployable_lacks() -> None:
    minio_source = topology.function("minio-source")
    values = {topology.S3_URL: "http://127.0.0.1:9000", topology.WEBHOOK_TOKEN: "token", topology.MLFLOW_URL: ""}
    env = topology.environment(minio_source, {**values, topology.BROKER_URL: None})
    assert env == {"S3_ENDPOINT_URL": "http://127.0.0.1:9000", "MLFLOW_TRACKING_URI": "", "WEBHOOK_TOKEN": "token"}
    with pytest.raises(KeyError):
        topology.function("nope")
