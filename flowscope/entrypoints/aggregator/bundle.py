"""The keys of the ``aggregator`` bundle (``flow-aggregator.conf``'s) and the pipeline they make.

IPFIX from the exporters (``aggregatorTransportProtocol``, default tls) → correlation and
aggregation of the two nodes' records → Pod facts and labels from the inventory for what the
exporters could not fill → the flow collector (IPFIX or JSON), ClickHouse, and any extra sinks.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, AliasChoices, BeforeValidator, Field, model_validator

from flowscope.core.config import Address, Duration, OptionsModel, address_type, format_duration, parse_address
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.core.preflight import ReadableFile
from flowscope.entrypoints.aggregator.clusterid import cluster_uuid
from flowscope.plugins.sinks.clickhouse.sink import ClickHouseOptions, as_config

log = logging.getLogger("flowscope.aggregator")
ANTREA_CLICKHOUSE_URL = "tcp://clickhouse-clickhouse.flow-visibility.svc:9000"

ANTREA_CERTS = Path("/etc/flow-aggregator/certs")
"""Where Antrea's Helm chart mounts the flow collector's and ClickHouse's Secrets."""


def _lowercase(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _whole_number(value: object) -> object:
    """Antrea's chart writes 1e+06, which YAML reads as text."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() else value
    return value


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


def _none_is_off(value: object) -> object:
    return None if value is None or (isinstance(value, str) and value.lower() == "none") else value


def _message_size(value: int) -> int:
    if value and not 512 <= value <= 65535:
        raise ValueError("must be 0 (the default for the transport) or from 512 to 65535, as in Antrea")
    return value


class FlowCollectorTLS(OptionsModel):
    """Antrea's ``flowCollector.tls``: the Secrets are files where its chart mounts them (``certDir``)."""

    enable: bool = False
    caSecretName: str = ""
    serverName: str = ""
    clientSecretName: str = ""
    minVersion: Literal["", "VersionTLS12", "VersionTLS13"] = ""
    certDir: str = str(ANTREA_CERTS / "flow-collector")


class FlowCollector(OptionsModel):
    enable: bool = False
    address: Annotated[Address | None, BeforeValidator(_collector_address)] = None
    observationDomainID: int | None = Field(None, ge=0, le=0xFFFFFFFF)
    recordFormat: Literal["IPFIX", "JSON"] = "IPFIX"
    templateRefreshTimeout: Duration = "600s"
    maxIPFIXMsgSize: Annotated[int, AfterValidator(_message_size)] = 0
    tls: FlowCollectorTLS = Field(default_factory=FlowCollectorTLS)
    includeK8sNames: bool = True
    includeK8sUIDs: bool = False

    @model_validator(mode="after")
    def _usable(self) -> FlowCollector:
        if not self.enable:
            return self
        if self.address is None:
            raise ValueError('address is required when enable is true, e.g. "192.168.86.86:4739:tcp"')
        secure = self.tls.enable or self.address.proto == "tls"
        if self.recordFormat == "JSON" and secure:
            raise ValueError("JSON records go over tcp or udp, without TLS")
        if self.tls.enable and self.address.proto == "udp":
            raise ValueError("tls.enable needs a tcp address: IPFIX over DTLS (udp) is not supported")
        return self


class ClickHouseTLS(OptionsModel):
    """Antrea's ``clickHouse.tls``; ``caCert: true`` reads ``ca.crt`` from ``certDir``."""

    insecureSkipVerify: bool = False
    caCert: bool = False
    certDir: str = str(ANTREA_CERTS / "clickhouse")


class ClickHouse(ClickHouseOptions):
    """The clickhouse sink's keys, with ``enable`` and Antrea's ``tls``; embedded chDB by default."""

    enable: bool = False
    tls: ClickHouseTLS = Field(default_factory=ClickHouseTLS)
    spool: bool = Field(False, description="keep undelivered rows on disk across a restart")


class FlowFilter(OptionsModel):
    ingressNetworkPolicyRuleActions: list[Literal["None", "Allow", "Drop", "Reject"]] = Field(default_factory=list)
    egressNetworkPolicyRuleActions: list[Literal["None", "Allow", "Drop", "Reject"]] = Field(default_factory=list)


class FlowLogger(OptionsModel):
    enable: bool = False
    path: str = str(Path(tempfile.gettempdir()) / "antrea-flows.log")
    maxSize: int = Field(100, ge=0)
    maxBackups: int = Field(3, ge=0)
    maxAge: int = Field(0, ge=0)
    compress: bool = True
    recordFormat: Literal["CSV"] = "CSV"
    filters: list[FlowFilter] | None = None
    prettyPrint: bool = True


class S3Uploader(OptionsModel):
    enable: bool = False
    bucketName: str = ""
    bucketPrefix: str = ""
    region: str = "us-west-2"
    recordFormat: Literal["CSV"] = "CSV"
    compress: bool = True
    maxRecordsPerFile: Annotated[int, BeforeValidator(_whole_number)] = Field(1_000_000, gt=0)
    uploadInterval: Duration = "60s"
    endpointURL: str | None = None
    credentialsFile: str | None = None

    @model_validator(mode="after")
    def _usable(self) -> S3Uploader:
        if self.enable and not self.bucketName:
            raise ValueError("bucketName is required when enable is true")
        return self


class FlowStreamService(OptionsModel):
    enable: bool = False

    @model_validator(mode="after")
    def _usable(self) -> FlowStreamService:
        if self.enable:
            raise ValueError(
                "flowscope has no flow stream service (Antrea's gRPC stream of flows to clients); set enable: "
                "false and read flows from a sink instead (json over TCP, Kafka, ClickHouse)"
            )
        return self


class AggregatorConfig(OptionsModel):
    """Keys of the ``aggregator`` bundle: those of ``flow-aggregator.conf``, plus a few."""

    mode: Literal["Aggregate", "Proxy"] = "Aggregate"
    activeFlowRecordTimeout: Duration = "60s"
    inactiveFlowRecordTimeout: Duration = "90s"
    aggregatorTransportProtocol: Annotated[Literal["tls", "tcp", "udp", "none"], BeforeValidator(_lowercase)] = "tls"
    flowAggregatorAddress: str = "flow-aggregator.flow-aggregator.svc"
    listenAddress: address_type(protocols=(), default_port=4739, allow_port_zero=True) = ":4739"  # type: ignore[valid-type]
    grpcListenAddress: Annotated[  # type: ignore[valid-type]
        address_type(protocols=(), default_port=14739, allow_port_zero=True) | None, BeforeValidator(_none_is_off)
    ] = ":14739"
    kafka: dict[str, Any] | None = None
    recordContents: RecordContents = Field(default_factory=RecordContents)
    apiServer: ApiServer = Field(default_factory=ApiServer)
    flowCollector: FlowCollector = Field(default_factory=FlowCollector)
    clickHouse: ClickHouse = Field(default_factory=ClickHouse)
    s3Uploader: S3Uploader = Field(default_factory=S3Uploader)
    flowLogger: FlowLogger = Field(default_factory=FlowLogger)
    flowStreamService: FlowStreamService = Field(default_factory=FlowStreamService)
    recordBufferSize: int = Field(8192, gt=0)
    clusterID: str = Field("", validation_alias=AliasChoices("clusterID", "clusterId"))
    correlationTimeout: Duration | None = None
    partialRecords: Literal["export", "drop"] = "export"
    inventory: ReadableFile = None
    kubeconfig: ReadableFile = None

    @model_validator(mode="before")
    @classmethod
    def _one_cluster_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "clusterID" in data and "clusterId" in data:
            raise ValueError("clusterID and clusterId are the same key (clusterId is the older spelling); keep one")
        return data

    @model_validator(mode="after")
    def _proxy_sinks(self) -> AggregatorConfig:
        if self.mode == "Proxy":
            enabled = [k for k in ("clickHouse", "s3Uploader", "flowLogger") if getattr(self, k).enable]
            if enabled:
                raise ValueError(f"only flowCollector works in Proxy mode, as in Antrea; disable {', '.join(enabled)}")
        return self


def build(config: dict[str, Any], data_dir: Path = Path("flowscope-data")) -> dict[str, Any]:
    """The pipeline of the aggregator bundle."""
    options = AggregatorConfig.from_config(config)
    if "flowStreamService" in config:
        log.info("flowStreamService is disabled: accepted (flowscope has no flow stream service)")
    if options.recordBufferSize != 8192:
        log.info("recordBufferSize is accepted and not used: each sink has its own buffer (bufferSize)")
    uuid = cluster_uuid(data_dir)
    cluster_id = options.clusterID or str(uuid)
    spec: dict[str, Any] = {
        "sources": [],
        "enrichers": [],
        "sinks": [],
        "apiAddress": f":{options.apiServer.apiPort}",
        "apiTLS": options.apiServer.tls,
    }
    if options.aggregatorTransportProtocol != "none":  # "none" turns off IPFIX only, as in Antrea
        spec["sources"].append(
            {
                "type": "ipfix",
                "address": f"{options.listenAddress}:{options.aggregatorTransportProtocol}",
                "tlsHosts": [options.flowAggregatorAddress],
            }
        )
    if options.grpcListenAddress is not None:  # Antrea's gRPC collector always runs, with mutual TLS
        spec["sources"].append(
            {"type": "grpc", "address": str(options.grpcListenAddress), "tlsHosts": [options.flowAggregatorAddress]}
        )
    if options.kafka is not None:  # a replica of a scale-out: its share of the connections, from Kafka
        spec["sources"].append(_kafka_source(options))
    if options.mode == "Aggregate":
        spec["table"] = {
            "mode": "aggregate",
            "activeTimeout": format_duration(options.activeFlowRecordTimeout),
            "inactiveTimeout": format_duration(options.inactiveFlowRecordTimeout),
            "tick": "1s",
            "clusterId": cluster_id,
            "partialRecords": options.partialRecords,
        }
        if options.correlationTimeout is not None:
            spec["table"]["correlationTimeout"] = format_duration(options.correlationTimeout)
    else:  # Proxy: every record forwarded as it comes, marked with its exporter and direction
        for source in spec["sources"]:
            if source["type"] != "kafka":  # Kafka's records keep the fields the front gave them
                source["exporterFields"] = True
    if options.inventory or options.kubeconfig:  # Pod facts the exporters could not fill, and labels
        spec["enrichers"].append(
            {
                "type": "kubernetes",
                "inventory": options.inventory,
                "kubeconfig": options.kubeconfig,
                "podLabels": options.recordContents.podLabels,
                "uids": options.flowCollector.enable and options.flowCollector.includeK8sUIDs,
                "networkPolicies": False,
            }
        )
    if options.mode == "Proxy":
        spec["enrichers"].append({"type": "flowdirection"})
    if options.flowCollector.enable:
        spec["sinks"].append(_collector_sink(options.flowCollector, uuid, options.mode, cluster_id))
    if options.clickHouse.enable:
        spec["sinks"].append(_clickhouse_sink(options.clickHouse, uuid))
    if options.flowLogger.enable:
        spec["sinks"].append(_flow_logger_sink(options.flowLogger))
    if options.s3Uploader.enable:
        spec["sinks"].append(_s3_sink(options.s3Uploader, uuid))
    if not spec["sinks"]:  # as Antrea: allowed, and said; the API still serves the flows
        log.info("no flowCollector, clickHouse, s3Uploader or flowLogger is enabled: flows go only to sinks: (if any)")
        spec["sinks"].append({"type": "blackhole", "name": "no-sink"})
    return spec


def _kafka_source(options: AggregatorConfig) -> dict[str, Any]:
    """The ``kafka`` source of a replica: one consumer group for every replica, and offsets committed
    only once the flows their records went into can have been exported (correlation wait, then an
    active timeout, and a margin for the sinks), so a failed replica's held flows are read again by
    the partitions' next owner."""
    active = options.activeFlowRecordTimeout
    held = options.correlationTimeout if options.correlationTimeout is not None else 3 * active
    source = {"type": "kafka", "groupId": "flowscope-aggregator", "commitLag": format_duration(held + active + 10)}
    return {**source, **(options.kafka or {})}


def _collector_sink(collector: FlowCollector, uuid: UUID, mode: str, cluster_id: str) -> dict[str, Any]:
    address = collector.address
    assert address is not None  # the model says so when enable is true
    if collector.recordFormat == "JSON":
        return {"type": "json", "name": "flow-collector", "address": str(address)}
    odid = collector.observationDomainID
    if odid is None:  # Antrea: FNV-1 of the cluster UUID's 16 bytes
        odid = fnv1_32(uuid.bytes)
    sink: dict[str, Any] = {
        "type": "ipfix",
        "name": "flow-collector",
        "address": str(address),
        "observationDomainId": odid,
        "templateRefreshTimeout": format_duration(collector.templateRefreshTimeout),
        "antreaTemplate": mode.lower(),  # Antrea's exact elements and order
        "includeK8sNames": collector.includeK8sNames,
        "includeK8sUIDs": collector.includeK8sUIDs,
        "clusterId": cluster_id,  # Antrea's exporter writes it in every record, proxied ones too
    }
    if collector.maxIPFIXMsgSize:
        sink["maxIPFIXMsgSize"] = collector.maxIPFIXMsgSize
    tls = collector.tls
    if tls.enable:  # as Antrea: the CA and the client certificate only when their Secrets are named
        sink["address"] = str(Address(address.host, address.port, "tls"))
        certs = Path(tls.certDir)
        sink["caCert"] = str(certs / "ca.crt") if tls.caSecretName else None
        if tls.clientSecretName:
            sink.update(clientCert=str(certs / "tls.crt"), clientKey=str(certs / "tls.key"))
        if tls.serverName:
            sink["serverName"] = tls.serverName
        if tls.minVersion == "VersionTLS13":
            sink["tlsMinVersion"] = "1.3"
    return sink


def _clickhouse_sink(house: ClickHouse, uuid: UUID) -> dict[str, Any]:
    sink = as_config(house.model_dump(exclude={"enable", "tls"}))
    if house.databaseURL is None and "KUBERNETES_SERVICE_HOST" in os.environ:  # in a cluster: Antrea's server
        sink["databaseURL"] = ANTREA_CLICKHOUSE_URL
    sink["clusterUUID"] = house.clusterUUID or str(uuid)
    if house.tls.insecureSkipVerify:
        sink["tlsVerify"] = False
    if house.tls.caCert:
        sink["caCert"] = str(Path(house.tls.certDir) / "ca.crt")
    return {"type": "clickhouse", "name": "clickhouse", **sink}


def _flow_logger_sink(logger: FlowLogger) -> dict[str, Any]:
    sink = logger.model_dump(exclude={"enable"})
    sink["path"] = logger.path or FlowLogger.model_fields["path"].default
    sink["maxSize"] = logger.maxSize or 100  # 0 means Antrea's defaults
    sink["maxBackups"] = logger.maxBackups or 3
    sink["filters"] = [f.model_dump() for f in logger.filters or []]
    return {"type": "flowlogger", "name": "flow-logger", **sink}


def _s3_sink(uploader: S3Uploader, uuid: UUID) -> dict[str, Any]:
    sink = uploader.model_dump(exclude={"enable"}, exclude_none=True)
    sink["uploadInterval"] = format_duration(uploader.uploadInterval)
    return {"type": "s3", "name": "s3-uploader", "clusterUUID": str(uuid), **sink}
