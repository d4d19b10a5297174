"""deploy/elk: the Logstash pipeline for the json sink's records, and the index template it
installs, which is the search sinks' template (field types from the IE registry) plus the fields the
pipeline adds. `python tests/test_elk.py` writes the template again after a registry change."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowscope.plugins.sinks.search.template import KEYWORD, index_template  # noqa: E402
from flowscope.testing import builtin_elements  # noqa: E402

ELK = ROOT / "deploy" / "elk"
TEMPLATE = ELK / "index-template.json"
PIPELINE = (ELK / "logstash" / "pipeline.conf").read_text()
ADDED = {  # the fields the Logstash filter adds, as Antrea's ELK collector had them
    "bytes": {"type": "long"},
    "packets": {"type": "long"},
    "sourceIP": {"type": "ip"},
    "destinationIP": {"type": "ip"},
    **dict.fromkeys(
        (
            "protocolName",
            "flowTypeStr",
            "ingressNetworkPolicyRuleActionStr",
            "egressNetworkPolicyRuleActionStr",
            "ingressNetworkPolicyTypeStr",
            "egressNetworkPolicyTypeStr",
            "flowKey",
            "flowKeyPodToPod",
            "flowKeyPodToService",
            "flowKeyPodToExternal",
        ),
        KEYWORD,
    ),
}


def elk_template() -> dict[str, Any]:
    """The index template of deploy/elk, for Logstash's daily `flows-YYYY.MM.dd` indices."""
    template = index_template("flows-%Y.%m.%d", builtin_elements())
    fields = template["template"]["mappings"]["properties"]["ipfix"]["properties"]
    template["template"]["mappings"]["properties"]["ipfix"]["properties"] = dict(sorted({**fields, **ADDED}.items()))
    template["_meta"] = {"managed_by": "flowscope deploy/elk (tests/test_elk.py writes it)"}
    return template


def test_the_committed_template_is_the_generated_one():
    assert json.loads(TEMPLATE.read_text()) == elk_template(), "regenerate: python tests/test_elk.py"


def test_every_field_the_pipeline_writes_has_a_type():
    copied = re.findall(r'"\[ipfix\]\[\w+\]" => "\[ipfix\]\[(\w+)\]"', PIPELINE)
    translated = re.findall(r'target => "\[ipfix\]\[(\w+)\]"', PIPELINE)
    added = re.findall(r'"\[ipfix\]\[(\w+)\]" => "(?:%|N/A)', PIPELINE)
    written = {*copied, *translated, *added}
    properties = elk_template()["template"]["mappings"]["properties"]["ipfix"]["properties"]
    assert written == set(ADDED) | {
        "ingressNetworkPolicyName",
        "ingressNetworkPolicyNamespace",
        "egressNetworkPolicyName",
        "egressNetworkPolicyNamespace",
    }
    assert written <= set(properties)
    assert properties["flowStartSeconds"]["type"] == "date" and properties["octetTotalCount"] == {"type": "long"}
    assert properties["sourceIPv4Address"] == {"type": "ip"} and properties["sourcePodName"] == KEYWORD


def test_the_index_pattern_matches_logstashs_daily_indices():
    assert elk_template()["index_patterns"] == ["flows-*.*.*"]
    assert 'index => "flows-%{+YYYY.MM.dd}"' in PIPELINE
    assert "codec => json_lines" in PIPELINE and "port => 4736" in PIPELINE


if __name__ == "__main__":
    TEMPLATE.write_text(json.dumps(elk_template(), indent=2) + "\n")
    print(f"wrote {TEMPLATE}")
