"""The keys of the ``aggregator`` bundle (``flow-aggregator.conf``'s) and the pipeline they make.

IPFIX from the exporters (``aggregatorTransportProtocol``, default tls) → correlation and
aggregation of the two nodes' records → Pod facts and labels from the inventory for what the
exporters could not fill → the flow collector (IPFIX or JSON), ClickHouse, and any extra sinks.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from flowscope.core.config import Duration, OptionsModel, format_duration, parse_address
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.plugins.sinks.clickhouse.sink import ClickHouseOptions, as_config


class RecordContents(OptionsModel):
    podLabels: bool = False


class ApiServer(OptionsModel):
    apiPort: int = Field(10348, ge=0, le=65535)
    tls: bool = True
    tlsCipherSuites: str | None = None
    tlsMinVersion: str | None = None


class FlowCollector(OptionsModel):
    enable: bool = False
    address: str = ""
    observationDomainID: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    recordFormat: Literal["IPFIX", "JSON"] = "IPFIX"
    templateRefreshTimeout: Duration = "600s"
    maxIPFIXMsgSize: int | None = None


class ClickHouse(ClickHouseOptions):
    """The clickhouse sink's keys, with Antrea's server as the default database and ``enable``."""

    enable: bool = False
    databaseURL: str | None = "tcp://clickhouse-clickhouse.flow-visibility.svc:9000"
    spool: bool = Field(False, description="keep undelivered rows on disk across a restart")


class AggregatorConfig(OptionsModel):
    """Keys of the ``aggregator`` bundle: those of ``flow-aggregator.conf``, plus a few."""

    mode: Literal["Aggregate", "Proxy"] = "Aggregate"
    activeFlowRecordTimeout: Duration = "60s"
    inactiveFlowRecordTimeout: Duration = "90s"
    aggregatorTransportProtocol: Literal["tls", "tcp", "udp"] = "tls"
    flowAggregatorAddress: str = "flow-aggregator.flow-aggregator.svc"
    listenAddress: str = ":4739"
    recordContents: RecordContents = Field(default_factory=RecordContents)
    apiServer: ApiServer = Field(default_factory=ApiServer)
    flowCollector: FlowCollector = Field(default_factory=FlowCollector)
    clickHouse: ClickHouse = Field(default_factory=ClickHouse)
    clusterId: str = ""
    correlationTimeout: Duration | None = None
    partialRecords: Literal["export", "drop"] = "export"
    inventory: str | None = None
    kubeconfig: str | None = None


def build(config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline of the aggregator bundle."""
    options = AggregatorConfig.from_config(config)
    listen = _address(options.listenAddress, "listenAddress", default_port=4739, protocols=(), allow_port_zero=True)
    source: dict[str, Any] = {
        "type": "ipfix",
        "address": f"{listen}:{options.aggregatorTransportProtocol}",
        "tlsHosts": [options.flowAggregatorAddress],
    }
    spec: dict[str, Any] = {
        "sources": [source],
        "enrichers": [],
        "sinks": [],
        "apiAddress": f":{options.apiServer.apiPort}",
        "apiTLS": options.apiServer.tls,
    }
    if options.mode == "Aggregate":
        spec["table"] = {
            "mode": "aggregate",
            "activeTimeout": format_duration(options.activeFlowRecordTimeout),
            "inactiveTimeout": format_duration(options.inactiveFlowRecordTimeout),
            "tick": "1s",
            "clusterId": options.clusterId,
            "partialRecords": options.partialRecords,
        }
        if options.correlationTimeout is not None:
            spec["table"]["correlationTimeout"] = format_duration(options.correlationTimeout)
    else:  # Proxy: every record forwarded as it comes, marked with its exporter and direction
        source["exporterFields"] = True
    if options.inventory or options.kubeconfig:  # Pod facts the exporters could not fill, and labels
        spec["enrichers"].append(
            {
                "type": "kubernetes",
                "inventory": options.inventory,
                "kubeconfig": options.kubeconfig,
                "podLabels": options.recordContents.podLabels,
                "networkPolicies": False,
            }
        )
    if options.mode == "Proxy":
        spec["enrichers"].append({"type": "flowdirection"})
    collector = options.flowCollector
    if collector.enable:
        spec["sinks"].append(_collector_sink(collector, options.clusterId))
    if options.clickHouse.enable:
        house = options.clickHouse
        sink = as_config(house.model_dump(exclude={"enable"}))
        sink["clusterUUID"] = house.clusterUUID or options.clusterId
        spec["sinks"].append({"type": "clickhouse", "name": "clickhouse", **sink})
    return spec


def _collector_sink(collector: FlowCollector, cluster_id: str) -> dict[str, Any]:
    if not collector.address:
        raise ConfigError(
            ConfigIssue(
                "flowCollector.address", 'required when flowCollector.enable is true, e.g. "192.168.86.86:4739:tcp"'
            )
        )
    address = _address(
        collector.address,
        "flowCollector.address",
        default_port=4739,
        protocols=("tcp", "udp", "tls"),
        default_proto="tcp",
    )
    if collector.recordFormat == "JSON":
        if address.proto == "tls":
            raise ConfigError(ConfigIssue("flowCollector.address", "JSON records go over tcp or udp, not tls"))
        return {"type": "json", "name": "flow-collector", "address": str(address)}
    odid = collector.observationDomainID
    if odid is None:  # Antrea: derived from the cluster UUID
        odid = fnv1_32(cluster_id.encode()) if cluster_id else 0
    sink: dict[str, Any] = {
        "type": "ipfix",
        "name": "flow-collector",
        "address": str(address),
        "observationDomainId": odid,
        "templateRefreshTimeout": format_duration(collector.templateRefreshTimeout),
    }
    if collector.maxIPFIXMsgSize is not None:
        sink["maxIPFIXMsgSize"] = collector.maxIPFIXMsgSize
    return sink


def _address(text: str, key: str, **kwargs: Any) -> Any:
    try:
        return parse_address(text, **kwargs)
    except ValueError as exc:
        raise ConfigError(ConfigIssue(key, f"{exc} (got {text!r})")) from None
