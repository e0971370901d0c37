"""The gateway's private certificate authority, kept on the controller (the llm_gateway_certificate action).

With `llm_gateway_tls_ca: private`, the controller makes one CA per inventory (its key readable by the
controller's user alone) and issues each host a certificate for its names and addresses, signed by it.
Hosts and apps trust that CA's certificate (public). A host's certificate is kept and given again on
every run, so a rerun changes nothing; it is issued anew when it is missing, expires within the renewal
window, names other addresses, or was not signed by the current CA.

ECDSA P-256 keys; host certificates for `DAYS` days (under the 398 days browsers accept), the CA for ten
years. Nothing here prints a private key. Ansible runs the action for several hosts at once (forks): the
CA is made under a lock, so that every host's certificate is signed by the one CA that stays.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAYS = 397
CA_DAYS = 3650
RENEW_WITHIN_DAYS = 30


class TlsError(Exception):
    """The CA or a certificate could not be made or read; the message names the file, never a key."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _key_pem(key) -> bytes:
    encoding, form = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, form, serialization.NoEncryption())


def _load(path: Path, loader):
    try:
        return loader(path.read_bytes())
    except (OSError, ValueError) as error:
        raise TlsError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") from None


@contextlib.contextmanager
def _ca_lock(ca_dir: Path) -> Iterator[None]:
    """The CA directory to oneself (made 0700 when missing): another process making the CA waits."""
    ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(os.open(ca_dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_ca(ca_dir: Path, check_mode: bool = False) -> tuple[x509.Certificate | None, object, bool]:
    """The CA's certificate and key, made when missing (directory 0700, key 0600)."""
    cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    if check_mode:
        return _load_ca(cert_path, key_path) if cert_path.exists() and key_path.exists() else (None, None, True)
    with _ca_lock(ca_dir):
        if cert_path.exists() and key_path.exists():
            return _load_ca(cert_path, key_path)
        return (*_make_ca(ca_dir, cert_path, key_path), True)


def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, object, bool]:
    certificate = _load(cert_path, x509.load_pem_x509_certificate)
    key = _load(key_path, lambda data: serialization.load_pem_private_key(data, None))
    return certificate, key, False


def _make_ca(ca_dir: Path, cert_path: Path, key_path: Path) -> tuple[x509.Certificate, object]:
    os.chmod(ca_dir, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LLM toolkit gateway CA")])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return certificate, key


def _alternative_names(names: list[str], addresses: list[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(set(names))]
    result += [x509.IPAddress(ipaddress.ip_address(address)) for address in sorted(set(addresses))]
    return result


def _still_good(certificate: x509.Certificate, ca: x509.Certificate, wanted, renew_within_days: int) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
        present = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, Exception):
        return False
    left = certificate.not_valid_after_utc - _now()
    return set(present) == set(wanted) and left > datetime.timedelta(days=renew_within_days)


def _issued(ca_dir: Path, cert_path: Path, key_path: Path, certificate: x509.Certificate, changed: bool) -> dict:
    """The host's certificate, key and CA certificate as the files hold them, and whether this run changed them."""
    return {
        "certificate": cert_path.read_text(),
        "private_key": key_path.read_text(),
        "ca_certificate": (ca_dir / "ca.pem").read_text(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "changed": changed,
    }


def ensure_host_certificate(
    ca_dir: Path,
    host: str,
    names: list[str],
    addresses: list[str],
    renew_within_days: int = RENEW_WITHIN_DAYS,
    check_mode: bool = False,
) -> dict:
    """The host's certificate (PEM), its private key (PEM) and the CA's certificate; `changed` when this
    run made the CA or issued the certificate."""
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise TlsError(f"{host}: {address!r} is not an IP address; expected one for the certificate") from None
    ca, ca_key, ca_changed = ensure_ca(ca_dir, check_mode)
    wanted = _alternative_names(names, addresses)
    cert_path, key_path = ca_dir / "hosts" / f"{host}.pem", ca_dir / "hosts" / f"{host}.key"
    if ca is not None and cert_path.exists() and key_path.exists():
        certificate = _load(cert_path, x509.load_pem_x509_certificate)
        if _still_good(certificate, ca, wanted, renew_within_days):
            return _issued(ca_dir, cert_path, key_path, certificate, ca_changed)
    if check_mode:
        return {"certificate": "", "private_key": "", "ca_certificate": "", "not_after": "", "changed": True}
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DAYS))
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (ca_dir / "hosts").mkdir(mode=0o700, exist_ok=True)
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return _issued(ca_dir, cert_path, key_path, certificate, True)
