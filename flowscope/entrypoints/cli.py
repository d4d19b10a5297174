"""The ``flowscope`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import click

import flowscope
from flowscope.core.config import read_config_file
from flowscope.core.elements import ENTERPRISE_NAMES
from flowscope.core.errors import ConfigError, ConfigIssue, FlowscopeError, PluginError
from flowscope.core.logs import LEVELS, setup_logging
from flowscope.core.output import print_table
from flowscope.core.pipeline import Pipeline
from flowscope.core.pipelineconfig import plugin_allow_list, validate_config
from flowscope.core.plugins import Plugins, load_plugins, register_commands
from flowscope.entrypoints.certs_command import certs_command

log = logging.getLogger("flowscope.cli")
LABELS = {"tableModes": "table modes"}


@dataclass
class CliState:
    """How this invocation loads plugins, and the plugins loaded for the command tree."""

    extra_plugins: tuple[object, ...] = ()
    entry_points: bool = True
    plugins: Plugins | None = None
    plugin_error: PluginError | None = None
    debug: bool = False
    cache: dict[str, Any] = field(default_factory=dict)

    def loaded(self) -> Plugins:
        if self.plugin_error is not None:
            raise self.plugin_error
        assert self.plugins is not None
        return self.plugins

    def for_config(self, data: dict[str, Any], source: str) -> Plugins:
        """Plugins as the config's ``plugins:`` key selects them."""
        allow = plugin_allow_list(data, source)
        if allow is None:
            return self.loaded()
        return load_plugins(allow, extra=self.extra_plugins, entry_points=self.entry_points)


class FlowscopeGroup(click.Group):
    """Turns flowscope errors into one clear line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlowscopeError as exc:
            state = ctx.find_object(CliState)
            if state is not None and state.debug:
                traceback.print_exc()
            for warning in getattr(exc, "warnings", ()):
                click.echo(f"warning: {exc.source}: {warning}" if exc.source else f"warning: {warning}", err=True)
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # e.g. `flowscope elements | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except Exception as exc:
            state = ctx.find_object(CliState)
            if state is not None and state.debug:
                traceback.print_exc()
                click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
            else:
                click.echo(
                    f"error: unexpected {type(exc).__name__}: {exc} (run with --log-level debug for the traceback)",
                    err=True,
                )
            ctx.exit(1)


def build_cli(extra_plugins: Iterable[object] = (), entry_points: bool = True) -> click.Group:
    """The command tree, with subcommands added by plugins through ``register_commands``."""
    state = CliState(tuple(extra_plugins), entry_points)
    try:
        state.plugins = load_plugins(extra=state.extra_plugins, entry_points=entry_points)
    except PluginError as exc:
        state.plugin_error = exc

    @click.group(cls=FlowscopeGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(flowscope.__version__, prog_name="flowscope")
    @click.option(
        "--log-level",
        type=click.Choice(LEVELS),
        default=lambda: os.environ.get("FLOWSCOPE_LOG_LEVEL", "info"),
        show_default="info",
        help="Log verbosity; logs go to stderr. 'debug' also shows tracebacks.",
    )
    @click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Log line format."
    )
    @click.pass_context
    def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
        """flowscope: Kubernetes network-flow visibility, Antrea-compatible, built from plugins.

        Run a pipeline with `flowscope run -c FILE`; see which plugins are loaded with
        `flowscope plugins`.
        """
        setup_logging(log_level, log_format)
        state.debug = log_level == "debug"
        ctx.obj = state

    cli.add_command(run_command)
    cli.add_command(plugins_command)
    cli.add_command(elements_command)
    cli.add_command(config_group)
    cli.add_command(certs_command)
    if state.plugins is not None:
        try:
            register_commands(state.plugins, cli)
        except PluginError as exc:
            state.plugin_error = exc
    return cli


@click.command("run")
@click.option(
    "-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Pipeline config file (YAML)."
)
@click.pass_obj
def run_command(state: CliState, config_path: str) -> None:
    """Run the pipeline described by a config file until stopped (Ctrl-C) or its sources end."""
    run_config(state, config_path)


def bundle_command(bundle: str, config_help: str, doc: str) -> click.Command:
    """``flowscope <bundle> -c FILE``: run a config as that bundle's (its ``bundle:`` key may be left out)."""

    @click.command(bundle, help=doc)
    @click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False), help=config_help)
    @click.pass_obj
    def command(state: CliState, config_path: str) -> None:
        run_config(state, config_path, bundle=bundle)

    return command


