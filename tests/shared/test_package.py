"""The package's public surface: every exported name resolves, and a light function does not load the model."""

from __future__ import annotations

import subprocess
import sys

import shared
from shared.config import PROJECT_ROOT


def test_every_exported_name_resolves() -> None:
    assert all(getattr(shared, name) is not None for name in shared.__all__)
    assert shared.get_model is __import__("shared.model").model.get_model


def test_importing_storage_and_events_does_not_load_numpy_or_onnxruntime() -> None:
    code = (
        "import sys, shared.events, shared.http, shared.dead_letter\n"
        "print('numpy' in sys.modules or 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.strip() == "False"
