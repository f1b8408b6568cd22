"""Pure construction of the vng command line and of the script the guest runs.

Nothing here starts a process, so all of it is unit-tested on the host.

Theory of operation: the host writes ``guest.sh`` into a results directory that is shared read-write
with the guest (``vng --rwdir``), and asks vng to run ``bash <results>/guest.sh``. The script prepares
the guest (private tmpfs /tmp that keeps what the command needs from the host's /tmp, writable HOME and caches, loopback + forwarding NIC), prints a marker
line on stderr when the command starts (that is how the host measures boot time), runs the command
and records its exit status in ``<results>/exit-status``, which the host reads back. The exit status
file is the source of truth: it does not depend on virtme-ng's own return-code channel.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vkmsremote.errors import VmError
from vkmsremote.vm.accel import Accel

GUEST_ADDR = "10.0.2.15"
"""qemu user networking's default guest address; forwarded connections arrive there."""
GUEST_NET = "10.0.2.15/24"

IN_VM_ENV = "VKMSREMOTE_IN_VM"
RESULTS_ENV = "VKMSREMOTE_VM_RESULTS"
GUEST_ADDR_ENV = "VKMSREMOTE_VM_GUEST_ADDR"

SCRIPT_NAME = "guest.sh"
STATUS_NAME = "exit-status"
READY_MARKER = "vkmsremote-vm: guest ready"
"""Printed by the guest on stderr just before the command starts: ``<marker> uptime=<seconds>``."""

DEFAULT_APPEND = ("vkms.create_default_dev=0",)

ROOT_9P_FLAGS = "rootflags=version=9p2000.L,trans=virtio,access=any,msize=512000,cache=loose"
"""Overrides virtme-ng's rootflags (the last one on the command line wins) to add cache=loose: the
guest's root is read-only, and caching it halves the time Python takes to import numpy and pytest
under TCG (measured 92 s -> 49 s). Files the host changes during a run may look stale in the guest;
the shared results directory is a separate mount without caching."""

