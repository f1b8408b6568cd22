"""The consumer socket on the host: the wire format (every byte, every truncation, random packets), then a
real ConsumerServer on a real SOCK_SEQPACKET socket with real fd passing, memfds standing in for dma-bufs:
the Python and C clients get each buffer once and equal pixels and checksums; damage, retirement, fd
accounting over 10,000 frames, slow and excess consumers, 1,000 connect/disconnect cycles, permissions.
The DRM side (the tap on VKMS, `vkmsremote up`) is tested in tests/vm/test_consumer_vm.py."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from consumer_support import MemfdProducer, ServerThread, build_c_client, open_fds, parse_lines
from hypothesis import given, settings
from hypothesis import strategies as st

from vkmsremote.consumer import protocol as p
from vkmsremote.consumer.client import Consumer
from vkmsremote.consumer.consume import changed_outside
from vkmsremote.consumer.protocol import (
    Buffer,
    Bye,
    ByeReason,
    ClientState,
    ConsumerProtocolError,
    FrameEvent,
    FrameFlags,
    Hello,
    Mode,
    Plane,
    Rect,
    Retire,
    decode,
    encode,
)

HELLO = Hello("XR-0", "/dev/dri/card0", "Virtual-1", 36, 35, 4242, Mode(1920, 1080, 60000, True))
BUFFER = Buffer(7, 51, 1920, 1080, 0x34325258, 0, (Plane(7680, 0, 0),), 1)
FRAME = FrameEvent(7, FrameFlags.NEW_BUFFER, 3, 1000, 123456789, 123457000, (0, 0, 1920, 1080),
                   (Rect(0, 0, 64, 64), Rect(128, 64, 16, 8)))


# --- wire format ----------------------------------------------------------------------------------------------


def test_hello_bytes() -> None:
    packet = encode(HELLO)
    assert packet[:8] == struct.pack("<HHI", 1, 1, len(packet) - 8)  # type HELLO, version 1, body length
    body = packet[8:]
    assert body[:6] == b"\x04\x00XR-0"  # u16 length + UTF-8
    assert body[6:22] == b"\x0e\x00/dev/dri/card0"
    assert body[22:33] == b"\x09\x00Virtual-1"
    assert body[33:49] == struct.pack("<IIII", 36, 35, 4242, 0)  # connector id, CRTC id, server pid, reserved
    assert body[49:] == struct.pack("<IIIB3x", 1920, 1080, 60000, 1)  # mode: w, h, refresh mHz, active
    assert decode(packet) == HELLO


def test_buffer_and_frame_bytes() -> None:
    packet = encode(BUFFER)
    assert packet[8:40] == struct.pack("<IIIIIQHH", 7, 51, 1920, 1080, 0x34325258, 0, 1, 1)
    assert packet[40:] == struct.pack("<III", 7680, 0, 0)  # plane 0: pitch, offset, fd index
    assert decode(packet) == BUFFER
    packet = encode(FRAME)
    assert packet[8:68] == struct.pack("<IIQQQQiiIIH2x", 7, 2, 3, 1000, 123456789, 123457000, 0, 0, 1920, 1080, 2)
    assert packet[68:] == struct.pack("<HHHH", 0, 0, 64, 64) + struct.pack("<HHHH", 128, 64, 16, 8)
    assert decode(packet) == FRAME
    for msg in (Mode(800, 600, 59940, False), Retire(9), Bye(ByeReason.TOO_SLOW, "stopped reading")):
        assert decode(encode(msg)) == msg


@pytest.mark.parametrize("message", [HELLO, BUFFER, FRAME, Mode(1, 1, 0, True), Retire(1), Bye(ByeReason.SHUTDOWN)])
def test_every_truncation_and_extension_is_refused(message: p.Message) -> None:
    packet = encode(message)
    for cut in range(len(packet)):
        with pytest.raises(ConsumerProtocolError):
            decode(packet[:cut])
    with pytest.raises(ConsumerProtocolError):
        decode(packet + b"\0")  # the header's length no longer matches
    longer = bytearray(packet + b"\0")
    longer[4:8] = struct.pack("<I", len(longer) - 8)  # ... and with a matching header, the body is too long
    with pytest.raises(ConsumerProtocolError):
        decode(bytes(longer))


def test_caps_and_lies_are_refused() -> None:
    def body_packet(mtype: int, body: bytes, version: int = 1) -> bytes:
        return struct.pack("<HHI", mtype, version, len(body)) + body

    with pytest.raises(ConsumerProtocolError, match="version 2"):
        decode(encode(HELLO)[:2] + b"\x02\x00" + encode(HELLO)[4:])
    with pytest.raises(ConsumerProtocolError, match="unknown message type"):
        decode(body_packet(99, b""))
    with pytest.raises(ConsumerProtocolError, match="at most 4096"):
        decode(b"\0" * (p.MAX_PACKET + 1))
    with pytest.raises(ConsumerProtocolError, match="damage rectangles"):  # a rectangle count over the cap
        decode(body_packet(4, struct.pack("<IIQQQQiiIIH2x", 1, 0, 1, 0, 0, 0, 0, 0, 10, 10, 60000)))
    with pytest.raises(ConsumerProtocolError, match="outside"):  # damage outside the view
        decode(body_packet(4, struct.pack("<IIQQQQiiIIH2x", 1, 0, 1, 0, 0, 0, 0, 0, 10, 10, 1)
                           + struct.pack("<HHHH", 8, 0, 4, 1)))
    with pytest.raises(ConsumerProtocolError, match="planes"):  # 5 planes
        decode(body_packet(3, struct.pack("<IIIIIQHH", 1, 1, 8, 8, 0, 0, 5, 1) + b"\0" * 60))
    with pytest.raises(ConsumerProtocolError, match="fds"):  # a plane naming fd 1 of 1
        decode(body_packet(3, struct.pack("<IIIIIQHH", 1, 1, 8, 8, 0, 0, 1, 1) + struct.pack("<III", 32, 0, 1)))
    with pytest.raises(ConsumerProtocolError, match="string of 300"):  # a string length over the cap
        decode(body_packet(6, struct.pack("<IH", 1, 300) + b"x" * 300))
    with pytest.raises(ConsumerProtocolError, match="unknown flags"):
        decode(body_packet(4, struct.pack("<IIQQQQiiIIH2x", 1, 8, 1, 0, 0, 0, 0, 0, 10, 10, 0)))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 6))
def test_random_packets_parse_or_raise_the_protocol_error(noise: bytes, mtype: int) -> None:
    for packet in (noise, struct.pack("<HHI", mtype, 1, len(noise)) + noise):
        with contextlib.suppress(ConsumerProtocolError):
            decode(packet)


def test_client_state_checks_order_fds_and_buffer_names() -> None:
    s = ClientState()
    with pytest.raises(ConsumerProtocolError, match="before HELLO"):
        s.receive(encode(BUFFER), [11])
    s.receive(encode(HELLO), [])
    with pytest.raises(ConsumerProtocolError, match="announces 1 fds, 0 came"):
        s.receive(encode(BUFFER), [])
    with pytest.raises(ConsumerProtocolError, match="came with 1 fds"):
        s.receive(encode(FRAME), [5])
    with pytest.raises(ConsumerProtocolError, match="never sent"):
        s.receive(encode(FRAME), [])
    got = s.receive(encode(BUFFER), [11])
    assert got.buffer is not None and got.buffer.fds == (11,) and got.release == ()
    with pytest.raises(ConsumerProtocolError, match="twice"):
        s.receive(encode(BUFFER), [12])
    assert s.receive(encode(FRAME), []).buffer is got.buffer
    with pytest.raises(ConsumerProtocolError, match="serial"):
        s.receive(encode(FRAME), [])  # the same serial again
    assert s.receive(encode(Retire(7)), []).release == (11,)
    with pytest.raises(ConsumerProtocolError, match="not held"):
        s.receive(encode(Retire(7)), [])
    s.receive(encode(BUFFER), [13])
    assert s.receive(encode(Bye(ByeReason.SHUTDOWN)), []).release == (13,) and s.closed and not s.buffers


# --- a real server, real sockets, real fd passing --------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, MemfdProducer]]:
    st = ServerThread(tmp_path / "XR-0.sock")
    prod = MemfdProducer(st)
    try:
        yield st, prod
    finally:
        st.close()
        prod.close()


def _draw(prod: MemfdProducer, bid: int, rng: np.random.Generator, damage: tuple[Rect, ...] | None,
          previous: np.ndarray | None) -> np.ndarray:
    """Draw the next picture into buffer ``bid``: the previous picture changed inside ``damage`` only."""
    pixels = prod.pixels(bid)
    picture = np.array(previous) if previous is not None else rng.integers(0, 256, pixels.shape, np.uint8)
    for r in damage or ():
        picture[r.y:r.y + r.h, r.x:r.x + r.w] = rng.integers(0, 256, (r.h, r.w, 4), np.uint8)
    pixels[...] = picture
    return picture


def test_python_consumer_gets_buffers_once_pixels_and_damage(served: tuple[ServerThread, MemfdProducer],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    st, prod = served
    monkeypatch.setenv("VKMSREMOTE_CONSUMER_DIR", str(st.path.parent))
    rng = np.random.default_rng(16)
    ids = [prod.new_buffer() for _ in range(3)]
    picture = _draw(prod, ids[0], rng, None, None)
    prod.show(ids[0], None)
    fds_before = len(open_fds())
    with Consumer.connect("XR-0") as xr:  # found by name
        assert (xr.hello.name, xr.hello.connector, xr.hello.crtc_id) == ("XR-0", "Virtual-3", 40)
        frames = xr.frames(timeout=5)
        first = next(frames)
        assert first.damage is None and np.array_equal(first.pixels(), picture)
        received_buffers = {first.buffer.meta.buffer_id}
        previous = picture
        for i in range(1, 60):
            bid = ids[i % 3]  # triple buffering: the next picture is drawn into another buffer
            damage = (Rect(int(rng.integers(0, 48)), int(rng.integers(0, 24)), 16, 8),)
            previous = _draw(prod, bid, rng, damage, previous)
            prod.show(bid, damage)
            f = next(frames)
            assert f.buffer.meta.buffer_id == bid and f.damage == damage and f.event.flags & FrameFlags.NEW_BUFFER
            assert np.array_equal(f.pixels(), previous)  # the mapped buffer is the picture, no copy made
            assert f.checksum() == zlib.crc32(previous.tobytes())
            received_buffers.add(bid)
        assert received_buffers == set(ids) and xr.open_fds() == 3  # each buffer's fd came once
        # Mapped and all: one fd per buffer (the mappings keep none), plus the connection's two ends (the
        # server runs in this process too; its dups of the producer's fds were there before).
        assert len(open_fds()) - fds_before == 3 + 2
        prod.retire(ids[0])
        events = xr.poll() or [next(xr.events(timeout=5))]
        assert isinstance(events[0], Retire) and xr.open_fds() == 2 and ids[0] not in xr.buffers


def test_damage_check_finds_a_change_outside_the_damage() -> None:
    a = np.zeros((8, 8, 4), np.uint8)
    b = a.copy()
    b[1, 1] = 1
    b[6, 6] = 1
    assert changed_outside(a, b, (Rect(0, 0, 2, 2),)) == 1
    assert changed_outside(a, b, (Rect(0, 0, 2, 2), Rect(6, 6, 1, 1))) == 0


def test_ten_thousand_frames_hold_no_more_fds_than_buffers(served: tuple[ServerThread, MemfdProducer]) -> None:
    st, prod = served
    ids = [prod.new_buffer() for _ in range(2)]
    prod.show(ids[0], None)
    before = open_fds()
    with Consumer.connect(str(st.path)) as xr:
        frames = xr.events(timeout=5)
        n = 0
        for i in range(10_000):
            if i % 1000 == 999:  # buffer churn: the compositor reallocates (a mode change, a new swapchain)
                prod.retire(ids[0])
                ids = [ids[1], prod.new_buffer()]
            prod.show(ids[i % 2], ())
            while n <= i + 1:  # the frame shown on connect, then one per show
                item = next(frames)
                n += 1 if not isinstance(item, (Buffer, Retire)) else 0
            assert xr.open_fds() <= 2
        assert xr.frames_received == 10_001 and len(xr.buffers) <= 2
    deadline = time.monotonic() + 10
    while st.server.consumers and time.monotonic() < deadline:  # the server closes its end when it sees EOF
        time.sleep(0.01)
    # The producer replaced 10 buffers (a memfd and the server's dup each, the old ones closed): as many fds
    # as before, so the consumer closed every fd it was given.
    assert len(open_fds()) == len(before), open_fds() ^ before


def test_slow_consumer_is_dropped_without_slowing_the_others(tmp_path: Path) -> None:
    st = ServerThread(tmp_path / "XR-0.sock", send_buffer=16 * 1024)
    prod = MemfdProducer(st)
    try:
        ids = [prod.new_buffer() for _ in range(2)]
        prod.show(ids[0], None)
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stuck.connect(str(st.path))  # never reads
        with Consumer.connect(str(st.path)) as xr:
            frames = xr.frames(timeout=5)
            next(frames)
            worst = 0.0
            for i in range(2000):
                t0 = time.perf_counter()
                prod.show(ids[i % 2], (Rect(0, 0, 8, 8),))
                worst = max(worst, time.perf_counter() - t0)
                assert next(frames).event.buffer_id == ids[i % 2]  # the reading consumer misses nothing
            assert st.server.dropped_slow == 1 and len(st.server.consumers) == 1
            assert worst < 0.5, f"a frame took {worst:.3f} s to hand out"  # never blocked on the stuck one
        stuck.close()
    finally:
        st.close()
        prod.close()


def test_consumer_cap_says_bye(tmp_path: Path) -> None:
    st = ServerThread(tmp_path / "XR-0.sock", max_consumers=2)
    try:
        a, b = Consumer.connect(str(st.path)), Consumer.connect(str(st.path))
        with pytest.raises(ConsumerProtocolError, match="too_many"):
            Consumer.connect(str(st.path))
        a.close()
        deadline = time.monotonic() + 5
        while len(st.server.consumers) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        Consumer.connect(str(st.path)).close()  # a place is free again
        b.close()
    finally:
        st.close()


def test_a_consumer_that_talks_is_told_bye(served: tuple[ServerThread, MemfdProducer]) -> None:
    st, _ = served
    with Consumer.connect(str(st.path)) as xr:
        xr.sock.send(b"hello?")
        item = next(xr.events(timeout=5))
        assert isinstance(item, Bye) and item.reason == ByeReason.PROTOCOL


def test_thousand_connect_disconnect_cycles_leak_no_fd_in_the_server(served: tuple[ServerThread, MemfdProducer]) -> None:
    st, prod = served
    ids = [prod.new_buffer() for _ in range(2)]
    prod.show(ids[0], None)
    prod.show(ids[1], ())

    def settle() -> None:
        deadline = time.monotonic() + 10
        while st.server.consumers and time.monotonic() < deadline:
            time.sleep(0.005)

    Consumer.connect(str(st.path)).close()
    settle()
    before = open_fds()
    for i in range(1000):
        if i % 2:
            Consumer.connect(str(st.path)).close()  # HELLO, BUFFER + fd, FRAME, then gone
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # gone before reading anything
            s.connect(str(st.path))
            s.close()
    settle()
    assert st.server.accepted == 1001 and not st.server.consumers
    assert open_fds() == before, (open_fds() ^ before)  # the server's fds (same process): none left behind


def test_a_uid_the_socket_does_not_allow_is_refused(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the host suite runs as root (scripts/test.sh): it must become another uid here"
    tmp_path.chmod(0o755)
    st = ServerThread(tmp_path / "XR-0.sock", mode=0o660, group=0)  # root:root 0660
    try:
        # Imports first: this Python lives under /root, which uid 65534 cannot read.
        code = ("import os\nfrom vkmsremote.consumer.client import Consumer\n"
                "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
                f"Consumer.connect({str(st.path)!r})\n")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert run.returncode != 0 and "PermissionDeniedError: not allowed to connect" in run.stderr, run.stderr
        assert not st.server.accepted
        Consumer.connect(str(st.path)).close()  # root (the owner) may
        assert st.server.accepted == 1
    finally:
        st.close()


def test_c_client_prints_what_the_python_client_prints(served: tuple[ServerThread, MemfdProducer],
                                                        tmp_path: Path) -> None:
    st, prod = served
    exe = build_c_client(tmp_path / "c")
    rng = np.random.default_rng(3)
    ids = [prod.new_buffer() for _ in range(2)]
    picture = _draw(prod, ids[0], rng, None, None)
    prod.show(ids[0], None)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    c_proc = subprocess.Popen([str(exe), str(st.path), "21"], stdout=subprocess.PIPE, text=True)
    py_proc = subprocess.Popen([sys.executable, "-m", "vkmsremote", "consume", str(st.path), "--frames", "21",
                                "--checksums"], stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while len(st.server.consumers) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    expected = [zlib.crc32(picture.tobytes())]
    for i in range(1, 21):
        bid = ids[i % 2]
        damage = (Rect(i, i, 8, 4),)
        picture = _draw(prod, bid, rng, damage, picture)
        prod.show(bid, damage)
        expected.append(zlib.crc32(picture.tobytes()))
        time.sleep(0.05)  # both have read the frame before its buffer is drawn again
    c_out, _ = c_proc.communicate(timeout=60)
    py_out, _ = py_proc.communicate(timeout=60)
    assert c_proc.returncode == 0 and py_proc.returncode == 0, (c_out, py_out)
    c_lines, py_lines = parse_lines(c_out), parse_lines(py_out)
    c_hello, py_hello = c_lines[0][1], py_lines[0][1]
    for key in ("name", "card", "connector", "connector_id", "crtc_id", "width", "height", "refresh_mhz", "active"):
        assert c_hello[key] == py_hello[key], key

    def frames(lines: list[tuple[str, dict[str, str]]]) -> list[tuple[str, str, str, str]]:
        return [(f["serial"], f["buffer"], f["fb"], f["crc32"]) for kind, f in lines if kind == "frame"]

    assert frames(c_lines) == frames(py_lines)
    assert [int(f[3], 16) for f in frames(c_lines)] == expected
    assert [f for k, f in c_lines if k == "end"] == [{"frames": "21", "open_fds": "2"}]


def _run_consume(st: ServerThread, prod: MemfdProducer, argv: list[str], frames: int,
                 rng: np.random.Generator) -> tuple[str, list[np.ndarray]]:
    """``vkmsremote consume`` as a subprocess while the producer shows ``frames`` frames."""
    ids = [prod.new_buffer() for _ in range(2)]
    pictures = [_draw(prod, ids[0], rng, None, None)]
    prod.show(ids[0], None)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "vkmsremote", "consume", str(st.path), "--frames", str(frames),
                             *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not st.server.consumers and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)  # it loads EGL or PyAV after connecting; a buffer is drawn again two frames after it was shown
    for i in range(1, frames):
        damage = (Rect(2 * i, i, 8, 4),)
        pictures.append(_draw(prod, ids[i % 2], rng, damage, pictures[-1]))
        prod.show(ids[i % 2], damage)
        time.sleep(0.1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out, pictures


def test_consume_egl_says_which_path_it_took(served: tuple[ServerThread, MemfdProducer]) -> None:
    st, prod = served
    out, _ = _run_consume(st, prod, ["--egl", "--json", "--verify-damage"], 5, np.random.default_rng(1))
    lines = [json.loads(line) for line in out.splitlines()]
    path = next(d for d in lines if d["type"] == "path")
    # No DRM device on this host: GBM cannot open a card, and Mesa's surfaceless llvmpipe (Debian 12) offers
    # no dma-buf import; the consumer says so and reads through mmap.
    assert path["path"] == "mmap" and "EGL_EXT_image_dma_buf_import" in path["why"], path
    frames = [d for d in lines if d["type"] == "frame"]
    assert len(frames) == 5 and all(f.get("verified") for f in frames[1:])


def test_consume_record_writes_every_frame(served: tuple[ServerThread, MemfdProducer], tmp_path: Path) -> None:
    import av

    st, prod = served
    video = tmp_path / "out.mkv"
    _, pictures = _run_consume(st, prod, ["--record", str(video), "--record-codec", "ffv1"], 8,
                               np.random.default_rng(2))
    with av.open(str(video)) as container:
        decoded = [f.to_ndarray(format="bgra") for f in container.decode(video=0)]
    assert len(decoded) == 8
    for got, want in zip(decoded, pictures, strict=True):
        assert np.array_equal(got[..., :3], want[..., :3])  # lossless: each frame is the picture shown
