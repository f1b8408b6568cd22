#!/usr/bin/env python3
"""Survive the desktop around XR-0: ``vkmsremote serve --source crtc --connector XR-0`` keeps serving a connected
VNC client through faults of the desktop around it, on the real kernel (run it in the test VM, as root).

Usage: scripts/vm --timeout 3600 -- .venv/bin/python scripts/survive.py [--cycles 100]
                                        [--faults master,dpms,disable,remove] [--size 640x480] [--json]

The faults, each ``--cycles`` times in a row while the client stays connected:

* ``master``  the DRM master (libdrm's modetest, lighting XR-0) is killed with SIGKILL, then started again;
* ``dpms``    the DRM master (a PatternDriver in this process) switches the CRTC off (atomic ACTIVE=0) and on;
* ``disable`` someone writes 0, then 1, to the VKMS device's ``enabled`` in configfs while it is served;
* ``remove``  the device is removed from configfs altogether (``vkmsremote down --force``) and made again (``up``).

Disabling unregisters the DRM device: the card comes back as a new card, with another minor whenever the old
one is still held open. Half of the ``disable``/``remove`` cycles keep the old card open (this script's DRM master
holds it) until the new card exists, so it must get another minor; in the other half the server must have
let go of the old card by itself (no card fd left in it) before the device comes back.

After each fault the client must see "no signal" (for ``dpms`` the frozen last frame is allowed too), then
the live picture again, pixel for pixel (modetest's framebuffer as the kernel scans it out, or the numbered
test pattern). The client is a minimal RFB 3.8 reader in this script (Raw and DesktopSize; it must be able to
wait for an update with a deadline, which the Python VNC libraries cannot). The server must never exit, and
its open file descriptors (and among them DRM cards and dma-bufs), dma-buf mappings and RSS are read from
/proc after the first cycle of each fault and after the last; the report prints them. A fault fails if the
server exited, a picture did not come, or the fd or mapping counts differ; RSS growth is judged against
``--rss-slack-mb`` (default 8). Exit status 0 when every fault passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vkmsremote.capture.driver import PatternDriver, draw_pattern, pattern_base  # noqa: E402
from vkmsremote.capture.nosignal import no_signal_frame  # noqa: E402
from vkmsremote.drm.atomic import AtomicRequest  # noqa: E402
from vkmsremote.drm.card import Card  # noqa: E402
from vkmsremote.drm.crtc import get_crtc  # noqa: E402
from vkmsremote.drm.framebuffer import map_framebuffer  # noqa: E402
from vkmsremote.drm.ioctl import AtomicFlag  # noqa: E402
from vkmsremote.errors import VkmsRemoteError  # noqa: E402
from vkmsremote.service.locate import ConfigfsConnector  # noqa: E402
from vkmsremote.vkms.configfs import Configfs  # noqa: E402
from vkmsremote.vkms.device import down, status, up  # noqa: E402
from vkmsremote.vkms.profile import load_profile  # noqa: E402
from vkmsremote.vkms.state import StateStore  # noqa: E402

FAULTS = ("master", "dpms", "disable", "remove")
CONNECTOR = "XR-0"
WAIT = 90.0  # seconds for any one expected picture (TCG is slow; a busy host slower still)


class Failure(Exception):
    pass


# --- the client ---------------------------------------------------------------------------------------------


class Client:
    """RFB 3.8, security None, 32-bit B, G, R, X pixels, Raw and DesktopSize: just enough to hold the picture
    the server sent (``fb``) and to wait for the next update with a deadline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        if not self._recv(12).startswith(b"RFB "):
            raise Failure("not an RFB server")
        self.sock.sendall(b"RFB 003.008\n")
        types = self._recv(self._recv(1)[0])
        if 1 not in types:
            raise Failure(f"security None not offered: {list(types)}")
        self.sock.sendall(b"\x01")
        if self._recv(4) != b"\0\0\0\0":
            raise Failure("security None failed")
        self.sock.sendall(b"\x01")  # ClientInit: shared
        w, h = struct.unpack(">HH", self._recv(4))
        self._recv(16)
        self._recv(struct.unpack(">I", self._recv(4))[0])
        # SetPixelFormat (RFC 6143 7.5.1): 32 bpp, depth 24, little-endian, true colour, R/G/B max 255 at
        # shifts 16/8/0, i.e. B, G, R, X in memory.
        self.sock.sendall(struct.pack(">B3xBBBBHHHBBB3x", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))
        self.sock.sendall(struct.pack(">BxHii", 2, 2, 0, -223))  # SetEncodings: Raw, DesktopSize
        self.fb = np.zeros((h, w, 4), np.uint8)
        self.pending = False
        self.updates = 0
        self.request(incremental=False)

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise Failure("the server closed the connection")
            got += k
        return bytes(buf)

    def request(self, incremental: bool = True) -> None:
        h, w = self.fb.shape[:2]
        self.sock.sendall(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, w, h))
        self.pending = True

    def update(self, timeout: float) -> bool:
        """Read until one FramebufferUpdate is complete (True), or False if nothing came within ``timeout``."""
        if not select.select([self.sock], [], [], max(timeout, 0.0))[0]:
            return False
        while (kind := self._recv(1)[0]) != 0:
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                self._recv(3)
                self._recv(struct.unpack(">I", self._recv(4))[0])
                continue
            raise Failure(f"unexpected server message {kind}")
        self._recv(1)
        for _ in range(struct.unpack(">H", self._recv(2))[0]):
            x, y, w, h, enc = struct.unpack(">HHHHi", self._recv(12))
            if enc == 0:
                self.fb[y:y + h, x:x + w] = np.frombuffer(self._recv(w * h * 4), np.uint8).reshape(h, w, 4)
            elif enc == -223:
                self.fb = np.zeros((h, w, 4), np.uint8)
            else:
                raise Failure(f"unexpected encoding {enc}")
        self.pending = False
        self.updates += 1
        return True

    def wait_for(self, wanted: Callable[[np.ndarray], bool], what: str, timeout: float = WAIT) -> None:
        """Ask for updates until the picture is ``wanted``."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.pending:
                self.request()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"the client did not see {what} within {timeout:.0f} s")
            if self.update(min(left, 1.0)) and wanted(self.fb):
                return

    def close(self) -> None:
        self.sock.close()


def same(expected: np.ndarray) -> Callable[[np.ndarray], bool]:
    return lambda fb: fb.shape == expected.shape and bool(np.array_equal(fb[..., :3], expected[..., :3]))


def no_signal(size: tuple[int, int]) -> Callable[[np.ndarray], bool]:
    return same(no_signal_frame(*size))


# --- the server ---------------------------------------------------------------------------------------------


@dataclass
class Probe:
    fds: int
    card_fds: int
    dmabuf_fds: int
    dmabuf_maps: int
    rss_kb: int


class Server:
    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vkmsremote", "serve", "--source", "crtc", "--connector", CONNECTOR,
             "--input", "none", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=REPO, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + 600
        while "vkmsremote: serving" not in self.output:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Failure(f"vkmsremote serve did not start:\n{self.output}")
            time.sleep(0.1)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise Failure(f"the server exited ({self.proc.returncode}):\n{self.output[-4000:]}")

    def probe(self) -> Probe:
        """The server's counts once two reads 0.1 s apart agree on them (a look in progress holds an exported
        buffer's fd for a moment), and its RSS then."""
        last = self.read_proc()
        for _ in range(30):
            time.sleep(0.1)
            now = self.read_proc()
            if (now.fds, now.card_fds, now.dmabuf_fds, now.dmabuf_maps) == (
                    last.fds, last.card_fds, last.dmabuf_fds, last.dmabuf_maps):
                return now
            last = now
        return last

    def read_proc(self) -> Probe:
        pid = self.proc.pid
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        return Probe(fds=len(targets), card_fds=sum(bool(re.match(r"/dev/dri/card\d+", t)) for t in targets),
                     dmabuf_fds=sum("dmabuf" in t for t in targets), dmabuf_maps=sum("dmabuf" in m for m in maps),
                     rss_kb=rss)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)


