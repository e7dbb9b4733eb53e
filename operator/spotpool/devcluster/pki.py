"""Certificates for a throw-away local control plane.

kube-apiserver needs a serving certificate, a client CA (its only authenticator here, as in
controller-runtime's envtest) and a service-account signing key (for the TokenRequest API, which the
RBAC tests use to act as the operator's ServiceAccount). Everything is generated fresh per cluster and
lives only in its work directory.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=7)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated material."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path
    ca_key: Path


class _Issuer:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spotpool-devcluster-ca")])
        self.name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def generate(directory: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Write a CA, an apiserver serving pair, an admin client pair and a service-account key pair.

    `extra_ips` are more addresses the apiserver serves on: a test node's pods reach it at the node
    network's gateway, and verify it there like any in-cluster client does.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = _Issuer()
    serving, serving_key = ca.issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
        ],
    )
    # system:masters bypasses RBAC: this identity is the test harness's, never the operator's.
    admin, admin_key = ca.issue(
        x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        ]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
        ca_key=directory / "ca.key",
    )
    pki.ca_cert.write_bytes(_pem_cert(ca.cert))
    pki.ca_key.write_bytes(_pem_key(ca.key))
    pki.serving_cert.write_bytes(_pem_cert(serving))
    pki.serving_key.write_bytes(_pem_key(serving_key))
    pki.admin_cert.write_bytes(_pem_cert(admin))
    pki.admin_key.write_bytes(_pem_key(admin_key))
    pki.sa_key.write_bytes(_pem_key(sa_key))
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for path in (pki.serving_key, pki.admin_key, pki.sa_key, pki.ca_key):
        path.chmod(0o600)
    return pki


def issue_client(pki: Pki, common_name: str, organizations: tuple[str, ...], cert: Path, key: Path) -> None:
    """Sign a client certificate with the cluster's CA: a kubelet authenticates as
    `system:node:<name>` in `system:nodes` (the Node authorizer and NodeRestriction admission then
    apply to it, as on any real node), not as the harness's admin."""
    issuer = _Issuer.__new__(_Issuer)
    issuer.key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)  # type: ignore[assignment]
    issuer.cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    issuer.name = issuer.cert.subject
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations),
    ])
    certificate, private_key = issuer.issue(subject, ExtendedKeyUsageOID.CLIENT_AUTH)
    cert.write_bytes(_pem_cert(certificate))
    key.write_bytes(_pem_key(private_key))
    key.chmod(0o600)