# vng assembles its virtme-run call as one shell string without quoting paths, so refuse anything
# the shell would split or interpret rather than pass it on.
# "~" is allowed only after a letter or digit (Debian versions such as 7.3.4-1~bpo13+1), where no
# shell expands it.
_SAFE_PATH = re.compile(r"^/(?:[A-Za-z0-9._+@%/=,:-]|(?<=[A-Za-z0-9])~)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class Forward:
    """A TCP port on the host's loopback forwarded to a port of the guest."""

    host_port: int
    guest_port: int
    guest_loopback: bool = False
    """Deliver to 127.0.0.1 in the guest (the guest then accepts 127/8 on its NIC, route_localnet=1),
    so a server there can listen on loopback only; otherwise deliver to GUEST_ADDR."""

    def __post_init__(self) -> None:
        for name, port in (("host", self.host_port), ("guest", self.guest_port)):
            if not 1 <= port <= 65535:
                raise VmError(f"{name} port {port} is outside 1-65535")

    @classmethod
    def parse(cls, text: str) -> Forward:
        """``HOST:GUEST`` or ``PORT`` (same number on both sides); a trailing ``/lo`` delivers to the
        guest's loopback (see ``guest_loopback``)."""
        body, lo, rest = text.partition("/lo")
        if rest:
            raise VmError(
                f"bad port forward {text!r}", hint="write HOST_PORT:GUEST_PORT[/lo], e.g. 5900:5900"
            )
        host, sep, guest = body.partition(":")
        try:
            return cls(int(host), int(guest if sep else host), guest_loopback=bool(lo))
        except ValueError:
            raise VmError(
                f"bad port forward {text!r}", hint="write HOST_PORT:GUEST_PORT[/lo], e.g. 5900:5900"
            ) from None

    def hostfwd(self) -> str:
        # Bound to 127.0.0.1 only: nothing outside this host may reach the guest.
        target = "127.0.0.1" if self.guest_loopback else ""
        return f"hostfwd=tcp:127.0.0.1:{self.host_port}-{target}:{self.guest_port}"


@dataclass(frozen=True, slots=True)
class VmSpec:
    """Everything one VM run needs; built by vkmsremote.vm.runner.run()."""

    kernel: Path
    argv: tuple[str, ...]
    results_dir: Path
    cwd: Path
    accel: Accel = Accel.TCG
    env: tuple[tuple[str, str], ...] = ()
    forwards: tuple[Forward, ...] = ()
    rwdirs: tuple[Path, ...] = ()
    memory: str = "2G"
    cpus: int = 2
    append: tuple[str, ...] = DEFAULT_APPEND
    share_host_tmp: bool = False
    verbose: bool = False
    extra_qemu: tuple[str, ...] = field(default=())
    keep: tuple[Path, ...] = ()
    """More host paths the command needs (e.g. the venv); kept visible if they are under /tmp."""
    modules: Path | None = None
    """The kernel's modules (``.../lib/modules/<release>``): bound at /lib/modules/<release> in the guest,
    and vkms loaded from them before the command, as a distribution's boot loads it (modules-load.d)."""

    def __post_init__(self) -> None:
        if not self.argv:
            raise VmError("no command given to run in the VM")
        for path in (self.kernel, self.results_dir, self.cwd, *self.rwdirs, *filter(None, [self.modules])):
            if not _SAFE_PATH.match(str(path)):
                raise VmError(
                    f"path {str(path)!r} cannot be passed through vng",
                    hint="use an absolute path made of letters, digits and ._+@%/=,:-~ only",
                )
        for name, _ in self.env:
            if not _ENV_NAME.match(name):
                raise VmError(f"bad environment variable name {name!r}")
        ports = [f.host_port for f in self.forwards]
        if len(ports) != len(set(ports)):
            raise VmError(f"host port forwarded twice in {ports}")
        if self.cpus < 1:
            raise VmError(f"cpus must be at least 1, not {self.cpus}")

    def kept_under_tmp(self) -> list[Path]:
        """The outermost of the paths the guest needs that live under /tmp, which the guest hides
        behind its private tmpfs: the guest script moves them back on top of it."""
        tmp = Path("/tmp")
        under = sorted(
            {p for p in (self.cwd, self.results_dir, *self.rwdirs, *self.keep) if tmp in p.parents}
        )
        return [p for p in under if not any(q in p.parents for q in under)]

    @property
    def script_path(self) -> Path:
        return self.results_dir / SCRIPT_NAME

    @property
    def status_path(self) -> Path:
        return self.results_dir / STATUS_NAME


def env_tuple(env: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((env or {}).items()))


def qemu_opts(spec: VmSpec) -> list[str]:
    """Extra qemu arguments: the forwarding NIC (user networking, isolated from the outside)."""
    opts: list[str] = []
    if spec.forwards:
        # restrict=on: the guest cannot open connections out of the VM; hostfwd still works.
        netdev = ",".join(["user", "id=vkfwd", "restrict=on", *(f.hostfwd() for f in spec.forwards)])
        opts += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=vkfwd"]
    opts += list(spec.extra_qemu)
    return opts


def vng_command(spec: VmSpec, vng: str = "vng") -> list[str]:
    """The argv that boots ``spec.kernel`` and runs the guest script."""
    cmd = [vng, "--run", str(spec.kernel)]
    if spec.accel is Accel.TCG:
        cmd.append("--disable-kvm")
    # --force-9p: virtio-fs would be faster, but Debian 12's virtiofsd rejects virtme-ng's arguments,
    # and each failed attempt costs seconds before virtme falls back to 9p anyway.
    cmd += ["--force-9p", "--memory", spec.memory, "--cpus", str(spec.cpus)]
    rwdirs = [spec.results_dir, *spec.rwdirs]
    if spec.share_host_tmp:
        rwdirs.append(Path("/tmp"))
    seen: set[Path] = set()
    for d in rwdirs:
        if d not in seen:
            seen.add(d)
            cmd += ["--rwdir", str(d)]
    append = [ROOT_9P_FLAGS, *spec.append]
    if spec.forwards:
        append.append("net.ifnames=0")  # keep the NIC named eth0 when udev runs in the guest
    cmd += ["--append", " ".join(append)]
    if spec.verbose:
        cmd.append("--verbose")
    cmd += ["--exec", f"bash {spec.script_path}"]
    opts = qemu_opts(spec)
    if opts:
        # One "--qemu-opts=" value: vng pastes it, space-separated, at the end of its shell command.
        cmd.append("--qemu-opts=" + " ".join(opts))
    return cmd


def guest_environment(spec: VmSpec) -> list[tuple[str, str]]:
    """Variables exported in the guest before the command (the caller's ``env`` last, so it wins)."""
    home = "/tmp/vkmsremote-home"
    base = [
        (IN_VM_ENV, "1"),
        (RESULTS_ENV, str(spec.results_dir)),
        ("HOME", home),
        ("TMPDIR", "/tmp"),
        ("XDG_CACHE_HOME", f"{home}/.cache"),
        ("XDG_RUNTIME_DIR", "/run/user/0"),
        # The repository and the venv come from the host's root fs, read-only in the guest.
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("HYPOTHESIS_STORAGE_DIRECTORY", f"{home}/.hypothesis"),
        ("PYTHONUNBUFFERED", "1"),
    ]
    if spec.forwards:
        base.append((GUEST_ADDR_ENV, GUEST_ADDR))
    return base + list(spec.env)


def guest_script(spec: VmSpec) -> str:
    """The bash script run as root in the guest (see the module docstring)."""
    q = shlex.quote
    lines = [
        "# Generated by vkmsremote.vm; runs as root inside the test VM.",
        "set -u",
        f"status_file={q(str(spec.status_path))}",
        'fail() { echo "vkmsremote-vm: $*" >&2; echo 125 > "$status_file"; exit 125; }',
    ]
    if not spec.share_host_tmp:
        # A private tmpfs on /tmp (sockets work there, unlike on 9p; nothing of the host's /tmp such as
        # stale X lock files leaks in). Paths the command needs under /tmp (a checkout, the results
        # directory) are bind-mounted aside first and moved back on top of the tmpfs.
        kept = spec.kept_under_tmp()
        for i, path in enumerate(kept):
            lines.append(
                f"mkdir -p /run/vkmsremote-keep/{i} && mount --rbind {q(str(path))} /run/vkmsremote-keep/{i} "
                f"|| fail {q(f'cannot keep {path}')}"
            )
        lines.append("mount -t tmpfs -o mode=1777 vkmsremote-tmp /tmp || fail 'cannot mount a tmpfs on /tmp'")
        for i, path in enumerate(kept):
            lines.append(
                f"mkdir -p {q(str(path))} && mount --move /run/vkmsremote-keep/{i} {q(str(path))} "
                f"|| fail {q(f'cannot put {path} back over the tmpfs')}"
            )
    # Every program started here is read over 9p and emulated: use shell builtins where possible.
    lines.append("mkdir -p /tmp/vkmsremote-home /run/user/0")
    for name, value in guest_environment(spec):
        lines.append(f"export {name}={q(value)}")
    if spec.forwards:
        lines += [
            "ip link set lo up",
            "nic=",
            'for d in /sys/bus/virtio/drivers/virtio_net/virtio*/net/*; do [ -e "$d" ] && nic=${d##*/}; done',
            '[ -n "$nic" ] || fail "no virtio network interface for port forwarding"',
            f'ip link set "$nic" up && ip addr add {GUEST_NET} dev "$nic" || fail "cannot configure $nic"',
        ]
        if any(f.guest_loopback for f in spec.forwards):
            lines += [
                "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet",
                'echo 1 > "/proc/sys/net/ipv4/conf/$nic/route_localnet"',
            ]
    if spec.modules is not None:
        # VKMS is a module here: its directory over the host's /lib/modules (a tmpfs hides the host's own
        # modules), then `modprobe vkms` with the command line's vkms.* options, as modules-load.d would.
        release = spec.modules.name
        lines += [
            'read -r release < /proc/sys/kernel/osrelease',
            f'[ "$release" = {q(release)} ] || fail "the modules are for {release}, the kernel is $release"',
            "mount -t tmpfs -o mode=0755 vkmsremote-modules /lib/modules || fail 'cannot mount a tmpfs on /lib/modules'",
            f"mkdir -p /lib/modules/{q(release)} && mount --bind {q(str(spec.modules))} /lib/modules/{q(release)} "
            "|| fail 'cannot bind the kernel modules'",
            "modprobe vkms || fail 'modprobe vkms failed'",
        ]
    lines += [
        f"cd {q(str(spec.cwd))} || fail 'cannot cd to {spec.cwd}'",
        "read -r uptime _ < /proc/uptime",
        f'echo "{READY_MARKER} uptime=$uptime" >&2',
        shlex.join(spec.argv),
        "rc=$?",
        'echo "$rc" > "$status_file"',
        "sync",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def parse_status(text: str) -> int | None:
    """The exit status the guest recorded, or None if it never finished writing one."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def describe(argv: Sequence[str]) -> str:
    return shlex.join(argv)
