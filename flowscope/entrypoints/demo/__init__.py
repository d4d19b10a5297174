"""``flowscope demo`` and ``flowscope up``: the whole stack on one machine, with its dashboards.

- :mod:`.cluster`: the simulated cluster as data (Nodes, Pods, Service, policies, traffic) and
  its inventory;
- :mod:`.topology`: the cluster built in network namespaces with veth links and nftables, and
  removed again;
- :mod:`.workload`: the traffic, one agent per Pod;
- :mod:`.run`: the pipelines, the progress and summary lines, the stop.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click

from flowscope.core.hookspecs import hookimpl


def _options(default_dir: str) -> Any:
    def decorate(command: Any) -> Any:
        command = click.option("--verbose", is_flag=True, help="Show the pipelines' own log lines too.")(command)
        command = click.option("--keep", is_flag=True, help="Keep the flows stored by an earlier run.")(command)
        command = click.option(
            "--data-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path(default_dir),
            show_default=True,
            help="Where ClickHouse, the certificates and the API token go (emptied at start unless --keep).",
        )(command)
        return click.option("--port", type=int, default=10348, show_default=True, help="Port of the dashboards.")(
            command
        )

    return decorate


def _run(state: Any, what: Any, data_dir: Path, port: int, keep: bool, verbose: bool) -> None:
    """Run ``what`` with the stop event set by SIGINT or SIGTERM; the pipelines' INFO lines only
    with ``--verbose``, so that the demo's own progress and summary lines can be read."""
    if not verbose:
        logging.getLogger("flowscope").setLevel(max(logging.WARNING, logging.getLogger("flowscope").level))
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    code = what(state.loaded(), data_dir, port, keep, stop, lambda line: click.echo(line))
    if code:
        raise click.exceptions.Exit(code)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from flowscope.entrypoints.demo import run

    @cli.command("demo")
    @_options("flowscope-demo")
    @click.pass_obj
    def demo(state: Any, data_dir: Path, port: int, keep: bool, verbose: bool) -> None:
        """A live two-Node cluster on this machine, end to end, with its dashboards.

        As root, builds two Nodes, four Pods in three namespaces, a ClusterIP Service (nftables DNAT)
        and an external host in network namespaces; runs one exporter per Node on its conntrack, the
        aggregator over mutual TLS, embedded ClickHouse and the web UI; and generates Pod-to-Pod,
        Pod-to-Service and Pod-to-External traffic over TCP and UDP, some of it denied by a
        NetworkPolicy. Ctrl-C or SIGTERM takes it all down. Without root or nftables, it shows
        recorded flows of the same cluster instead.
        """
        _run(state, run.demo, data_dir, port, keep, verbose)

    @cli.command("up")
    @_options("flowscope-up")
    @click.pass_obj
    def up(state: Any, data_dir: Path, port: int, keep: bool, verbose: bool) -> None:
        """This host's own flows: exporter → aggregator → ClickHouse → dashboards, on one machine.

        Reads this host's conntrack table (root), until Ctrl-C or SIGTERM.
        """
        _run(state, run.up, data_dir, port, keep, verbose)
