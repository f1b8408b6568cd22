"""Running one command inside the test kernel with virtme-ng, with a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

from vkmsremote.errors import VmError
from vkmsremote.vm.accel import Accel, choose_accel
from vkmsremote.vm.command import (
    DEFAULT_APPEND,
    READY_MARKER,
    Forward,
    VmSpec,
    describe,
    env_tuple,
    guest_script,
    parse_status,
    vng_command,
)
from vkmsremote.vm.kernel import cache_dir, kernel_image, kernel_modules

DEFAULT_TIMEOUT = 900.0
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the vkmsremote package that runs (a checkout, or site-packages)."""
OUTPUT_CAP = 4 * 1024 * 1024
"""Characters of each stream kept in VmResult (older output is dropped; streaming shows it all)."""
HEARTBEAT_SECONDS = 15.0
"""How often to say the VM is still booting; once the command runs, every RUNNING_HEARTBEAT_SECONDS."""
RUNNING_HEARTBEAT_SECONDS = 120.0
KILL_GRACE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class VmResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    boot_seconds: float | None
    """Host seconds from starting vng to the guest starting the command (None if never seen)."""
    elapsed: float
    accel: Accel
    results_dir: Path | None
    """Shared directory the guest could write to; None when it was a private one, now removed."""

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


VNG_ENV = "VKMSREMOTE_VNG"
"""Path of the vng program to use (tests point it at a stand-in)."""


def find_vng() -> str:
    """$VKMSREMOTE_VNG, else vng from the running interpreter's venv, else from $PATH."""
    explicit = os.environ.get(VNG_ENV)
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "vng"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("vng")
    if found is None:
        raise VmError(
            "virtme-ng (vng) is not installed", hint="run scripts/setup-host.sh (it installs .[dev])"
        )
    return found


def _vng_env(vng: str) -> dict[str, str]:
    env = dict(os.environ)
    # vng runs "virtme-run" through the shell: its directory must be on PATH.
    env["PATH"] = f"{Path(vng).parent}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    return env


