"""The desktop's clipboard, both ways, through each display server's own interface.

* Xorg: the X selections CLIPBOARD and PRIMARY through ``xclip`` (Debian ``xclip``). Setting runs
  ``xclip -i`` for each selection (xclip stays in the background and serves the selection until another
  client owns it, as any X application does). Changes are found by reading CLIPBOARD with ``xclip -o``
  every ``poll`` seconds (X has no change notification without the XFixes extension).
* wlroots compositors (sway, ...): the ``wlr-data-control`` protocol through ``wl-clipboard``
  (``wl-copy`` to set; ``wl-paste --watch`` to be told of changes, then ``wl-paste`` to read).
* Anything else (Weston, GNOME, KDE here): no clipboard; :func:`open_desktop_clipboard` says why.

Both directions are capped (``max_size`` bytes, text is UTF-8); what vkmsremote set itself is not echoed
back to the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, Protocol

from vkmsremote.input.layout import _sway_sockets, _x_displays, wayland_of_sway

log = logging.getLogger(__name__)

DEFAULT_MAX_SIZE: Final = 1 << 20
_WORKER: Final = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vkmsremote-clipboard")
"""Runs the setting tools (xclip, wl-copy) off the event loop, one at a time, in the order asked."""
TIMEOUT: Final = 20.0  # a loaded TCG guest runs xclip in seconds
OWN_TIMEOUT: Final = 2.0  # how long xclip's child may take to own the selection


class DesktopClipboard(Protocol):
    description: str

    def set(self, text: str) -> Future[None]:
        """Make ``text`` the desktop's clipboard (a client's ClientCutText or Extended Clipboard provide), in
        the adapter's own worker thread (in order; the event loop does not wait)."""

    async def watch(self, changed: Callable[[str], None]) -> None:
        """Call ``changed(text)`` whenever the desktop's clipboard changes, until cancelled."""


def _run(argv: list[str], env: Mapping[str, str], data: bytes | None = None) -> bytes:
    try:
        out = subprocess.run(argv, input=data, capture_output=True, timeout=TIMEOUT, env={**os.environ, **env},
                             check=False)
    except subprocess.TimeoutExpired:
        raise OSError(f"{argv[0]} did not answer within {TIMEOUT} s") from None
    if out.returncode != 0:
        raise OSError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout


def _spawn_owner(argv: list[str], env: Mapping[str, str], data: bytes) -> None:
    """xclip -i / wl-copy: they fork a process that serves the selection; wait only for the parent."""
    # No pipe on stdout/stderr: the forked server would hold it open and we would wait for it to exit.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **env}, start_new_session=True)
    try:
        proc.communicate(data, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise OSError(f"{argv[0]} did not take the selection within {TIMEOUT} s") from None
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)}: exit {proc.returncode}")


class _Echo:
    """Remembers what vkmsremote set, so its own change is not sent back to the clients."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.last: str | None = None

    def encode(self, text: str) -> bytes:
        data = text.encode("utf-8")
        if len(data) > self.max_size:
            log.warning("clipboard text of %d bytes cut to %d for the desktop", len(data), self.max_size)
            data = data[:self.max_size]
            text = data.decode("utf-8", errors="ignore")
        self.last = text
        return text.encode("utf-8")

    def seen(self, data: bytes) -> None:
        """The desktop's clipboard as it was when watching began: not news."""
        self.last = data[:self.max_size].decode("utf-8", errors="replace")

    def decode(self, data: bytes) -> str | None:
        """The desktop's new text, or None if it is what we set (or empty)."""
        if len(data) > self.max_size:
            log.warning("desktop clipboard of %d+ bytes cut to %d", len(data), self.max_size)
            data = data[:self.max_size]
        text = data.decode("utf-8", errors="replace")
        if not text or text == self.last:
            return None
        self.last = text
        return text


