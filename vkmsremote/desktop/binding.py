"""``--pointer-output``: make vkmsremote's absolute pointer move on XR-0's output and nowhere else.

An absolute pointer spans whatever the compositor maps it to. Xorg scans every output out of one root
window, so the sink already maps into XR-0's rectangle there (the reader's placement, see
vkmsremote.input.uinput). A Wayland compositor gives each output its own framebuffer and maps an
absolute device to an output (or the whole layout) by its own rules, so the device has to be bound:

- Weston: the udev property ``WL_OUTPUT=<output>`` on the device's event node, read when the device is
  added (weston's libinput-seat). vkmsremote writes a runtime rule under /run/udev/rules.d *before* it
  creates the uinput devices, reloads udevd, and removes the rule on exit.
- sway (and its IPC): ``input <identifier> map_to_output <output>``; on exit ``map_to_output *`` (the
  whole layout, sway's default). sway keeps input configs by identifier, so this may precede the device.
- Xorg: nothing to do (placement).
- KWin and GNOME Shell (Mutter): each maps a plain absolute pointer over its whole layout, as Xorg does
  over its root window, and binds only tablets and touchscreens to one output (Mutter: the
  ``org.gnome.desktop.peripherals`` tablet/touchscreen ``output`` setting; KWin: a device's
  ``outputName``). So vkmsremote places its pointer: a :class:`~.wayland.LayoutWatcher` on the
  compositor's Wayland socket follows where XR-0's output lies in the layout (xdg-output) and the sink
  scales the client's (x, y) into that rectangle. Nothing in the compositor changes; nothing to undo.

``plan_binding`` decides (reads /proc and debugfs only); ``apply_binding`` carries the plan out and
returns a :class:`Binding` whose ``undo()`` reverses exactly what was done. When the compositor cannot
be told or has no per-device binding, the plan carries the exact command a user can run instead.
"""

from __future__ import annotations

import enum
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vkmsremote.errors import UsageError, VkmsRemoteError

from .clients import DrmClient, drm_master
from .sway_ipc import IpcError, SwayIpc, socket_path_of
from .wayland import LayoutWatcher, WaylandError, wayland_socket_of

if TYPE_CHECKING:
    from vkmsremote.frame import Placement

log = logging.getLogger(__name__)

POINTER_DEVICE_NAME = "vkmsremote pointer"
"""The uinput absolute pointer's name (vkmsremote.input.uinput: UinputDevices.open("vkmsremote"))."""
UDEV_RULES_DIR = Path("/run/udev/rules.d")
RULE_NAME = "99-vkmsremote-pointer.rules"
_KEEPER_PIPES: list[int] = []
"""Write ends of the keepers' pipes (see Binding.undo_at_exit_of_parent), open until this process exits."""
SWAY_IDENTIFIER = "0:0:" + POINTER_DEVICE_NAME.replace(" ", "_")
"""sway's identifier for the pointer: vendor:product:name with spaces as underscores (sway/input)."""


class Compositor(enum.Enum):
    WESTON = "weston"
    SWAY = "sway"
    XORG = "Xorg"
    KWIN = "kwin_wayland"
    MUTTER = "gnome-shell"  # or a plain mutter
    OTHER = "other"

    @classmethod
    def of(cls, client: DrmClient) -> Compositor:
        name = client.command
        if name.startswith("weston"):
            return cls.WESTON
        if name == "sway":
            return cls.SWAY
        if name in ("Xorg", "X"):
            return cls.XORG
        if name == "kwin_wayland":
            return cls.KWIN
        if name in ("gnome-shell", "mutter"):
            return cls.MUTTER
        return cls.OTHER


class Method(enum.Enum):
    UDEV_RULE = "udev WL_OUTPUT rule"
    SWAY_IPC = "sway IPC map_to_output"
    PLACEMENT = "placement in the X screen"
    LAYOUT = "placement in the Wayland layout (xdg-output)"
    NONE = "none"  # --pointer-output none
    MANUAL = "manual"  # cannot bind automatically: ``command`` says how


