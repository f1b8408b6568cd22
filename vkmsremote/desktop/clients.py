"""Who uses a DRM card, and who is its DRM master (the compositor or X server driving it).

Two sources, best first:

1. debugfs: ``/sys/kernel/debug/dri/<minor>/clients`` (drivers/gpu/drm/drm_debugfs.c, drm_clients_info),
   one row per open file: ``command tgid dev master a uid magic ...``; ``master`` is ``y`` for the file
   that is the current DRM master. The kernel updates a file's pid to the last process that used it
   (so a compositor that got its fd from seatd or logind shows as itself). Needs root and debugfs.
2. /proc: processes holding the card open (``/proc/<pid>/fd/*`` -> ``/dev/dri/cardN``). Master status
   is not visible there, so the holder is the one whose name is a known compositor, if exactly one is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEBUGFS_DRI = Path("/sys/kernel/debug/dri")
PROC = Path("/proc")

KNOWN_COMPOSITORS = ("weston", "sway", "Xorg", "X", "gnome-shell", "mutter", "kwin_wayland", "labwc",
                     "wayfire", "hyprland", "Hyprland", "cage", "river", "niri")
"""Process names (comm) of display servers that become DRM master."""
SEAT_MANAGERS = ("seatd", "systemd-logind")
"""They open the card and hand the fd to the compositor (libseat); debugfs may name them as the master."""

_ROW = re.compile(r"^\s*(?P<command>.+?)\s+(?P<tgid>\d+)\s+(?P<dev>\d+)\s+(?P<master>[yn])\s+(?P<auth>[yn])"
                  r"\s+(?P<uid>\d+)\s+(?P<magic>\d+)")


@dataclass(frozen=True, slots=True)
class DrmClient:
    """One process with the card open."""

    pid: int
    command: str  # the process name (comm), e.g. "weston"
    master: bool | None  # None: unknown (the /proc source cannot tell)
    uid: int | None = None
    source: str = "debugfs"  # "debugfs" | "proc"

    def describe(self) -> str:
        role = {True: "DRM master", False: "not master", None: "holds it open"}[self.master]
        return f"{self.command} (pid {self.pid}, {role}, from {self.source})"


def card_minor(card: str) -> int:
    """3 for /dev/dri/card3."""
    m = re.search(r"card(\d+)$", card)
    if m is None:
        raise ValueError(f"{card!r} is not a /dev/dri/cardN path")
    return int(m.group(1))


def parse_clients(text: str, minor: int | None = None) -> list[DrmClient]:
    """Rows of a debugfs ``clients`` file (the header line is skipped); only ``minor``'s if given."""
    out = []
    for line in text.splitlines()[1:]:
        m = _ROW.match(line)
        if m is None or (minor is not None and int(m["dev"]) != minor):
            continue
        out.append(DrmClient(int(m["tgid"]), m["command"].strip(), m["master"] == "y", int(m["uid"])))
    return out


def _debugfs_clients(minor: int, root: Path) -> list[DrmClient] | None:
    """None when debugfs cannot be read (not mounted, not root)."""
    files = [root / str(minor) / "clients"]
    try:
        files += [d / "clients" for d in sorted(root.iterdir()) if d.name != str(minor)]
    except OSError:
        return None
    seen: dict[int, DrmClient] = {}
    readable = False
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        readable = True
        for c in parse_clients(text, minor):
            if c.pid not in seen or (c.master and not seen[c.pid].master):
                seen[c.pid] = c
    return list(seen.values()) if readable else None


def process_environ(pid: int, *, proc: Path = PROC) -> dict[str, str]:
    """The environment process ``pid`` started with (/proc/PID/environ; OSError if it cannot be read)."""
    env = {}
    for item in (proc / str(pid) / "environ").read_bytes().split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    return env


def process_owner(pid: int, *, proc: Path = PROC) -> tuple[int, int]:
    """(real uid, real gid) of process ``pid`` (/proc/PID/status; OSError if it cannot be read)."""
    uid = gid = -1
    for line in (proc / str(pid) / "status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    return uid, gid


def as_user(uid: int, gid: int, argv: list[str]) -> list[str]:
    """``argv`` run as ``uid``/``gid`` (through setpriv, no supplementary groups) unless this process is
    that user already: how vkmsremote, as root, asks a desktop user's session (its D-Bus bus, its dconf)."""
    if os.geteuid() == uid:
        return argv
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


def processes_named(names: Iterable[str], *, proc: Path = PROC) -> list[tuple[int, str]]:
    """(pid, comm) of the running processes whose name (comm) is one of ``names``, oldest first."""
    wanted = set(names)
    out = []
    for pid in _pids(proc):
        comm = _comm(pid, proc)
        if comm in wanted:
            out.append((pid, comm))
    return out


def _comm(pid: int, proc: Path) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def _proc_clients(card: str, proc: Path) -> list[DrmClient]:
    target = os.path.realpath(card)
    out = []
    for entry in _pids(proc):
        fd_dir = proc / str(entry) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd_dir / fd) == target:
                    break
            except OSError:
                continue
        else:
            continue
        try:
            uid = os.stat(proc / str(entry)).st_uid
        except OSError:
            uid = None
        out.append(DrmClient(entry, _comm(entry, proc), None, uid, source="proc"))
    return out


def _pids(proc: Path) -> Iterable[int]:
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def card_clients(card: str, *, debugfs: Path = DEBUGFS_DRI, proc: Path = PROC) -> list[DrmClient]:
    """Every process with ``card`` open, from debugfs when readable, else from /proc."""
    found = _debugfs_clients(card_minor(card), debugfs)
    if found is not None:
        # debugfs names the thread group; comm from /proc is the process's current name
        return [c if c.command != "<unknown>" else DrmClient(c.pid, _comm(c.pid, proc), c.master, c.uid)
                for c in found]
    return _proc_clients(card, proc)


def drm_master(card: str, *, debugfs: Path = DEBUGFS_DRI, proc: Path = PROC,
               exclude: Iterable[int] = ()) -> DrmClient | None:
    """The process holding ``card`` as DRM master, or None (no master, or it cannot be told)."""
    skip = set(exclude) | {os.getpid()}
    clients = [c for c in card_clients(card, debugfs=debugfs, proc=proc) if c.pid not in skip]
    masters = [c for c in clients if c.master]
    if masters:
        master = masters[0]
        if master.command in SEAT_MANAGERS:  # the compositor it opened the card for holds the same file
            users = [c for c in _proc_clients(card, proc) if c.command in KNOWN_COMPOSITORS and c.pid not in skip]
            if len(users) == 1:
                return DrmClient(users[0].pid, users[0].command, True, users[0].uid,
                                 source=f"{master.source} via {master.command}")
        return master
    if any(c.master is False for c in clients):
        return None  # debugfs says nobody is master
    known = [c for c in clients if c.command in KNOWN_COMPOSITORS]
    return known[0] if len(known) == 1 else None
