"""Certificates for TLS between a flow exporter (client) and a flow aggregator (server): a private CA,
a server certificate and a client certificate, with ECDSA P-256 keys."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass, fields
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flowscope.core.errors import FlowscopeError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1", "flow-aggregator.flow-aggregator.svc")
"""Hosts a server certificate is valid for unless told otherwise: local use and Antrea's in-cluster name."""

_CLOCK_SKEW = datetime.timedelta(minutes=5)
_FILE_NAMES = ("ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key")


class CertificateError(FlowscopeError):
    """Certificate files cannot be created as asked."""

    exit_code = 2


@dataclass(frozen=True)
class CertificatePaths:
    """Where :func:`ensure_certificates` keeps the CA, server and client certificates and keys."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertificatePaths:
        """The standard file names (``ca.crt``, ``ca.key``, ``server.crt``...) in ``directory``."""
        return cls(*(Path(directory) / name for name in _FILE_NAMES))

    def files(self) -> list[Path]:
        """All six paths, CA first."""
        return [getattr(self, f.name) for f in fields(self)]


def host_name(host: str) -> x509.GeneralName:
    """A subjectAltName entry for ``host``: an IP address if it parses as one, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.removeprefix("*.").split(".")
    if not host or not all(label and label.replace("-", "").isalnum() and label.isascii() for label in labels):
        raise ValueError(f"{host!r} is not a DNS name or IP address (e.g. 'localhost', '10.0.0.5', 'aggregator.svc')")
    return x509.DNSName(host)


def create_ca(common_name: str = "flowscope-ca", days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA valid for ``days``: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key)


def issue_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    hosts: list[str],
    *,
    client: bool = False,
    days: int = 825,
) -> tuple[bytes, bytes]:
    """A certificate signed by the CA: (certificate PEM, private key PEM).

    ``hosts`` (DNS names and IP addresses) go into subjectAltName; ``client`` makes it a TLS client
    certificate (clientAuth) instead of a server certificate (serverAuth).
    Raises ``ValueError`` for an invalid host, or a server certificate without hosts.
    """
    names = _alt_names(hosts, client=client)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _pem(builder.sign(ca_key, hashes.SHA256()), key)


def ensure_certificates(directory: Path, hosts: list[str]) -> CertificatePaths:
    """Create ``directory`` and whichever of CA, server and client certificate are missing there.

    Existing files are left alone; the server certificate is issued for ``hosts``. Keys get mode 0600.
    Raises :class:`CertificateError` when only half of a pair exists, or a new CA would not match
    certificates already issued.
    """
    paths = CertificatePaths.in_directory(directory)
    if not paths.server_cert.exists():
        try:
            _alt_names(hosts, client=False)
        except ValueError as exc:
            raise CertificateError(f"cannot issue '{paths.server_cert}': {exc}") from None
    try:
        paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(
            f"cannot create directory '{directory}': {exc.strerror or exc}; choose another directory"
        ) from None
    files = paths.files()
    pairs = list(zip(files[::2], files[1::2], strict=True))
    for cert, key in pairs:
        if cert.exists() != key.exists():
            have, missing = (cert, key) if cert.exists() else (key, cert)
            raise CertificateError(
                f"'{missing}' is missing but '{have}' exists; restore it, or delete '{have}' to have both created again"
            )
    if not paths.ca_cert.exists():
        issued = [cert for cert, _ in pairs[1:] if cert.exists()]
        if issued:
            raise CertificateError(
                f"'{paths.ca_cert}' is missing but '{issued[0]}' exists, issued by that CA; restore the CA files, or "
                f"delete the certificates in '{directory}' to have all created again"
            )
        _write_pair(paths.ca_cert, paths.ca_key, create_ca())
    leaves = [
        (paths.server_cert, paths.server_key, "flowscope-server", hosts, False),
        (paths.client_cert, paths.client_key, "flowscope-client", [], True),
    ]
    for cert, key, common_name, names, client in leaves:
        if cert.exists():
            continue
        try:
            pair = issue_certificate(_read(paths.ca_cert), _read(paths.ca_key), common_name, names, client=client)
        except ValueError as exc:
            raise CertificateError(f"cannot issue '{cert}' with the CA in '{paths.ca_cert}': {exc}") from None
        _write_pair(cert, key, pair)
    return paths


def _alt_names(hosts: list[str], *, client: bool) -> list[x509.GeneralName]:
    if not hosts and not client:
        raise ValueError("a server certificate needs at least one host name or IP address")
    return [host_name(host) for host in hosts]


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read '{path}': {exc.strerror or exc}") from None


def _write_pair(cert: Path, key: Path, pair: tuple[bytes, bytes]) -> None:
    """Write the key (mode 0600) and then the certificate; never replace an existing file."""
    for path, data, mode in ((key, pair[1], 0o600), (cert, pair[0], 0o644)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:
            raise CertificateError(f"cannot create '{path}': {exc.strerror or exc}") from None
        with os.fdopen(fd, "wb") as out:
            out.write(data)
