"""Certificates and TLS contexts, tested with real handshakes over 127.0.0.1 and the ``certs`` command."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from flowscope.core.certs import (
    CertificateError,
    CertificatePaths,
    create_ca,
    ensure_certificates,
    issue_certificate,
)
from flowscope.core.errors import ConfigError
from flowscope.core.tlsconfig import client_context, server_context

TIMEOUT = 10
HOSTS = ["localhost", "127.0.0.1", "::1"]
HINT = "create one with 'flowscope certs --out DIR --host NAME'"
FLOWSCOPE = [sys.executable, "-m", "flowscope.entrypoints.cli"]
FILES = ["ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertificatePaths:
    return ensure_certificates(tmp_path_factory.mktemp("certs"), HOSTS)


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory) -> CertificatePaths:
    """Certificates from a second, unrelated CA."""
    return ensure_certificates(tmp_path_factory.mktemp("other"), HOSTS)


@dataclass
class Outcome:
    reply: bytes = b""
    client_error: OSError | None = None
    server_error: OSError | None = None


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "127.0.0.1") -> Outcome:
    """Connect ``client`` to a one-connection TLS server; the server replies with the client's CN."""
    outcome = Outcome()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with server.wrap_socket(conn, server_side=True) as tls:
                    subject = dict(item[0] for item in (tls.getpeercert() or {}).get("subject", ()))
                    tls.sendall(f"hello {subject.get('commonName', 'anonymous')}".encode())
            except OSError as exc:
                outcome.server_error = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw,
                client.wrap_socket(raw, server_hostname=hostname) as tls,
            ):
                outcome.reply = tls.recv(100)
        except OSError as exc:
            outcome.client_error = exc
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "TLS server thread did not finish"
    return outcome


# ---------------------------------------------------------------------------------------------
# Handshakes


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_client_verifies_server_with_ca(certs, hostname):
    server = server_context(certs.server_cert, certs.server_key)
    outcome = handshake(server, client_context(certs.ca_cert), hostname)
    assert (outcome.client_error, outcome.server_error) == (None, None)
    assert outcome.reply == b"hello anonymous"


def test_mutual_tls_accepts_client_certificate(certs):
    server = server_context(certs.server_cert, certs.server_key, certs.ca_cert)
    client = client_context(certs.ca_cert, certs.client_cert, certs.client_key)
    outcome = handshake(server, client)
    assert (outcome.client_error, outcome.server_error) == (None, None)
    assert outcome.reply == b"hello flowscope-client"


def test_mutual_tls_refuses_client_without_certificate(certs):
    server = server_context(certs.server_cert, certs.server_key, certs.ca_cert)
    outcome = handshake(server, client_context(certs.ca_cert))
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert outcome.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert outcome.reply == b""


def test_mutual_tls_refuses_client_certificate_of_another_ca(certs, other_certs):
    server = server_context(certs.server_cert, certs.server_key, certs.ca_cert)
    client = client_context(certs.ca_cert, other_certs.client_cert, other_certs.client_key)
    outcome = handshake(server, client)
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert outcome.reply == b""


def test_mutual_tls_refuses_server_certificate_as_client_certificate(certs):
    server = server_context(certs.server_cert, certs.server_key, certs.ca_cert)
    client = client_context(certs.ca_cert, certs.server_cert, certs.server_key)
    outcome = handshake(server, client)
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "certificate purpose" in outcome.server_error.verify_message  # "unsuitable" or "unsupported"


def test_client_with_another_ca_fails_verification(certs, other_certs):
    server = server_context(certs.server_cert, certs.server_key)
    outcome = handshake(server, client_context(other_certs.ca_cert))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert outcome.client_error.verify_message == "unable to get local issuer certificate"
    assert isinstance(outcome.server_error, ssl.SSLError)


def test_client_checks_host_name(certs):
    server = server_context(certs.server_cert, certs.server_key)
    outcome = handshake(server, client_context(certs.ca_cert), "aggregator.example.com")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in outcome.client_error.verify_message


def test_client_without_ca_uses_system_store_and_rejects_private_ca(certs):
    server = server_context(certs.server_cert, certs.server_key)
    outcome = handshake(server, client_context())
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_client_without_verification_connects(other_certs):
    server = server_context(other_certs.server_cert, other_certs.server_key)
    outcome = handshake(server, client_context(verify=False), "anything.invalid")
    assert (outcome.client_error, outcome.server_error, outcome.reply) == (None, None, b"hello anonymous")


def test_contexts_require_tls_1_2(certs):
    assert server_context(certs.server_cert, certs.server_key).minimum_version == ssl.TLSVersion.TLSv1_2
    assert client_context(certs.ca_cert).minimum_version == ssl.TLSVersion.TLSv1_2


# ---------------------------------------------------------------------------------------------
# Errors for bad files