def pointer_output_arg(text: str) -> str:
    """argparse type of ``--pointer-output``: auto, none, or an output name such as Virtual-1."""
    if not text or any(c.isspace() for c in text) or "/" in text:
        raise UsageError(f"--pointer-output {text!r} is not auto, none or an output name such as Virtual-1")
    return text


def udev_rule(output: str, device_name: str = POINTER_DEVICE_NAME) -> str:
    return (f"# written by vkmsremote (pid {os.getpid()}): its absolute pointer belongs to {output}; "
            "removed when it exits\n"
            f'ACTION!="remove", SUBSYSTEM=="input", KERNEL=="event*", ATTRS{{name}}=="{device_name}", '
            f'ENV{{WL_OUTPUT}}="{output}"\n')


def weston_commands(output: str, rules_dir: Path = UDEV_RULES_DIR) -> str:
    rule = udev_rule(output).splitlines()[1]
    return (f"echo {shlex.quote(rule)} > {rules_dir / RULE_NAME} && udevadm control --reload  "
            "# then (re)start vkmsremote, whose pointer is added with WL_OUTPUT set")


def sway_command(output: str, socket_path: str | None = None) -> str:
    sock = f"-s {shlex.quote(socket_path)} " if socket_path else ""
    return f"swaymsg {sock}input {SWAY_IDENTIFIER} map_to_output {shlex.quote(output)}"


@dataclass(frozen=True, slots=True)
class BindingPlan:
    """What ``apply_binding`` will do to put the pointer on ``output``."""

    output: str  # the compositor's name for XR-0's connector, e.g. "Virtual-1"
    method: Method
    holder: DrmClient | None = None  # the DRM master of the card
    compositor: Compositor | None = None
    command: str = ""  # the equivalent (or, for MANUAL, the needed) shell command
    reason: str = ""  # why MANUAL / NONE
    sway_socket: str | None = None
    wayland_socket: str | None = None  # Method.LAYOUT: the compositor's Wayland socket

    def describe(self) -> str:
        who = self.holder.describe() if self.holder is not None else "no DRM master found"
        if self.method is Method.MANUAL:
            return (f"pointer not bound to {self.output} ({self.reason}; compositor: {who}); to bind it: "
                    f"{self.command}")
        if self.method is Method.NONE:
            return f"pointer binding off ({self.reason})"
        if self.method is Method.LAYOUT:
            return (f"pointer placed on {self.output} in the layout of {who}, followed over its Wayland socket "
                    f"{self.wayland_socket} ({self.method.value})")
        if self.holder is None:
            return (f"{self.reason}: wrote the udev WL_OUTPUT rule for a Weston started later; a sway started "
                    f"later needs: {sway_command(self.output)}")
        return f"pointer bound to {self.output} by {self.method.value} (compositor: {who})"


