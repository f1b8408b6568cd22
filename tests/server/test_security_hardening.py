"""Hardening against hostile peers and careless set-ups: the per-address blacklist (TigerVNC's rule, also
against vncdotool's real client), passwords kept out of command lines and logs, refusal of secret files
with loose permissions, systemd socket activation (through systemd-socket-activate, a real activator)
and the shipped systemd units (systemd-analyze verify)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clients.support import serving

from vkmsremote.errors import UsageError
from vkmsremote.server import blacklist as blacklist_mod
from vkmsremote.server.blacklist import Blacklist
from vkmsremote.server.credentials import check_file, password_from, read_password_file
from vkmsremote.server.tls import ensure_certificate, generate_self_signed

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Sekr1t-pw"
WRONG = "guessed!"


# --- the blacklist ----------------------------------------------------------------------------------------


def test_blacklist_follows_tigervnc() -> None:
    """TigerVNC's Blacklist::isBlackmarked with BlacklistThreshold 5, BlacklistTimeout 10: five attempts
    pass, the fifth starts a 10 s block; after it one attempt passes and starts a 20 s block, then 40 s."""
    now = [100.0]
    bl = Blacklist(threshold=5, timeout=10, clock=lambda: now[0])
    assert [bl.attempt("a") for _ in range(5)] == [0.0] * 5
    assert bl.attempt("a") == 10.0  # sixth: refused for the whole block
    assert bl.attempt("b") == 0.0  # per address
    now[0] += 4
    assert bl.attempt("a") == 6.0  # refused attempts change nothing
    now[0] += 6
    assert bl.attempt("a") == 0.0  # block over: one attempt, and the next block is twice as long
    assert bl.attempt("a") == 20.0
    now[0] += 20
    assert bl.attempt("a") == 0.0
    assert bl.attempt("a") == 40.0
    bl.success("a")  # an authenticated client clears its address
    assert [bl.attempt("a") for _ in range(5)] == [0.0] * 5
    assert bl.blocked_for("a") == 10.0 and bl.blocked_for("b") == 0.0


def test_blacklist_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blacklist_mod, "MAX_ENTRIES", 50)
    now = [0.0]
    bl = Blacklist(threshold=1, timeout=1000, clock=lambda: now[0])
    for i in range(1000):  # every address blocked at once: the oldest are forgotten, not kept forever
        bl.attempt(f"10.0.{i // 256}.{i % 256}")
    assert len(bl._entries) <= 100
    assert bl.blocked_for("10.0.3.231") > 0  # the newest are still remembered


def vncdo(port: int, password: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "vncdo"), "-s", f"127.0.0.1::{port}", "-p", password, "capture",
                           str(tmp_path / "shot.png")], capture_output=True, text=True, timeout=60)


def test_blacklist_with_a_real_client(tmp_path: Path) -> None:
    """vncdotool guessing wrong five times is refused the sixth time, even with the right password;
    connections made in parallel before any failure count too."""
    env = {"VKMSREMOTE_PASSWORD": PASSWORD, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    with serving("--security", "vncauth", env=env) as (_, port):
        assert vncdo(port, PASSWORD, tmp_path).returncode == 0  # works, and clears the address
        guesses = [subprocess.Popen([str(BIN / "vncdo"), "-s", f"127.0.0.1::{port}", "-p", WRONG, "capture",
                                     str(tmp_path / f"g{i}.png")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                   for i in range(5)]
        for g in guesses:
            g.communicate(timeout=60)
            assert g.returncode != 0
        refused = vncdo(port, PASSWORD, tmp_path)
        assert refused.returncode != 0
        assert "Too many authentication failures" in refused.stdout + refused.stderr
    with serving("--security", "vncauth", env=env) as (_, port):
        # five connections opened at once, none of them answering: they count as they arrive
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        try:
            for s in socks:
                assert s.recv(12) == b"RFB 003.008\n"
            refused = vncdo(port, PASSWORD, tmp_path)
            assert "Too many authentication failures" in refused.stdout + refused.stderr
        finally:
            for s in socks:
                s.close()


# --- passwords ------------------------------------------------------------------------------------------------


def test_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VKMSREMOTE_PASSWORD"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    done = subprocess.run([str(BIN / "vkmsremote"), "serve", "--port", "0", "--password", PASSWORD],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "--password-file" in done.stderr and "VKMSREMOTE_PASSWORD" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    with serving("--password", PASSWORD, "--allow-password-argument", env={"XDG_CONFIG_HOME": str(tmp_path / "c")}) \
            as (proc, port):
        assert vncdo(port, PASSWORD, tmp_path).returncode == 0
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "command line" in err and PASSWORD not in err


def test_password_never_reaches_logs_or_process_listings(tmp_path: Path) -> None:
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSWORD + "\n")
    pw_file.chmod(0o600)
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    with serving("--password-file", str(pw_file), "--username", "alice", env=env, debug=True) as (proc, port):
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline
        assert PASSWORD.encode() not in Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert vncdo(port, WRONG, tmp_path).returncode != 0
        assert vncdo(port, PASSWORD, tmp_path).returncode == 0
        for pw in (WRONG, PASSWORD):  # VeNCrypt X509Plain: username and password inside TLS
            assert _x509plain(port, "alice", pw) == (pw == PASSWORD)
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "authentication failed" in err.lower() and "DEBUG" in err  # the log was there, and verbose
    for secret in (PASSWORD, WRONG):
        assert secret not in out + err


def test_password_from_environment_is_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VKMSREMOTE_PASSWORD", PASSWORD)
    assert password_from(None, None) == PASSWORD
    assert "VKMSREMOTE_PASSWORD" not in os.environ  # children started later do not get it
    assert password_from(None, None) is None


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def _x509plain(port: int, user: str, password: str) -> bool:
    """A VeNCrypt X509Plain client (RFB 3.8, VeNCrypt 0.2, subtype 262); True if the server accepted."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        assert _recv(raw, 12) == b"RFB 003.008\n"
        raw.sendall(b"RFB 003.008\n")
        types = _recv(raw, _recv(raw, 1)[0])
        assert 19 in types  # VeNCrypt
        raw.sendall(b"\x13")
        assert _recv(raw, 2) == b"\x00\x02"  # VeNCrypt 0.2
        raw.sendall(b"\x00\x02")
        assert _recv(raw, 1) == b"\x00"  # version accepted
        n = _recv(raw, 1)[0]
        assert 262 in struct.unpack(f">{n}I", _recv(raw, 4 * n))
        raw.sendall(struct.pack(">I", 262))
        assert _recv(raw, 1) == b"\x01"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(struct.pack(">II", len(user), len(password)) + user.encode() + password.encode())
            return _recv(tls, 4) == b"\x00\x00\x00\x00"


