#!/usr/bin/env python3
"""Fuzz everything a peer can send: the RFB handshake and security negotiation (None, VNC auth, VeNCrypt
with a real TLS session, the RSA-AES types with a real key exchange and AES-EAX records), every client message and what the server does with it, WebSocket framing, and
the HTTP request heads of the web listener.

Usage: .venv/bin/python scripts/fuzz.py [--runs 1000000] [--targets rfb-handshake,...] [--engine atheris]
                                        [--timeout 10] [--rss-limit-mb 1024] [--json] [--keep DIR]

Each target is a function of one byte string that may raise only ProtocolError (and its subclasses,
HttpRequestError among them); anything else is a crash. The default engine is atheris (libFuzzer,
coverage-guided over the vkmsremote modules): each target runs in its own child process with a seed
corpus and a dictionary, libFuzzer's ``-timeout`` turns an input that runs longer than ``--timeout``
seconds into a reported hang, and ``-rss_limit_mb`` a memory blow-up into a reported crash. The
``random`` engine (no coverage feedback: seeds mutated at random) needs nothing beyond the standard
library and prints the same summary. The run ends with the figures: inputs, inputs/s, crashes, hangs,
slowest input, peak RSS per target and in all.

The targets are importable (tests/test_fuzz_campaign.py drives them with hypothesis, under tracemalloc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import resource
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Nothing of vkmsremote is imported at module level: a fuzzing child must import it under atheris's
# instrumentation first (see _child); the targets reach the modules through env().

Target = Callable[[bytes], None]

MAX_EVENTS_PER_BYTE = 2
"""A parser that returns more events than this per input byte (plus a constant) is looping: a hang."""
MAX_OUTBOX = 64 * 1024
"""The server's own output for one input (handshake replies, TLS records) must stay below this."""
FRAME_W, FRAME_H = 48, 32
MAX_ENCODES = 3


# --- the targets (module state is made once per process by env()) -----------------------------------------


class _Env:
    """Everything the targets share: imported modules, a TLS context, a frame, a static root."""

    def __init__(self) -> None:
        import numpy as np

        from vkmsremote import errors
        from vkmsremote import frame as source
        from vkmsremote.input import keymap
        from vkmsremote.rfb import auth, constants, convert, messages, protocol
        from vkmsremote.rfb.encodings import SUPPORTED, EncoderSettings, make_encoder
        from vkmsremote.rfb.pixelformat import NATIVE
        from vkmsremote.server import tls
        from vkmsremote.web import http, server

        self.np, self.errors, self.keymap = np, errors, keymap
        self.auth, self.constants, self.convert, self.messages, self.protocol = auth, constants, convert, messages, protocol
        self.SUPPORTED, self.EncoderSettings, self.make_encoder, self.NATIVE = SUPPORTED, EncoderSettings, make_encoder, NATIVE
        self.source, self.http, self.web_server = source, http, server
        self.tmp = Path(tempfile.mkdtemp(prefix="vkmsremote-fuzz-"))
        cert, key = self.tmp / "cert.pem", self.tmp / "key.pem"
        tls.generate_self_signed(cert, key)
        self.tls_context = tls.server_context(cert, key)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        self.tls_client = client
        rng = np.random.default_rng(7)
        frame = np.zeros((FRAME_H, FRAME_W, 4), np.uint8)
        frame[:, :, :3] = 40
        frame[8:20, 10:30, :3] = (200, 10, 90)
        frame[:, 36:, :3] = rng.integers(0, 256, (FRAME_H, FRAME_W - 36, 3), dtype=np.uint8)
        self.frame = frame
        self.frame.flags.writeable = False
        root = self.tmp / "novnc"
        (root / "core").mkdir(parents=True)
        (root / "vnc.html").write_text("<html></html>")
        (root / "core" / "rfb.js").write_text("//")
        self.novnc_root = root
        from websockets.exceptions import SecurityError

        self.websockets_errors = SecurityError
        ST, VS = constants.SecurityType, constants.VeNCryptSubtype
        pw = b"fuzzpw"
        self.password = pw
        plain = auth.plain_checker("user", "fuzzpw")
        SP = auth.SecurityPolicy
        self.policies = [
            SP(),
            SP(types=(ST.VNC_AUTH,), vnc_password=pw),
            SP(types=(ST.NONE, ST.VNC_AUTH), vnc_password=pw),
            SP(types=(ST.VENCRYPT, ST.VNC_AUTH), vnc_password=pw, tls_context=self.tls_context, check_plain=plain,
               vencrypt_subtypes=(VS.X509_VNC, VS.X509_PLAIN, VS.X509_NONE)),
            SP(types=(ST.VENCRYPT,), tls_context=self.tls_context, vencrypt_subtypes=(VS.X509_NONE,)),
        ]
        # RSA-AES: 1024-bit keys on both sides (the smallest allowed: the server's private-key operation is
        # the cost of each input that gets that far). The server random is fixed (random_bytes), the client
        # random too, so each variant's session keys, and so every record, are the same in every run.
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        from vkmsremote.rfb import rsaaes

        self.rsaaes = rsaaes
        server_key = rsaaes.ServerKey.generate(1024)
        self.ra2_policy = SP(types=(ST.RA2, ST.RA2NE, ST.RA2_256, ST.RA2NE_256), vnc_password=pw, rsa_key=server_key)
        client_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.ra2_client_wire = rsaaes.encode_public_key(client_key.public_key())
        self.ra2: dict[int, tuple[bytes, bytes, bytes, bytes]] = {}
        """variant -> (U16 + encrypted client random, client session key, server session key, client hash)"""
        for t, v in rsaaes.VARIANTS.items():
            client_random = bytes(range(100, 100 + v.random_size))
            encrypted = server_key.private.public_key().encrypt(client_random, padding.PKCS1v15())
            ckey, skey = rsaaes.session_keys(v, _fixed_challenge(v.random_size), client_random)
            self.ra2[t] = (struct.pack(">H", len(encrypted)) + encrypted, ckey, skey,
                           v.digest(self.ra2_client_wire + server_key.public_bytes))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


