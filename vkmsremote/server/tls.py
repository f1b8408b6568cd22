"""TLS for VeNCrypt: the server's certificate (made on first use if none is given) and its SSLContext.

Without ``--tls-cert``/``--tls-key`` a self-signed certificate (ECDSA P-256, valid for localhost,
127.0.0.1, ::1 and this host's name) is generated with ``cryptography`` and cached in
``$XDG_CONFIG_HOME/vkmsremote/tls/`` (the key file is created 0600, the directory 0700). Clients verify
it by trusting the certificate file itself, e.g. ``xtigervncviewer -X509CA ~/.config/vkmsremote/tls/cert.pem``.
A key readable by group or others, or a certificate writable by them, is refused (credentials.check_file).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vkmsremote.errors import UsageError
from vkmsremote.server.credentials import check_file

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
VALIDITY_DAYS = 3650


def default_tls_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vkmsremote" / "tls"


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, the file created with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_self_signed(cert_path: Path, key_path: Path, *, hostnames: tuple[str, ...] = ()) -> None:
    """Create a self-signed server certificate and its private key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    dns = ["localhost", *([host] if host and host != "localhost" else []), *hostnames]
    ips = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    san: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    san += [x509.IPAddress(i) for i in ips]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vkmsremote on {host or 'localhost'}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        # Self-signed and trusted directly by the client (-X509CA): it is its own CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_certificate(cert: Path | None = None, key: Path | None = None, *,
                       directory: Path | None = None) -> tuple[Path, Path]:
    """The certificate and key to use: the given pair, or the cached self-signed one (made if missing)."""
    if (cert is None) != (key is None):
        raise UsageError("a TLS certificate needs both files", hint="give both --tls-cert and --tls-key")
    if cert is not None and key is not None:
        check_file(cert, "TLS certificate", secret=False)
        check_file(key, "TLS private key", secret=True)
        return cert, key
    d = directory or default_tls_dir()
    cert_path, key_path = d / CERT_NAME, d / KEY_NAME
    if cert_path.is_file() and key_path.is_file():
        check_file(cert_path, "TLS certificate", secret=False)
        check_file(key_path, "TLS private key", secret=True)
        return cert_path, key_path
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    generate_self_signed(cert_path, key_path)
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or later, the given certificate, no client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No session tickets: VNC never resumes sessions, and TigerVNC 1.12's viewer stalls when TLS 1.3
    # NewSessionTicket records arrive together with the first application data (measured here: it waits
    # forever for the VNC-auth challenge that is already in its buffer).
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load the TLS certificate {cert} / key {key}: {e}",
                         hint="check the files, or remove them to get a new self-signed pair") from e
    return ctx


def fingerprint(cert: Path) -> str:
    """The certificate's SHA-256 fingerprint as browsers and `openssl x509 -fingerprint -sha256` show it."""
    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the TLS certificate {cert}: {e}") from e
    return ":".join(f"{b:02X}" for b in loaded.fingerprint(hashes.SHA256()))
