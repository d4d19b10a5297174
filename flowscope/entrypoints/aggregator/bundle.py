"""The keys of the ``aggregator`` bundle (``flow-aggregator.conf``'s) and the pipeline they make.

IPFIX from the exporters (``aggregatorTransportProtocol``, default tls) → correlation and
aggregation of the two nodes' records → Pod facts and labels from the inventory for what the
exporters could not fill → the flow collector (IPFIX or JSON), ClickHouse, and any extra sinks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from flowscope.core.config import Address, Duration, OptionsModel, address_type, format_duration, parse_address
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.core.preflight import ReadableFile
from flowscope.plugins.sinks.clickhouse.sink import ClickHouseOptions, as_config


class RecordContents(OptionsModel):
    podLabels: bool = False


class ApiServer(OptionsModel):
    apiPort: int = Field(10348, ge=0, le=65535)
    tls: bool = True
    tlsCipherSuites: str | None = None
    tlsMinVersion: str | None = None


def _collector_address(value: object) -> Address | None:
    if value in (None, "") or isinstance(value, Address):
        return value or None
    return parse_address(value, default_port=4739, protocols=("tcp", "udp", "tls"), default_proto="tcp")


class FlowCollector(OptionsModel):
    enable: bool = False
    address: Annotated[Address | None, BeforeValidator(_collector_address)] = None
    observationDomainID: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    recordFormat: Literal["IPFIX", "JSON"] = "IPFIX"
    templateRefreshTimeout: Duration = "600s"
    maxIPFIXMsgSize: int | None = Field(None, ge=64, le=65535)

    @model_validator(mode="after")
    def _usable(self) -> FlowCollector:
        if self.enable and self.address is None:
            raise ValueError('address is required when enable is true, e.g. "192.168.86.86:4739:tcp"')
        if self.recordFormat == "JSON" and self.address is not None and self.address.proto == "tls":
            raise ValueError("JSON records go over tcp or udp, not tls")
        return self


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
    listenAddress: address_type(protocols=(), default_port=4739, allow_port_zero=True) = ":4739"  # type: ignore[valid-type]
    recordContents: RecordContents = Field(default_factory=RecordContents)
    apiServer: ApiServer = Field(default_factory=ApiServer)
    flowCollector: FlowCollector = Field(default_factory=FlowCollector)
    clickHouse: ClickHouse = Field(default_factory=ClickHouse)
    clusterId: str = ""
    correlationTimeout: Duration | None = None
    partialRecords: Literal["export", "drop"] = "export"
    inventory: ReadableFile = None
    kubeconfig: ReadableFile = None


def build(config: dict[str, Any]) -> dict[str, Any]:
    """The pipeline of the aggregator bundle."""
    options = AggregatorConfig.from_config(config)
    listen = options.listenAddress
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
    address = collector.address
    assert address is not None  # the model says so when enable is true
    if collector.recordFormat == "JSON":
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