_env: _Env | None = None


def env() -> _Env:
    global _env
    if _env is None:
        _env = _Env()
    return _env


def _chunks(data: bytes, seed: int) -> Iterator[bytes]:
    """``data`` cut into pieces whose sizes come from ``seed``: 0 means whole, else a size pattern (1..255
    byte pieces, varying), so each input is also a test of parsing across arbitrary boundaries."""
    if seed == 0 or not data:
        yield data
        return
    state = seed
    pos = 0
    while pos < len(data):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        n = 1 + (state >> 8) % max(seed, 1)
        yield data[pos:pos + n]
        pos += n


def _fixed_challenge(n: int) -> bytes:
    return bytes(range(n))


def _drain_rfb(conn: Any, budget: int) -> list[Any]:
    """Events until NEED_DATA (or the end); a stream producing more than ``budget`` events is a hang."""
    e = env()
    out: list[Any] = []
    while True:
        ev = conn.next_event()
        if ev is e.protocol.NEED_DATA:
            return out
        out.append(ev)
        if isinstance(ev, e.protocol.ConnectionClosed | e.protocol.AuthenticationFailed | e.protocol.ConnectionRefused):
            return out
        if len(out) > budget:
            raise AssertionError(f"parser produced more than {budget} events: looping")


def _check_outbox(data: bytes) -> None:
    if len(data) > MAX_OUTBOX:
        raise AssertionError(f"server produced {len(data)} bytes for one input")


class _MessageSink:
    """What the server does with each client message after parsing, minus the sockets (see session.py)."""

    def __init__(self) -> None:
        e = env()
        self.e = e
        self.pf = e.NATIVE
        self.settings = e.EncoderSettings()
        self.encoder = e.make_encoder(e.constants.Encoding.RAW, self.settings)
        self.encodes = 0
        self.lock_state = e.keymap.State(0)

    def handle(self, ev: Any) -> None:
        e, m = self.e, self.e.messages
        if isinstance(ev, m.SetPixelFormat):
            pf = ev.pixel_format  # validated by the protocol
            self.pf = pf if pf.true_colour else m.BGR233
            out = e.convert.convert(e.frame[:4, :4], self.pf)
            if len(out) != 16 * self.pf.bytes_per_pixel:
                raise AssertionError(f"convert gave {len(out)} bytes for 16 pixels of {self.pf}")
        elif isinstance(ev, m.SetEncodings):
            self.settings = e.EncoderSettings.from_encodings(ev.encodings)
            chosen = next((x for x in ev.encodings if x in e.SUPPORTED), e.constants.Encoding.RAW)
            self.encoder = e.make_encoder(chosen, self.settings)
            if self.encoder is None:
                raise AssertionError(f"SUPPORTED lists {chosen} but make_encoder has none")
        elif isinstance(ev, m.FramebufferUpdateRequest | m.EnableContinuousUpdates):
            rect = e.source.Rect(ev.x, ev.y, ev.width, ev.height).clip(FRAME_W, FRAME_H)
            if rect is None or self.encodes >= MAX_ENCODES:
                return
            self.encodes += 1
            assert self.encoder is not None
            for sub, _enc, payload in self.encoder.encode(e.frame, rect, self.pf):
                if not (rect.x <= sub.x and rect.y <= sub.y and sub.x + sub.w <= rect.x + rect.w
                        and sub.y + sub.h <= rect.y + rect.h):
                    raise AssertionError(f"encoder produced {sub} outside {rect}")
                del payload
        elif isinstance(ev, m.KeyEvent):
            press = e.keymap.US.plan(ev.key, self.lock_state)
            if press is not None and not 0 < press.code < 0x300:
                raise AssertionError(f"keysym {ev.key:#x} planned as key code {press.code}")
            if ev.down and ev.key in (0xFFE1, 0xFFE2):
                self.lock_state |= e.keymap.State.SHIFT
        elif isinstance(ev, m.QemuExtendedKeyEvent):
            e.keymap.US.scancode(ev.keycode)
        elif isinstance(ev, m.ClientFence):
            if len(ev.payload) > m.MAX_FENCE_PAYLOAD:
                raise AssertionError("fence payload over the cap")
            m.ServerFence(ev.flags & m.FenceFlag.KNOWN, ev.payload).to_bytes()
        elif isinstance(ev, m.SetDesktopSize):
            for s in ev.screens:
                e.source.Rect(s.x, s.y, s.width, s.height).clip(FRAME_W, FRAME_H)
        elif isinstance(ev, m.ClientCutText):
            ev.text.decode("latin-1")


