"""A real Orthanc for tests, started with the local stack's generated configuration on free ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.system_tools import require_tool
from triage.stack.orthanc import DICOMWEB_PLUGIN, OrthancPorts, write_config
from triage.stack.processes import unused_port_block

__all__ = ["orthanc", "qido"]


@contextlib.contextmanager
def orthanc(run_dir: Path, *, receiver_port: int = 11112, ports: OrthancPorts | None = None) -> Iterator[OrthancPorts]:
    """Orthanc with its DICOMweb plugin, stopped on exit; skipped (failed under CI) when not installed."""
    binary = require_tool("Orthanc", "apt-get install -y orthanc orthanc-dicomweb")
    if not DICOMWEB_PLUGIN.is_file():
        message = f"{DICOMWEB_PLUGIN} is missing; install it with: apt-get install -y orthanc-dicomweb"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    if ports is None:
        http, dicom = unused_port_block(2)
        ports = OrthancPorts(http=http, dicom=dicom, receiver=receiver_port)
    config = write_config(run_dir, ports)
    log = open(run_dir / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{ports.http_url}/system", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: {(run_dir / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield ports
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def qido(ports: OrthancPorts, study_instance_uid: str) -> list[dict]:
    """QIDO-RS: every instance Orthanc holds in the study (DICOM JSON)."""
    response = httpx.get(f"{ports.dicomweb_url}/studies/{study_instance_uid}/instances",
                         headers={"Accept": "application/dicom+json"}, timeout=10)
    if response.status_code == 204 or not response.content:
        return []
    response.raise_for_status()
    return response.json()
