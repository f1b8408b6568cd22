"""The measuring client: scripts/bench_client.c (LibVNCClient does all RFB decoding), built on first use.

:class:`BenchClient` runs it against a server and collects one :class:`Update` per FramebufferUpdate:
when it was decoded (CLOCK_MONOTONIC, comparable with time.monotonic() in any process on this machine),
which frame number the client's framebuffer shows, and bytes received so far.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vkmsremote.errors import TimeoutError_, UsageError

SOURCE = Path(__file__).resolve().parents[2] / "scripts" / "bench_client.c"

ENCODINGS: dict[str, tuple[str, bool]] = {
    "raw": ("raw", False),
    "hextile": ("hextile", False),
    "zlib": ("zlib", False),
    "zrle": ("zrle", False),
    "tight": ("tight", False),
    "tight-jpeg": ("tight", True),
    "h264": ("h264 tight", True),
    "copyrect": ("copyrect tight", True),
}
"""Benchmark encoding name -> (LibVNCClient encodings string, JPEG allowed)."""


@dataclass(frozen=True, slots=True)
class Update:
    t: float
    """Seconds, CLOCK_MONOTONIC, when the update was decoded."""
    number: int
    """Frame number shown after the update (-1: unreadable)."""
    bytes: int
    """Bytes received on the connection so far."""
    rects: int
    pixels: int


def build_client(source: Path = SOURCE, out_dir: Path | None = None) -> Path:
    """Compile bench_client.c against LibVNCClient (cached by the source's hash) and return the binary."""
    if not source.is_file():
        raise UsageError(f"the benchmark client source {source} is missing",
                         hint="run from a vkmsremote source checkout (scripts/bench_client.c)")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise UsageError("no C compiler to build the benchmark client", hint="run scripts/setup-host.sh")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    out_dir = out_dir or Path(tempfile.gettempdir())
    binary = out_dir / f"vkmsremote-bench-client-{digest}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    tmp = binary.with_name(f"{binary.name}.{os.getpid()}")
    build = subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(source), "-lvncclient", "-lavcodec", "-lavutil",
                            "-lswscale"],
                           capture_output=True, text=True, timeout=120)
    if build.returncode != 0:
        raise UsageError(f"cannot build the benchmark client: {build.stderr.strip()[-400:]}",
                         hint="install libvncserver-dev, libavcodec-dev, libswscale-dev (scripts/setup-host.sh)")
    os.replace(tmp, binary)
    return binary


@dataclass
class BenchClient:
    """One run of the C client (started by :meth:`start`, lines collected by a thread)."""

    binary: Path
    host: str
    port: int
    encoding: str
    seconds: float
    quality: int = 8
    compress: int = 1
    updates: list[Update] = field(default_factory=list)
    size: tuple[int, int] | None = None
    end: tuple[float, int, int] | None = None
    """(t, updates, bytes) printed when the client stopped by itself."""
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None
    _first: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> BenchClient:
        if self.encoding not in ENCODINGS:
            raise UsageError(f"unknown encoding {self.encoding!r}", hint=f"choose from {', '.join(ENCODINGS)}")
        name, jpeg = ENCODINGS[self.encoding]
        argv = [str(self.binary), self.host, str(self.port), name, str(self.quality if jpeg else -1),
                str(self.compress), str(self.seconds)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "U" and len(parts) == 6:
                u = Update(int(parts[1]) / 1e9, int(parts[2]), int(parts[3]), int(parts[4]), int(parts[5]))
                with self._lock:
                    self.updates.append(u)
                self._first.set()
            elif parts[0] == "I" and len(parts) == 3:
                self.size = (int(parts[1]), int(parts[2]))
            elif parts[0] == "E" and len(parts) == 4:
                self.end = (int(parts[1]) / 1e9, int(parts[2]), int(parts[3]))

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def wait_first_update(self, timeout: float) -> None:
        if not self._first.wait(timeout):
            self.stop()
            raise TimeoutError_(f"the benchmark client got no update from port {self.port} within {timeout:.0f} s",
                                hint=f"client stderr: {self.stderr()[-300:]}")

    def snapshot(self) -> list[Update]:
        with self._lock:
            return list(self.updates)

    def wait(self, timeout: float) -> int:
        assert self._proc is not None
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            rc = self._proc.wait(10)
        if self._thread is not None:
            self._thread.join(10)
        return rc

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None or self._proc.poll() is None:
            return ""
        return self._proc.stderr.read()


def listening(port: int) -> bool:
    """True if a TCP socket of this machine listens on ``port`` (read from /proc: connecting to find
    out would start a session on the server under test)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on TCP ``port`` (giving up early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc is not None and proc.poll() is not None:
            raise UsageError(f"the server meant to listen on port {port} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError_(f"nothing listens on TCP port {port} after {timeout:.0f} s")
        time.sleep(0.2)
