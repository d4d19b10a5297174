"""The exporter bundle's configuration and the flowtype enricher (no kernel needed)."""

from __future__ import annotations

import pytest

from flowscope.core.config import parse_config_text
from flowscope.core.errors import ConfigError
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins
from flowscope.plugins.enrichers.flowtype import FlowTypeEnricher
from flowscope.testing import make_context


@pytest.fixture(scope="module")
def plugins():
    return load_plugins()


def test_fnv1_32_matches_go_hash_fnv_new32():
    assert fnv1_32(b"") == 0x811C9DC5
    assert fnv1_32(b"a") == 0x050C5D7E
    assert fnv1_32(b"foobar") == 0x31F0B262


def test_antrea_keys_with_seed_defaults(plugins):
    config = validate_config(parse_config_text("bundle: exporter\nnodeName: k8s-node-1\n"), plugins)
    [source], [sink] = config.sources, config.sinks
    assert (source.type, source.options["pollInterval"], source.options["zones"]) == ("conntrack", 5.0, None)
    assert (config.table.mode, config.table.activeTimeout, config.table.inactiveTimeout) == ("connections", 60.0, 15.0)
    assert sink.type == "ipfix"
    assert str(sink.options["address"]) == "flow-aggregator.flow-aggregator.svc:4739:tls"
    assert sink.options["observationDomainId"] == fnv1_32(b"k8s-node-1")
    assert config.enrichers == []  # no podCIDRs: plain-Linux mode, every connection exported as is


def test_nested_flow_exporter_section_timeouts_clamped_and_extra_sinks(plugins):
    text = """
bundle: exporter
featureGates: {FlowExporter: true}
flowExporter:
  enable: true
  flowCollectorAddr: "[fd00::5]::udp"
  flowPollInterval: 10s
  activeFlowExportTimeout: 5s
nodePodCIDRs: [10.244.1.0/24]
protocolFilter: [tcp]
sinks: [{type: json, path: '-'}]
"""
    config = validate_config(parse_config_text(text), plugins)
    assert str(config.sinks[0].options["address"]) == "[fd00::5]:4739:udp"
    assert config.table.activeTimeout == 10.0  # clamped up to the poll interval, as Antrea does
    assert [s.type for s in config.sinks] == ["ipfix", "json"]
    assert [e.type for e in config.enrichers] == ["flowtype"]
    assert config.sources[0].options["protocols"] == ["tcp"]


def test_every_bad_exporter_key_is_named_at_once(plugins, tmp_path):
    text = (
        "bundle: exporter\nflowPollInterval: 500ms\nflowCollectorAddr: 'fd00::5:4739'\nidleFlowExportTimeout: 15\n"
        "podCIDRs: [10.244.1.0/24, ten]\nprotocolFilter: [tcp, tcpp]\nmaxIPFIXMsgSize: 10\n"
        f"tls: {{caCert: {tmp_path / 'ca.crt'}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        validate_config(parse_config_text(text), plugins)
    assert [str(i) for i in err.value.issues] == [
        'flowCollectorAddr: IPv6 addresses must be written in brackets, e.g. "[fd00::5:4739]:4739"; expected '
        '<host>:<port>[:<proto>] (<proto> one of tcp, udp, tls, grpc), e.g. "127.0.0.1:4739:tcp" '
        "(got 'fd00::5:4739')",
        "flowPollInterval: must be at least 1s, as in Antrea (got '500ms')",
        'idleFlowExportTimeout: a number needs a unit: write "15s" for 15 seconds (got 15)',
        "podCIDRs: 'ten' is not a CIDR such as 10.244.1.0/24 or fd00:10:244:1::/64 (got ['10.244.1.0/24', 'ten'])",
        "protocolFilter: unknown protocol(s) tcpp; use: tcp, udp, sctp, icmp, icmpv6 (got ['tcp', 'tcpp'])",
        f"tls.caCert: '{tmp_path / 'ca.crt'}' does not exist; check the path",
        "maxIPFIXMsgSize: must be at least 64 (got 10)",
    ]


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        ("10.244.1.5", "10.244.1.6", 1),  # both Pods of this node
        ("10.244.1.5", "10.244.2.6", 2),  # Pod of this node to a Pod elsewhere
        ("10.244.2.5", "10.244.1.6", 2),
        ("10.244.1.5", "8.8.8.8", 3),  # to external
        ("192.168.0.9", "10.244.1.6", 4),  # from external
        ("192.168.0.9", "192.168.0.10", 0),  # not Pod traffic
        ("10.244.1.1", "10.244.2.6", 2),  # from the gateway to a Pod elsewhere
        ("10.244.1.5", "10.244.1.1", 0),  # to the gateway
    ],
)
def test_flow_types(src, dst, expected):
    enricher = FlowTypeEnricher(
        {"nodeName": "n1", "podCIDRs": ["10.244.1.0/24"], "clusterPodCIDRs": ["10.244.0.0/16"], "gateways": None},
        make_context(kind="enricher"),
    )
    [record] = enricher.enrich([{"sourceIPv4Address": src, "destinationIPv4Address": dst, "flowType": 0}])
    assert record["flowType"] == expected
    assert record.get("sourceNodeName", "") == ("n1" if src.startswith("10.244.1.") and src != "10.244.1.1" else "")