def read_bundle_config(config_path: str, bundle: str | None, given_by: str) -> dict[str, Any]:
    """A config file; ``bundle`` makes it that bundle's config, so that its ``bundle:`` key may be left
    out (as in Antrea's own ``flow-aggregator.conf`` and ``antrea-agent.conf``)."""
    data = read_config_file(config_path)
    if bundle is not None:
        if data.get("bundle", bundle) != bundle:
            raise ConfigError(
                ConfigIssue("bundle", f"{data['bundle']!r} in the file, {bundle!r} given by {given_by}; keep one"),
                config_path,
            )
        data["bundle"] = bundle
    return data


def run_config(state: CliState, config_path: str, bundle: str | None = None) -> None:
    """Validate and run a config; ``bundle`` makes it that bundle's config (``bundle:`` may be omitted)."""
    data = read_bundle_config(config_path, bundle, f"'flowscope {bundle}'")
    plugins = state.for_config(data, config_path)
    config = validate_config(data, plugins, config_path)
    for warning in config.warnings:
        log.warning("%s: %s", config_path, warning)
    pipeline = Pipeline(config, plugins)
    _install_signal_handlers(pipeline)
    code = pipeline.run()
    if code:
        raise click.exceptions.Exit(code)


def _install_signal_handlers(pipeline: Pipeline) -> None:
    def handle(signum: int, _frame: Any) -> None:
        log.info("received %s", signal.Signals(signum).name)
        pipeline.stop()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def plugins_command(state: CliState, as_json: bool) -> None:
    """List loaded plugins, their versions and the types they register."""
    plugins = state.loaded()
    infos = sorted(plugins.info.values(), key=lambda i: (not i.builtin, i.name))
    if as_json:
        click.echo(json.dumps([info.as_dict() for info in infos], indent=2))
        return
    rows = [("NAME", "PACKAGE", "VERSION", "REGISTERS")]
    for info in infos:
        registers = [f"{LABELS.get(kind, kind)}: {', '.join(names)}" for kind, names in info.types.items() if names]
        if info.elements:
            registers.append(f"elements: {info.elements}")
        if "register_commands" in info.hooks:
            registers.append("commands")
        rows.append((info.name, info.package or "-", info.version or "-", "; ".join(registers) or "-"))
    print_table(rows)


@click.command("elements")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--enterprise", type=int, default=None, help="Only this enterprise number (0, 29305, 56506...).")
@click.pass_obj
def elements_command(state: CliState, as_json: bool, enterprise: int | None) -> None:
    """List the Information Element registry."""
    elements = [e for e in state.loaded().elements if enterprise is None or e.enterprise_id == enterprise]
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in elements], indent=2))
        return
    rows = [("ENTERPRISE", "ID", "NAME", "TYPE", "REGISTRY")]
    for e in elements:
        rows.append(
            (str(e.enterprise_id), str(e.element_id), e.name, e.type, ENTERPRISE_NAMES.get(e.enterprise_id, e.origin))
        )
    print_table(rows)


@click.group("config")
def config_group() -> None:
    """Work with config files."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--bundle",
    metavar="NAME",
    help="Check the file as this bundle's config, e.g. 'aggregator' for flow-aggregator.conf or 'exporter' for "
    "antrea-agent.conf (instead of a 'bundle:' key in the file).",
)
@click.pass_obj
def config_check(state: CliState, path: str, bundle: str | None) -> None:
    """Validate a config file: exit 0 if it is valid, else print every problem and exit 2."""
    data = read_bundle_config(path, bundle, "--bundle")
    config = validate_config(data, state.for_config(data, path), path)
    for warning in config.warnings:
        click.echo(f"warning: {path}: {warning}", err=True)
    parts = [f"{len(config.sources)} source(s)", f"{len(config.enrichers)} enricher(s)", f"{len(config.sinks)} sink(s)"]
    what = f"bundle {config.bundle!r}, " if config.bundle else ""
    click.echo(f"{path}: OK ({what}{', '.join(parts)}, table {config.table.mode})")


def main(argv: list[str] | None = None) -> None:
    build_cli().main(args=argv, prog_name="flowscope")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
