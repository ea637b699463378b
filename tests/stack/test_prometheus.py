"""Prometheus config for the local stack: one scrape job per function; skipped with a hint when not installed."""

from __future__ import annotations

from triage.stack import prometheus


def test_config_scrapes_every_target(tmp_path):
    path = prometheus.write_config(tmp_path / "prometheus.yml", {"predict": "127.0.0.1:8100",
                                                                  "ingest": "127.0.0.1:8105"})
    text = path.read_text()
    assert "job_name: 'predict'" in text and "targets: ['127.0.0.1:8100']" in text
    assert "job_name: 'ingest'" in text and text.count("metrics_path: /metrics") == 2


def test_missing_binary_means_no_process_and_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: None)
    assert prometheus.prometheus_spec(tmp_path, 9090, {"predict": "127.0.0.1:8100"}) is None
    assert (tmp_path / "prometheus.yml").is_file()  # written anyway, for a Prometheus run by hand
    assert "apt-get install prometheus" in prometheus.INSTALL_HINT
