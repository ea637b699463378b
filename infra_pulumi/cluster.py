"""Three instances (k3s server on node1, agents on the others), the data volume and the floating IP on
node1, and the kubeconfig fetched from node1 once cloud-init has installed the platform."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_command as command
import pulumi_openstack as openstack
import pulumi_random as random

from infra_pulumi import cloud_init
from infra_pulumi.config import InfraConfig
from infra_pulumi.manifests import DATA_NODE_LABEL

# Waits for cloud-init (k3s + platform releases) and prints the kubeconfig; fails if the platform is not ready.
FETCH_KUBECONFIG = (
    "sudo cloud-init status --wait >/dev/null 2>&1 || true; "
    "sudo test -f /var/lib/xray-triage/platform.ready && sudo cat /etc/rancher/k3s/k3s.yaml"
)


class ClusterArgs:
    """Inputs of `Cluster`: the validated config, node ports (node1 first) and the SSH key for the fetch."""

    def __init__(
        self, *, config: InfraConfig, port_ids: Sequence[pulumi.Input[str]], ssh_private_key: pulumi.Input[str]
    ) -> None:
        self.config = config
        self.port_ids = list(port_ids)
        self.ssh_private_key = ssh_private_key


class Cluster(pulumi.ComponentResource):
    """Outputs: `floating_ip` (node1's public address) and `kubeconfig` (secret, server = floating IP)."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("xray-triage:infra:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = args.config
        names, ips = cfg.node_names, cfg.node_ips

        # The join token never leaves Pulumi's encrypted state except inside the (secret) user data.
        self.join_token = random.RandomPassword(f"{name}-join-token", length=48, special=False, opts=child)
        self.volume = openstack.blockstorage.Volume(
            f"{name}-data",
            name=f"xray-triage-data-{cfg.suffix}",
            size=cfg.volume_size_gb,
            description="MinIO, PostgreSQL and Prometheus data (node1)",
            opts=child,
        )
        self.floating_ip = openstack.networking.FloatingIp(
            f"{name}-floating-ip", pool=cfg.external_network, description=f"xray-triage node1 {cfg.suffix}", opts=child
        )

        def boot(i: int, token: str) -> cloud_init.NodeBoot:
            return cloud_init.NodeBoot(names[i], ips[i], ips[0], token, cfg.versions["k3s_version"])

        server_data = pulumi.Output.all(self.join_token.result, self.floating_ip.address, self.volume.id).apply(
            lambda v: cloud_init.server_document(
                boot(0, v[0]), floating_ip=v[1], volume_id=v[2], data_node_label=DATA_NODE_LABEL, versions=cfg.versions
            )
        )
        self.instances: list[openstack.compute.Instance] = []
        for i in range(cfg.node_count):
            if i == 0:
                user_data = server_data
            else:
                user_data = self.join_token.result.apply(lambda t, i=i: cloud_init.agent_document(boot(i, t)))
            self.instances.append(
                openstack.compute.Instance(
                    f"{name}-node{i + 1}",
                    name=names[i],
                    flavor_name=cfg.flavor,
                    image_name=cfg.image,
                    key_pair=cfg.key_pair,
                    networks=[openstack.compute.InstanceNetworkArgs(port=args.port_ids[i])],
                    user_data=pulumi.Output.secret(user_data),
                    metadata={"project": "xray-triage", "role": "server" if i == 0 else "agent"},
                    opts=child,
                )
            )
        node1 = self.instances[0]
        self.volume_attach = openstack.compute.VolumeAttach(
            f"{name}-data-attach", instance_id=node1.id, volume_id=self.volume.id, opts=child
        )
        self.floating_ip_associate = openstack.networking.FloatingIpAssociate(
            f"{name}-floating-ip-node1", floating_ip=self.floating_ip.address, port_id=args.port_ids[0], opts=child
        )
        fetch = command.remote.Command(
            f"{name}-kubeconfig",
            connection=command.remote.ConnectionArgs(
                host=self.floating_ip.address,
                user=cfg.ssh_user,
                private_key=pulumi.Output.secret(args.ssh_private_key),
                dial_error_limit=60,  # the node boots for minutes before SSH answers
            ),
            create=FETCH_KUBECONFIG,
            triggers=[node1.id],
            logging="stderr",  # stdout is the kubeconfig: keep it out of the logs
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.volume_attach, self.floating_ip_associate],
                additional_secret_outputs=["stdout"],
            ),
        )
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(fetch.stdout, self.floating_ip.address).apply(
                lambda v: v[0].replace("https://127.0.0.1:6443", f"https://{v[1]}:6443")
            )
        )
        self.floating_ip_address = self.floating_ip.address
        self.register_outputs({"floating_ip": self.floating_ip.address, "kubeconfig": self.kubeconfig})
