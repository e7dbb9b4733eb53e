"""The metrics port's certificate (controller/servingcert.py): self-signed at start-up, or from
files, reloaded when they change (with or without SNI from the client), a broken pair skipped."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from spotpool.controller.servingcert import ServingCertificate, fingerprint, self_signed


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


class Authority:
    """A test CA issuing serving certificates for localhost, as cert-manager would."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(_name("test-ca")).issuer_name(_name("test-ca"))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[bytes, bytes]:
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(_name("spotpool")).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def write_pair(directory: Path, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Replace the pair atomically, as the kubelet does when a Secret volume changes."""
    paths = directory / "tls.crt", directory / "tls.key"
    for path, data in zip(paths, (cert_pem, key_pem), strict=True):
        path.with_suffix(".new").write_bytes(data)
        os.replace(path.with_suffix(".new"), path)
    return paths


async def served_certificate(context: ssl.SSLContext, *, server_hostname: str | None,
                             client: ssl.SSLContext | None = None) -> x509.Certificate:
    """The certificate a TLS server with `context` presents to a client sending `server_hostname`
    as SNI (an IP address: no SNI at all)."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    if client is None:
        client = ssl.create_default_context()
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=server_hostname)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der)
    finally:
        server.close()
        await server.wait_closed()


async def test_without_files_a_self_signed_ecdsa_certificate_is_made_for_a_year() -> None:
    serving = ServingCertificate(hosts=["spotpool.spotpool-system.svc", "10.1.2.3"])
    assert serving.files is None and serving.source == "self-signed"
    cert = await served_certificate(serving.context, server_hostname="127.0.0.1")
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.issuer == cert.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "spotpool.spotpool-system.svc"} <= set(names.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")} <= set(
        names.get_values_for_type(x509.IPAddress))
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= lifetime <= datetime.timedelta(days=366)
    assert serving.fingerprint == fingerprint(cert.public_bytes(serialization.Encoding.PEM))
    assert not serving.reload_if_changed()
    # A new one at every start: two starts share no key.
    assert self_signed()[1] != self_signed()[1]


async def test_a_certificate_from_files_verifies_against_its_ca_and_is_reloaded_when_renewed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = Authority()
    first = ca.issue()
    cert_file, key_file = write_pair(tmp_path, *first)
    serving = ServingCertificate(cert_file, key_file)
    verifying = ssl.create_default_context(cadata=ca.pem.decode())
    presented = await served_certificate(serving.context, server_hostname="localhost", client=verifying)
    assert presented == x509.load_pem_x509_certificate(first[0])
    assert not serving.reload_if_changed(), "nothing changed"

    renewed = ca.issue()
    write_pair(tmp_path, *renewed)
    assert serving.reload_if_changed()
    expected = x509.load_pem_x509_certificate(renewed[0])
    assert await served_certificate(serving.context, server_hostname="localhost", client=verifying) == expected
    # A client that sends no SNI (Prometheus scraping a Pod IP) gets the renewed one too.
    assert await served_certificate(serving.context, server_hostname="127.0.0.1") == expected

    # A pair that does not match (the certificate renewed, the key not yet) is skipped, and the
    # served certificate stays the last good one.
    caplog.set_level(logging.WARNING, "spotpool.controller.servingcert")
    write_pair(tmp_path, ca.issue()[0], renewed[1])
    assert not serving.reload_if_changed()
    assert "do not load" in caplog.text
    assert await served_certificate(serving.context, server_hostname="localhost", client=verifying) == expected
    assert serving.fingerprint == fingerprint(renewed[0])


async def test_the_watcher_takes_a_renewed_pair_by_itself(tmp_path: Path) -> None:
    ca = Authority()
    serving = ServingCertificate(*write_pair(tmp_path, *ca.issue()))
    before = serving.fingerprint
    watcher = asyncio.ensure_future(serving.watch(interval=0.01))
    try:
        renewed = ca.issue()
        write_pair(tmp_path, *renewed)
        async with asyncio.timeout(10):
            while serving.fingerprint == before:
                await asyncio.sleep(0.01)
        assert serving.fingerprint == fingerprint(renewed[0])
    finally:
        watcher.cancel()


def test_files_that_do_not_load_stop_the_start(tmp_path: Path) -> None:
    ca = Authority()
    cert_pem, _ = ca.issue()
    cert_file, key_file = write_pair(tmp_path, cert_pem, ca.issue()[1])
    with pytest.raises(ssl.SSLError):
        ServingCertificate(cert_file, key_file)
    with pytest.raises(ValueError, match="key file"):
        ServingCertificate(cert_file, None)
    with pytest.raises(FileNotFoundError):
        ServingCertificate(tmp_path / "absent.crt", tmp_path / "absent.key")
