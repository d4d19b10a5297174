"""Antrea's own config files, as its manifests render them, taken unchanged by the two bundles; and
the keys of flow-aggregator.conf that flowscope maps onto its plugins."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from flowscope.core.config import parse_config_text
from flowscope.core.errors import ConfigError
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins
from tests.helpers import run_cli

ANTREA = Path(__file__).parent / "data" / "antrea"
AGGREGATOR_CONF = ANTREA / "flow-aggregator.conf"
AGENT_CONF = ANTREA / "antrea-agent.conf"


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def aggregator(plugins, tmp_path: Path, text: str):
    return validate_config(parse_config_text(f"bundle: aggregator\ndataDir: {tmp_path}\n{text}"), plugins)


def problems(plugins, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_config(parse_config_text(text), plugins)
    return [str(issue) for issue in err.value.issues]


def test_flow_aggregator_conf_as_rendered_is_valid(tmp_path):
    result = run_cli("config", "check", "--bundle", "aggregator", str(AGGREGATOR_CONF))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"{AGGREGATOR_CONF}: OK (bundle 'aggregator', 2 source(s), 0 enricher(s), 1 sink(s), table aggregate)\n"
    )
    assert "no flowCollector, clickHouse, s3Uploader or flowLogger is enabled" in result.stderr
    assert "flowStreamService is disabled: accepted" in result.stderr


def test_antrea_agent_conf_as_rendered_says_the_exporter_is_off():
    result = run_cli("config", "check", "--bundle", "exporter", str(AGENT_CONF))
    assert result.returncode == 2
    assert result.stderr.endswith(
        f"error: invalid configuration in {AGENT_CONF}: flowExporter.enable: is false, so Antrea's flow exporter is "
        "off and there is nothing to run; set flowExporter.enable: true (and leave out featureGates.FlowExporter "
        "or set it to true)\n"
    )


def test_a_bundle_key_that_disagrees_with_the_command_is_named(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("bundle: exporter\n")
    result = run_cli("config", "check", "--bundle", "aggregator", str(config))
    assert result.returncode == 2
    assert "bundle: 'exporter' in the file, 'aggregator' given by --bundle; keep one" in result.stderr


@pytest.mark.parametrize(("written", "used"), [("TLS", "tls"), ("tcp", "tcp"), ("Udp", "udp")])
def test_transport_is_case_insensitive(plugins, tmp_path, written, used):
    config = aggregator(plugins, tmp_path, f"aggregatorTransportProtocol: {written}\n")
    assert str(config.sources[0].options["address"]).endswith(f":4739:{used}")


def test_cluster_id_and_its_older_spelling(plugins, tmp_path):
    assert aggregator(plugins, tmp_path, "clusterID: east\n").table.clusterId == "east"
    assert aggregator(plugins, tmp_path, "clusterId: west\n").table.clusterId == "west"
    assert problems(plugins, f"bundle: aggregator\ndataDir: {tmp_path}\nclusterID: a\nclusterId: b\n") == [
        "clusterID and clusterId are the same key (clusterId is the older spelling); keep one"
    ]


def test_the_cluster_uuid_is_made_once_and_names_the_observation_domain(plugins, tmp_path):
    text = "flowCollector: {enable: true, address: '127.0.0.1:4739:tcp'}\nclickHouse: {enable: true}\n"
    first = aggregator(plugins, tmp_path, text)
    kept = uuid.UUID((tmp_path / "cluster-uuid").read_text().strip())
    second = aggregator(plugins, tmp_path, text)
    for config in (first, second):
        assert config.table.clusterId == str(kept)  # Antrea: clusterID defaults to the UUID
        collector, house = config.sinks
        assert collector.options["observationDomainId"] == fnv1_32(kept.bytes)
        assert house.options["clusterUUID"] == str(kept)
        assert house.options["databaseURL"] is None  # embedded chDB under the data folder


def test_in_a_cluster_clickhouse_defaults_to_antreas_server(plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    [house] = aggregator(plugins, tmp_path, "clickHouse: {enable: true}\n").sinks
    assert house.options["databaseURL"] == "tcp://clickhouse-clickhouse.flow-visibility.svc:9000"


def test_flow_collector_tls_reads_the_secrets_where_antreas_chart_mounts_them(plugins, tmp_path):
    made = tmp_path / "made"
    assert run_cli("certs", "--out", str(made)).returncode == 0
    mounted = tmp_path / "flow-collector"  # as the chart mounts the two Secrets
    mounted.mkdir()
    for name, mount in (("ca.crt", "ca.crt"), ("client.crt", "tls.crt"), ("client.key", "tls.key")):
        (mounted / mount).write_bytes((made / name).read_bytes())
    text = (
        "flowCollector:\n  enable: true\n  address: 'collector.example:4739:tcp'\n  tls:\n    enable: true\n"
        f"    caSecretName: ca\n    clientSecretName: client\n    serverName: ipfix.example\n    certDir: {mounted}\n"
        "    minVersion: VersionTLS13\n"
    )
    [sink] = aggregator(plugins, tmp_path, text).sinks
    assert str(sink.options["address"]) == "collector.example:4739:tls"
    assert (sink.options["caCert"], sink.options["clientCert"], sink.options["clientKey"]) == (
        f"{mounted}/ca.crt",
        f"{mounted}/tls.crt",
        f"{mounted}/tls.key",
    )
    assert (sink.options["serverName"], sink.options["tlsMinVersion"]) == ("ipfix.example", "1.3")


def test_the_default_secret_folder_is_antreas(plugins, tmp_path):
    text = f"bundle: aggregator\ndataDir: {tmp_path}\n"
    text += "flowCollector: {enable: true, address: 'c:4739', tls: {enable: true, caSecretName: ca}}\n"
    [problem] = problems(plugins, text)
    assert problem.startswith(
        "sinks[0].caCert: cannot load CA certificate '/etc/flow-aggregator/certs/flow-collector/ca.crt': no such file"
    )


def test_clickhouse_tls(plugins, tmp_path):
    text = (
        "clickHouse:\n  enable: true\n  databaseURL: https://ch.example:8443\n"
        "  tls: {insecureSkipVerify: true, caCert: true}\n"
    )
    [house] = aggregator(plugins, tmp_path, text).sinks
    assert (house.options["tlsVerify"], house.options["caCert"]) == (
        False,
        "/etc/flow-aggregator/certs/clickhouse/ca.crt",
    )


def test_what_antrea_refuses_flowscope_refuses_all_at_once(plugins, tmp_path):
    text = (
        f"bundle: aggregator\ndataDir: {tmp_path}\naggregatorTransportProtocol: sctp\n"
        "flowCollector: {enable: true, address: 'c:4739:udp', maxIPFIXMsgSize: 100}\n"
        "s3Uploader: {enable: true}\nflowLogger: {enable: true, recordFormat: JSON}\n"
        "flowStreamService: {enable: true}\n"
    )
    assert problems(plugins, text) == [
        "aggregatorTransportProtocol: 'sctp' is not allowed; use one of: 'tls', 'tcp', 'udp', 'none'",
        "flowCollector.maxIPFIXMsgSize: must be 0 (the default for the transport) or from 512 to 65535, as in Antrea "
        "(got 100)",
        "s3Uploader: bucketName is required when enable is true",
        "flowLogger.recordFormat: 'JSON' is not allowed; use one of: 'CSV'",
        "flowStreamService: flowscope has no flow stream service (Antrea's gRPC stream of flows to clients); set "
        "enable: false and read flows from a sink instead (json over TCP, Kafka, ClickHouse)",
    ]


def test_tls_to_the_flow_collector_needs_tcp(plugins, tmp_path):
    text = f"bundle: aggregator\ndataDir: {tmp_path}\n"
    text += "flowCollector: {enable: true, address: 'c:4739:udp', tls: {enable: true}}\n"
    assert problems(plugins, text) == [
        "flowCollector: tls.enable needs a tcp address: IPFIX over DTLS (udp) is not supported"
    ]


def test_proxy_mode_takes_the_flow_collector_only(plugins, tmp_path):
    text = f"bundle: aggregator\ndataDir: {tmp_path}\nmode: Proxy\nclickHouse: {{enable: true}}\n"
    assert problems(plugins, text) == ["only flowCollector works in Proxy mode, as in Antrea; disable clickHouse"]


def agent_conf(**changes: str) -> str:
    """antrea-agent.conf as rendered, with the flow exporter turned on and ``changes`` made."""
    text = AGENT_CONF.read_text().replace(
        "  enable: false\n  # Provide the IPFIX", "  enable: true\n  # Provide the IPFIX"
    )
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_exporter_takes_the_whole_agent_file(plugins, caplog):
    text = agent_conf(
        **{'podCIDRs: ""': 'podCIDRs: "10.10.0.0/16,fd00:10:10::/48"\nnodePodCIDRs: 10.10.1.0/24\nnodeName: k8s-node-1',
           "flow-aggregator/flow-aggregator:14739:grpc": "flow-aggregator/flow-aggregator:4739:tcp"}
    )  # fmt: skip
    with caplog.at_level("INFO", logger="flowscope.exporter"):
        config = validate_config(parse_config_text("bundle: exporter\n" + text), plugins)
    [sink] = config.sinks
    assert str(sink.options["address"]) == "flow-aggregator.flow-aggregator.svc:4739:tcp"
    assert sink.options["observationDomainId"] == fnv1_32(b"k8s-node-1")
    assert (config.table.activeTimeout, config.table.inactiveTimeout) == (5.0, 15.0)
    [flowtype] = config.enrichers
    assert flowtype.options["podCIDRs"] == ["10.10.1.0/24"]
    assert [str(c) for c in flowtype.options["clusterPodCIDRs"]] == ["10.10.0.0/16", "fd00:10:10::/48"]
    [line] = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert line.startswith("antrea-agent.conf: ignoring 37 keys that are not about flow export: antreaProxy, apiPort,")


def test_a_key_antrea_does_not_know_is_still_an_error(plugins):
    assert problems(plugins, "bundle: exporter\nflowPolInterval: 5s\n")[0].startswith(
        "flowPolInterval: unknown key (did you mean 'flowPollInterval'?)"
    )


def test_the_feature_gate_turns_the_exporter_off(plugins):
    text = agent_conf(**{"featureGates:\n": "featureGates:\n  FlowExporter: false\n"})
    assert problems(plugins, "bundle: exporter\n" + text)[0].startswith(
        "featureGates.FlowExporter: is false, so Antrea's flow exporter is off"
    )


def test_the_agent_files_own_collector_is_the_aggregator_over_grpc(plugins, tmp_path):
    """flowCollectorAddr as shipped, "flow-aggregator/flow-aggregator:14739:grpc": the grpc sink,
    with the mutual TLS files given (Antrea mounts them; gRPC is always mutual TLS)."""
    made = tmp_path / "certs"
    assert run_cli("certs", "--out", str(made)).returncode == 0
    files = {"caCert": made / "ca.crt", "clientCert": made / "client.crt", "clientKey": made / "client.key"}
    tls = "tls: {" + ", ".join(f"{key}: {path}" for key, path in files.items()) + "}\nnodeName: k8s-node-1\n"
    config = validate_config(parse_config_text("bundle: exporter\n" + tls + agent_conf()), plugins)
    [sink] = config.sinks
    assert (sink.type, str(sink.options["address"])) == ("grpc", "flow-aggregator.flow-aggregator.svc:14739")
    assert sink.options["observationDomainId"] == fnv1_32(b"k8s-node-1")
    assert {key: sink.options[key] for key in files} == {key: str(path) for key, path in files.items()}
    text = "bundle: exporter\ntls: {insecureSkipVerify: true}\n" + agent_conf()
    assert problems(plugins, text) == [
        "tls.insecureSkipVerify: gRPC always verifies the aggregator's certificate (mutual TLS, as in Antrea); "
        "remove the key, or give tls.caCert"
    ]


def test_the_aggregator_always_listens_for_grpc_as_antreas(plugins, tmp_path):
    default = aggregator(plugins, tmp_path, "")
    assert [(s.type, str(s.options["address"])) for s in default.sources] == [
        ("ipfix", ":4739:tls"),
        ("grpc", ":14739"),
    ]
    assert default.sources[1].options["tlsHosts"] == ["flow-aggregator.flow-aggregator.svc"]
    assert (default.sources[1].options["tls"], default.sources[1].options["clientAuth"]) == (True, True)
    ipfix_off = aggregator(plugins, tmp_path, "aggregatorTransportProtocol: None\ngrpcListenAddress: 127.0.0.1:24739\n")
    assert [(s.type, str(s.options["address"])) for s in ipfix_off.sources] == [("grpc", "127.0.0.1:24739")]
    proxy = aggregator(plugins, tmp_path, "mode: Proxy\n")
    assert [s.options["exporterFields"] for s in proxy.sources] == [True, True]
