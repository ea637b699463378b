"""Which functions the local stack runs and on which 127.0.0.1 ports (design §6).

The functions are those of `shared.topology` that run locally; the model functions are the ones the gateway
splits between revisions. Ports: one each for S3, its notification relay, MLflow, the gateway, the broker and
Prometheus, then from `function_base` on one per function and `REVISION_SLOTS` per model function.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.topology import FUNCTIONS
from triage.config import TriageEnv

__all__ = ["ALL_FUNCTIONS", "FUNCTION_PORT_ORDER", "MODEL_FUNCTIONS", "REVISION_SLOTS", "StackPorts"]

ALL_FUNCTIONS = tuple(fn.target for fn in FUNCTIONS if fn.local)
# The gateway splits these between revisions, one process each; the revisions it starts take these slots.
MODEL_FUNCTIONS = tuple(fn.target for fn in FUNCTIONS if fn.local and fn.serves_model)
REVISION_SLOTS = 2  # a champion at 100 % plus two more: the running canary's and the one it replaces
# Ports from FUNCTION_BASE_PORT on, in this order: the champion's functions, then the revision slots.
FUNCTION_PORT_ORDER = (*ALL_FUNCTIONS, *(f"{name}-slot{i}" for name in MODEL_FUNCTIONS for i in range(REVISION_SLOTS)))


@dataclass(frozen=True)
class StackPorts:
    s3: int = 9000
    s3_notify: int = 9001
    mlflow: int = 5000
    gateway: int = 8080
    broker: int = 8081
    prometheus: int = 9090
    function_base: int = 8100

    @classmethod
    def from_env(cls, env: TriageEnv) -> StackPorts:
        """The defaults, with the ports set in the environment (`triage.config.PORT_ENV`)."""
        return cls(**env.ports)

    @classmethod
    def free(cls) -> StackPorts:
        """Unused ports for tests, outside the kernel's ephemeral range (another process could still take one)."""
        from triage.stack.processes import unused_port_block

        # One block: the six single ports, then every port counted from function_base.
        block = unused_port_block(6 + len(FUNCTION_PORT_ORDER))
        return cls(*block[:6], function_base=block[6])

    def function_port(self, process_name: str) -> int:
        """The port of a function process (`predict`) or revision slot (`predict-slot0`)."""
        return self.function_base + FUNCTION_PORT_ORDER.index(process_name)
