"""``flowtype`` enricher: Antrea's flow type from Pod CIDRs (reference §2.5), without Kubernetes.

1 IntraNode (both ends are Pods of this node), 2 InterNode (a Pod of this node and a Pod elsewhere),
3 ToExternal (from a Pod to outside the Pod network), 4 FromExternal (from outside to a Pod). Traffic
to the node's gateway, and traffic between two addresses outside the Pod network, keep 0
(unspecified). Pods of this node also get ``sourceNodeName``/``destinationNodeName``.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field

from flowscope.core.components import Batch, Enricher
from flowscope.core.config import OptionsModel
from flowscope.core.hookspecs import hookimpl

INTRA_NODE, INTER_NODE, TO_EXTERNAL, FROM_EXTERNAL = 1, 2, 3, 4
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(value: list[str]) -> list[str]:
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"{text!r} is not a CIDR such as 10.244.1.0/24 or fd00:10:244:1::/64") from None
    return value


CIDRList = Annotated[list[str], AfterValidator(_networks)]
"""An option type: a list of CIDRs (``10.244.1.0/24``, ``fd00:10:244:1::/64``)."""


class FlowTypeOptions(OptionsModel):
    nodeName: str = Field("", description="this node's name, set on the records of its Pods")
    podCIDRs: CIDRList = Field(description="Pod CIDRs of this node")
    clusterPodCIDRs: CIDRList = Field(default_factory=list, description="Pod CIDRs of the cluster (default: podCIDRs)")
    gateways: list[str] | None = Field(
        None, description="gateway addresses (default: the first address of each podCIDR)"
    )


class FlowTypeEnricher(Enricher):
    """Sets ``flowType`` (where it is 0) and the node name of this node's Pods."""

    Options = FlowTypeOptions

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.node_name: str = options["nodeName"]
        self.local = [ipaddress.ip_network(c, strict=False) for c in options["podCIDRs"]]
        self.cluster = [ipaddress.ip_network(c, strict=False) for c in options["clusterPodCIDRs"]] or self.local
        gateways = options["gateways"]
        if gateways is None:
            gateways = [str(network.network_address + 1) for network in self.local]
        self.gateways = set(gateways)
        self._where: dict[str, tuple[bool, bool]] = {}  # ip -> (is a Pod, is a Pod of this node)

    def _lookup(self, ip: str) -> tuple[bool, bool]:
        found = self._where.get(ip)
        if found is None:
            if len(self._where) > 100_000:
                self._where.clear()
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                found = (False, False)
            else:
                local = any(address in network for network in self.local) and ip not in self.gateways
                found = (local or any(address in network for network in self.cluster), local)
            self._where[ip] = found
        return found

    def enrich(self, records: Batch) -> Batch:
        for record in records:
            v4 = "sourceIPv4Address" in record
            src = record.get("sourceIPv4Address" if v4 else "sourceIPv6Address", "")
            dst = record.get("destinationIPv4Address" if v4 else "destinationIPv6Address", "")
            src_pod, src_local = self._lookup(src)
            dst_pod, dst_local = self._lookup(dst)
            if src_local and self.node_name and not record.get("sourceNodeName"):
                record["sourceNodeName"] = self.node_name
            if dst_local and self.node_name and not record.get("destinationNodeName"):
                record["destinationNodeName"] = self.node_name
            if not record.get("flowType"):
                record["flowType"] = self.flow_type(src, dst, src_pod, src_local, dst_pod, dst_local)
        return records

    def flow_type(self, src: str, dst: str, src_pod: bool, src_local: bool, dst_pod: bool, dst_local: bool) -> int:
        if dst in self.gateways:
            return 0
        if src in self.gateways:
            return INTER_NODE if dst_pod else 0
        if not src_pod:
            return FROM_EXTERNAL if dst_pod else 0
        if not dst_pod:
            return TO_EXTERNAL
        return INTRA_NODE if src_local and dst_local else INTER_NODE


@hookimpl
def register_enrichers(register):
    register("flowtype", FlowTypeEnricher)
