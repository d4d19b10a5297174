"""The keys of the ``exporter`` bundle (``antrea-agent.conf``'s flow exporter keys) and the pipeline
they make.

conntrack (every ``flowPollInterval``) → connection store (``activeFlowExportTimeout``,
``idleFlowExportTimeout``) → flow type from Pod CIDRs → IPFIX to ``flowCollectorAddr``, with the
observation domain id Antrea uses (FNV-1 32-bit hash of the node name).
"""

from __future__ import annotations

import socket
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from flowscope.core.config import Address, Duration, OptionsModel, format_duration, parse_address
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.core.preflight import ReadableFile
from flowscope.plugins.enrichers.flowtype import CIDRList
from flowscope.plugins.sources.conntrack import POLL_INTERVAL, ProtocolList

DEFAULT_COLLECTOR = "flow-aggregator.flow-aggregator.svc:4739:tls"


def _collector_address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    address = parse_address(value, default_port=4739, default_proto="tls")
    if "/" in address.host:
        raise ValueError(
            f"'{address.host}' names a Service (<namespace>/<name>); flowscope resolves DNS names and "
            "addresses, so give its DNS name or ClusterIP"
        )
    return address


class TLSOptions(OptionsModel):
    caCert: ReadableFile = None
    clientCert: ReadableFile = None
    clientKey: ReadableFile = None
    serverName: str | None = None
    insecureSkipVerify: bool = False


class ExporterConfig(OptionsModel):
    """Keys of the ``exporter`` bundle: the flow-exporter keys of ``antrea-agent.conf``, plus a few."""

    featureGates: dict[str, bool] = Field(default_factory=dict)
    flowCollectorAddr: Annotated[Address, BeforeValidator(_collector_address)] = DEFAULT_COLLECTOR
    flowPollInterval: POLL_INTERVAL = "5s"  # type: ignore[valid-type]
    activeFlowExportTimeout: Duration = "60s"
    idleFlowExportTimeout: Duration = "15s"
    nodeName: str = Field(default_factory=socket.gethostname)
    podCIDRs: CIDRList = Field(default_factory=list)
    clusterPodCIDRs: CIDRList = Field(default_factory=list)
    protocolFilter: ProtocolList = None
    conntrackZones: list[int] | None = None
    netns: str | None = None
    tls: TLSOptions = Field(default_factory=TLSOptions)
    inventory: ReadableFile = None
    kubeconfig: ReadableFile = None
    templateRefreshTimeout: Duration = "600s"
    maxIPFIXMsgSize: int | None = Field(None, ge=64, le=65535)


def build(config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline of the exporter bundle."""
    config = dict(config)
    section = config.pop("flowExporter", None)  # the nested form of newer antrea-agent.conf files
    if isinstance(section, dict):
        config = {**{k: v for k, v in section.items() if k != "enable"}, **config}
    options = ExporterConfig.from_config(config)
    address = options.flowCollectorAddr
    poll = options.flowPollInterval
    active = max(options.activeFlowExportTimeout, poll)  # Antrea clamps both to the poll interval
    idle = max(options.idleFlowExportTimeout, poll)
    sink: dict[str, Any] = {
        "type": "ipfix",
        "name": "flow-collector",
        "address": str(address),
        "observationDomainId": fnv1_32(options.nodeName.encode()),
        "templateRefreshTimeout": format_duration(options.templateRefreshTimeout),
        "antreaMetrics": True,
    }
    if options.maxIPFIXMsgSize is not None:
        sink["maxIPFIXMsgSize"] = options.maxIPFIXMsgSize
    if address.proto == "tls":
        tls = options.tls
        sink.update(
            {
                k: v
                for k, v in {
                    "caCert": tls.caCert,
                    "clientCert": tls.clientCert,
                    "clientKey": tls.clientKey,
                    "serverName": tls.serverName,
                }.items()
                if v is not None
            }
        )
        sink["tlsVerify"] = not tls.insecureSkipVerify
    spec: dict[str, Any] = {
        "sources": [
            {
                "type": "conntrack",
                "pollInterval": format_duration(poll),
                "zones": options.conntrackZones,
                "protocols": options.protocolFilter,
                "netns": options.netns,
                "antreaMetrics": True,
            }
        ],
        "table": {
            "mode": "connections",
            "activeTimeout": format_duration(active),
            "inactiveTimeout": format_duration(idle),
            "tick": "1s",
        },
        "enrichers": [],
        "sinks": [sink],
        "metricsAddress": "127.0.0.1:10350",
    }
    if options.inventory or options.kubeconfig:  # Kubernetes facts: only connections of this node's Pods
        spec["enrichers"].append(
            {
                "type": "kubernetes",
                "nodeName": options.nodeName,
                "localPodsOnly": True,
                "inventory": options.inventory,
                "kubeconfig": options.kubeconfig,
                "services": True,
                "networkPolicies": False,
            }
        )
    if options.podCIDRs:
        spec["enrichers"].append(
            {
                "type": "flowtype",
                "nodeName": options.nodeName,
                "podCIDRs": options.podCIDRs,
                "clusterPodCIDRs": options.clusterPodCIDRs,
            }
        )
    return spec
