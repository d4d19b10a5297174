"""``flowscope get``: read a running aggregator's API, as ``antctl get`` does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from flowscope.core.apiclient import ApiClient
from flowscope.core.errors import FlowscopeError
from flowscope.core.output import print_table

DEFAULT_SERVER = "https://127.0.0.1:10348"
DEFAULT_CA = Path("flowscope-data/certs/ca.crt")
DEFAULT_TOKEN = Path("flowscope-data/api-token")
FLOW_COLUMNS = (
    ("SRC_IP", "sourceIPv4Address", "sourceIPv6Address"),
    ("DST_IP", "destinationIPv4Address", "destinationIPv6Address"),
    ("SPORT", "sourceTransportPort"),
    ("DPORT", "destinationTransportPort"),
    ("PROTO", "protocolIdentifier"),
    ("SRC_POD", "sourcePodName"),
    ("DST_POD", "destinationPodName"),
    ("SRC_NS", "sourcePodNamespace"),
    ("DST_NS", "destinationPodNamespace"),
    ("SERVICE", "destinationServicePortName"),
)
METRIC_COLUMNS = (
    ("RECORDS-EXPORTED", "numRecordsExported"),
    ("RECORDS-RECEIVED", "numRecordsReceived"),
    ("RECORDS-DROPPED", "numRecordsDropped"),
    ("FLOWS", "numFlows"),
    ("EXPORTERS-CONNECTED", "numConnToCollector"),
    ("CLICKHOUSE-EXPORTER", "withClickHouseExporter"),
    ("S3-EXPORTER", "withS3Exporter"),
    ("LOG-EXPORTER", "withLogExporter"),
    ("IPFIX-EXPORTER", "withIPFIXExporter"),
)

output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True
)


@dataclass
class Api:
    """How to reach the aggregator's API: its URL, the CA to verify it with, and the bearer token."""

    server: str
    ca_cert: str | None
    insecure: bool
    token: str | None


def api_options(command: Any) -> Any:
    """``--server``, ``--ca-cert``, ``--insecure``, ``--token`` and ``--token-file``, passed as ``api``."""
    options = [
        click.option("--server", default=DEFAULT_SERVER, show_default=True, help="The aggregator's API."),
        click.option(
            "--ca-cert",
            type=click.Path(dir_okay=False),
            default=None,
            help=f"CA of the API's certificate (default: {DEFAULT_CA}).",
        ),
        click.option("--insecure", is_flag=True, help="Do not verify the API's certificate (not recommended)."),
        click.option(
            "--token",
            envvar="FLOWSCOPE_API_TOKEN",
            default=None,
            help="Bearer token for the API (or the environment variable FLOWSCOPE_API_TOKEN).",
        ),
        click.option(
            "--token-file",
            type=click.Path(dir_okay=False),
            default=None,
            help=f"File holding the bearer token (default: {DEFAULT_TOKEN}, the aggregator's apiTokenFile).",
        ),
    ]

    def wrapped(server, ca_cert, insecure, token, token_file, **kwargs):
        return command(api=Api(server, ca_cert, insecure, token or _read_token(token_file)), **kwargs)

    wrapped.__name__, wrapped.__doc__ = command.__name__, command.__doc__
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped


def _read_token(token_file: str | None) -> str | None:
    path = Path(token_file) if token_file else DEFAULT_TOKEN
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        if token_file:
            raise FlowscopeError(f"--token-file {token_file!r} does not exist") from None
        return None
    except OSError as exc:
        raise FlowscopeError(f"cannot read the token file {str(path)!r}: {exc.strerror or exc}") from None


@click.group("get")
def get_group() -> None:
    """Read a running aggregator's flow records and metrics."""


@get_group.command("flowrecords")
@click.option("--srcip", default="", help="Source IP address.")
@click.option("--dstip", default="", help="Destination IP address.")
@click.option("--proto", default="", help="IP protocol number (6 TCP, 17 UDP).")
@click.option("--srcport", default="", help="Source port.")
@click.option("--dstport", default="", help="Destination port.")
@output_option
@api_options
def flowrecords(srcip: str, dstip: str, proto: str, srcport: str, dstport: str, output: str, api: Api) -> None:
    """The flows the aggregator holds; all five filters give one flow, fewer a partial match."""
    query = {
        k: v
        for k, v in (("srcip", srcip), ("dstip", dstip), ("proto", proto), ("srcport", srcport), ("dstport", dstport))
        if v
    }
    records = _fetch(api, "/flowrecords", query)
    if output != "table":
        _dump(records, output)
        return
    rows = [tuple(c[0] for c in FLOW_COLUMNS)]
    for record in records:
        rows.append(
            tuple(str(next((record[k] for k in c[1:] if record.get(k) not in (None, "")), "")) for c in FLOW_COLUMNS)
        )
    print_table(rows)


@get_group.command("recordmetrics")
@output_option
@api_options
def recordmetrics(output: str, api: Api) -> None:
    """Record counts of the aggregator."""
    metrics = _fetch(api, "/recordmetrics", {})
    if output != "table":
        _dump(metrics, output)
        return
    print_table([tuple(c[0] for c in METRIC_COLUMNS), tuple(_cell(metrics, c[1]) for c in METRIC_COLUMNS)])


@get_group.command("ui")
@api_options
def ui(api: Api) -> None:
    """The address of the dashboards (the web UI), with the token to open them."""
    click.echo(f"{api.server.rstrip('/')}/ui/" + (f"#token={api.token}" if api.token else ""))


def _fetch(api: Api, path: str, query: dict[str, str]) -> Any:
    ca = api.ca_cert or str(DEFAULT_CA)
    client = ApiClient(api.server, ca, api.token, api.insecure, "the aggregator API")
    return client.get(path, query)


def _dump(data: Any, output: str) -> None:
    click.echo(json.dumps(data, indent=2) if output == "json" else yaml.safe_dump(data, sort_keys=False).rstrip())


def _cell(metrics: dict[str, Any], name: str) -> str:
    """A metric as antctl prints it: a number, or true/false for a ``with...`` flag; the API leaves
    out zeros and false (omitempty)."""
    value = metrics.get(name)
    if name.startswith("with"):
        return "true" if value else "false"
    return str(value or 0)