class _Capture:
    """Collects one stream in a thread, optionally echoing it, and spots the guest's ready marker."""

    def __init__(self, source: IO[bytes], echo: TextIO | None, on_marker: threading.Event | None) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.marker_time: float | None = None
        self._source = source
        self._echo = echo
        self._on_marker = on_marker
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for raw in iter(self._source.readline, b""):
            line = raw.decode(errors="replace")
            if self._on_marker is not None and line.startswith(READY_MARKER):
                self.marker_time = time.monotonic()
                self._on_marker.set()
                continue
            self.parts.append(line)
            self.size += len(line)
            while self.size > OUTPUT_CAP and len(self.parts) > 1:
                self.size -= len(self.parts.pop(0))
            if self._echo is not None:
                self._echo.write(line)
                self._echo.flush()

    def text(self) -> str:
        return "".join(self.parts)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(KILL_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    forward: Iterable[tuple[int, int] | Forward] = (),
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    rwdirs: Iterable[str | os.PathLike[str]] = (),
    kernel: str | os.PathLike[str] | None = None,
    accel: Accel | None = None,
    memory: str = "2G",
    cpus: int = 2,
    append: Sequence[str] = DEFAULT_APPEND,
    share_host_tmp: bool = False,
    stream: bool = True,
    verbose: bool = False,
    progress: TextIO | None = sys.stderr,
) -> VmResult:
    """Boot the test kernel over the host's root fs, run ``argv`` as root in it, return its result.

    The guest sees the host's files read-only except ``results_dir`` (created if needed; a private
    temporary one otherwise, removed afterwards) and ``rwdirs``; /tmp is a private tmpfs unless
    ``share_host_tmp`` (the working directory, results directory, rwdirs and the interpreter's prefix
    stay visible over it when they live under /tmp). ``forward`` maps host loopback ports to guest ports; a server in the guest
    must listen on $VKMSREMOTE_VM_GUEST_ADDR (10.0.2.15) or 0.0.0.0 to be reached (the guest's NIC is
    only reachable through these forwards). With ``stream`` the guest's stdout/stderr are copied to
    ours as they come. Raises VmError if the VM cannot boot, or does not finish within ``timeout``
    seconds (the VM is killed first).
    """
    started = time.monotonic()

    def say(message: str) -> None:
        if progress is not None:
            progress.write(f"[vm] {message}\n")
            progress.flush()

    image = Path(kernel) if kernel is not None else kernel_image()
    if not image.is_file():
        raise VmError(f"kernel image {image} does not exist", hint="run scripts/build-kernel.sh")
    if accel is None:
        accel, why = choose_accel(image)
    else:
        why = "requested"
    private = results_dir is None
    if results_dir is None:
        runs = cache_dir() / "vm-runs"
        runs.mkdir(parents=True, exist_ok=True)
        rdir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    else:
        rdir = Path(results_dir).resolve()
        rdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(cwd).resolve() if cwd is not None else Path.cwd()
    try:
        spec = VmSpec(
            kernel=image.resolve(),
            argv=tuple(argv),
            results_dir=rdir,
            cwd=workdir,
            accel=accel,
            env=env_tuple(env),
            forwards=tuple(f if isinstance(f, Forward) else Forward(*f) for f in forward),
            rwdirs=tuple(Path(d).resolve() for d in rwdirs),
            memory=memory,
            cpus=cpus,
            append=tuple(append),
            share_host_tmp=share_host_tmp,
            verbose=verbose,
            modules=kernel_modules(image.resolve()),
            # The interpreter's prefix (a venv inside a checkout under /tmp, say), the directory this
            # vkmsremote package is imported from (the checkout an editable install points into) and every
            # import path (site-packages a .pth line adds from another venv) stay visible too.
            keep=tuple(
                {
                    Path(sys.prefix).resolve(),
                    PACKAGE_ROOT,
                    *(Path(a).resolve().parent for a in argv[:1] if a.startswith("/")),
                    *(Path(p).resolve() for p in sys.path if p and Path(p).is_dir()),
                }
            ),
        )
        spec.status_path.unlink(missing_ok=True)
        spec.script_path.write_text(guest_script(spec))
        vng = find_vng()
        cmd = vng_command(spec, vng)
        say(f"booting test kernel {image} with {accel.value.upper()} ({why})...")
        if verbose:
            say(f"vng command: {describe(cmd)}")
        ready = threading.Event()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_vng_env(vng),
            start_new_session=True,  # one process group: vng, virtme-run and qemu die together
        )
        assert proc.stdout is not None and proc.stderr is not None
        out = _Capture(proc.stdout, sys.stdout if stream else None, None)
        err = _Capture(proc.stderr, sys.stderr if stream else None, ready)
        deadline = started + timeout
        next_beat = time.monotonic() + HEARTBEAT_SECONDS
        announced = False
        try:
            while True:
                try:
                    proc.wait(0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if ready.is_set() and not announced:
                    announced = True
                    say(f"guest up after {now - started:.1f} s; running {describe(spec.argv)}")
                if now >= deadline:
                    _kill_group(proc)
                    out.thread.join(2)
                    err.thread.join(2)
                    stage = "the command" if ready.is_set() else "the boot"
                    raise VmError(
                        f"the VM did not finish within {timeout:.0f} s (still in {stage}); it was killed. "
                        f"Last output:\n{_tail(out.text() + err.text())}",
                        hint="raise the timeout, or look for a hang in the output above",
                    )
                if now >= next_beat:
                    next_beat = now + (RUNNING_HEARTBEAT_SECONDS if ready.is_set() else HEARTBEAT_SECONDS)
                    say(f"{'running' if ready.is_set() else 'still booting'}... {now - started:.0f} s")
        except BaseException:
            if proc.poll() is None:
                _kill_group(proc)
            raise
        out.thread.join(10)
        err.thread.join(10)
        elapsed = time.monotonic() - started
        boot = err.marker_time - started if err.marker_time is not None else None
        try:
            status = parse_status(spec.status_path.read_text())
        except FileNotFoundError:
            status = None
        if status is None:
            raise VmError(
                f"the VM stopped (vng exit status {proc.returncode}) before the command finished"
                f"{'' if ready.is_set() else ' (it never started)'}. Last output:\n"
                f"{_tail(out.text() + err.text())}",
                hint="rerun with --verbose to see the guest's boot console",
            )
        say(
            f"exit status {status} after {elapsed:.1f} s (boot {boot:.1f} s)"
            if boot is not None
            else f"exit status {status} after {elapsed:.1f} s"
        )
        return VmResult(
            argv=spec.argv,
            exit_code=status,
            stdout=out.text(),
            stderr=err.text(),
            boot_seconds=boot,
            elapsed=elapsed,
            accel=accel,
            results_dir=None if private else rdir,
        )
    finally:
        if private:
            shutil.rmtree(rdir, ignore_errors=True)
