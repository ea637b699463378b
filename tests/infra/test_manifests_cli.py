"""`triage manifests` (triage/manifests.py) writes the same objects as the Pulumi program, as YAML."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from infra_pulumi import manifests
from tests.infra.kubernetes_schemas import validation_errors
from triage import manifests as manifests_cli
from triage.cli import main as triage


def manifests_argv(out: Path, image_tag: str) -> list[str]:
    return ["manifests", "--out", str(out), "--domain", "triage.example.org",
            "--image-repository", "ghcr.io/example/xray-triage", "--image-tag", image_tag]


def test_triage_manifests_writes_the_same_objects_as_yaml(tmp_path, capsys) -> None:
    out = tmp_path / "k8s"
    argv = manifests_argv(out, "0.3.1") + ["--json"]
    assert triage(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = [doc for f in sorted(out.glob("*.yaml")) for doc in yaml.safe_load_all(f.read_text())]
    assert summary["objects"] == len(written) and [p.name for p in sorted(out.iterdir())] == summary["files"]
    assert (out / "10-secrets.yaml").stat().st_mode & 0o077 == 0  # secrets readable by the owner only
    assert [error for obj in written for error in validation_errors(obj)] == []
    predict = next(o for o in written if o["kind"] == "Service" and o["metadata"]["name"] == "predict")
    assert predict["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/example/xray-triage/predict:0.3.1"
    domain = next(o for o in written if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "config-domain")
    assert domain["data"] == {"triage.example.org": ""}
    # Same builder, same objects: only the generated secret values and the admin exposure differ.
    parser = argparse.ArgumentParser()
    manifests_cli.add_arguments(parser)
    again = manifests_cli.settings_from_args(parser.parse_args(argv[1:]))
    assert list(yaml.safe_load_all((out / "30-functions.yaml").read_text())) == manifests.function_objects(again)


def test_triage_manifests_rejects_an_unpinned_tag_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "k8s"
    argv = manifests_argv(out, "latest")
    assert triage(argv) == 2
    assert "xray-triage:image_tag" in capsys.readouterr().err
    assert not out.exists()


def test_help_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "triage.cli", "manifests", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--out" in result.stdout
