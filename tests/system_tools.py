"""`require_tool`: the system tools tests call (cloud-init, promtool, shellcheck, ...), skipped or failed by CI."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def require_tool(name: str, install: str) -> str:
    """Path of the executable `name` (in the venv or on PATH).

    Missing: the test is skipped with the command that installs it, except under CI (env CI=true),
    where a missing checker is a failure, so a CI run can never pass by checking nothing.
    """
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    message = f"{name} is not installed; install it with: {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing checker fails the run)")
    pytest.skip(message)
    raise AssertionError("unreachable")
