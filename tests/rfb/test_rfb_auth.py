"""VNC-auth DES and the vncpasswd file format, checked against asyncvnc's independent key derivation."""

from __future__ import annotations

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from vkmsremote.errors import UsageError
from vkmsremote.rfb.auth import (
    PERMISSIONS,
    Access,
    Permission,
    SecurityPolicy,
    deobfuscate_vnc_password,
    obfuscate_vnc_password,
    vnc_auth_ok,
    vnc_auth_response,
    vnc_des_key,
)
from vkmsremote.rfb.constants import SecurityType, VeNCryptSubtype


def asyncvnc_style_response(password: str, challenge: bytes) -> bytes:
    """asyncvnc 1.3's derivation (Client.create): reverse each key byte's bits through a binary string."""
    des_key = password.encode("ascii")[:8].ljust(8, b"\x00")
    des_key = bytes(int(bin(n)[:1:-1].ljust(8, "0"), 2) for n in des_key)
    enc = Cipher(TripleDES(des_key * 3), modes.ECB()).encryptor()
    return enc.update(challenge) + enc.finalize()


@pytest.mark.parametrize("password", ["a", "password", "12345678", "longer than eight", "\x7f~ !"])
def test_response_matches_asyncvnc(password: str) -> None:
    challenge = bytes(range(100, 116))
    assert vnc_auth_response(password.encode(), challenge) == asyncvnc_style_response(password, challenge)
    assert vnc_auth_ok(password.encode(), challenge, asyncvnc_style_response(password, challenge))
    assert not vnc_auth_ok(password.encode(), challenge, bytes(16))


def test_key_bit_reversal() -> None:
    assert vnc_des_key(b"\x01\x80\x03") == bytes([0x80, 0x01, 0xC0, 0, 0, 0, 0, 0])


def test_vncpasswd_obfuscation() -> None:
    # The well-known obfuscated form of "password" in a vncpasswd file (TigerVNC/RealVNC d3des, fixed key).
    assert obfuscate_vnc_password(b"password") == bytes.fromhex("dbd83cfd727a1458")
    assert deobfuscate_vnc_password(bytes.fromhex("dbd83cfd727a1458")) == b"password"
    assert deobfuscate_vnc_password(obfuscate_vnc_password(b"abc")) == b"abc"


def test_policy_validation() -> None:
    with pytest.raises(UsageError, match="needs a password"):
        SecurityPolicy(types=(SecurityType.VNC_AUTH,))
    with pytest.raises(UsageError, match="TLS certificate"):
        SecurityPolicy(types=(SecurityType.VENCRYPT,), vencrypt_subtypes=(VeNCryptSubtype.X509_NONE,))
    with pytest.raises(UsageError, match="not supported"):
        SecurityPolicy(types=(SecurityType(2), SecurityType.INVALID))
    assert not SecurityPolicy().authenticates
    assert SecurityPolicy(types=(SecurityType.VNC_AUTH,), vnc_password=b"x").authenticates


def test_one_permission_table_decides_what_view_only_may_do() -> None:
    assert all(Access.FULL.permits(p) for p in Permission)
    assert not any(Access.VIEW_ONLY.permits(p) for p in Permission)  # TigerVNC's view-only: look, nothing else
    assert set(PERMISSIONS) == set(Access)
