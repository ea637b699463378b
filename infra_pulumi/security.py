"""Security groups: one per service of the table below, each open only to its configured CIDRs,
plus node-to-node traffic inside the private network. Nothing else is opened."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack

from infra_pulumi.manifests.dicom_receiver import DICOM_PORT


@dataclass(frozen=True)
class ServicePorts:
    service: str  # also the config key prefix: <service>_cidrs
    ports: tuple[int, ...]
    description: str


SERVICE_PORTS: tuple[ServicePorts, ...] = (
    ServicePorts("ssh", (22,), "SSH to the nodes"),
    ServicePorts("kube_api", (6443,), "Kubernetes API (kubeconfig of the stack output)"),
    ServicePorts("https", (80, 443), "Kourier ingress: HTTPS, and HTTP for ACME challenges"),
    ServicePorts("minio", (9000, 9001), "MinIO S3 API and console"),
    ServicePorts("mlflow", (8000,), "MLflow tracking server and registry"),
    ServicePorts("prometheus", (9090,), "Prometheus"),
    ServicePorts("grafana", (3000,), "Grafana"),
    # Open only to dicom_cidrs (the hospital's networks), never by default.
    ServicePorts("dicom", (DICOM_PORT,), "DICOM receiver (C-STORE) for the hospital's modalities and PACS"),
)


class SecurityArgs:
    """Inputs of `Security`: `cidrs` maps each service of SERVICE_PORTS to its allowed source CIDRs."""

    def __init__(self, *, suffix: str, cidrs: Mapping[str, Sequence[str]], internal_cidr: str) -> None:
        self.suffix = suffix
        self.cidrs = {service: list(values) for service, values in cidrs.items()}
        self.internal_cidr = internal_cidr


class Security(pulumi.ComponentResource):
    """`group_ids` go on every node port."""

    def __init__(self, name: str, args: SecurityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("xray-triage:infra:Security", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.groups: dict[str, openstack.networking.SecGroup] = {}
        self.rules: list[openstack.networking.SecGroupRule] = []
        for entry in SERVICE_PORTS:
            group = openstack.networking.SecGroup(
                f"{name}-{entry.service}",
                name=f"xray-triage-{entry.service.replace('_', '-')}-{args.suffix}",
                description=entry.description,
                opts=child,
            )
            self.groups[entry.service] = group
            for cidr in args.cidrs.get(entry.service, []):
                version = ipaddress.ip_network(cidr).version
                for port in entry.ports:
                    self.rules.append(
                        openstack.networking.SecGroupRule(
                            f"{name}-{entry.service}-{port}-{re.sub(r'[^0-9A-Za-z.]', '_', cidr)}",
                            security_group_id=group.id,
                            direction="ingress",
                            ethertype=f"IPv{version}",
                            protocol="tcp",
                            port_range_min=port,
                            port_range_max=port,
                            remote_ip_prefix=cidr,
                            description=entry.description,
                            opts=child,
                        )
                    )
        internal = openstack.networking.SecGroup(
            f"{name}-internal",
            name=f"xray-triage-internal-{args.suffix}",
            description="node-to-node traffic inside the private network (k3s API, flannel VXLAN, kubelet)",
            opts=child,
        )
        self.groups["internal"] = internal
        for protocol in ("tcp", "udp", "icmp"):
            self.rules.append(
                openstack.networking.SecGroupRule(
                    f"{name}-internal-{protocol}",
                    security_group_id=internal.id,
                    direction="ingress",
                    ethertype="IPv4",
                    protocol=protocol,
                    remote_ip_prefix=args.internal_cidr,
                    description="node-to-node",
                    opts=child,
                )
            )
        self.group_ids = pulumi.Output.all(*[group.id for group in self.groups.values()])
        self.register_outputs({"group_ids": self.group_ids})
