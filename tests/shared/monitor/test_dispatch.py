"""The monitor's entry point: its settings from the environment, and dispatch on the event type."""

from __future__ import annotations

import pytest

from shared.errors import UserError
from shared.events import BadEvent, make_event, prediction_created_event
from shared.monitor import Monitor, MonitorConfig
from shared.names import PING
from tests.shared.monitor.streams import CONFIG, NOW, prediction


def test_settings_come_from_the_environment_and_bad_values_name_the_variable():
    from shared.config import Settings

    config = MonitorConfig.from_env(Settings(model_uri="/m"), {"MONITOR_WINDOW_DAYS": "3", "MONITOR_BINS": "20"})
    assert (config.window_days, config.bins, config.model_uri) == (3.0, 20, "/m")
    for env in ({"MONITOR_BINS": "1"}, {"MONITOR_PSI_THRESHOLD": "x"}, {"MONITOR_WINDOW_LABELS": "2.5"}):
        with pytest.raises(UserError, match=next(iter(env))):
            MonitorConfig.from_env(Settings(), env)


def test_the_monitor_dispatches_on_the_event_type(storage):
    monitor = Monitor(storage, CONFIG, now=lambda: NOW, card_loader=lambda: None)
    event = prediction_created_event(prediction(1, 0.8))
    assert monitor.handle(event) == {"status": "counted"}
    tick = make_event(PING, "/apis/v1/namespaces/triage/pingsources/monitor-tick", {"check": "monitor"})
    assert monitor.handle(tick)["status"] == "reported"
    with pytest.raises(BadEvent, match="io.minio.object.created"):
        monitor.handle(make_event("io.minio.object.created", "minio:raw-data", {"key": "a"}))


def test_the_monitor_counts_a_not_assessable_prediction_and_reports_its_share(storage):
    from prometheus_client import REGISTRY

    monitor = Monitor(storage, CONFIG, now=lambda: NOW, card_loader=lambda: None)
    assert monitor.handle(prediction_created_event(prediction(1, 0.8))) == {"status": "counted"}
    refused = {**prediction(2, 0.5), "assessable": False, "label": None, "probability": None,
               "reason": {"code": "flat_image", "message": "uniform"}}
    assert monitor.handle(prediction_created_event(refused)) == {"status": "counted"}
    monitor.handle(make_event(PING, "/apis/v1/namespaces/triage/pingsources/monitor-tick", {"check": "monitor"}))
    report = storage.get_json("triage-state", "monitor/report.json")
    assert report["predictions"]["not_assessable"] == 1 and report["predictions"]["n"] == 1
    assert REGISTRY.get_sample_value("triage_monitor_not_assessable_rate") == 0.5
    with pytest.raises(BadEvent, match="'label'"):  # an assessable answer still needs its label
        monitor.handle(prediction_created_event({**prediction(3, 0.5), "label": None}))