def _normal_connection() -> Any:
    """A connection past the handshake (None security, RFB 3.8), ServerInit sent."""
    e = env()
    conn = e.protocol.ServerConnection(e.policies[0], random_bytes=_fixed_challenge, max_cut_text=4096)
    conn.receive_data(b"RFB 003.008\n\x01\x01")
    _drain_rfb(conn, 8)
    conn.send(e.messages.ServerInit(FRAME_W, FRAME_H, e.NATIVE, "fuzz"))
    conn.data_to_send()
    return conn


def _feed_rfb(conn: Any, data: bytes, seed: int, sink: _MessageSink | None) -> None:
    e = env()
    budget = MAX_EVENTS_PER_BYTE * len(data) + 16
    try:
        for piece in _chunks(data, seed):
            conn.receive_data(piece)
            for ev in _drain_rfb(conn, budget):
                if isinstance(ev, e.protocol.ClientInit):
                    conn.send(e.messages.ServerInit(FRAME_W, FRAME_H, e.NATIVE, "fuzz"))
                elif sink is not None:
                    sink.handle(ev)
            _check_outbox(conn.data_to_send())
            if conn.state in (e.protocol.State.CLOSED, e.protocol.State.ERROR):
                return
        conn.receive_data(b"")
        _drain_rfb(conn, budget)
    except e.errors.ProtocolError:
        if conn.state is not e.protocol.State.ERROR:
            raise AssertionError("ProtocolError raised but the connection is not in state ERROR") from None
        _check_outbox(conn.data_to_send())


def _handshake_prefix(policy_index: int, depth: int, version: bytes) -> bytes:
    """Valid client bytes that take a connection ``depth`` steps into the handshake (non-TLS policies)."""
    e = env()
    ST = e.constants.SecurityType
    policy = e.policies[policy_index]
    out = version
    if depth < 2:
        return out
    first = policy.types[0]
    if version != b"RFB 003.003\n":
        out += bytes([first])
    if depth < 3:
        return out
    if first == ST.VNC_AUTH or (version == b"RFB 003.003\n" and ST.VNC_AUTH in policy.types and ST.NONE not in policy.types):
        out += e.auth.vnc_auth_response(e.password, _fixed_challenge(16))
    return out + b"\x01"  # ClientInit, shared


