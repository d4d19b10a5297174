"""``flowscope certs``: create a CA, a server and a client certificate for TLS."""

from __future__ import annotations

from pathlib import Path

import click

from flowscope.core.certs import DEFAULT_HOSTS, CertificateError, CertificatePaths, ensure_certificates, host_name


def _check_hosts(_ctx: click.Context, _param: click.Parameter, hosts: tuple[str, ...]) -> tuple[str, ...]:
    for host in hosts:
        try:
            host_name(host)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return hosts


@click.command("certs")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for ca.crt, ca.key, server.crt, server.key, client.crt, client.key (created if missing).",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    callback=_check_hosts,
    metavar="NAME",
    help=f"DNS name or IP address the server certificate is valid for; repeat for several. "
    f"Default: {', '.join(DEFAULT_HOSTS)}.",
)
@click.option("--force", is_flag=True, help="Replace existing certificate and key files in --out.")
def certs_command(out: Path, hosts: tuple[str, ...], force: bool) -> None:
    """Create a private CA, a server certificate and a client certificate for TLS.

    The flow aggregator (server) presents server.crt; flow exporters (clients) verify it with ca.crt
    and, for mutual TLS, present client.crt, which the aggregator verifies with ca.crt.
    Keys are ECDSA P-256, written with mode 0600; keep ca.key private.
    Existing files are never replaced unless --force is given.

    \b
    Example:
      flowscope certs --out certs --host aggregator.example.com --host 10.0.0.5
    """
    paths = CertificatePaths.in_directory(out)
    existing = [path for path in paths.files() if path.exists()]
    if existing and not force:
        raise CertificateError(
            f"'{existing[0]}' already exists; use --force to replace all certificates in '{out}', "
            "or choose another --out directory"
        )
    for path in existing:
        try:
            path.unlink()
        except OSError as exc:
            raise CertificateError(f"cannot replace '{path}': {exc.strerror or exc}") from None
    ensure_certificates(out, list(hosts or DEFAULT_HOSTS))
    for path in paths.files():
        click.echo(f"created {path}")
    click.echo("Use them:")
    click.echo("  ipfix source (tls): tlsCert: server.crt, tlsKey: server.key, clientCA: ca.crt (mutual TLS)")
    click.echo("  ipfix sink (tls):   caCert: ca.crt, clientCert: client.crt, clientKey: client.key")
