"""The Pulumi program: compose the components and export the stack outputs (logic lives in the components)."""

from __future__ import annotations

import pulumi

from infra_pulumi.cluster import Cluster, ClusterArgs
from infra_pulumi.config import InfraConfig, StackSecrets, from_pulumi
from infra_pulumi.dicom_receiver import DicomReceiver
from infra_pulumi.functions import Functions
from infra_pulumi.kubernetes_objects import KubernetesObjectsArgs
from infra_pulumi.manifests import DATA_NODE_LABEL, ManifestSettings
from infra_pulumi.manifests.dicom_receiver import DICOM_PORT
from infra_pulumi.monitoring import Monitoring
from infra_pulumi.network import Network, NetworkArgs
from infra_pulumi.object_store import ObjectStore
from infra_pulumi.platform import Platform, PlatformArgs
from infra_pulumi.registry import Registry
from infra_pulumi.security import Security, SecurityArgs


def compose(cfg: InfraConfig, secrets: StackSecrets) -> dict[str, pulumi.Output]:
    """Create every resource and return the stack outputs."""
    security = Security("security", SecurityArgs(suffix=cfg.suffix, cidrs=cfg.cidrs, internal_cidr=cfg.network_cidr))
    network = Network(
        "network",
        NetworkArgs(
            suffix=cfg.suffix,
            cidr=cfg.network_cidr,
            node_ips=cfg.node_ips,
            external_network=cfg.external_network,
            dns_nameservers=cfg.dns_nameservers,
            security_group_ids=security.group_ids,
        ),
    )
    cluster = Cluster(
        "cluster", ClusterArgs(config=cfg, port_ids=network.port_ids, ssh_private_key=secrets.ssh_private_key)
    )
    fip = cluster.floating_ip_address
    domain = pulumi.Output.from_input(cfg.domain) if cfg.domain else fip.apply(lambda ip: f"{ip}.sslip.io")
    settings = ManifestSettings.from_config(
        cfg,
        domain=domain,
        secrets={},  # filled by Platform from secret config or pulumi-random
        data_node_selector={DATA_NODE_LABEL: "true"},
        storage_class="local-path",  # k3s's provisioner, rooted on the data volume on node1
    )
    platform = Platform(
        "platform", PlatformArgs(kubeconfig=cluster.kubeconfig, settings=settings, provided_secrets=secrets.provided)
    )

    def on_platform(*depends_on: pulumi.Resource) -> KubernetesObjectsArgs:
        return KubernetesObjectsArgs(provider=platform.provider, settings=platform.settings, depends_on=depends_on)

    object_store = ObjectStore("object-store", on_platform(*platform.ready))
    registry = Registry("registry", on_platform(*platform.ready))
    monitoring = Monitoring("monitoring", on_platform(*platform.ready))
    functions = Functions(
        "functions", on_platform(*platform.ready, object_store.objects, registry.objects, monitoring.objects)
    )

    DicomReceiver("dicom-receiver", on_platform(*platform.ready, object_store.objects))

    def at(port: int) -> pulumi.Output[str]:
        return fip.apply(lambda ip: f"http://{ip}:{port}")

    return {
        "floating_ip": fip,
        "function_urls": pulumi.Output.all(**functions.urls),
        "minio_url": at(9000),
        "minio_console_url": at(9001),
        "mlflow_url": at(8000),
        "grafana_url": at(3000),
        "prometheus_url": at(9090),
        "dicom_receiver": fip.apply(lambda ip: f"{cfg.dicom_ae_title}@{ip}:{DICOM_PORT}"),
        "kubeconfig": pulumi.Output.secret(cluster.kubeconfig),
    }


if __name__ == "__main__":
    for output_name, value in compose(*from_pulumi()).items():
        pulumi.export(output_name, value)