def plan_binding(mode: str, card: str, output: str | None, *,
                 master: Callable[[str], DrmClient | None] = drm_master) -> BindingPlan:
    """Decide how to bind. ``mode``: "auto", "none" or an output name (overrides ``output``)."""
    if mode == "none":
        return BindingPlan(output or "-", Method.NONE, reason="--pointer-output none")
    if mode != "auto":
        output = mode
    if not output:
        return BindingPlan("-", Method.MANUAL, reason="the output's name is unknown",
                           command="vkmsremote status  # shows XR-0's Virtual-N; then --pointer-output Virtual-N")
    holder = master(card)
    manual = (f"with Weston: {weston_commands(output)}; with sway: {sway_command(output)}; "
              f"with Xorg nothing is needed")
    if holder is None:
        # No compositor on the card yet (up before the display manager): the WL_OUTPUT rule is harmless to
        # others and binds a Weston started later; sway needs its command once it runs.
        return BindingPlan(output, Method.UDEV_RULE, reason=f"nothing holds {card} as DRM master yet",
                           command=f"{weston_commands(output)}; with sway: {sway_command(output)}")
    kind = Compositor.of(holder)
    if kind is Compositor.WESTON:
        return BindingPlan(output, Method.UDEV_RULE, holder, kind, weston_commands(output))
    if kind is Compositor.SWAY:
        sock = socket_path_of(holder.pid)
        if sock is None or not sock.exists():
            return BindingPlan(output, Method.MANUAL, holder, kind, sway_command(output),
                               reason=f"sway's IPC socket was not found ({sock or 'no XDG_RUNTIME_DIR'})")
        return BindingPlan(output, Method.SWAY_IPC, holder, kind, sway_command(output, str(sock)),
                           sway_socket=str(sock))
    if kind is Compositor.XORG:
        return BindingPlan(output, Method.PLACEMENT, holder, kind)
    if kind in (Compositor.KWIN, Compositor.MUTTER):
        wl = wayland_socket_of(holder.pid)
        if wl is None:
            return BindingPlan(output, Method.MANUAL, holder, kind, manual,
                               reason=f"{holder.command}'s Wayland socket was not found (its fds and environment "
                                      "were not readable: run vkmsremote as root)")
        return BindingPlan(output, Method.LAYOUT, holder, kind, wayland_socket=str(wl))
    return BindingPlan(output, Method.MANUAL, holder, kind, manual,
                       reason=f"{holder.command} has no per-device output binding vkmsremote knows")


@dataclass
class Binding:
    """A carried-out plan; ``undo()`` reverses it (idempotent)."""

    plan: BindingPlan
    _undo: list[Callable[[], None]] = field(default_factory=list)

    say: Callable[[str], None] | None = None
    layout: LayoutWatcher | None = None  # Method.LAYOUT: follows the compositor's layout (closed by undo)
    _placed: Placement | None = None

    def placement(self) -> Placement | None:
        """Where the bound output lies in the layout the pointer spans (Method.LAYOUT), else None. Each new
        placement is reported through ``say``."""
        placed = self.layout.placement(self.plan.output) if self.layout is not None else None
        if placed != self._placed:
            self._placed = placed
            if self.say is not None:
                self.say(f"pointer area: {self.plan.output} at {placed.x},{placed.y} {placed.width}x{placed.height} "
                         f"in a {placed.fb_width}x{placed.fb_height} layout" if placed is not None else
                         f"pointer area: {self.plan.output} is not in the layout: the pointer spans the whole layout "
                         "until it is")
        return placed

    def undo(self) -> None:
        if self.layout is not None:  # a read-only client: closing it changes nothing in the compositor
            self.layout.close()
            self.layout = None
        done = bool(self._undo)
        while self._undo:
            step = self._undo.pop()
            try:
                step()
            except (OSError, VkmsRemoteError, subprocess.SubprocessError) as e:
                log.warning("undoing the pointer binding: %s", e)
                done = False
        if done and self.say is not None:
            self.say(f"pointer binding to {self.plan.output} undone ({self.plan.method.value})")

    def undo_at_exit_of_parent(self) -> bool:
        """Leave behind a process that keeps this process's privileges and undoes the binding when this
        process ends (a pipe it holds closes), so it is undone even after a privilege drop or a kill -9.
        The keeper is forked twice, so it is not a child of this process (whose only child stays the
        capture broker). Returns whether there was anything to undo."""
        if not self._undo:
            return False
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # intermediate: fork the keeper and leave at once
            try:
                os.close(write_end)
                if os.fork() == 0:  # the keeper
                    try:
                        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: outlive it
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)
                        os.closerange(3, read_end)
                        os.closerange(read_end + 1, 65536)
                        while os.read(read_end, 1):
                            pass
                        self.undo()
                    finally:
                        os._exit(0)
            finally:
                os._exit(0)
        os.close(read_end)
        os.waitpid(pid, 0)
        _KEEPER_PIPES.append(write_end)  # never written; closed by this process's exit
        self._undo.clear()  # the keeper owns it now
        return True


