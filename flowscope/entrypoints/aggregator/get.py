"""``flowscope get``: read a running aggregator's API, as ``antctl get`` does."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click
import yaml

from flowscope.core.errors import FlowscopeError
from flowscope.core.output import print_table

DEFAULT_SERVER = "https://127.0.0.1:10348"
DEFAULT_CA = Path("flowscope-data/certs/ca.crt")
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

server_option = click.option("--server", default=DEFAULT_SERVER, show_default=True, help="The aggregator's API.")
ca_option = click.option(
    "--ca-cert",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"CA of the API's certificate (default: {DEFAULT_CA} when it exists, else unverified).",
)
output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True
)


@click.group("get")
def get_group() -> None:
    """Read a running aggregator's flow records and metrics."""


@get_group.command("flowrecords")
@click.option("--srcip", default="", help="Source IP address.")
@click.option("--dstip", default="", help="Destination IP address.")
@click.option("--proto", default="", help="IP protocol number (6 TCP, 17 UDP).")
@click.option("--srcport", default="", help="Source port.")
@click.option("--dstport", default="", help="Destination port.")
@server_option
@ca_option
@output_option
def flowrecords(
    srcip: str, dstip: str, proto: str, srcport: str, dstport: str, server: str, ca_cert: str | None, output: str
) -> None:
    """The flows the aggregator holds; all five filters give one flow, fewer a partial match."""
    query = {
        k: v
        for k, v in (("srcip", srcip), ("dstip", dstip), ("proto", proto), ("srcport", srcport), ("dstport", dstport))
        if v
    }
    records = _fetch(server, "/flowrecords", query, ca_cert)
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
@server_option
@ca_option
@output_option
def recordmetrics(server: str, ca_cert: str | None, output: str) -> None:
    """Record counts of the aggregator."""
    metrics = _fetch(server, "/recordmetrics", {}, ca_cert)
    if output != "table":
        _dump(metrics, output)
        return
    print_table([tuple(c[0] for c in METRIC_COLUMNS), tuple(_cell(metrics.get(c[1])) for c in METRIC_COLUMNS)])


def _fetch(server: str, path: str, query: dict[str, str], ca_cert: str | None) -> Any:
    url = server.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
    context = None
    if url.startswith("https"):
        ca = ca_cert or (str(DEFAULT_CA) if DEFAULT_CA.exists() else None)
        context = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
        if ca:
            context.check_hostname = False  # the certificate is for the aggregator's names, the URL may be an IP
    try:
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise FlowscopeError(f"{url}: {exc.code} {exc.read().decode(errors='replace').strip()}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FlowscopeError(
            f"cannot reach the aggregator API at {server}: {reason}; is it running (apiServer.apiPort)?"
        ) from None


def _dump(data: Any, output: str) -> None:
    click.echo(json.dumps(data, indent=2) if output == "json" else yaml.safe_dump(data, sort_keys=False).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "0" if value is None else str(value)
