"""Giving up privileges: the network-facing process becomes an unprivileged user with no capabilities; the
capture broker keeps uid 0 but only CAP_SYS_ADMIN.

Linux capabilities (capabilities(7)) are read from /proc/self/status and set with the capset(2) and
prctl(2) system calls through ctypes (Python has no binding for them). Order matters:
- the bounding set can only shrink while CAP_SETPCAP is still held, so it is dropped first;
- setgroups/setgid must come before setuid (after it, the process may no longer change its groups);
- setuid from 0 to a non-zero uid with every uid non-zero clears the permitted, effective and ambient
  sets (unless SECBIT_KEEP_CAPS, which we never set); capset(0) afterwards makes that explicit;
- PR_SET_NO_NEW_PRIVS last: nothing this process execs can gain privileges (setuid binaries, file caps).
Every step is checked by reading the result back; a failure raises PermissionDeniedError rather than
serving with more privileges than intended.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from vkmsremote.errors import PermissionDeniedError, UsageError

DEFAULT_USER = "nobody"


class Cap(IntEnum):
    """The capabilities vkmsremote names (include/uapi/linux/capability.h)."""

    CHOWN = 0
    DAC_OVERRIDE = 1
    SETGID = 6
    SETUID = 7
    SETPCAP = 8
    NET_BIND_SERVICE = 10
    SYS_ADMIN = 21


class Prctl(IntEnum):
    """prctl(2) options used here (include/uapi/linux/prctl.h)."""

    SET_PDEATHSIG = 1
    CAPBSET_READ = 23
    CAPBSET_DROP = 24
    SET_NO_NEW_PRIVS = 38
    GET_NO_NEW_PRIVS = 39
    CAP_AMBIENT = 47


PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91, "riscv64": 91, "ppc64le": 184, "s390x": 185}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The capability sets of a process as bit masks (bit n = capability n)."""

    inheritable: int
    permitted: int
    effective: int
    bounding: int
    ambient: int
    no_new_privs: bool

    @classmethod
    def of(cls, pid: int | str = "self") -> Capabilities:
        """Read /proc/<pid>/status (CapInh, CapPrm, CapEff, CapBnd, CapAmb, NoNewPrivs)."""
        fields: dict[str, str] = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        return cls(
            inheritable=int(fields["CapInh"], 16), permitted=int(fields["CapPrm"], 16),
            effective=int(fields["CapEff"], 16), bounding=int(fields["CapBnd"], 16),
            ambient=int(fields.get("CapAmb", "0"), 16), no_new_privs=fields.get("NoNewPrivs", "0") == "1",
        )


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def mask(caps: Iterable[int]) -> int:
    out = 0
    for c in caps:
        out |= 1 << int(c)
    return out


def _prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ret = _libc.prctl(ctypes.c_int(int(option)), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4),
                      ctypes.c_ulong(arg5))
    if ret < 0:
        err = ctypes.get_errno()
        raise PermissionDeniedError(f"prctl({Prctl(option).name if option in Prctl._value2member_map_ else option}) "
                                    f"failed: {os.strerror(err)}")
    return int(ret)


def set_parent_death_signal(signum: int) -> None:
    """PR_SET_PDEATHSIG: the kernel sends ``signum`` to this process when its parent exits."""
    _prctl(Prctl.SET_PDEATHSIG, signum)


def set_no_new_privs() -> None:
    _prctl(Prctl.SET_NO_NEW_PRIVS, 1)
    if _prctl(Prctl.GET_NO_NEW_PRIVS) != 1:
        raise PermissionDeniedError("PR_SET_NO_NEW_PRIVS did not stick")


def capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    """capset(2) for this process (64-bit masks, _LINUX_CAPABILITY_VERSION_3)."""
    number = _SYS_CAPSET.get(os.uname().machine)
    if number is None:
        raise PermissionDeniedError(f"no capset system call number known for {os.uname().machine}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(
        _CapData(effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF),
        _CapData(effective >> 32, permitted >> 32, inheritable >> 32),
    )
    if _libc.syscall(ctypes.c_long(number), ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PermissionDeniedError(f"capset failed: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def drop_bounding_set(keep: Iterable[int] = ()) -> None:
    """Remove every capability but ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    kept = {int(c) for c in keep}
    for cap in range(last_cap() + 1):
        if cap not in kept and _libc.prctl(ctypes.c_int(int(Prctl.CAPBSET_READ)), ctypes.c_ulong(cap), ctypes.c_ulong(0),
                                             ctypes.c_ulong(0), ctypes.c_ulong(0)) == 1:
            _prctl(Prctl.CAPBSET_DROP, cap)


def clear_ambient() -> None:
    _prctl(Prctl.CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def keep_only(caps: Iterable[int]) -> Capabilities:
    """Reduce this process (it stays uid 0) to ``caps``: bounding, permitted and effective sets hold only
    them, nothing is inheritable or ambient, and no_new_privs is set. Returns the sets read back."""
    kept = mask(caps)
    drop_bounding_set(int(c) for c in caps)
    clear_ambient()
    capset(kept, kept, 0)
    set_no_new_privs()
    now = Capabilities.of()
    if now.effective != kept or now.permitted != kept or now.bounding & ~kept or now.inheritable or now.ambient:
        raise PermissionDeniedError(f"capabilities not reduced as asked: {now}")
    return now


@dataclass(frozen=True, slots=True)
class DroppedTo:
    user: str
    uid: int
    gid: int


def resolve_user(name: str) -> pwd.struct_passwd:
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"no user {name!r} to run the server as",
                         hint="name an existing unprivileged user with --user (e.g. nobody)") from None
    if entry.pw_uid == 0:
        raise UsageError(f"user {name!r} is root: the server would keep every privilege",
                         hint="name an unprivileged user with --user (e.g. nobody)")
    return entry


def drop_privileges(user: str = DEFAULT_USER) -> DroppedTo:
    """Become ``user`` (no supplementary groups, its primary group) with no capabilities at all and
    no_new_privs set. Must run as root. Open fds (card, uinput, sockets) stay usable."""
    entry = resolve_user(user)
    if os.geteuid() != 0:
        raise PermissionDeniedError("dropping privileges needs root", hint="start vkmsremote as root")
    uid, gid = entry.pw_uid, entry.pw_gid
    drop_bounding_set()
    clear_ambient()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    capset(0, 0, 0)
    set_no_new_privs()
    verify_dropped(uid, gid)
    return DroppedTo(entry.pw_name, uid, gid)


def verify_dropped(uid: int, gid: int) -> None:
    """Raise unless this process is ``uid``/``gid`` with no groups, no capabilities and no way back."""
    caps = Capabilities.of()
    problems = []
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        problems.append(f"ids are {os.getresuid()}/{os.getresgid()}")
    if os.getgroups():
        problems.append(f"supplementary groups {os.getgroups()} remain")
    if caps.effective or caps.permitted or caps.inheritable or caps.ambient or caps.bounding:
        problems.append(f"capabilities remain: {caps}")
    if not caps.no_new_privs:
        problems.append("no_new_privs is not set")
    try:
        os.setuid(0)
        problems.append("setuid(0) succeeded")
    except PermissionError:
        pass
    if problems:
        raise PermissionDeniedError("giving up privileges failed: " + "; ".join(problems))
