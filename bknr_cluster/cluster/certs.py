"""The cluster's certificate authority and node certificates (``bknrctl init`` / ``certs``).

Made with ``cryptography``: an ECDSA P-256 CA, and per node a key and a certificate signed by
it whose subject alternative names are the node's raft and API hosts (plus ``localhost`` for
loopback clusters). The CA signs node certificates for both TLS server and client use: a raft
connection authenticates both ends with the same certificate. Files are PEM, written at mode
0600 (os.open with the mode, then an atomic rename) so a key is never readable by others,
not even for an instant.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
NODE_DAYS = 365
CA_CERT, CA_KEY = "ca.crt", "ca.key"


def node_cert_name(node_name: str) -> str:
    return f"{node_name}.crt"


def node_key_name(node_name: str) -> str:
    return f"{node_name}.key"


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` at mode 0600, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(directory: Path, group: str, *, days: int = CA_DAYS) -> None:
    """A new self-signed CA (``ca.crt``, ``ca.key``) for the cluster `group`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bknr cluster CA {group}")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(directory / CA_KEY, _key_pem(key))
    write_private(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_node_cert(directory: Path, node_name: str, hosts: list[str], *, days: int = NODE_DAYS,
                    not_before: dt.datetime | None = None) -> None:
    """A new key and certificate for `node_name`, signed by the CA in `directory`, naming
    every host in `hosts` (IP addresses and DNS names) as a subject alternative name."""
    ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    names = list(dict.fromkeys(hosts))  # unique, in order
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(directory / node_key_name(node_name), _key_pem(key))
    write_private(directory / node_cert_name(node_name), cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    hosts: tuple[str, ...]

    @property
    def expired(self) -> bool:
        return self.not_after <= _now()

    @property
    def days_left(self) -> float:
        return (self.not_after - _now()).total_seconds() / 86400


def read_cert(path: Path) -> CertInfo:
    """Subject, validity and SAN hosts of a PEM certificate (ValueError when it is not one)."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = tuple(str(v) for v in san.get_values_for_type(x509.IPAddress)) + \
            tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        hosts = ()
    return CertInfo(path=path, subject=cert.subject.rfc4514_string(), not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc, hosts=hosts)


def signed_by(cert_path: Path, ca_path: Path) -> bool:
    """Whether the certificate at `cert_path` carries a valid signature of the CA at `ca_path`."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
