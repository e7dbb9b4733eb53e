"""The metrics port's TLS certificate: from files, reloaded when they change, or self-signed.

Files (`--metrics-cert-file`, `--metrics-key-file`; the chart mounts them from a Secret, such as
cert-manager's) let Prometheus verify the operator against a CA. They are checked every
`RELOAD_INTERVAL` seconds and a changed pair is served from the next handshake on (cert-manager
renews before expiry; the kubelet swaps a Secret volume's files at once); a pair that does not load
(half written, key and certificate apart) is logged and the previous one kept.

Without files, a self-signed certificate is made at start-up, in memory, as controller-runtime's
metrics server does when it has no certificate directory: the traffic (bearer tokens included) is
encrypted, and the scraper, which cannot verify it, skips verification (the ServiceMonitor's
`insecureSkipVerify`). The private key is never written to a disk: Python's ssl module loads a
chain from paths only, so it goes through anonymous memory files (memfd) where the system has them.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 10.0
SELF_SIGNED_DAYS = 365


def self_signed(hosts: Iterable[str] = ()) -> tuple[bytes, bytes]:
    """A self-signed serving certificate and its key, PEM: ECDSA P-256, valid for a year (from five
    minutes ago, for clocks a little behind), for localhost, 127.0.0.1, ::1, this host's name and
    `hosts`."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    for host in dict.fromkeys(["localhost", socket.gethostname(), *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host:
                names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spotpool-metrics")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2+, the default ciphers
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def context_from_pem(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context holding the chain `cert_pem` and its key, loaded without a file on disk
    where memfd exists (Linux), else through a private temporary directory, removed at once."""
    context = _server_context()
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("spotpool-metrics-cert"), os.memfd_create("spotpool-metrics-key")]
        try:
            for fd, data in zip(fds, (cert_pem, key_pem), strict=True):
                os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return context
    with tempfile.TemporaryDirectory(prefix="spotpool-metrics-") as directory:  # mode 0700
        cert, key = Path(directory, "tls.crt"), Path(directory, "tls.key")
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        context.load_cert_chain(cert, key)
    return context


def fingerprint(cert_pem: bytes) -> str:
    """The certificate's SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256` prints it."""
    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)


class ServingCertificate:
    """The SSL context the metrics port serves with (`context`), from files or self-signed.

    A reloaded pair goes into a new context, which the served one's SNI callback hands each new
    handshake to (the callback runs for every ClientHello, with or without a server name). Loading
    a new pair into the served context itself could leave it with a certificate and no key
    when the pair does not match, or with both the old and the new certificate when the key type
    changes."""

    def __init__(self, cert_file: Path | None = None, key_file: Path | None = None,
                 hosts: Iterable[str] = ()) -> None:
        if (cert_file is None) != (key_file is None):
            raise ValueError("a certificate file needs its key file, and the other way round")
        self.files = (cert_file, key_file) if cert_file is not None and key_file is not None else None
        if self.files is None:
            cert_pem, key_pem = self_signed(hosts)
            self.source = "self-signed"
        else:
            self._stamp = self._stamp_of()
            cert_pem, key_pem = self.files[0].read_bytes(), self.files[1].read_bytes()
            self.source = f"{self.files[0]} and {self.files[1]}"
        self.fingerprint = fingerprint(cert_pem)
        self.context = self._current = context_from_pem(cert_pem, key_pem)
        self.context.sni_callback = self._select

    def _select(self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        if self._current is not context:
            ssl_object.context = self._current

    def _stamp_of(self) -> tuple[tuple[int, int, int], ...]:
        assert self.files is not None
        stats = [os.stat(path) for path in self.files]  # through the Secret volume's symlinks
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def reload_if_changed(self) -> bool:
        """Serve the files' pair from the next handshake on if either file changed since it was last
        read; True when a new pair was taken. A pair that does not load is logged and skipped
        (tried again when the files change again)."""
        if self.files is None:
            return False
        try:
            stamp = self._stamp_of()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            cert_pem, key_pem = self.files[0].read_bytes(), self.files[1].read_bytes()
            context = context_from_pem(cert_pem, key_pem)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("metrics: the certificate files changed but do not load (%s); still serving the "
                        "previous certificate", type(exc).__name__)
            return False
        self._current = context
        self.fingerprint = fingerprint(cert_pem)
        log.info("metrics: serving the renewed certificate from %s (SHA-256 %s)", self.source, self.fingerprint)
        return True

    async def watch(self, interval: float = RELOAD_INTERVAL) -> None:
        """Reload the files when they change, until cancelled; nothing to do for a self-signed one."""
        while self.files is not None:
            await asyncio.sleep(interval)
            self.reload_if_changed()
