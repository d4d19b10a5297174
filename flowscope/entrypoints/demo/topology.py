"""Building the simulated cluster in network namespaces, and taking it down again.

Each Node is a network namespace that routes for its Pods (one namespace each, on a bridge) and
tracks their connections in its own conntrack table, as a real Node does; the Nodes share a link,
and the external host hangs off one of them. nftables in each Node makes conntrack track every
connection and implements the Service (DNAT to its backend); an isolated Pod drops what its
NetworkPolicy does not allow. Everything made is named with the demo's prefix, so that
:func:`remove_leftovers` finds what a killed demo left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable

from flowscope.core.errors import FlowscopeError
from flowscope.entrypoints.demo.cluster import CLUSTER_CIDR, NODE_LINK, PREFIX, Cluster, Pod

Say = Callable[[str], None]


def run(*command: str, input: str | None = None) -> str:
    """Run a command; a failure is an error naming it and what it printed."""
    result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise FlowscopeError(f"{' '.join(command)} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def inside(netns: str, *command: str, input: str | None = None) -> str:
    return run("ip", "netns", "exec", netns, *command, input=input)


def demo_namespaces() -> list[str]:
    """The network namespaces of the demo that exist now."""
    names = []
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{PREFIX}-"):
            names.append(name)
    return names


def remove_leftovers(say: Say) -> None:
    """Remove what a demo left behind: its processes, namespaces (with their links and rules)."""
    for netns in demo_namespaces():
        for pid in run("ip", "netns", "pids", netns).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=30)
        say(f"removed {netns}, left by an earlier demo")


def build(cluster: Cluster, say: Say) -> None:
    """Make the Nodes, their link, the Pods, the external host, and the nftables rules."""
    link_prefix = NODE_LINK.split("/")[1]
    for node in cluster.nodes:
        run("ip", "netns", "add", node.netns)
        inside(node.netns, "ip", "link", "set", "lo", "up")
        for sysctl in (
            "net.ipv4.ip_forward=1",
            "net.netfilter.nf_conntrack_acct=1",
            "net.netfilter.nf_conntrack_timestamp=1",
        ):
            inside(node.netns, "sysctl", "-qw", sysctl)
        inside(node.netns, "ip", "link", "add", "br0", "type", "bridge")
        inside(node.netns, "ip", "addr", "add", f"{node.gateway}/{node.pod_cidr.split('/')[1]}", "dev", "br0")
        inside(node.netns, "ip", "link", "set", "br0", "up")
        say(f"node {node.name} is up: Pod CIDR {node.pod_cidr}, address {node.link_ip}")
    first, second = cluster.nodes
    run(
        "ip",
        "link",
        "add",
        f"{PREFIX}-l0",
        "netns",
        first.netns,
        "type",
        "veth",
        "peer",
        "name",
        f"{PREFIX}-l1",
        "netns",
        second.netns,
    )
    for node, device, peer in ((first, f"{PREFIX}-l0", second), (second, f"{PREFIX}-l1", first)):
        inside(node.netns, "ip", "addr", "add", f"{node.link_ip}/{link_prefix}", "dev", device)
        inside(node.netns, "ip", "link", "set", device, "up")
        inside(node.netns, "ip", "route", "add", peer.pod_cidr, "via", peer.link_ip)
    for index, pod in enumerate(cluster.pods):
        _add_pod(cluster, pod, index)
        say(f"pod {pod.namespace}/{pod.name} is up on {pod.node}: {pod.ip}")
    _add_external(cluster)
    say(f"external host is up: {cluster.external.ip}, behind {cluster.external.node}")
    for node in cluster.nodes:
        inside(node.netns, "nft", "-f", "-", input=_node_rules(cluster))
    service = cluster.service
    backend = cluster.pod(service.target)
    say(
        f"service {service.namespace}/{service.name} is up: {service.cluster_ip}:{service.port} → "
        f"{backend.namespace}/{backend.name}:{service.target_port} (nftables DNAT on every node)"
    )


def _add_pod(cluster: Cluster, pod: Pod, index: int) -> None:
    node = cluster.node(pod.node)
    device = f"{PREFIX}-p{index}"
    prefix = node.pod_cidr.split("/")[1]
    run("ip", "netns", "add", pod.netns)
    run("ip", "link", "add", "eth0", "netns", pod.netns, "type", "veth", "peer", "name", device, "netns", node.netns)
    inside(node.netns, "ip", "link", "set", device, "master", "br0")
    inside(node.netns, "ip", "link", "set", device, "up")
    inside(pod.netns, "ip", "link", "set", "lo", "up")
    inside(pod.netns, "ip", "addr", "add", f"{pod.ip}/{prefix}", "dev", "eth0")
    inside(pod.netns, "ip", "link", "set", "eth0", "up")
    inside(pod.netns, "ip", "route", "add", "default", "via", node.gateway)
    if pod.allow_only_from is not None:
        inside(pod.netns, "nft", "-f", "-", input=_isolation_rules(pod))


def _add_external(cluster: Cluster) -> None:
    external = cluster.external
    node = cluster.node(external.node)
    run("ip", "netns", "add", external.netns)
    run(
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        external.netns,
        "type",
        "veth",
        "peer",
        "name",
        f"{PREFIX}-ext",
        "netns",
        node.netns,
    )
    inside(node.netns, "ip", "addr", "add", f"{external.gateway}/24", "dev", f"{PREFIX}-ext")
    inside(node.netns, "ip", "link", "set", f"{PREFIX}-ext", "up")
    inside(external.netns, "ip", "link", "set", "lo", "up")
    inside(external.netns, "ip", "addr", "add", f"{external.ip}/24", "dev", "eth0")
    inside(external.netns, "ip", "link", "set", "eth0", "up")
    inside(external.netns, "ip", "route", "add", CLUSTER_CIDR, "via", external.gateway)
    for other in cluster.nodes:
        if other.name != node.name:
            inside(other.netns, "ip", "route", "add", f"{external.ip}/32", "via", node.link_ip)


def _node_rules(cluster: Cluster) -> str:
    """Conntrack tracks every forwarded connection; the Service's address is DNAT'ed to its backend."""
    service = cluster.service
    backend = cluster.pod(service.target)
    return (
        f"table inet {PREFIX} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0;\n"
        "    ct state new counter\n"
        "  }\n"
        "}\n"
        f"table ip {PREFIX}_nat {{\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority -100;\n"
        f"    ip daddr {service.cluster_ip} tcp dport {service.port} dnat to {backend.ip}:{service.target_port}\n"
        "  }\n"
        "}\n"
    )


def _isolation_rules(pod: Pod) -> str:
    """An isolated Pod accepts its ports from the allowed Pods only, as its NetworkPolicy says."""
    allowed = ", ".join(pod.allow_only_from or ())
    ports = ", ".join(str(port) for port in pod.tcp_ports)
    accept = f"    ip saddr {{ {allowed} }} tcp dport {{ {ports} }} accept\n" if allowed else ""
    return (
        f"table inet {PREFIX} {{\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        f"{accept}"
        f"    tcp dport {{ {ports} }} drop\n"
        "  }\n"
        "}\n"
    )
