"""Prometheus for the local stack: a prometheus.yml scraping every function's /metrics, run when installed."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from triage.config import PORT_ENV
from triage.stack.processes import ProcessSpec

__all__ = ["INSTALL_HINT", "prometheus_spec", "write_config"]

INSTALL_HINT = "Prometheus is not installed; skipped (install it with `sudo apt-get install prometheus`)"


def write_config(path: Path, targets: Mapping[str, str], scrape_interval_s: int = 5) -> Path:
    """One scrape job per target (name → host:port); YAML written by hand, it is this small."""
    lines = ["global:", f"  scrape_interval: {scrape_interval_s}s", "scrape_configs:"]
    for name, address in sorted(targets.items()):
        lines += [f"  - job_name: {name!r}", "    metrics_path: /metrics",
                  "    static_configs:", f"      - targets: [{address!r}]"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def prometheus_spec(run_dir: Path, port: int, targets: Mapping[str, str]) -> ProcessSpec | None:
    """The `prometheus` process scraping `targets`, or None when the binary is not installed."""
    binary = shutil.which("prometheus")
    config = write_config(Path(run_dir) / "prometheus.yml", targets)
    if binary is None:
        return None
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={Path(run_dir) / 'prometheus-data'}"]
    return ProcessSpec("prometheus", argv, port=port, port_env=PORT_ENV["prometheus"],
                       health_url=f"http://127.0.0.1:{port}/-/ready", ready_timeout_s=30)