VERSIONS = (b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n", b"RFB 003.005\n")


def target_rfb_handshake(data: bytes) -> None:
    """Byte 0: policy (of the three without TLS, plus the two VeNCrypt ones, whose TLS then sees the
    fuzz bytes as its ClientHello), version and how much of a valid handshake precedes the fuzz bytes;
    byte 1: chunking; the rest: what the client sends."""
    if len(data) < 2:
        return
    e = env()
    opt, seed, body = data[0], data[1], data[2:]
    policy_index = opt % len(e.policies)
    depth = (opt >> 3) & 3
    refuse = "blocked for fuzzing" if opt == 0xFF else None
    prefix = b""
    if depth and policy_index < 3:
        prefix = _handshake_prefix(policy_index, depth, VERSIONS[(opt >> 5) & 3])
    conn = e.protocol.ServerConnection(e.policies[policy_index], refuse=refuse, random_bytes=_fixed_challenge,
                                       max_cut_text=4096)
    _check_outbox(conn.data_to_send())
    _feed_rfb(conn, prefix + body, seed, _MessageSink())


def target_rfb_messages(data: bytes) -> None:
    """Client messages after the handshake, each acted on as the server would (pixel formats converted,
    encoders made from the encodings list and run on the requested rectangle, keysyms looked up)."""
    if not data:
        return
    _feed_rfb(_normal_connection(), data[1:], data[0], _MessageSink())


def _tls_pump(conn: Any, client: ssl.SSLObject, c_in: ssl.MemoryBIO, c_out: ssl.MemoryBIO, skip: list[int]) -> None:
    """Move bytes both ways between the in-memory client and the server connection once."""
    if c_out.pending:
        conn.receive_data(c_out.read())
    _drain_rfb(conn, 64)
    out = conn.data_to_send()
    if skip[0]:
        n = min(skip[0], len(out))
        skip[0] -= n
        out = out[n:]
    if out:
        c_in.write(out)


def target_rfb_tls(data: bytes) -> None:
    """VeNCrypt 0.2 with a real TLS 1.3 session (in-memory client), then the fuzz bytes sent encrypted:
    Plain credentials and their lengths, the VNC-auth response, ClientInit and messages, all inside TLS.
    Byte 0: subtype (X509Vnc, X509Plain, X509None) and whether a correct authentication precedes."""
    if len(data) < 2:
        return
    e = env()
    VS = e.constants.VeNCryptSubtype
    policy = e.policies[3]
    subtype = (VS.X509_VNC, VS.X509_PLAIN, VS.X509_NONE)[data[0] % 3]
    authenticate = bool(data[0] & 0x80)
    seed, body = data[1], data[2:]
    conn = e.protocol.ServerConnection(policy, random_bytes=_fixed_challenge, max_cut_text=4096)
    n_sub = len(policy.vencrypt_subtypes)
    # plain-text part the server sends before TLS: version 12, types 1+n, VeNCrypt version 2,
    # ack + count + subtypes 2+4n, subtype ack 1
    skip = [12 + 1 + len(policy.types) + 2 + 2 + 4 * n_sub + 1]
    conn.receive_data(b"RFB 003.008\n" + bytes([e.constants.SecurityType.VENCRYPT]) + b"\x00\x02"
                      + struct.pack(">I", subtype))
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = e.tls_client.wrap_bio(c_in, c_out)
    for _ in range(20):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            _tls_pump(conn, client, c_in, c_out, skip)
    else:
        raise AssertionError("TLS handshake with the in-memory client did not finish")
    _tls_pump(conn, client, c_in, c_out, skip)
    prefix = b""
    if authenticate:
        if subtype == VS.X509_VNC:
            prefix = e.auth.vnc_auth_response(e.password, _fixed_challenge(16))
        elif subtype == VS.X509_PLAIN:
            prefix = struct.pack(">II", 4, 6) + b"userfuzzpw"
        prefix += b"\x01"
    sink = _MessageSink()
    budget = MAX_EVENTS_PER_BYTE * len(body) + 32
    try:
        for piece in _chunks(prefix + body, seed):
            client.write(piece)
            conn.receive_data(c_out.read())
            for ev in _drain_rfb(conn, budget):
                if isinstance(ev, e.protocol.ClientInit):
                    conn.send(e.messages.ServerInit(FRAME_W, FRAME_H, e.NATIVE, "fuzz"))
                else:
                    sink.handle(ev)
            _check_outbox(conn.data_to_send())
            if conn.state in (e.protocol.State.CLOSED, e.protocol.State.ERROR):
                return
    except e.errors.ProtocolError:
        if conn.state is not e.protocol.State.ERROR:
            raise AssertionError("ProtocolError raised but the connection is not in state ERROR") from None


RA2_STAGES = 6


def _ra2_credentials(password: bytes) -> bytes:
    return b"\x00" + bytes([len(password)]) + password  # subtype 2: no username


def target_rfb_rsaaes(data: bytes) -> None:
    """The RSA-AES types (RA2, RA2ne, RA2_256, RA2ne_256) with a real in-memory client. Byte 0: the variant
    (bits 0-1) and the stage (the rest, mod 6) the fuzz bytes start at: 0 the client's public key, 1 its
    encrypted random, 2 raw bytes where AES-EAX records belong (record headers, cut records, bad tags),
    3 the client hash, 4 the credentials, 5 after a correct authentication (ClientInit and messages, in
    records for RA2/RA2_256, plain for the "ne" types). From stage 3 on the fuzz bytes are sealed into valid
    records, one per chunk (byte 1: chunking), so the parsers behind the record layer see them. The server's
    records must always open with the client's keys."""
    if len(data) < 2:
        return
    e = env()
    ST = e.constants.SecurityType
    security_type = (ST.RA2, ST.RA2NE, ST.RA2_256, ST.RA2NE_256)[data[0] & 3]
    stage = (data[0] >> 2) % RA2_STAGES
    seed, body = data[1], data[2:]
    variant = e.rsaaes.VARIANTS[security_type]
    conn = e.protocol.ServerConnection(e.ra2_policy, random_bytes=_fixed_challenge, max_cut_text=4096)
    sink = _MessageSink()
    prefix = b"RFB 003.008\n" + bytes([security_type])
    if stage < 2:
        _feed_rfb(conn, prefix + (e.ra2_client_wire if stage == 1 else b"") + body, seed, sink)
        return
    random_msg, ckey, skey, client_hash = e.ra2[security_type]
    conn.receive_data(prefix + e.ra2_client_wire + random_msg)
    _drain_rfb(conn, 8)
    out = conn.data_to_send()
    if conn.state is not e.protocol.State.RA2_CLIENT_HASH:
        raise AssertionError(f"a valid key exchange left the connection in {conn.state.name}")
    if stage == 2:
        _feed_rfb(conn, body, seed, sink)
        return
    client = e.rsaaes.RecordLayer(recv_key=skey, send_key=ckey)
    server_out = bytearray(out[12 + 1 + len(e.ra2_policy.types) + len(e.ra2_policy.rsa_key.public_bytes)
                               + 2 + (len(e.ra2_client_wire) - 4) // 2:])
    if client.open(server_out) != variant.digest(e.ra2_policy.rsa_key.public_bytes + e.ra2_client_wire):
        raise AssertionError("the server's hash record does not open to the right hash")
    head = b"" if stage == 3 else client_hash + (b"" if stage == 4 else _ra2_credentials(e.password))
    if head:
        conn.receive_data(client.seal(head))  # (b"" would be the end of the stream)
    plain_after = stage == 5 and not variant.all_encrypted
    budget = MAX_EVENTS_PER_BYTE * len(body) + 32
    try:
        _drain_rfb(conn, budget)
        if stage == 5 and conn.state is not e.protocol.State.CLIENT_INIT:
            raise AssertionError(f"a correct authentication left the connection in {conn.state.name}")
        for piece in _chunks(body, seed):
            conn.receive_data(piece if plain_after else client.seal(piece, max_record=e.rsaaes.MAX_RECORD))
            more = True
            while more:  # after ServerInit the rest of the piece is parsed in NORMAL
                more = False
                for ev in _drain_rfb(conn, budget):
                    if isinstance(ev, e.protocol.ClientInit):
                        conn.send(e.messages.ServerInit(FRAME_W, FRAME_H, e.NATIVE, "fuzz"))
                        more = True
                    elif isinstance(ev, e.protocol.AuthenticationSucceeded):
                        if not variant.all_encrypted:  # RA2ne: plain from here, the rest of this input too
                            plain_after = True
                    else:
                        sink.handle(ev)
            sent = conn.data_to_send()
            _check_outbox(sent)
            if not plain_after and variant.all_encrypted:
                server_out += sent
                try:
                    while client.open(server_out) is not None:
                        pass
                except e.errors.ProtocolError as err:  # the server's own record: our bug, not the peer's
                    raise AssertionError(f"a record from the server does not open: {err}") from None
            if conn.state in (e.protocol.State.CLOSED, e.protocol.State.ERROR):
                return
        conn.receive_data(b"")
        _drain_rfb(conn, budget)
    except e.errors.ProtocolError:
        if conn.state is not e.protocol.State.ERROR:
            raise AssertionError("ProtocolError raised but the connection is not in state ERROR") from None
        _check_outbox(conn.data_to_send())


def target_websocket(data: bytes) -> None:
    """RFC 6455 frames from a client (byte 0: chunking; byte 1: small or default caps) through the websockets
    library's sans-IO server protocol, as the web listener runs it (vkmsremote.web.transport); each data
    frame's payload goes on into an RFB connection (RFB over WebSocket is a byte stream). A frame over the
    size cap must fail the connection (1009) before its payload is buffered."""
    if len(data) < 2:
        return
    from websockets.frames import Opcode
    from websockets.protocol import OPEN, State
    from websockets.server import ServerProtocol

    e = env()
    cap = 4096 if data[1] & 1 else e.web_server.DEFAULT_MAX_MESSAGE
    ws = ServerProtocol(state=OPEN, max_size=cap)
    rfb = _normal_connection()
    sink = _MessageSink()
    budget = MAX_EVENTS_PER_BYTE * len(data) + 16
    events = 0
    for piece in _chunks(data[2:], data[0]):
        ws.receive_data(piece)
        for ev in ws.events_received():
            events += 1
            if events > budget:
                raise AssertionError("WebSocket parser is looping")
            if len(ev.data) > cap:
                raise AssertionError(f"a {len(ev.data)}-byte frame got past the {cap}-byte cap")
            if ev.opcode in (Opcode.BINARY, Opcode.CONT) and rfb.state is e.protocol.State.NORMAL:
                with contextlib.suppress(e.errors.ProtocolError):
                    _feed_rfb(rfb, ev.data, 0, sink)
        ws.data_to_send()
        if ws.state is not State.OPEN:
            return
    ws.receive_eof()


def target_http(data: bytes) -> None:
    """Request heads as the web listener reads them (websockets' parser), then our part: the Host name,
    the request path, the static path resolution that must never leave its folder."""
    if not data:
        return
    from websockets.http11 import Request
    from websockets.streams import StreamReader

    e = env()
    http, server = e.http, e.web_server
    reader = StreamReader()
    parser = Request.parse(reader.read_line)
    request = None
    try:
        next(parser)
        for piece in [*_chunks(data[1:], data[0])]:
            reader.feed_data(piece)
            next(parser)
        reader.feed_eof()
        next(parser)
    except StopIteration as done:
        request = done.value
    except (EOFError, ValueError, LookupError, e.websockets_errors):
        return  # websockets refuses the request (400/414/431, or drops it)
    if request is None:
        return
    host = http.single_header(request.headers, "Host")  # sent twice: HttpRequestError, the listener's 400
    if host is not None:
        server._host_name(host)
    try:
        path = http.request_path(request.path)
    except ValueError:
        return
    if path.startswith("/novnc/"):
        found = http.resolve_static(e.novnc_root, path[len("/novnc"):])
        if e.novnc_root.resolve() not in found.resolve().parents:
            raise AssertionError(f"{path!r} resolved outside the root: {found}")


def target_canary(data: bytes) -> None:
    """Not a real target: proves the harness reports what it must (a crash, a hang)."""
    if data.startswith(b"CRASH"):
        raise ValueError("canary crash")
    if data.startswith(b"HANG"):
        time.sleep(30)


TARGETS: dict[str, Target] = {
    "rfb-handshake": target_rfb_handshake,
    "rfb-messages": target_rfb_messages,
    "rfb-tls": target_rfb_tls,
    "rfb-rsaaes": target_rfb_rsaaes,
    "websocket": target_websocket,
    "http": target_http,
}
_MIXED = ("rfb-handshake", "rfb-messages", "rfb-tls", "websocket", "http", "rfb-rsaaes")


def target_mixed(data: bytes) -> None:
    """Every target in one process (byte 0 picks it): one child start-up instead of five, for short runs."""
    if data:
        TARGETS[_MIXED[data[0] % len(_MIXED)]](data[1:])


CANARIES: dict[str, Target] = {"canary": target_canary, "mixed": target_mixed}
WEIGHTS = {"rfb-handshake": 0.25, "rfb-messages": 0.25, "rfb-tls": 0.05, "rfb-rsaaes": 0.10, "websocket": 0.15,
           "http": 0.20, "canary": 1.0, "mixed": 1.0}
"""Share of --runs per target (TLS inputs cost ~1 ms each for the handshake, hence fewer)."""


# --- seeds and dictionary ---------------------------------------------------------------------------------


def _ws_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 5.2), as a browser sends it."""
    mask = b"\x11\x22\x33\x44"
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def _messages_sample() -> list[bytes]:
    e = env()
    m = e.messages
    pf16 = e.NATIVE.__class__(16, 16, True, True, 31, 63, 31, 11, 5, 0)
    return [
        m.SetPixelFormat(pf16).to_bytes(),
        m.SetPixelFormat(m.BGR233.__class__(8, 8, False, False, 0, 0, 0, 0, 0, 0)).to_bytes(),
        m.SetEncodings((7, 16, 5, 2, 1, 0, -23, -250, -223, -224, -308, -309, -312, -313, -258)).to_bytes(),
        m.FramebufferUpdateRequest(False, 0, 0, FRAME_W, FRAME_H).to_bytes(),
        m.FramebufferUpdateRequest(True, 5, 3, 20, 9).to_bytes(),
        m.KeyEvent(True, 0x61).to_bytes() + m.KeyEvent(False, 0x61).to_bytes(),
        m.PointerEvent(1, 10, 10).to_bytes(),
        m.ClientCutText(b"hello").to_bytes(),
        m.EnableContinuousUpdates(True, 0, 0, 16, 16).to_bytes(),
        m.ClientFence(0x80000007, b"abc").to_bytes(),
        m.SetDesktopSize(64, 48, (m.Screen(1, 0, 0, 64, 48),)).to_bytes(),
        m.QemuExtendedKeyEvent(True, 0x61, 0x1E).to_bytes(),
    ]


def seeds(name: str) -> list[bytes]:
    """A few valid inputs per target, so the fuzzer starts inside each state instead of searching for it."""
    msgs = _messages_sample()
    all_msgs = b"".join(msgs)
    if name == "rfb-handshake":
        return [bytes([opt, seed]) + tail for opt in (0, 1, 2, 9, 10, 17, 18, 25, 26, 3, 0xFF)
                for seed, tail in ((0, all_msgs), (7, msgs[2] + msgs[3]))] + [b"\x00\x00RFB 003.008\n\x01\x00"]
    if name == "rfb-messages":
        return [b"\x00" + m for m in msgs] + [b"\x00" + all_msgs, b"\x05" + all_msgs]
    if name == "rfb-tls":
        return [bytes([sub | auth, 0]) + tail for sub in (0, 1, 2) for auth in (0, 0x80)
                for tail in (b"", all_msgs)] + [b"\x01\x00" + struct.pack(">II", 4, 6) + b"userfuzzpw\x01"]
    if name == "rfb-rsaaes":
        e = env()
        out = []
        for variant in range(4):
            hash_ = e.ra2[(e.constants.SecurityType.RA2, e.constants.SecurityType.RA2NE,
                           e.constants.SecurityType.RA2_256, e.constants.SecurityType.RA2NE_256)[variant]][3]
            tails = {0: e.ra2_client_wire, 1: b"\x00\x80" + bytes(128), 2: b"\x00\x04abcd" + bytes(16),
                     3: hash_ + _ra2_credentials(e.password) + b"\x01" + all_msgs,
                     4: _ra2_credentials(e.password) + b"\x01" + all_msgs, 5: b"\x01" + all_msgs}
            out += [bytes([variant | stage << 2, seed]) + tail for stage, tail in tails.items() for seed in (0, 9)]
        return [*out, bytes([16, 0]) + _ra2_credentials(b"wrong") + b"\x01"]
    if name == "websocket":
        return [b"\x00\x00" + _ws_frame(2, all_msgs), b"\x03\x01" + _ws_frame(2, msgs[3], fin=False)
                + _ws_frame(9, b"ping") + _ws_frame(0, msgs[5]) + _ws_frame(8, b"\x03\xe8bye"),
                b"\x00\x00" + _ws_frame(2, b"x" * 300) + _ws_frame(10, b"")]
    if name == "mixed":
        return [bytes([i]) + s for i, t in enumerate(_MIXED) for s in seeds(t)]
    if name == "canary":
        return [b"ok", b"CRASH" if os.environ.get("VKMSREMOTE_FUZZ_CANARY") == "crash" else b"HANG"]
    if name == "http":
        up = (b"GET /websockify HTTP/1.1\r\nHost: localhost:5800\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Protocol: binary\r\nOrigin: http://localhost:5800\r\n\r\n")
        get = b"GET /novnc/core/rfb.js HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
        return [b"\x00" + up, b"\x00" + get, b"\x09" + b"GET /novnc/core/rfb.js?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
                b"\x00GET /novnc/%2e%2e/etc/passwd HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"]
    raise KeyError(name)


DICTIONARY = [
    b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n", b"\x00\x02", b"\x00\x00\x01\x03", b"\x00\x00\x01\x04",
    b"\x00\x00\x01\x05", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x00\x00\x00",
    b"GET ", b"HEAD ", b" HTTP/1.1\r\n", b"\r\n\r\n", b"Host: localhost\r\n", b"Upgrade: websocket\r\n",
    b"Connection: Upgrade\r\n", b"Sec-WebSocket-Version: 13\r\n", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"Sec-WebSocket-Protocol: binary\r\n", b"Origin: http://localhost\r\n", b"/websockify", b"%2e%2e", b"%00",
    b"\x82\xfe", b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00", b"\x88\x82", b"\x89\x80",
]


def write_dictionary(path: Path) -> None:
    lines = []
    for token in DICTIONARY:
        lines.append('"' + "".join(f"\\x{b:02x}" for b in token) + '"')
    path.write_text("\n".join(lines) + "\n")


# --- engines -------------------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    runs: int = 0
    seconds: float = 0.0
    crashes: int = 0
    hangs: int = 0
    ooms: int = 0
    peak_rss_mb: float = 0.0
    slowest_ms: float = 0.0
    coverage: int = 0
    artifacts: tuple[str, ...] = ()

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


class _Timing:
    """Per-input wall time, kept in the child and written to a file now and then (libFuzzer ends the
    process with exit(), so nothing runs after the last input)."""

    def __init__(self, target: Target, path: str | None) -> None:
        self.target = target
        self.path = path
        self.slowest = 0.0
        self.count = 0

    def __call__(self, data: bytes) -> None:
        t0 = time.perf_counter()
        self.target(data)
        dt = time.perf_counter() - t0
        self.count += 1
        if dt > self.slowest:
            self.slowest = dt
            self._write()
        elif self.count % 20000 == 0:
            self._write()

    def _write(self) -> None:
        if self.path is not None:
            Path(self.path).write_text(json.dumps({"slowest": self.slowest, "count": self.count}))


def _child(name: str, libfuzzer_args: list[str]) -> None:
    """Runs inside the fuzzing child: instrument vkmsremote, then hand control to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["vkmsremote"]):
        import vkmsremote.errors
        import vkmsremote.input.keymap
        import vkmsremote.rfb.convert
        import vkmsremote.rfb.encodings
        import vkmsremote.rfb.protocol
        import vkmsremote.web.http
        import vkmsremote.web.server
        for mod in ("hextile", "raw", "rre", "tight", "zlibenc", "zrle", "_subrects"):
            __import__(f"vkmsremote.rfb.encodings.{mod}")
    env()  # TLS context, frame: made before the first input so the first input is not "slow"
    timing = _Timing({**TARGETS, **CANARIES}[name], os.environ.get("VKMSREMOTE_FUZZ_TIMING"))
    allowed = vkmsremote.errors.ProtocolError

    def one_input(data: bytes) -> None:
        with contextlib.suppress(allowed):
            timing(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_UNITS = re.compile(r"stat::number_of_executed_units: (\d+)")
_PEAK = re.compile(r"stat::peak_rss_mb:\s+(\d+)")
_STATS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+).*?rss: (\d+)Mb")


def run_atheris(name: str, runs: int, *, timeout: float, rss_limit_mb: int, workdir: Path,
                log: Callable[[str], None]) -> Result:
    """Run one target in a child until ``runs`` inputs are done or it fails (a crash, hang or memory
    blow-up ends the child, as libFuzzer does: that input is kept and reported, the target's run is over)."""
    corpus = workdir / f"corpus-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    seed_dir = workdir / f"seeds-{name}"
    seed_dir.mkdir(exist_ok=True)
    for i, s in enumerate(seeds(name)):
        (seed_dir / f"seed-{i}").write_bytes(s)
    dict_path = workdir / "rfb.dict"
    write_dictionary(dict_path)
    res = Result(name)
    timing_path = workdir / f"timing-{name}.json"
    art = workdir / f"artifacts-{name}"
    art.mkdir(exist_ok=True)
    before = set(art.iterdir())
    args = [sys.executable, os.path.abspath(__file__), "--child", name, "--",
            f"-runs={runs}", f"-timeout={max(1, round(timeout))}", f"-rss_limit_mb={rss_limit_mb}",
            "-max_len=4096", f"-dict={dict_path}", f"-artifact_prefix={art}/", "-print_final_stats=1",
            str(corpus), str(seed_dir)]
    t0 = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ,
                          VKMSREMOTE_FUZZ_TIMING=str(timing_path), PYTHONHASHSEED="0"))
    res.seconds = time.monotonic() - t0
    out = proc.stderr
    done = _DONE.search(out)
    stats = _STATS.findall(out)
    units = _UNITS.search(out)
    res.runs = int(units.group(1)) if units else int(done.group(1)) if done else int(stats[-1][0]) if stats else 0
    if stats:
        res.coverage = int(stats[-1][1])
        res.peak_rss_mb = max(float(s[2]) for s in stats)
    for peak in _PEAK.findall(out):
        res.peak_rss_mb = max(res.peak_rss_mb, float(peak))
    new = sorted(set(art.iterdir()) - before)
    if proc.returncode != 0 or new:
        if "ERROR: libFuzzer: timeout" in out:
            res.hangs += 1
        elif "ERROR: libFuzzer: out-of-memory" in out:
            res.ooms += 1
        else:
            res.crashes += 1
        tail = "\n".join(out.splitlines()[-40:])
        log(f"{name}: child ended with status {proc.returncode} after {res.runs} inputs:\n{tail}")
    res.artifacts = tuple(str(p) for p in new)
    with contextlib.suppress(OSError, ValueError):
        res.slowest_ms = json.loads(timing_path.read_text())["slowest"] * 1000
    return res


