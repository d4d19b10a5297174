"""Mutual TLS for the gRPC transport, from the same files as the IPFIX TLS source and sink.

As Antrea's: the aggregator presents its server certificate and requires a client certificate
signed by its CA; the exporter verifies the aggregator's certificate with that CA (for the name in
``serverName``, else the host it dials) and presents its client certificate. Without files, both
ends use ``<dataDir>/certs``, where the CA, server and client certificates are made on first use.
The files are first loaded as :mod:`flowscope.core.tlsconfig` does, for its clear errors; gRPC then
gets their PEM bytes.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import grpc

from flowscope.core.certs import CertificatePaths, ensure_certificates
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.tlsconfig import client_context, server_context

ServerFiles = tuple[str, str, str | None]
"""Server certificate, server key, and the CA client certificates must be signed by (``None``: any client)."""
ClientFiles = tuple[str | None, str | None, str | None]
"""CA of the server's certificate (``None``: the system's), client certificate, client key."""


def server_files(options: dict[str, Any], data_dir: Path, log: logging.Logger) -> ServerFiles:
    """The files the ``grpc`` source serves with: those given, or those in ``<dataDir>/certs``."""
    cert, key, client_ca = options["tlsCert"], options["tlsKey"], options["clientCA"]
    if cert is None and key is None:
        hosts = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *options["tlsHosts"]]
        paths = ensure_certificates(data_dir / "certs", list(dict.fromkeys(hosts)))
        cert, key = str(paths.server_cert), str(paths.server_key)
        client_ca = client_ca or str(paths.ca_cert)
        log.info("tls: no tlsCert given, serving %s (CA: %s)", cert, paths.ca_cert)
    elif cert is None or key is None:
        missing = "tlsCert" if cert is None else "tlsKey"
        raise ConfigError(ConfigIssue(missing, "tlsCert and tlsKey go together; give both, or neither"))
    if not options["clientAuth"]:
        log.warning("tls: clientAuth is false: any client may send records")
        return cert, key, None
    if client_ca is None:
        raise ConfigError(
            ConfigIssue(
                "clientCA",
                "required for mutual TLS (clientAuth: true, the default): give the CA that signed the "
                "exporters' client certificates, or set clientAuth: false to accept any client",
            )
        )
    return cert, key, client_ca


def server_credentials(files: ServerFiles) -> grpc.ServerCredentials:
    cert, key, client_ca = files
    server_context(cert, key, client_ca, key_prefix="tlsCert")  # a bad file: a ConfigError naming it
    return grpc.ssl_server_credentials(
        [(_read(key), _read(cert))],
        root_certificates=_read(client_ca) if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def client_files(options: dict[str, Any], data_dir: Path, log: logging.Logger) -> ClientFiles:
    """caCert, clientCert and clientKey; those not given come from ``<dataDir>/certs`` when there
    (where ``flowscope certs`` and an aggregator on the same host put them)."""
    ca, cert, key = options["caCert"], options["clientCert"], options["clientKey"]
    local = CertificatePaths.in_directory(data_dir / "certs")
    if ca is None and local.ca_cert.is_file():
        ca = str(local.ca_cert)
    if cert is None and key is None and local.client_cert.is_file() and local.client_key.is_file():
        cert, key = str(local.client_cert), str(local.client_key)
        log.info("tls: presenting the client certificate %s", cert)
    return ca, cert, key


def channel_credentials(files: ClientFiles) -> grpc.ChannelCredentials:
    ca, cert, key = files
    client_context(ca, cert, key, key_prefix="caCert")  # a bad file: a ConfigError naming it
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca) if ca else None,
        private_key=_read(key) if key else None,
        certificate_chain=_read(cert) if cert else None,
    )


def _read(path: str) -> bytes:
    return Path(path).read_bytes()
