"""`shared.topology` as the local stack runs it: the processes' environment and the broker's triggers and ticks.

The functions' environment contract and event routes are production's; what is local only is added here:
events for a model function go through the gateway (so its revisions split them, as Knative's do), the
PingSources tick every `local_every_s` (or the stack's override), the canary steps the gateway
(CANARY_GATEWAY_URL, with its admin token GATEWAY_ADMIN_TOKEN), and each function runs one gunicorn worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import topology
from shared.config import PROJECT_ROOT
from shared.names import PING
from triage.stack.pings import PingSource
from triage.stack.ports import ALL_FUNCTIONS
from triage.stack.triggers import DeliverySpec

__all__ = ["LocalValues", "broker_config", "stack_env"]


@dataclass(frozen=True)
class LocalValues:
    """What the local stack gives the topology's values (see `shared.topology`)."""

    s3_url: str
    broker_url: str
    gateway_url: str
    mlflow_url: str | None  # None: no registry runs
    model_uri: str | None
    access_key: str
    secret_key: str
    webhook_token: str
    reviewer_tokens: str
    api_tokens: str | None = None  # the API token table (a file in the run dir)
    admin_token: str = ""  # the gateway's admin token (local only: Knative has no such API)
    deid_secret: str = ""  # the keyed hash of replaced DICOM UIDs (generated per stack run unless DEID_SECRET is set)
    log_ref_secret: str = ""  # the keyed hash by which logs name objects (per installation, or LOG_REF_SECRET)

    def values(self) -> dict[str, str | None]:
        return {
            topology.MODEL_URI: self.model_uri,
            topology.S3_URL: self.s3_url,
            # The stack's own registry, or none: a tracking URI in the caller's environment must not leak in.
            topology.MLFLOW_URL: self.mlflow_url or "",
            topology.ARTIFACT_STORE_URL: self.s3_url if self.mlflow_url else None,
            topology.REGION: "us-east-1",
            topology.BROKER_URL: self.broker_url,
            # The canary function steps the gateway's split, as it patches Knative Services in production.
            topology.GATEWAY_URL: self.gateway_url,
            topology.S3_ACCESS_KEY: self.access_key,
            topology.S3_SECRET_KEY: self.secret_key,
            topology.WEBHOOK_TOKEN: self.webhook_token,
            topology.REVIEWER_TOKENS: self.reviewer_tokens,
            topology.API_TOKENS: self.api_tokens,
            topology.DEID_SECRET: self.deid_secret or None,
            topology.LOG_REF_SECRET: self.log_ref_secret or None,
        }


def stack_env(values: LocalValues, *, run_dir: Path, threads: int | None,
              pythonpath: str | None) -> dict[str, str]:
    """Every local function's contract (all, not only those started: the gateway starts revisions with it, the S3
    relay and the broker take their token and credentials from it) plus the local stack's own variables."""
    env = {
        # Children import the project from its checkout whether or not it is pip-installed.
        "PYTHONPATH": str(PROJECT_ROOT) + (os.pathsep + pythonpath if pythonpath else ""),
        "AWS_DEFAULT_REGION": "us-east-1",
        "MODEL_CACHE_DIR": str(run_dir / "model-cache"),
        "WORKERS": "1",
        **({"THREADS": str(threads)} if threads else {}),  # else each function's own (function_server)
    }
    if values.admin_token:  # the gateway guards /admin with it; the canary function steps the gateway with it
        env["GATEWAY_ADMIN_TOKEN"] = values.admin_token
    for name in ALL_FUNCTIONS:
        env.update(topology.environment(topology.function(name), values.values()))
    return env


def broker_config(running: tuple[str, ...], subscriber_url: Callable[[str], str], *,
                  ticks: Mapping[str, float | None], delivery: DeliverySpec,
                  extra_triggers: tuple[Mapping[str, Any], ...] = ()) -> dict[str, Any]:
    """The broker's config file: the topology's subscriptions and ping schedules of the `running` functions
    (targets), each delivered to `subscriber_url(target)`; `ticks` overrides a subscriber's local interval."""
    triggers: list[dict[str, Any]] = [
        {"name": sub.name, "subscriber": subscriber_url(topology.function(sub.subscriber).target),
         "filter": {"type": sub.event_type, **({"bucket": sub.bucket} if sub.bucket else {})}}
        for sub in topology.SUBSCRIPTIONS if topology.function(sub.subscriber).target in running]
    pings = []
    for schedule in topology.PING_SCHEDULES:
        target = topology.function(schedule.subscriber).target
        if target not in running:
            continue
        every_s = ticks.get(schedule.subscriber) or schedule.local_every_s
        pings.append({"name": schedule.name, "every_s": every_s})
        triggers.append({"name": schedule.name, "subscriber": subscriber_url(target),
                         "filter": {"type": PING, "source": PingSource(schedule.name, every_s).source}})
    triggers += [dict(trigger) for trigger in extra_triggers]
    return {"triggers": triggers, "pings": pings, "delivery": {
        "retry": delivery.retry, "backoff_policy": delivery.backoff_policy,
        "backoff_delay_s": delivery.backoff_delay_s, "timeout_s": delivery.timeout_s}}
