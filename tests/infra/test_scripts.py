"""The node and Job scripts run against stand-ins of k3s, systemctl, curl and mc on PATH: they install the
pinned release, and a second run changes nothing (safe to re-run)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infra_pulumi import cloud_init
from infra_pulumi.manifests import object_store

K3S_VERSION = "v1.33.5+k3s1"
FAKES = {
    # Every stand-in appends its command line to $CALLS.
    "k3s": """#!/bin/sh
echo "k3s $*" >> "$CALLS"
if [ "$1" = --version ]; then
  [ -n "$FAKE_K3S_VERSION" ] || exit 1
  echo "k3s version $FAKE_K3S_VERSION (abcdef)"
fi
""",
    "systemctl": """#!/bin/sh
echo "systemctl $*" >> "$CALLS"
exit "${FAKE_ACTIVE:-0}"
""",
    "curl": """#!/bin/sh
echo "curl $*" >> "$CALLS"
while [ $# -gt 0 ]; do
  if [ "$1" = -o ] && [ "$2" != /dev/null ]; then
    line='echo "installer $* INSTALL_K3S_VERSION=$INSTALL_K3S_VERSION K3S_URL=$K3S_URL" >> "$CALLS"'
    printf '#!/bin/sh\\n%s\\n' "$line" > "$2"
  fi
  shift
done
""",
    "sleep": "#!/bin/sh\nexit 0\n",
    "mc": """#!/bin/sh
echo "mc $*" >> "$CALLS"
if [ "$1" = event ] && [ "$2" = ls ]; then
  bucket="$(basename "$3")"
  [ -f "$STATE/$bucket" ] && echo "$4 s3:ObjectCreated:* Filter:"
fi
if [ "$1" = event ] && [ "$2" = add ]; then
  touch "$STATE/$(basename "$3")"
fi
exit 0
""",
}


@pytest.fixture()
def fake_path(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "state").mkdir()
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(tmp_path / "calls.log"),
        "STATE": str(tmp_path / "state"),
    }


def k3s_env(tmp_path: Path, role: str) -> Path:
    node = cloud_init.NodeBoot(f"node-{role}", "192.168.1.12", "192.168.1.11", "Token123", K3S_VERSION)
    if role == "agent":
        values = cloud_init.agent_k3s_env(node)
    else:
        values = cloud_init.server_k3s_env(node, floating_ip="203.0.113.10", data_node_label="xray-triage/data")
    path = tmp_path / "k3s.env"
    path.write_text(cloud_init.env_file(values))
    return path


def install_k3s(tmp_path: Path, env: dict[str, str], role: str, **fake: str) -> tuple[int, str]:
    result = subprocess.run(
        ["bash", str(cloud_init.SCRIPTS / "install-k3s.sh"), role],
        env={**os.environ, **env, "XRAY_TRIAGE_K3S_ENV": str(k3s_env(tmp_path, role)), **fake},
        capture_output=True,
        text=True,
        timeout=30,
    )
    calls = Path(env["CALLS"]).read_text() if Path(env["CALLS"]).exists() else ""
    return result.returncode, calls + result.stderr


def test_server_install_uses_the_pinned_installer_and_waits_for_ready(tmp_path: Path, fake_path) -> None:
    code, calls = install_k3s(tmp_path, fake_path, "server", FAKE_K3S_VERSION="")
    assert code == 0, calls
    assert "https://raw.githubusercontent.com/k3s-io/k3s/v1.33.5%2Bk3s1/install.sh" in calls
    installer = next(line for line in calls.splitlines() if line.startswith("installer"))
    assert installer.startswith("installer server") and f"INSTALL_K3S_VERSION={K3S_VERSION}" in installer
    assert "--tls-san 203.0.113.10" in installer and "--disable traefik" in installer
    assert "--node-label xray-triage/data=true" in installer
    assert "k3s kubectl wait --for=condition=Ready node/node-server" in calls


def test_a_second_run_on_a_running_node_reinstalls_nothing(tmp_path: Path, fake_path) -> None:
    code, calls = install_k3s(tmp_path, fake_path, "server", FAKE_K3S_VERSION=K3S_VERSION)
    assert code == 0, calls
    assert "install.sh" not in calls and "installer" not in calls
    assert "node/node-server" in calls  # still waits for the node to be ready


def test_agent_joins_the_server_after_its_api_answers(tmp_path: Path, fake_path) -> None:
    code, calls = install_k3s(tmp_path, fake_path, "agent", FAKE_K3S_VERSION="")
    assert code == 0, calls
    lines = calls.splitlines()
    ping = next(i for i, line in enumerate(lines) if "https://192.168.1.11:6443/ping" in line)
    install = next(i for i, line in enumerate(lines) if line.startswith("installer agent"))
    assert ping < install and "K3S_URL=https://192.168.1.11:6443" in lines[install]


def test_an_unknown_role_stops_at_once(tmp_path: Path, fake_path) -> None:
    code, output = install_k3s(tmp_path, fake_path, "master")
    assert code == 2 and "role must be server or agent" in output


def run_bucket_job(fake_path: dict[str, str]) -> str:
    env = {
        **os.environ,
        **fake_path,
        "MINIO_URL": "http://minio:9000",
        "MINIO_ROOT_USER": "user",
        "MINIO_ROOT_PASSWORD": "password",
        "BUCKETS": " ".join(object_store.BUCKETS),
        "NOTIFYING_BUCKETS": " ".join(object_store.NOTIFYING_BUCKETS),
        "WEBHOOK_ARN": "arn:minio:sqs::MINIOSOURCE:webhook",
    }
    Path(fake_path["CALLS"]).write_text("")
    script = str(object_store.BUCKET_SCRIPT_PATH)
    result = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return Path(fake_path["CALLS"]).read_text()


def test_bucket_job_creates_buckets_and_notifications_once(fake_path) -> None:
    first = run_bucket_job(fake_path)
    for bucket in object_store.BUCKETS:
        assert f"mc mb --ignore-existing local/{bucket}" in first
    added = [line for line in first.splitlines() if line.startswith("mc event add")]
    assert sorted(added) == sorted(
        f"mc event add local/{b} arn:minio:sqs::MINIOSOURCE:webhook --event put" for b in object_store.NOTIFYING_BUCKETS
    )
    second = run_bucket_job(fake_path)
    assert "mc event add" not in second  # re-running the Job does not stack duplicate notifications
