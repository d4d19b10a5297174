"""The keys of the ``exporter`` bundle (``antrea-agent.conf``'s flow exporter keys) and the pipeline
they make.

conntrack (every ``flowPollInterval``) → connection store (``activeFlowExportTimeout``,
``idleFlowExportTimeout``) → flow type from Pod CIDRs → IPFIX to ``flowCollectorAddr``, with the
observation domain id Antrea uses (FNV-1 32-bit hash of the node name).
"""

from __future__ import annotations

import logging
import socket
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from flowscope.core.config import Address, Duration, OptionsModel, format_duration, parse_address
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.core.preflight import ReadableFile
from flowscope.plugins.enrichers.flowtype import CIDRList
from flowscope.plugins.sources.conntrack import POLL_INTERVAL, ProtocolList

DEFAULT_COLLECTOR = "flow-aggregator.flow-aggregator.svc:4739:tls"
ANTREA_AGENT_KEYS = frozenset({
    "cniSocket", "clientConnection", "antreaClientConnection", "ovsBridge", "ovsDatapathType", "ovsRunDir",
    "hostGateway", "trafficEncapMode", "noSNAT", "snatFullyRandomPorts", "tunnelType", "tunnelPort",
    "tunnelCsum", "defaultMTU", "hostProcPathPrefix", "serviceCIDR", "serviceCIDRv6", "trafficEncryptionMode",
    "wireGuard", "enableBridgingMode", "disableTXChecksumOffload", "apiPort", "clusterPort", "memberlist",
    "enablePrometheusMetrics", "nodePortLocal", "kubeAPIServerOverride", "dnsServerOverride",
    "fqdnCacheMinTTL", "tlsCipherSuites", "tlsMinVersion", "transportInterface", "transportInterfaceCIDRs",
    "multicast", "antreaProxy", "egress", "ipsec", "multicluster", "nodeType", "externalNode", "auditLogging",
    "secondaryNetwork", "packetInRate", "hostNetworkAcceleration", "hostNetworkMode",
})  # fmt: skip
"""Keys of ``antrea-agent.conf`` (Antrea's ``AgentConfig``) that are not about flow export: ignored."""


def _collector_address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    if isinstance(value, str) and not value.startswith("["):
        host, colon, rest = value.partition(":")
        if "/" in host:  # <namespace>/<service>: Antrea's form for an in-cluster collector
            namespace, _, service = host.partition("/")
            if not namespace or not service or "/" in service:
                raise ValueError(f"{host!r} is not <namespace>/<service>, e.g. flow-aggregator/flow-aggregator")
            value = f"{service}.{namespace}.svc{colon}{rest}"
    return parse_address(value, default_port=4739, protocols=("tcp", "udp", "tls", "grpc"), default_proto="tls")


