"""TLS contexts for flow transport: the aggregator side serves a certificate (and may require client
certificates), the exporter side verifies it. Bad certificate or key files become a :class:`ConfigError`
naming the file and what is wrong with it."""

from __future__ import annotations

import os
import ssl
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from flowscope.core.errors import ConfigError, ConfigIssue

StrPath = str | os.PathLike[str]

CREATE_HINT = "create one with 'flowscope certs --out DIR --host NAME'"


def server_context(
    cert_file: StrPath, key_file: StrPath, client_ca_file: StrPath | None = None, *, key_prefix: str = "tls"
) -> ssl.SSLContext:
    """A TLS ≥1.2 server context presenting ``cert_file``/``key_file``.

    With ``client_ca_file``, clients must present a certificate signed by that CA (mutual TLS).
    ``key_prefix`` is the config key the files came from, used in error messages.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert_chain(context, cert_file, key_file, key_prefix)
    if client_ca_file is not None:
        _load_ca(context, client_ca_file, key_prefix)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: StrPath | None = None,
    cert_file: StrPath | None = None,
    key_file: StrPath | None = None,
    verify: bool = True,
    *,
    key_prefix: str = "tls",
) -> ssl.SSLContext:
    """A TLS ≥1.2 client context that verifies the server's certificate and host name.

    The server is verified against ``ca_file``, or the system's CA store when it is ``None``;
    ``verify=False`` turns verification off (for testing only; ``ca_file`` is then not used).
    ``cert_file`` and ``key_file`` together give a client certificate for mutual TLS.
    ``key_prefix`` is the config key the files came from, used in error messages.
    """
    if (cert_file is None) != (key_file is None):
        given, needed = ("certificate", "key") if key_file is None else ("key", "certificate")
        raise ConfigError(
            ConfigIssue(key_prefix, f"a client {given} is given without its {needed}; give both, or neither")
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        _load_ca(context, ca_file, key_prefix)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_file is not None and key_file is not None:
        _load_cert_chain(context, cert_file, key_file, key_prefix)
    return context


def _load_cert_chain(context: ssl.SSLContext, cert_file: StrPath, key_file: StrPath, key_prefix: str) -> None:
    cert = _certificates(cert_file, "certificate", key_prefix)[0]
    key = _private_key(key_file, key_prefix)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError(
            ConfigIssue(
                key_prefix,
                f"private key '{os.fspath(key_file)}' does not match certificate '{os.fspath(cert_file)}'; "
                "give the key that was created together with this certificate",
            )
        )
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        _fail(cert_file, "certificate", key_prefix, f"rejected with key '{os.fspath(key_file)}': {_problem(exc)}")


def _load_ca(context: ssl.SSLContext, ca_file: StrPath, key_prefix: str) -> None:
    _certificates(ca_file, "CA certificate", key_prefix)
    try:
        context.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        _fail(ca_file, "CA certificate", key_prefix, f"rejected: {_problem(exc)}")


def _certificates(path: StrPath, what: str, key_prefix: str) -> list[x509.Certificate]:
    data = _read(path, what, key_prefix)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        _fail(path, what, key_prefix, "not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line); give a PEM file")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        _fail(path, what, key_prefix, f"the PEM certificate in it is damaged; {CREATE_HINT}")


def _private_key(path: StrPath, key_prefix: str) -> PrivateKeyTypes:
    what = "private key"
    data = _read(path, what, key_prefix)
    if b"PRIVATE KEY-----" not in data:
        _fail(path, what, key_prefix, "not a PEM private key (no '-----BEGIN PRIVATE KEY-----' line); give a PEM file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        _fail(path, what, key_prefix, "it is encrypted; give an unencrypted key (openssl pkey -in KEY -out NEW_KEY)")
    except (ValueError, UnsupportedAlgorithm):
        _fail(path, what, key_prefix, f"the PEM private key in it is damaged or of an unsupported type; {CREATE_HINT}")


def _read(path: StrPath, what: str, key_prefix: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        _fail(path, what, key_prefix, f"no such file; {CREATE_HINT}")
    except PermissionError:
        _fail(path, what, key_prefix, "permission denied; make it readable by the user running flowscope")
    except IsADirectoryError:
        _fail(path, what, key_prefix, "it is a directory; give the path of a PEM file")
    except OSError as exc:
        _fail(path, what, key_prefix, _problem(exc))
    if not data.strip():
        _fail(path, what, key_prefix, f"the file is empty; {CREATE_HINT}")
    return data


def _problem(exc: OSError) -> str:
    """What went wrong, without errno or OpenSSL library codes."""
    return getattr(exc, "reason", None) or exc.strerror or str(exc)


def _fail(path: StrPath, what: str, key_prefix: str, problem: str) -> NoReturn:
    raise ConfigError(ConfigIssue(key_prefix, f"cannot load {what} '{os.fspath(path)}': {problem}")) from None
