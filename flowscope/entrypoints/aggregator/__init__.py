"""The ``aggregator`` bundle: Antrea's Flow Aggregator (docs/aggregator.md).

- :mod:`.bundle`: the bundle's keys, those of ``flow-aggregator.conf``, and the pipeline they make;
- :mod:`.aggregation`: the ``aggregate`` table mode, correlating and aggregating the two nodes'
  records, with its per-record work in :mod:`.correlate` (C twin: ``_correlate.c``) and its compact
  per-flow state in :mod:`.aggregate`;
- :mod:`.api`: the ``/flowrecords`` and ``/recordmetrics`` routes; :mod:`.get`: ``flowscope get``.
"""

from __future__ import annotations

import click

from flowscope.core.hookspecs import hookimpl
from flowscope.entrypoints.aggregator import api
from flowscope.entrypoints.aggregator.aggregation import Aggregation
from flowscope.entrypoints.aggregator.bundle import build


@hookimpl
def register_bundles(register):
    register("aggregator", build)


@hookimpl
def register_table_modes(register):
    register("aggregate", Aggregation)


@hookimpl
def register_routes(register):
    register("/flowrecords", api.flow_records)
    register("/recordmetrics", api.record_metrics)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from flowscope.entrypoints.aggregator.get import get_group
    from flowscope.entrypoints.cli import bundle_command

    cli.add_command(
        bundle_command(
            "aggregator",
            "Aggregator config (flow-aggregator.conf keys).",
            "Run the flow aggregator bundle: IPFIX in → correlation → collectors (Antrea's Flow Aggregator).",
        )
    )
    cli.add_command(get_group)
