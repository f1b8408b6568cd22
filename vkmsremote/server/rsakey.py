"""The server's RSA key for the RSA-AES security types (vkmsremote.rfb.rsaaes), kept next to the TLS
certificate (vkmsremote.server.tls): ``rsa-key.pem`` in ``$XDG_CONFIG_HOME/vkmsremote/tls/``, made on first use
(RSA 2048, PKCS#8 PEM, the file 0600 from the start, the directory 0700). A key readable by group or others,
or one that is not an RSA key of 1024-8192 bits, is refused (credentials.check_file).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vkmsremote.errors import UsageError
from vkmsremote.rfb.rsaaes import DEFAULT_KEY_BITS, MAX_KEY_BITS, MIN_KEY_BITS, ServerKey
from vkmsremote.server.credentials import check_file
from vkmsremote.server.tls import _write_private, default_tls_dir

KEY_NAME = "rsa-key.pem"


def default_rsa_key_path() -> Path:
    return default_tls_dir() / KEY_NAME


def ensure_rsa_key(path: Path | None = None, *, bits: int = DEFAULT_KEY_BITS) -> ServerKey:
    """The key in ``path`` (default :func:`default_rsa_key_path`), made if it does not exist."""
    path = path or default_rsa_key_path()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600)
        return ServerKey(key, path)
    check_file(path, "RSA-AES private key", secret=True)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path} is not an unencrypted PEM private key: {e}", hint="remove it to get a new one") from e
    if not isinstance(loaded, rsa.RSAPrivateKey) or not MIN_KEY_BITS <= loaded.key_size <= MAX_KEY_BITS:
        raise UsageError(f"{path} does not hold an RSA key of {MIN_KEY_BITS}-{MAX_KEY_BITS} bits",
                         hint="remove it to get a new one")
    return ServerKey(loaded, path)
