"""The local stack (design §6): local stand-ins for MinIO notifications, Knative Eventing and routing, plus
process supervision; the functions themselves are the same code as in production.

- `Stack` / `StackConfig` / `StackPorts`: start everything on 127.0.0.1 (`stack`, `ports`); `triage up` (`up`),
  `triage demo` (`demo`); `wiring`: shared.topology's environment and event routes, as run locally.
- `models`: which model is served, and the first one trained when the registry has none.
- `gateway` (+ `routing`, `revisions`): Knative routing (`/review` goes to the review function).
- `broker` (+ `triggers`, `delivery_queue`, `pings`): Knative Eventing's broker, retries, dead letters, PingSources.
- `s3server` (+ `write_through`, `object_store`, `outbox`) and `relay`: moto's S3 with every write on disk before
  it answers, uploads notified through a durable outbox that the relay process delivers as MinIO webhook calls.
- `processes`: the child-process supervisor; `httpd`: the stand-ins' HTTP plumbing; `mlflow_server`, `prometheus`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from triage.stack.models import train_first_model
    from triage.stack.ports import ALL_FUNCTIONS, MODEL_FUNCTIONS, StackPorts
    from triage.stack.stack import Stack, StackConfig

__all__ = ["ALL_FUNCTIONS", "MODEL_FUNCTIONS", "Stack", "StackConfig", "StackPorts", "train_first_model"]

# Imported when first used: the stand-ins run as `python -m triage.stack.<module>` and need none of the rest.
_HOME = {"ALL_FUNCTIONS": "ports", "MODEL_FUNCTIONS": "ports", "StackPorts": "ports", "Stack": "stack",
         "StackConfig": "stack", "train_first_model": "models"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'triage.stack' has no attribute {name!r}")
    return getattr(importlib.import_module(f"triage.stack.{_HOME[name]}"), name)