def _udevadm(*argv: str) -> None:
    subprocess.run(["udevadm", *argv], check=True, capture_output=True, timeout=60)


def _pointer_event_nodes(sysfs: Path = Path("/sys/class/input")) -> list[str]:
    out = []
    for node in sorted(sysfs.glob("event*")):
        try:
            if (node / "device" / "name").read_text().strip() == POINTER_DEVICE_NAME:
                out.append(node.name)
        except OSError:
            continue
    return out


def apply_binding(plan: BindingPlan, *, rules_dir: Path = UDEV_RULES_DIR) -> Binding:
    """Carry out ``plan``. A failure becomes a warning with the manual command: serving goes on."""
    binding = Binding(plan)
    try:
        if plan.method is Method.UDEV_RULE:
            rules_dir.mkdir(parents=True, exist_ok=True)
            path = rules_dir / RULE_NAME
            path.write_text(udev_rule(plan.output))

            def remove_rule() -> None:
                path.unlink(missing_ok=True)
                _udevadm("control", "--reload")

            binding._undo.append(remove_rule)
            _udevadm("control", "--reload")
            nodes = _pointer_event_nodes()  # normally none yet: the devices are created after this
            if nodes:
                _udevadm("trigger", "--action=change", *(f"--sysname-match={n}" for n in nodes))
        elif plan.method is Method.SWAY_IPC:
            assert plan.sway_socket is not None
            sock = plan.sway_socket
            with SwayIpc(sock) as ipc:
                ipc.command(f"input {SWAY_IDENTIFIER} map_to_output {plan.output}")

            def unmap() -> None:
                with SwayIpc(sock) as ipc:
                    ipc.command(f"input {SWAY_IDENTIFIER} map_to_output *")

            binding._undo.append(unmap)
        elif plan.method is Method.LAYOUT:
            assert plan.wayland_socket is not None
            binding.layout = LayoutWatcher.open(plan.wayland_socket)
            if binding.layout.layout.placement(plan.output) is None:
                log.warning("%s is not in %s's layout yet (outputs: %s): the pointer is placed once it is",
                            plan.output, plan.compositor.value if plan.compositor else "the compositor",
                            ", ".join(sorted(binding.layout.layout.rects())) or "none")
    except (OSError, IpcError, WaylandError, subprocess.SubprocessError) as e:
        binding.undo()
        log.warning("could not bind the pointer to %s by %s: %s; to bind it by hand: %s", plan.output,
                    plan.method.value, e, plan.command)
        return Binding(BindingPlan(plan.output, Method.MANUAL, plan.holder, plan.compositor, plan.command,
                                   reason=f"{plan.method.value} failed: {e}"))
    return binding


# --- the hooks ``up`` and ``serve`` call ------------------------------------------------------------------


def add_pointer_output_argument(group: object) -> None:
    """``--pointer-output auto|none|NAME`` on an argparse parser or group."""
    group.add_argument(  # type: ignore[attr-defined]
        "--pointer-output", type=pointer_output_arg, default="auto", metavar="auto|none|NAME",
        help="bind the uinput pointer to the served output (auto, the default: detect the compositor holding "
             "the card and use its own way: Weston udev WL_OUTPUT, sway map_to_output, Xorg placement, "
             "KWin/GNOME placement in their layout (xdg-output); "
             "NAME: bind to that output instead; none: leave it to the compositor)")


def bind_pointer(mode: str, card: str, output: str | None, say: Callable[[str], None]) -> Binding:
    """Plan and apply the binding for serving ``output`` of ``card``; ``say`` reports what happened."""
    binding = apply_binding(plan_binding(mode, card, output))
    binding.say = say
    say(binding.plan.describe())
    return binding
