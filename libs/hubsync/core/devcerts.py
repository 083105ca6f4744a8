"""A throwaway certificate authority for local runs and the tests (never for production).

Makes a CA and certificates for ``localhost`` / ``127.0.0.1`` so the suite on one machine can
run its gRPC hops over mutual TLS exactly as in a cluster, where cert-manager issues them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class IssuedFiles:
    """Where one issued certificate, its key and the CA were written."""

    cert: Path
    key: Path
    ca: Path


class DevCA:
    """An EC P-256 CA living in memory; :meth:`issue` signs leaf certificates for loopback."""

    def __init__(self, name: str = "hubsync throwaway CA", days: int = 2) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        dns_names: tuple[str, ...] = ("localhost",),
        days: int = 1,
        *,
        ip_addresses: tuple[str, ...] = ("127.0.0.1",),
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) valid for ``dns_names`` and ``ip_addresses``, as server and
        client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def write(self, directory: Path, name: str) -> IssuedFiles:
        """Issues a certificate for ``name`` and writes ``<name>.crt``, ``<name>.key`` and ``ca.crt``
        (keys readable by the owner only)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = self.issue(name)
        files = IssuedFiles(
            cert=directory / f"{name}.crt", key=directory / f"{name}.key", ca=directory / "ca.crt"
        )
        files.cert.write_bytes(cert)
        files.key.touch(mode=0o600)
        files.key.write_bytes(key)
        files.ca.write_bytes(self.cert_pem)
        return files
