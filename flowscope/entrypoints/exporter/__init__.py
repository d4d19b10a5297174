"""The ``exporter`` bundle: Antrea's Flow Exporter, one per node (docs/exporter.md).

- :mod:`.bundle`: the bundle's keys, those of ``antrea-agent.conf``, and the pipeline they make;
- :mod:`.connstore`: the connection store, the ``connections`` table mode.
"""

from __future__ import annotations

import click

from flowscope.core.hookspecs import hookimpl
from flowscope.entrypoints.exporter.bundle import build
from flowscope.entrypoints.exporter.connstore import ConnectionStore


@hookimpl
def register_bundles(register):
    register("exporter", build)


@hookimpl
def register_table_modes(register):
    register("connections", ConnectionStore)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from flowscope.entrypoints.cli import bundle_command

    cli.add_command(
        bundle_command(
            "exporter",
            "Exporter config (antrea-agent.conf flow-exporter keys).",
            "Run the flow exporter bundle: conntrack → connection store → IPFIX (Antrea's Flow Exporter).",
        )
    )