@dataclass
class XClipboard:
    """CLIPBOARD and PRIMARY on an X display, through xclip."""

    display: str
    poll: float = 1.0
    max_size: int = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        self.description = f"X selections on {self.display} (xclip)"
        self._echo = _Echo(self.max_size)
        self._env = {"DISPLAY": self.display}

    def set(self, text: str) -> Future[None]:
        return _WORKER.submit(self._set, text)

    def _set(self, text: str) -> None:
        data = self._echo.encode(text)
        for selection in ("clipboard", "primary"):
            try:
                _spawn_owner(["xclip", "-selection", selection, "-i"], self._env, data)
            except OSError as exc:
                log.warning("clipboard: could not set the X %s selection: %s", selection, exc)
                continue
            # xclip's forked child takes the selection a moment after its parent returned: wait for it, so
            # a paste right after (the client's next key) gets the new text.
            deadline = time.monotonic() + OWN_TIMEOUT
            while self.read(selection) != data and time.monotonic() < deadline:
                time.sleep(0.01)

    def read(self, selection: str = "clipboard") -> bytes:
        try:
            return _run(["xclip", "-selection", selection, "-o", "-t", "UTF8_STRING"], self._env)
        except OSError:
            return b""  # nobody owns CLIPBOARD, or the owner has no text

    async def watch(self, changed: Callable[[str], None]) -> None:
        self._echo.seen(await asyncio.to_thread(self.read))
        while True:
            await asyncio.sleep(self.poll)
            text = self._echo.decode(await asyncio.to_thread(self.read))
            if text is not None:
                log.info("clipboard: the X CLIPBOARD changed (%d characters)", len(text))
                changed(text)


@dataclass
class WlrClipboard:
    """A wlroots compositor's clipboard through wl-clipboard (wlr-data-control)."""

    runtime_dir: str
    display: str
    max_size: int = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        self.description = f"Wayland {self.display} (wl-clipboard, wlr-data-control)"
        self._echo = _Echo(self.max_size)
        self._env = {"XDG_RUNTIME_DIR": self.runtime_dir, "WAYLAND_DISPLAY": self.display}

    def set(self, text: str) -> Future[None]:
        return _WORKER.submit(self._set, text)

    def _set(self, text: str) -> None:
        try:
            _spawn_owner(["wl-copy", "--type", "text/plain;charset=utf-8"], self._env, self._echo.encode(text))
        except OSError as exc:
            log.warning("clipboard: wl-copy failed: %s", exc)

    def read(self) -> bytes:
        try:
            return _run(["wl-paste", "--no-newline", "--type", "text"], self._env)
        except OSError:
            return b""

    async def watch(self, changed: Callable[[str], None]) -> None:
        # One line per change. wl-paste runs the command with the new content on its stdin: the command reads it
        # all (a command that left it unread, like a bare echo, closed the pipe under the clipboard's owner, and
        # wl-copy, writing to it, died of SIGPIPE, taking the selection with it).
        proc = await asyncio.create_subprocess_exec(
            "wl-paste", "--watch", "sh", "-c", "cat > /dev/null; echo changed", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **self._env})
        assert proc.stdout is not None and proc.stderr is not None
        try:
            while line := await proc.stdout.readline():
                del line
                text = self._echo.decode(await asyncio.to_thread(self.read))
                if text is not None:
                    changed(text)
            err = (await proc.stderr.read(4096)).decode(errors="replace").strip()
            log.warning("clipboard: wl-paste --watch ended (%s): the desktop's clipboard changes are no longer "
                        "seen", err or f"exit {await proc.wait()}")
        finally:
            if proc.returncode is None:
                proc.terminate()
                with contextlib.suppress(ProcessLookupError):
                    await proc.wait()


def _has(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def open_desktop_clipboard(max_size: int = DEFAULT_MAX_SIZE) -> tuple[DesktopClipboard | None, str]:
    """The clipboard of the desktop this process can reach, and a sentence for ``status`` and the log."""
    for socket in _sway_sockets():
        found = wayland_of_sway(socket)
        if found is None:
            continue
        if not _has("wl-paste"):
            return None, "clipboard unavailable: sway found, but wl-clipboard is not installed"
        wlr = WlrClipboard(*found, max_size=max_size)
        return wlr, f"clipboard: {wlr.description}"
    for display in _x_displays():
        try:
            _run(["xkbcomp", "-xkb", display, os.devnull], {"DISPLAY": display})  # can we talk to it at all?
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not _has("xclip"):
            return None, f"clipboard unavailable: X display {display} found, but xclip is not installed"
        x = XClipboard(display, max_size=max_size)
        return x, f"clipboard: {x.description}"
    return None, ("clipboard unavailable: no X display or wlroots compositor reachable (Weston, GNOME and KDE "
                  "clipboards are not supported)")
