"""The local stack's prometheus.yml passes `promtool check config` (Debian package prometheus)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.system_tools import require_tool
from triage.stack import prometheus


def test_local_scrape_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install -y prometheus")
    targets = {"predict": "127.0.0.1:8100", "ingest": "127.0.0.1:8105"}
    path = prometheus.write_config(tmp_path / "prometheus.yml", targets)
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
