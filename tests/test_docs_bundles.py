"""The bundle configs in docs/exporter.md, docs/aggregator.md and docs/clickhouse.md are the forms
`flowscope config check` accepts, files they name included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCKS = [
    (page, bundle, index, text)
    for page, bundle in (("exporter.md", "exporter"), ("aggregator.md", "aggregator"), ("clickhouse.md", "aggregator"))
    for index, text in enumerate(re.findall(r"```yaml\n(.*?)```", (DOCS / page).read_text(), re.S))
    if "sources:" not in text  # a pipeline of its own, which docs/clickhouse.md runs in its own test
]


def test_every_page_has_its_bundle_example():
    assert [(page, index) for page, _, index, _ in BLOCKS] == [
        ("exporter.md", 0),
        ("aggregator.md", 0),
        ("aggregator.md", 1),
        ("clickhouse.md", 1),
    ]


@pytest.mark.parametrize(("page", "bundle", "index", "text"), BLOCKS, ids=[f"{b[0]}-{b[2]}" for b in BLOCKS])
def test_the_example_passes_config_check(tmp_path, page, bundle, index, text):
    assert run_cli("certs", "--out", str(tmp_path / "certs")).returncode == 0
    (tmp_path / "cluster.yaml").write_text("kind: List\nitems: []\n")
    config = tmp_path / "example.yaml"
    config.write_text(f"dataDir: {tmp_path / 'data'}\n" + text.replace("/var/log/", f"{tmp_path}/"))
    result = run_cli("config", "check", "--bundle", bundle, str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK (bundle '{bundle}'")
