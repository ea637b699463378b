"""DCMTK's command-line tools (Debian `dcmtk`): the modality in the receiver's tests, a client no one here wrote.

pynetdicom installs its own `echoscu` / `storescu` into the venv; these are DCMTK's, looked up on PATH outside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.system_tools import VENV_BIN, require_tool

__all__ = ["dcmtk_send", "dcmtk_tool"]


def dcmtk_tool(name: str) -> str:
    """The path of DCMTK's `name` (storescu, echoscu); skipped, or failed under CI, when DCMTK is missing."""
    require_tool(name, "apt-get install -y dcmtk")
    outside_venv = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                                   if d and Path(d).resolve() != VENV_BIN.resolve())
    found = shutil.which(name, path=outside_venv)
    if found is None:  # only pynetdicom's tool of that name: DCMTK itself is not installed
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"DCMTK's {name} is not installed (apt-get install -y dcmtk); CI=true fails the run")
        pytest.skip(f"DCMTK's {name} is not installed; install it with: apt-get install -y dcmtk")
    return found


def dcmtk_send(name: str, port: int | str, *files: Path, calling: str, called: str = "XRAYTRIAGE",
               options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run DCMTK's `name` (echoscu / storescu, verbose) against 127.0.0.1:`port` with these AE titles."""
    return subprocess.run([dcmtk_tool(name), "-v", *options, "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)
