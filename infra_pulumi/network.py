"""Private network, subnet, router to the external network, and one port per node with a fixed address."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pulumi
import pulumi_openstack as openstack


class NetworkArgs:
    """Inputs of `Network`."""

    def __init__(
        self,
        *,
        suffix: str,
        cidr: str,
        node_ips: Sequence[str],
        external_network: str,
        dns_nameservers: Sequence[str],
        security_group_ids: pulumi.Input[Sequence[str]],
    ) -> None:
        self.suffix = suffix
        self.cidr = cidr
        self.node_ips = list(node_ips)
        self.external_network = external_network
        self.dns_nameservers = list(dns_nameservers)
        self.security_group_ids = security_group_ids


class Network(pulumi.ComponentResource):
    """`port_ids[i]` is node i+1's port; node1's also carries the floating IP."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("xray-triage:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        net = ipaddress.ip_network(args.cidr)
        # DHCP hands out addresses above the fixed node addresses, so the two never collide.
        last_fixed = max(ipaddress.ip_address(ip) for ip in args.node_ips)
        pool_start = last_fixed + 10
        pool_end = net.broadcast_address - 1

        self.network = openstack.networking.Network(
            f"{name}-net", name=f"xray-triage-net-{args.suffix}", admin_state_up=True, opts=child
        )
        self.subnet = openstack.networking.Subnet(
            f"{name}-subnet",
            name=f"xray-triage-subnet-{args.suffix}",
            network_id=self.network.id,
            cidr=args.cidr,
            ip_version=4,
            gateway_ip=str(net.network_address + 1),
            dns_nameservers=args.dns_nameservers,
            allocation_pools=[openstack.networking.SubnetAllocationPoolArgs(start=str(pool_start), end=str(pool_end))],
            opts=child,
        )
        external = openstack.networking.get_network_output(name=args.external_network)
        self.router = openstack.networking.Router(
            f"{name}-router",
            name=f"xray-triage-router-{args.suffix}",
            external_network_id=external.id,
            opts=child,
        )
        self.router_interface = openstack.networking.RouterInterface(
            f"{name}-router-interface", router_id=self.router.id, subnet_id=self.subnet.id, opts=child
        )
        self.ports = [
            openstack.networking.Port(
                f"{name}-port-node{i + 1}",
                name=f"xray-triage-node{i + 1}-{args.suffix}",
                network_id=self.network.id,
                fixed_ips=[openstack.networking.PortFixedIpArgs(subnet_id=self.subnet.id, ip_address=ip)],
                security_group_ids=args.security_group_ids,
                admin_state_up=True,
                opts=child,
            )
            for i, ip in enumerate(args.node_ips)
        ]
        self.port_ids = [port.id for port in self.ports]
        self.register_outputs({"network_id": self.network.id, "subnet_id": self.subnet.id, "port_ids": self.port_ids})