def _cidrs(value: object) -> object:
    """Antrea writes CIDR lists as one comma-separated string ("10.10.0.0/16,fd00::/12")."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [] if value is None else value


class TLSOptions(OptionsModel):
    caCert: ReadableFile = None
    clientCert: ReadableFile = None
    clientKey: ReadableFile = None
    serverName: str | None = None
    insecureSkipVerify: bool = False


class ExporterConfig(OptionsModel):
    """Keys of the ``exporter`` bundle: the flow-exporter keys of ``antrea-agent.conf``, plus a few."""

    featureGates: dict[str, bool] | None = None
    flowCollectorAddr: Annotated[Address, BeforeValidator(_collector_address)] = DEFAULT_COLLECTOR
    flowPollInterval: POLL_INTERVAL = "5s"  # type: ignore[valid-type]
    activeFlowExportTimeout: Duration = "60s"
    idleFlowExportTimeout: Duration = "15s"
    nodeName: str = Field(default_factory=socket.gethostname)
    podCIDRs: Annotated[CIDRList, BeforeValidator(_cidrs)] = Field(default_factory=list)
    nodePodCIDRs: Annotated[CIDRList, BeforeValidator(_cidrs)] = Field(default_factory=list)
    protocolFilter: ProtocolList = None
    conntrackZones: list[int] | None = None
    netns: str | None = None
    tls: TLSOptions = Field(default_factory=TLSOptions)
    inventory: ReadableFile = None
    kubeconfig: ReadableFile = None
    templateRefreshTimeout: Duration = "600s"
    maxIPFIXMsgSize: int | None = Field(None, ge=64, le=65535)


def agent_sections(config: dict[str, Any]) -> tuple[dict[str, Any], list[str], ConfigIssue | None]:
    """The flow-export keys of an ``antrea-agent.conf`` (its ``flowExporter`` section lifted up), the
    other Antrea agent keys it holds (which the exporter ignores), and the problem if it turns the
    flow exporter off."""
    config = dict(config)
    ignored = sorted(key for key in config if key in ANTREA_AGENT_KEYS)
    for key in ignored:
        del config[key]
    off = None
    section = config.pop("flowExporter", None)  # the nested form of newer antrea-agent.conf files
    if isinstance(section, dict):
        section = dict(section)
        enabled = section.pop("enable", True)
        gates = config.get("featureGates") or {}
        if enabled is False or gates.get("FlowExporter") is False:
            key = "flowExporter.enable" if enabled is False else "featureGates.FlowExporter"
            off = ConfigIssue(
                key,
                "is false, so Antrea's flow exporter is off and there is nothing to run; "
                "set flowExporter.enable: true (and leave out featureGates.FlowExporter or set it to true)",
            )
        config = {**section, **config}
    return config, ignored, off


def build(config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline of the exporter bundle."""
    config, ignored, off = agent_sections(config)
    problems = [off] if off is not None else []
    try:
        options = ExporterConfig.from_config(config)
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.issues]) from None
    if problems:
        raise ConfigError(problems)
    if ignored:
        logging.getLogger("flowscope.exporter").info(
            "antrea-agent.conf: ignoring %d keys that are not about flow export: %s", len(ignored), ", ".join(ignored)
        )
    poll = options.flowPollInterval
    active = max(options.activeFlowExportTimeout, poll)  # Antrea clamps both to the poll interval
    idle = max(options.idleFlowExportTimeout, poll)
    sink = _collector_sink(options)
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
    if options.nodePodCIDRs:
        spec["enrichers"].append(
            {
                "type": "flowtype",
                "nodeName": options.nodeName,
                "podCIDRs": options.nodePodCIDRs,
                "clusterPodCIDRs": options.podCIDRs or options.nodePodCIDRs,
            }
        )
    return spec


def _collector_sink(options: ExporterConfig) -> dict[str, Any]:
    """The flow collector: IPFIX over tls, tcp or udp, or Antrea's gRPC (always mutual TLS)."""
    address = options.flowCollectorAddr
    tls = options.tls
    sink: dict[str, Any] = {
        "name": "flow-collector",
        "observationDomainId": fnv1_32(options.nodeName.encode()),
        "antreaMetrics": True,
    }
    if address.proto == "grpc":
        if tls.insecureSkipVerify:
            raise ConfigError(
                ConfigIssue(
                    "tls.insecureSkipVerify",
                    "gRPC always verifies the aggregator's certificate (mutual TLS, as in Antrea); "
                    "remove the key, or give tls.caCert",
                )
            )
        sink.update(type="grpc", address=str(Address(address.host, address.port, "")))
    else:
        sink.update(
            type="ipfix",
            address=str(address),
            templateRefreshTimeout=format_duration(options.templateRefreshTimeout),
        )
        if options.maxIPFIXMsgSize is not None:
            sink["maxIPFIXMsgSize"] = options.maxIPFIXMsgSize
    if address.proto in ("tls", "grpc"):
        files = {"caCert": tls.caCert, "clientCert": tls.clientCert, "clientKey": tls.clientKey}
        sink.update({k: v for k, v in {**files, "serverName": tls.serverName}.items() if v is not None})
        if address.proto == "tls":
            sink["tlsVerify"] = not tls.insecureSkipVerify
    return sink