def config_error(call, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_missing_files(certs, tmp_path):
    missing = tmp_path / "server.crt"
    assert config_error(server_context, missing, certs.server_key) == (
        f"invalid configuration: tls: cannot load certificate '{missing}': no such file; {HINT}"
    )
    assert config_error(server_context, certs.server_cert, missing) == (
        f"invalid configuration: tls: cannot load private key '{missing}': no such file; {HINT}"
    )
    assert config_error(client_context, missing, key_prefix="sources[0].tlsCA") == (
        f"invalid configuration: sources[0].tlsCA: cannot load CA certificate '{missing}': no such file; {HINT}"
    )
    assert config_error(server_context, certs.server_cert, certs.server_key, missing, key_prefix="x.clientCA") == (
        f"invalid configuration: x.clientCA: cannot load CA certificate '{missing}': no such file; {HINT}"
    )


def test_garbage_files(certs, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    assert config_error(server_context, garbage, certs.server_key, key_prefix="sources[0].tlsCert") == (
        f"invalid configuration: sources[0].tlsCert: cannot load certificate '{garbage}': "
        "not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line); give a PEM file"
    )
    assert config_error(server_context, certs.server_cert, garbage) == (
        f"invalid configuration: tls: cannot load private key '{garbage}': "
        "not a PEM private key (no '-----BEGIN PRIVATE KEY-----' line); give a PEM file"
    )
    assert config_error(client_context, certs.ca_cert, garbage, certs.client_key) == (
        f"invalid configuration: tls: cannot load certificate '{garbage}': "
        "not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line); give a PEM file"
    )
    # a private key where the CA certificate belongs
    assert config_error(client_context, certs.ca_key) == (
        f"invalid configuration: tls: cannot load CA certificate '{certs.ca_key}': "
        "not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line); give a PEM file"
    )


def test_damaged_empty_and_directory_files(certs, tmp_path):
    damaged = tmp_path / "damaged.crt"
    damaged.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    assert config_error(server_context, damaged, certs.server_key) == (
        f"invalid configuration: tls: cannot load certificate '{damaged}': the PEM certificate in it is damaged; {HINT}"
    )
    damaged_key = tmp_path / "damaged.key"
    damaged_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert config_error(server_context, certs.server_cert, damaged_key) == (
        f"invalid configuration: tls: cannot load private key '{damaged_key}': "
        f"the PEM private key in it is damaged or of an unsupported type; {HINT}"
    )
    empty = tmp_path / "empty.crt"
    empty.write_bytes(b"")
    assert config_error(client_context, empty) == (
        f"invalid configuration: tls: cannot load CA certificate '{empty}': the file is empty; {HINT}"
    )
    assert config_error(server_context, tmp_path, certs.server_key) == (
        f"invalid configuration: tls: cannot load certificate '{tmp_path}': "
        "it is a directory; give the path of a PEM file"
    )


def test_key_that_does_not_match_certificate(certs):
    assert config_error(server_context, certs.server_cert, certs.client_key, key_prefix="sinks[1]") == (
        f"invalid configuration: sinks[1]: private key '{certs.client_key}' does not match certificate "
        f"'{certs.server_cert}'; give the key that was created together with this certificate"
    )


def test_encrypted_key(certs, tmp_path):
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert config_error(server_context, certs.server_cert, encrypted) == (
        f"invalid configuration: tls: cannot load private key '{encrypted}': "
        "it is encrypted; give an unencrypted key (openssl pkey -in KEY -out NEW_KEY)"
    )


def test_client_certificate_needs_its_key(certs):
    assert config_error(client_context, certs.ca_cert, certs.client_cert) == (
        "invalid configuration: tls: a client certificate is given without its key; give both, or neither"
    )
    assert config_error(client_context, certs.ca_cert, key_file=certs.client_key) == (
        "invalid configuration: tls: a client key is given without its certificate; give both, or neither"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(certs, tmp_path):
    unreadable = tmp_path / "server.key"
    shutil.copy(certs.server_key, unreadable)
    unreadable.chmod(0)
    assert config_error(server_context, certs.server_cert, unreadable) == (
        f"invalid configuration: tls: cannot load private key '{unreadable}': "
        "permission denied; make it readable by the user running flowscope"
    )


# ---------------------------------------------------------------------------------------------
# Certificates


def test_issued_certificates_have_names_and_usages():
    ca_cert, ca_key = create_ca("test-ca", days=30)
    ca = x509.load_pem_x509_certificate(ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True

    server_pem, _ = issue_certificate(ca_cert, ca_key, "srv", ["db.example", "10.1.2.3", "fd00::1"])
    server = x509.load_pem_x509_certificate(server_pem)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["db.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "fd00::1"]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert server.issuer == ca.subject

    client_pem, _ = issue_certificate(ca_cert, ca_key, "exporter", [], client=True)
    client = x509.load_pem_x509_certificate(client_pem)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]

    with pytest.raises(ValueError, match="'bad host' is not a DNS name or IP address"):
        issue_certificate(ca_cert, ca_key, "srv", ["bad host"])
    with pytest.raises(ValueError, match="a server certificate needs at least one host"):
        issue_certificate(ca_cert, ca_key, "srv", [])


def test_ensure_certificates_leaves_existing_files_alone(tmp_path):
    directory = tmp_path / "a" / "b"
    paths = ensure_certificates(directory, ["localhost"])
    assert sorted(p.name for p in directory.iterdir()) == sorted(FILES)
    before = {path: path.read_bytes() for path in paths.files()}
    assert ensure_certificates(directory, ["other.example"]) == paths
    assert {path: path.read_bytes() for path in paths.files()} == before

    paths.client_cert.unlink()
    paths.client_key.unlink()
    ensure_certificates(directory, ["localhost"])
    assert {path: path.read_bytes() for path in paths.files() if "client" not in path.name} == {
        path: data for path, data in before.items() if "client" not in path.name
    }
    client = client_context(paths.ca_cert, paths.client_cert, paths.client_key)
    server = server_context(paths.server_cert, paths.server_key, paths.ca_cert)
    assert handshake(server, client, "localhost").reply == b"hello flowscope-client"


def test_ensure_certificates_refuses_half_pairs(tmp_path):
    paths = ensure_certificates(tmp_path, ["localhost"])
    paths.server_key.unlink()
    with pytest.raises(CertificateError) as info:
        ensure_certificates(tmp_path, ["localhost"])
    assert str(info.value) == (
        f"'{paths.server_key}' is missing but '{paths.server_cert}' exists; "
        f"restore it, or delete '{paths.server_cert}' to have both created again"
    )
    paths.server_cert.unlink()
    paths.ca_cert.unlink()
    paths.ca_key.unlink()
    with pytest.raises(CertificateError) as info:
        ensure_certificates(tmp_path, ["localhost"])
    assert str(info.value) == (
        f"'{paths.ca_cert}' is missing but '{paths.client_cert}' exists, issued by that CA; restore the CA files, "
        f"or delete the certificates in '{tmp_path}' to have all created again"
    )


def test_ensure_certificates_checks_hosts_before_writing(tmp_path):
    with pytest.raises(CertificateError, match="'bad host' is not a DNS name or IP address"):
        ensure_certificates(tmp_path / "certs", ["bad host"])
    assert not (tmp_path / "certs").exists()


# ---------------------------------------------------------------------------------------------
# flowscope certs


def flowscope_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLOWSCOPE, "certs", *args], capture_output=True, text=True, timeout=60)


def test_certs_command(tmp_path):
    out = tmp_path / "certs"
    result = flowscope_certs("--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name in FILES:
        assert f"created {out / name}" in result.stdout
        mode = stat.S_IMODE((out / name).stat().st_mode)
        if name.endswith(".key"):
            assert mode == 0o600, name
    assert result.stdout.splitlines()[-3:] == [
        "Use them:",
        "  ipfix source (tls): tlsCert: server.crt, tlsKey: server.key, clientCA: ca.crt (mutual TLS)",
        "  ipfix sink (tls):   caCert: ca.crt, clientCert: client.crt, clientKey: client.key",
    ]
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "flow-aggregator.flow-aggregator.svc"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]

    before = (out / "ca.crt").read_bytes()
    again = flowscope_certs("--out", str(out))
    assert again.returncode == 2
    assert again.stderr == (
        f"error: '{out / 'ca.crt'}' already exists; use --force to replace all certificates in '{out}', "
        "or choose another --out directory\n"
    )
    assert (out / "ca.crt").read_bytes() == before

    forced = flowscope_certs("--out", str(out), "--force", "--host", "aggregator.example", "--host", "10.0.0.5")
    assert forced.returncode == 0, forced.stderr
    assert (out / "ca.crt").read_bytes() != before
    server = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["aggregator.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]

    if shutil.which("openssl"):
        for name in ("server.crt", "client.crt"):
            verified = subprocess.run(
                ["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / name)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert verified.stdout.strip() == f"{out / name}: OK", verified.stderr


def test_certs_command_help_and_bad_host(tmp_path):
    result = flowscope_certs("--help")
    assert result.returncode == 0
    for text in ("--out DIRECTORY", "--host NAME", "--force", "flow-aggregator.flow-aggregator.svc", "mutual TLS"):
        assert text in result.stdout
    bad = flowscope_certs("--out", str(tmp_path / "x"), "--host", "bad host")
    assert bad.returncode == 2
    assert "Invalid value for '--host': 'bad host' is not a DNS name or IP address" in bad.stderr
    assert not (tmp_path / "x").exists()