# --- the desktop around it -------------------------------------------------------------------------------------


class Desktop:
    """The VKMS device (made with the library, recorded in a private state directory) and who drives XR-0."""

    def __init__(self, state_dir: Path, size: tuple[int, int]) -> None:
        self.cfs = Configfs()
        self.store = StateStore(state_dir, configfs=self.cfs)
        self.spec = load_profile("xr-0")
        self.size = size
        self.base = pattern_base(*size)
        self.locate = ConfigfsConnector(self.spec.name, CONNECTOR)
        self.cards_seen: list[str] = []

    def up(self) -> None:
        up(self.spec, configfs=self.cfs, state=self.store, timeout=120)

    def remove(self) -> None:
        down(self.spec.name, configfs=self.cfs, state=self.store, force=True, timeout=120)

    def write_enabled(self, value: int) -> None:
        (self.cfs.vkms / self.spec.name / "enabled").write_text(f"{value}\n")

    def card(self, timeout: float = WAIT) -> tuple[str, str, int, int]:
        """(card path, DRM connector name, connector id, CRTC id) of XR-0 once its card is there."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(VkmsRemoteError):
                (mapping,) = status(self.spec.name, configfs=self.cfs, state=self.store)
                c = mapping.connector(CONNECTOR)
                if mapping.card and c.drm_name and c.connector_id and c.crtc_id and os.path.exists(mapping.card):
                    if not self.cards_seen or self.cards_seen[-1] != mapping.card:
                        self.cards_seen.append(mapping.card)
                    return mapping.card, c.drm_name, c.connector_id, c.crtc_id
            if time.monotonic() > deadline:
                raise Failure(f"no card for {CONNECTOR} within {timeout:.0f} s")
            time.sleep(0.1)

    def pattern(self, number: int) -> np.ndarray:
        out = np.zeros((self.size[1], self.size[0], 4), np.uint8)
        draw_pattern(out, self.base, number)
        return out


class Modetest:
    """libdrm's modetest lighting XR-0 with its test picture (stdin held open: it exits when stdin closes)."""

    def __init__(self, desk: Desktop) -> None:
        self.card, _, conn, self.crtc = desk.card()
        w, h = desk.size
        for _attempt in range(5):  # the server opening the card may be DRM master for a moment
            self.proc = subprocess.Popen(["modetest", "-M", "vkms", "-s", f"{conn}@{self.crtc}:{w}x{h}"],
                                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._lit((w, h), 30):
                return
            self.kill()
        raise Failure(f"modetest did not light {self.card} CRTC {self.crtc}")

    def _lit(self, size: tuple[int, int], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with Card.open(self.card) as card:
            while time.monotonic() < deadline and self.proc.poll() is None:
                crtc = get_crtc(card, self.crtc, with_properties=False)
                if crtc.fb_id and crtc.mode is not None and (crtc.mode.width, crtc.mode.height) == size:
                    return True
                time.sleep(0.05)
        return False

    def scanout(self) -> np.ndarray:
        """What the CRTC scans out now (B, G, R, X), read through GETFB2 + PRIME as root."""
        with Card.open(self.card) as card:
            fb = get_crtc(card, self.crtc, with_properties=False).fb_id
            with map_framebuffer(card, fb) as m, m.reading():
                return np.array(m.plane_rows(0, 4))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Driver:
    """A DRM master in this process: vkmsremote's PatternDriver, frames numbered so each is recognisable."""

    def __init__(self, desk: Desktop) -> None:
        self.desk = desk
        card, drm_name, _, _ = desk.card()
        for attempt in range(20):  # the server opening the card may be DRM master for a moment
            try:
                self.drv = PatternDriver.open(card, connector=drm_name, size=desk.size)
                break
            except VkmsRemoteError:
                if attempt == 19:
                    raise
                time.sleep(0.2)
        self.drv.start()

    @property
    def expected(self) -> np.ndarray:
        return self.desk.pattern(self.drv.frame_number)

    def step(self) -> None:
        self.drv.step()

    def active(self, on: bool) -> None:
        AtomicRequest(self.drv.card).add(self.drv.crtc_id, "ACTIVE", int(on)).commit(AtomicFlag.ALLOW_MODESET)

    def close(self) -> None:
        self.drv.close()


# --- the faults -------------------------------------------------------------------------------------------------


@dataclass
class FaultReport:
    fault: str
    cycles: int = 0
    seconds: float = 0.0
    before: Probe | None = None
    after: Probe | None = None
    rss_growth_kb: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    cards: list[str] = field(default_factory=list)
    ok: bool = False
    error: str | None = None


class Run:
    def __init__(self, args: argparse.Namespace, desk: Desktop, server: Server, client: Client) -> None:
        self.args, self.desk, self.server, self.client = args, desk, server, client
        self.size = desk.size

    def note(self, report: FaultReport, outcome: str) -> None:
        report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1

    def see(self, wanted: Callable[[np.ndarray], bool], what: str) -> None:
        self.client.wait_for(wanted, what)
        self.server.alive()

    def settle_driver(self, drv: Driver) -> None:
        """Two flips, each seen: the server has looked at both of the driver's buffers (a fixed state to count
        fds in)."""
        for _ in range(2):
            drv.step()
            self.see(same(drv.expected), f"pattern frame {drv.drv.frame_number}")

    # master: kill -9 and restart ----------------------------------------------------------------------------

    def master(self, report: FaultReport, cycles: int) -> None:
        mt = Modetest(self.desk)
        try:
            self.see(same(mt.scanout()), "modetest's picture")
            for i in range(cycles):
                mt.kill()
                self.see(no_signal(self.size), "no signal after modetest was killed")
                mt = Modetest(self.desk)
                self.see(same(mt.scanout()), "modetest's picture again")
                self.cycle_done(report, i)
        finally:
            mt.kill()

    # dpms: ACTIVE=0, then 1 ---------------------------------------------------------------------------------------

    def dpms(self, report: FaultReport, cycles: int) -> None:
        drv = Driver(self.desk)
        try:
            self.see(same(drv.expected), "the pattern")
            for i in range(cycles):
                last = self.client.fb.copy()
                drv.active(False)
                # No signal, or nothing new (the frozen last frame): anything else is wrong.
                if not self.client.pending:
                    self.client.request()
                if self.client.update(3.0):
                    if no_signal(self.size)(self.client.fb):
                        self.note(report, "no signal")
                    elif np.array_equal(self.client.fb, last):
                        self.note(report, "frozen")
                    else:
                        raise Failure("while the CRTC was off the client got a picture that is neither the "
                                      "last frame nor no signal")
                else:
                    self.note(report, "frozen")
                drv.active(True)
                drv.step()
                self.see(same(drv.expected), f"pattern frame {drv.drv.frame_number} after the CRTC came on")
                if i == 0 or i == cycles - 1:
                    self.settle_driver(drv)
                self.cycle_done(report, i)
        finally:
            drv.close()

    # disable / remove: the card goes away and comes back ---------------------------------------------------------

    def disable(self, report: FaultReport, cycles: int) -> None:
        self._card_goes(report, cycles, lambda: self.desk.write_enabled(0), lambda: self.desk.write_enabled(1))

    def remove(self, report: FaultReport, cycles: int) -> None:
        self._card_goes(report, cycles, self.desk.remove, self.desk.up)

    def _card_goes(self, report: FaultReport, cycles: int, gone: Callable[[], None], back: Callable[[], None]) -> None:
        drv = Driver(self.desk)
        try:
            self.see(same(drv.expected), "the pattern")
            for i in range(cycles):
                old_card = drv.drv.card.path
                gone()
                self.see(no_signal(self.size), "no signal after the device went away")
                if i % 2 == 0:  # let the server notice on its own and let go of the old card before it is back
                    drv.close()
                    self._server_lets_go(report)
                    back()
                else:  # the old card is held open (here) while the device comes back: another minor
                    back()
                    self.desk.card()
                    drv.close()
                drv = Driver(self.desk)
                drv.step()
                self.see(same(drv.expected), f"pattern frame {drv.drv.frame_number} on the new card")
                self.note(report, "same card node" if drv.drv.card.path == old_card else "another card node")
                if i == 0 or i == cycles - 1:
                    self.settle_driver(drv)
                self.cycle_done(report, i)
        finally:
            drv.close()

    def _server_lets_go(self, report: FaultReport) -> None:
        """With a request outstanding, the server must close the old card within a few looks."""
        if not self.client.pending:
            self.client.request()
        deadline = time.monotonic() + WAIT
        while self.server.read_proc().card_fds:
            if time.monotonic() > deadline:
                raise Failure("the server still holds a card after its device went away")
            time.sleep(0.2)
        self.note(report, "server let go of the old card")

    # bookkeeping -----------------------------------------------------------------------------------------------------

    def cycle_done(self, report: FaultReport, i: int) -> None:
        """After each cycle; the first one's end is the baseline, the last one's the final count. Both end settled
        (modetest: its one buffer seen; the pattern: both buffers seen), so the counts compare."""
        self.server.alive()
        report.cycles = i + 1
        if i == 0:
            report.before = self.server.probe()
        if i == self.args.cycles - 1:  # before the fault's master goes (the reader would let go of its buffers)
            report.after = self.server.probe()
        if self.args.progress and (i + 1) % self.args.progress == 0:
            p = self.server.probe()
            print(f"survive: {report.fault} {i + 1}/{self.args.cycles}: fds {p.fds} rss {p.rss_kb} kB",
                  file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="cycles per fault (default 100)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of {', '.join(FAULTS)}")
    parser.add_argument("--size", default="640x480", help="mode WxH (default 640x480)")
    parser.add_argument("--port", type=int, default=5961)
    parser.add_argument("--rss-slack-mb", type=float, default=8.0, help="RSS growth allowed per fault (MB)")
    parser.add_argument("--progress", type=int, default=0, metavar="N", help="print fd/RSS every N cycles")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    if unknown := [f for f in faults if f not in FAULTS]:
        parser.error(f"unknown faults: {unknown}")
    if args.cycles < 2:
        parser.error("--cycles must be at least 2 (the first is the baseline)")
    w, h = (int(v) for v in args.size.split("x"))
    env = {**os.environ, "VKMSREMOTE_CONFIGFS_ROOT": "", "PYTHONPATH": str(REPO)}
    reports: list[FaultReport] = []
    with tempfile.TemporaryDirectory(prefix="survive-") as tmp:
        desk = Desktop(Path(tmp) / "state", (w, h))
        down(None, configfs=desk.cfs, state=desk.store, force=True)  # every VKMS device: start clean
        desk.up()
        server = Server(args.port, env)
        client = Client(args.port)
        run = Run(args, desk, server, client)
        try:
            for fault in faults:
                report = FaultReport(fault)
                t0 = time.monotonic()
                seen_before = len(desk.cards_seen)
                try:
                    getattr(run, fault)(report, args.cycles)
                    server.alive()
                except (Failure, VkmsRemoteError, OSError, subprocess.SubprocessError) as exc:
                    report.error = f"{type(exc).__name__}: {exc}"
                report.seconds = round(time.monotonic() - t0, 1)
                report.cards = sorted(set(desk.cards_seen[max(seen_before - 1, 0):]))
                _judge(report, args.rss_slack_mb * 1024)
                reports.append(report)
                _print(report, args.json)
                if report.error and server.proc.poll() is not None:
                    break
        finally:
            client.close()
            code = server.stop()
            with contextlib.suppress(VkmsRemoteError):
                down(None, configfs=desk.cfs, state=desk.store, force=True)
    result = {"cycles": args.cycles, "size": args.size, "faults": [asdict(r) for r in reports],
              "server_exit": code, "server_log_tail": server.output[-3000:],
              "ok": all(r.ok for r in reports) and len(reports) == len(faults)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"survive: {'PASS' if result['ok'] else 'FAIL'} ({args.cycles} cycles per fault)")
    return 0 if result["ok"] else 1


def _judge(report: FaultReport, slack_kb: float) -> None:
    if report.error is None and (report.before is None or report.after is None):
        report.error = "no baseline or final measurement"
    if report.before is not None and report.after is not None:
        report.rss_growth_kb = report.after.rss_kb - report.before.rss_kb
        b, a = report.before, report.after
        if report.error is None and (a.fds, a.card_fds, a.dmabuf_fds, a.dmabuf_maps) != (
                b.fds, b.card_fds, b.dmabuf_fds, b.dmabuf_maps):
            report.error = f"descriptors or mappings leaked: before {b}, after {a}"
        elif report.error is None and report.rss_growth_kb > slack_kb:
            report.error = f"RSS grew by {report.rss_growth_kb} kB (more than {slack_kb:.0f} kB)"
    report.ok = report.error is None


def _print(report: FaultReport, quiet: bool) -> None:
    out = sys.stderr if quiet else sys.stdout
    b, a = report.before, report.after
    figures = (f"fds {b.fds} -> {a.fds} (cards {b.card_fds} -> {a.card_fds}, dma-bufs {b.dmabuf_fds} -> "
               f"{a.dmabuf_fds}, dma-buf maps {b.dmabuf_maps} -> {a.dmabuf_maps}), RSS {b.rss_kb} -> {a.rss_kb} kB "
               f"({report.rss_growth_kb:+d} kB)") if b is not None and a is not None else "no figures"
    print(f"survive: {report.fault}: {'ok' if report.ok else 'FAILED'} after {report.cycles} cycles in "
          f"{report.seconds:.0f} s; {figures}; {report.outcomes}; cards {report.cards}"
          + (f"; {report.error}" if report.error else ""), file=out, flush=True)


if __name__ == "__main__":
    sys.exit(main())