def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and buf:
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 3:
            buf[pos:pos] = rng.choice(DICTIONARY)
        elif op == 4 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 5:
            other = rng.choice(pool)
            buf[pos:] = other[rng.randrange(len(other) + 1):]
        elif op == 6 and len(buf) >= 4:
            p = rng.randrange(len(buf) - 3)
            buf[p:p + 4] = struct.pack(">I", rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF,
                                                         0x80000000, 0xFFFFFFFF)))
    return bytes(buf[:4096])


def run_random(name: str, runs: int, *, timeout: float, seed: int = 1) -> Result:
    """No coverage feedback: seeds mutated at random, in this process (hangs are measured, not killed)."""
    from vkmsremote.errors import ProtocolError

    rng = random.Random(seed)
    pool = seeds(name)
    target = {**TARGETS, **CANARIES}[name]
    res = Result(name)
    t0 = time.monotonic()
    for _ in range(runs):
        data = _mutate(rng, rng.choice(pool), pool)
        s = time.perf_counter()
        try:
            target(data)
        except ProtocolError:
            pass
        except Exception as err:
            res.crashes += 1
            print(f"{name}: crash on {data!r}: {err!r}", file=sys.stderr)
        dt = time.perf_counter() - s
        res.slowest_ms = max(res.slowest_ms, dt * 1000)
        if dt > timeout:
            res.hangs += 1
        res.runs += 1
    res.seconds = time.monotonic() - t0
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


