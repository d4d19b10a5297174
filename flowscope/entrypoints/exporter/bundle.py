"""The keys of the ``exporter`` bundle (``antrea-agent.conf``'s flow exporter keys) and the pipeline
they make.

conntrack (every ``flowPollInterval``) → connection store (``activeFlowExportTimeout``,
``idleFlowExportTimeout``) → flow type from Pod CIDRs → IPFIX to ``flowCollectorAddr``, with the
observation domain id Antrea uses (FNV-1 32-bit hash of the node name).
"""

from __future__ import annotations

import socket
from typing import Any

from pydantic import Field

from flowscope.core.config import Duration, OptionsModel, format_duration, parse_address
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.plugins.sources.conntrack import POLL_INTERVAL

DEFAULT_COLLECTOR = "flow-aggregator.flow-aggregator.svc:4739:tls"


class TLSOptions(OptionsModel):
    caCert: str | None = None
    clientCert: str | None = None
    clientKey: str | None = None
    serverName: str | None = None
    insecureSkipVerify: bool = False


class ExporterConfig(OptionsModel):
    """Keys of the ``exporter`` bundle: the flow-exporter keys of ``antrea-agent.conf``, plus a few."""

    featureGates: dict[str, bool] = Field(default_factory=dict)
    flowCollectorAddr: str = DEFAULT_COLLECTOR
    flowPollInterval: POLL_INTERVAL = "5s"  # type: ignore[valid-type]
    activeFlowExportTimeout: Duration = "60s"
    idleFlowExportTimeout: Duration = "15s"
    nodeName: str = Field(default_factory=socket.gethostname)
    podCIDRs: list[str] = Field(default_factory=list)
    clusterPodCIDRs: list[str] = Field(default_factory=list)
    protocolFilter: list[str] | None = None
    conntrackZones: list[int] | None = None
    netns: str | None = None
    tls: TLSOptions = Field(default_factory=TLSOptions)
    inventory: str | None = None
    kubeconfig: str | None = None
    templateRefreshTimeout: Duration = "600s"
    maxIPFIXMsgSize: int | None = None


def build(config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline of the exporter bundle."""
    config = dict(config)
    section = config.pop("flowExporter", None)  # the nested form of newer antrea-agent.conf files
    if isinstance(section, dict):
        config = {**{k: v for k, v in section.items() if k != "enable"}, **config}
    options = ExporterConfig.from_config(config)
    try:
        address = parse_address(options.flowCollectorAddr, default_port=4739, default_proto="tls")
    except ValueError as exc:
        raise ConfigError(ConfigIssue("flowCollectorAddr", f"{exc} (got {options.flowCollectorAddr!r})")) from None
    if "/" in address.host:
        raise ConfigError(
            ConfigIssue(
                "flowCollectorAddr",
                f"'{address.host}' names a Service (<namespace>/<name>); flowscope "
                "resolves DNS names and addresses, so give its DNS name or ClusterIP",
            )
        )
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