# --- secret files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_loose_password_file_is_refused(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD)
    f.chmod(mode)
    with pytest.raises(UsageError, match=r"password file .* by (group|others).*chmod 600") as err:
        read_password_file(f)
    assert PASSWORD not in str(err.value)
    f.chmod(0o400)
    assert read_password_file(f) == PASSWORD


def test_loose_tls_files_are_refused(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(cert, key)
    assert ensure_certificate(cert, key) == (cert, key)  # 0644 certificate, 0600 key: fine
    key.chmod(0o640)
    with pytest.raises(UsageError, match=r"TLS private key .* readable or writable by group"):
        ensure_certificate(cert, key)
    key.chmod(0o600)
    cert.chmod(0o664)
    with pytest.raises(UsageError, match=r"TLS certificate .* writable by group"):
        ensure_certificate(cert, key)
    cert.chmod(0o644)
    # the cached self-signed pair is checked as well
    d = tmp_path / "tls"
    _, cached_key = ensure_certificate(directory=d)
    cached_key.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        ensure_certificate(directory=d)


def test_secret_file_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    f = tmp_path / "pw"
    f.write_text(PASSWORD)
    f.chmod(0o600)
    os.chown(f, 65534, 65534)
    with pytest.raises(UsageError, match="belongs to uid 65534"):
        check_file(f, "password file", secret=True)


def test_serve_refuses_a_loose_password_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD)
    f.chmod(0o644)
    done = subprocess.run([str(BIN / "vkmsremote"), "serve", "--port", "0", "--password-file", str(f)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "chmod 600" in done.stderr


# --- systemd --------------------------------------------------------------------------------------------------------


def test_socket_activation_with_systemd_socket_activate(tmp_path: Path) -> None:
    """systemd-socket-activate listens, and starts the server on the first connection with LISTEN_FDS:
    the server serves on the socket it was given (it never binds one itself)."""
    activator = shutil.which("systemd-socket-activate")
    if activator is None:
        pytest.fail("systemd-socket-activate is missing (Debian package systemd)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "VKMSREMOTE_PASSWORD"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    proc = subprocess.Popen([activator, "-l", f"127.0.0.1:{port}", "--fdname=vnc", str(BIN / "vkmsremote"), "serve",
                             "--size", "64x48", "--port", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            with contextlib.suppress(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port)).close()
                break
            time.sleep(0.1)
        done = subprocess.run([str(BIN / "vncdo"), "-s", f"127.0.0.1::{port}", "capture", str(tmp_path / "s.png")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert proc.stdout is not None
        assert f"port {port}" in proc.stdout.readline()  # it reports the socket it was given, not --port 1
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()


UNITS = sorted((ROOT / "server").glob("*.service")) + sorted((ROOT / "server").glob("*.socket"))


def test_units_exist() -> None:
    names = {u.name for u in UNITS}
    assert {"vkmsremote.service", "vkmsremote.socket"} <= names


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies_and_is_hardened(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    # verify resolves ExecStart= binaries: point it at this venv's vkmsremote through a copy of the unit
    text = unit.read_text().replace("/usr/local/bin/vkmsremote", str(BIN / "vkmsremote"))
    for other in UNITS:
        (tmp_path / other.name).write_text(other.read_text().replace("/usr/local/bin/vkmsremote", str(BIN / "vkmsremote")))
    (tmp_path / unit.name).write_text(text)
    done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / unit.name)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "Failed to connect" not in line and "System has not been booted" not in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
    if unit.suffix == ".service":
        for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                        "CapabilityBoundingSet=", "DevicePolicy=closed", "DeviceAllow=char-drm rw",
                        "DeviceAllow=/dev/uinput rw", "RestrictAddressFamilies=", "LoadCredential=password"):
            assert setting in text, f"{unit.name} lacks {setting}"
        caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M)
        assert caps is not None and set(caps.group(1).split()) <= {"CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID",
                                                                   "CAP_SETPCAP"}
