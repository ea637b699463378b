"""Prometheus for the local stack: a prometheus.yml scraping every function's /metrics and loading the project's
alerting rules (the platform's, `infra_pulumi.alerts`), run when installed."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from infra_pulumi.alerts import RULES_FILE_NAME, render_rules
from triage.config import PORT_ENV
from triage.stack.processes import ProcessSpec

__all__ = ["INSTALL_HINT", "prometheus_spec", "write_config", "write_rules"]

INSTALL_HINT = "Prometheus is not installed; skipped (install it with `sudo apt-get install prometheus`)"


def write_config(
    path: Path, targets: Mapping[str, str], scrape_interval_s: int = 5, rule_files: Sequence[Path] = ()
) -> Path:
    """One scrape job per target (name → host:port), and `rule_files`; YAML written by hand, it is this small."""
    lines = ["global:", f"  scrape_interval: {scrape_interval_s}s", f"  evaluation_interval: {scrape_interval_s}s"]
    if rule_files:
        lines += ["rule_files:", *(f"  - {str(rule_file)!r}" for rule_file in rule_files)]
    lines.append("scrape_configs:")
    for name, address in sorted(targets.items()):
        lines += [f"  - job_name: {name!r}", "    metrics_path: /metrics",
                  "    static_configs:", f"      - targets: [{address!r}]"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_rules(run_dir: Path, utc_offset_hours: float = 0.0) -> Path:
    """The platform's alerting rules, working hours at `utc_offset_hours` from UTC, under `run_dir`."""
    path = Path(run_dir).resolve() / RULES_FILE_NAME  # absolute: Prometheus resolves rule_files from its config
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_rules(utc_offset_hours))
    return path


def prometheus_spec(
    run_dir: Path, port: int, targets: Mapping[str, str], *, utc_offset_hours: float = 0.0
) -> ProcessSpec | None:
    """The `prometheus` process scraping `targets` with the project's rules, or None when it is not installed."""
    binary = shutil.which("prometheus")
    rules = write_rules(run_dir, utc_offset_hours)
    config = write_config(Path(run_dir) / "prometheus.yml", targets, rule_files=[rules])
    if binary is None:
        return None
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={Path(run_dir) / 'prometheus-data'}"]
    return ProcessSpec("prometheus", argv, port=port, port_env=PORT_ENV["prometheus"],
                       health_url=f"http://127.0.0.1:{port}/-/ready", ready_timeout_s=30)
