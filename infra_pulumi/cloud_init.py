"""cloud-init documents of the nodes: data volume (node1), k3s server (node1) or agent, platform (node1).

The work is done by the scripts in `scripts/` (shellcheck-clean, idempotent), written to the node by
`write_files` and run by `runcmd`. Re-run on a node: `sudo /usr/local/sbin/xray-<script> ...` (see runcmd).
The rendered documents hold the k3s join token: callers wrap them with `pulumi.Output.secret`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

SCRIPTS = Path(__file__).parent / "scripts"
DATA_DIR = "/var/lib/xray-data"
DATA_LABEL = "xray-data"
ENV_DIR = "/etc/xray-triage"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._:/+=@-]*$")


@dataclass(frozen=True)
class NodeBoot:
    """What one node needs to boot into the cluster."""

    name: str
    ip: str
    server_ip: str
    join_token: str
    k3s_version: str


def env_file(values: Mapping[str, str]) -> str:
    """KEY=value lines sourced by the scripts."""
    lines = []
    for key, value in values.items():
        # Values are sourced by bash: allow only characters that need no quoting.
        if not _SAFE_VALUE.match(value):
            raise ValueError(f"cloud-init env value of {key} holds characters that are not allowed")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _script(name: str) -> dict:
    return {
        "path": f"/usr/local/sbin/xray-{name.removesuffix('.sh')}",
        "permissions": "0755",
        "owner": "root:root",
        "content": (SCRIPTS / name).read_text(),
    }


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the scripts) as `|` blocks, so the document reads like the script files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str)


def _document(hostname: str, files: list[dict], commands: list[list[str]]) -> str:
    doc = {
        "hostname": hostname,
        "package_update": True,
        "packages": ["curl"],
        "write_files": files,
        "runcmd": commands,
    }
    return "#cloud-config\n" + yaml.dump(doc, Dumper=_LiteralDumper, sort_keys=False, width=1000)


def agent_k3s_env(node: NodeBoot) -> dict[str, str]:
    """Settings of scripts/install-k3s.sh on an agent (the file holds the join token: mode 0600)."""
    return {
        "K3S_VERSION": node.k3s_version,
        "K3S_TOKEN": node.join_token,
        "NODE_NAME": node.name,
        "NODE_IP": node.ip,
        "SERVER_IP": node.server_ip,
    }


def server_k3s_env(node: NodeBoot, *, floating_ip: str, data_node_label: str) -> dict[str, str]:
    """Settings of scripts/install-k3s.sh on the server: an agent's plus its public address and data label."""
    return {**agent_k3s_env(node), "FLOATING_IP": floating_ip, "DATA_DIR": DATA_DIR, "DATA_NODE_LABEL": data_node_label}


def server_document(
    node: NodeBoot, *, floating_ip: str, volume_id: str, data_node_label: str, versions: Mapping[str, str]
) -> str:
    """node1: mount the data volume, run the k3s server, install the pinned platform releases."""
    k3s_env = server_k3s_env(node, floating_ip=floating_ip, data_node_label=data_node_label)
    platform_env = {
        "KNATIVE_SERVING_VERSION": versions["knative_serving_version"],
        "KNATIVE_EVENTING_VERSION": versions["knative_eventing_version"],
        "KOURIER_VERSION": versions["kourier_version"],
        "CERT_MANAGER_VERSION": versions["cert_manager_version"],
    }
    files = [
        {"path": f"{ENV_DIR}/k3s.env", "permissions": "0600", "owner": "root:root", "content": env_file(k3s_env)},
        {
            "path": f"{ENV_DIR}/platform.env",
            "permissions": "0644",
            "owner": "root:root",
            "content": env_file(platform_env),
        },
        _script("mount-data-volume.sh"),
        _script("install-k3s.sh"),
        _script("install-platform.sh"),
    ]
    commands = [
        ["/usr/local/sbin/xray-mount-data-volume", volume_id, DATA_DIR, DATA_LABEL],
        ["/usr/local/sbin/xray-install-k3s", "server"],
        ["/usr/local/sbin/xray-install-platform"],
    ]
    return _document(node.name, files, commands)


def agent_document(node: NodeBoot) -> str:
    """node2..n: join the server at node1's private address."""
    k3s_env = agent_k3s_env(node)
    files = [
        {"path": f"{ENV_DIR}/k3s.env", "permissions": "0600", "owner": "root:root", "content": env_file(k3s_env)},
        _script("install-k3s.sh"),
    ]
    return _document(node.name, files, [["/usr/local/sbin/xray-install-k3s", "agent"]])