# --- command line ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        name = argv[1]
        _child(name, argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1_000_000, help="inputs in all, shared by the targets (default 1e6)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="comma-separated: " + ", ".join(TARGETS) + " (or mixed: all of them in one child)")
    p.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds one input may take before it counts as a hang (default 10: a loaded machine)")
    p.add_argument("--rss-limit-mb", type=int, default=1024, help="a child above this RSS is a crash (default 1024)")
    p.add_argument("--keep", type=Path, help="keep corpora and crash inputs in this directory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    for n in names:
        if n not in TARGETS and n not in CANARIES:
            p.error(f"unknown target {n!r}")
    total_weight = sum(WEIGHTS[n] for n in names)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="vkmsremote-fuzzrun-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results: list[Result] = []
    t0 = time.monotonic()
    try:
        for n in names:
            share = max(1, round(args.runs * WEIGHTS[n] / total_weight))
            if args.engine == "atheris":
                r = run_atheris(n, share, timeout=args.timeout, rss_limit_mb=args.rss_limit_mb, workdir=workdir,
                                log=log)
            else:
                r = run_random(n, share, timeout=args.timeout)
            results.append(r)
            if not args.json:
                print(f"{n:<14} {r.runs:>9} inputs {r.seconds:>7.1f} s {r.rate:>8.0f}/s  crashes {r.crashes}"
                      f"  hangs {r.hangs}  oom {r.ooms}  slowest {r.slowest_ms:.1f} ms  peak RSS {r.peak_rss_mb:.0f} MB"
                      + (f"  cov {r.coverage}" if r.coverage else ""), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
        if _env is not None:
            _env.close()
    wall = time.monotonic() - t0
    total = sum(r.runs for r in results)
    summary = {
        "engine": args.engine,
        "inputs": total,
        "seconds": round(wall, 1),
        "inputs_per_second": round(total / wall) if wall else 0,
        "crashes": sum(r.crashes for r in results),
        "hangs": sum(r.hangs for r in results),
        "ooms": sum(r.ooms for r in results),
        "slowest_ms": round(max((r.slowest_ms for r in results), default=0.0), 1),
        "peak_rss_mb": max((r.peak_rss_mb for r in results), default=0.0),
        "targets": {r.target: {"inputs": r.runs, "inputs_per_second": round(r.rate), "crashes": r.crashes,
                               "hangs": r.hangs, "ooms": r.ooms, "slowest_ms": round(r.slowest_ms, 1),
                               "peak_rss_mb": r.peak_rss_mb, "coverage": r.coverage,
                               "artifacts": list(r.artifacts)} for r in results},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"total: {total} inputs in {wall:.0f} s ({summary['inputs_per_second']}/s), crashes "
              f"{summary['crashes']}, hangs {summary['hangs']}, out-of-memory {summary['ooms']}, slowest input "
              f"{summary['slowest_ms']} ms, peak RSS {summary['peak_rss_mb']:.0f} MB")
    return 0 if summary["crashes"] == summary["hangs"] == summary["ooms"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
