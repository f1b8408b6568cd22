"""KWin's outputs and their modes, and a new configuration for them, over its Wayland socket.

KWin publishes each output as a ``kde_output_device_v2`` global (its name, position, scale, modes and
current mode) and takes new configurations through ``kde_output_management_v2``: a
``kde_output_configuration_v2`` collects changes (mode, position, ...) and ``apply`` sets them all at once,
answered ``applied`` or ``failed`` (plasma-wayland-protocols: kde-output-device-v2.xml,
kde-output-management-v2.xml). This is what KScreen (System Settings, ``kscreen-doctor``) speaks to KWin;
vkmsremote speaks it itself with its minimal client (vkmsremote.desktop.wayland), so resizing XR-0 under
KWin needs no Qt program and no D-Bus activation environment.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .wayland import Args, Connection, Global, Registry, WaylandError

DEVICE = "kde_output_device_v2"
MANAGEMENT = "kde_output_management_v2"


@dataclass
class KdeMode:
    id: int
    width: int = 0
    height: int = 0
    refresh_mhz: int = 0

    @property
    def refresh(self) -> float:
        return self.refresh_mhz / 1000


@dataclass
class KdeOutput:
    id: int
    name: str = ""
    x: int = 0
    y: int = 0
    scale: float = 1.0
    enabled: bool = True
    current: int = 0  # the current mode's object id
    modes: dict[int, KdeMode] = field(default_factory=dict)

    def mode(self) -> KdeMode | None:
        return self.modes.get(self.current)

    def rect(self) -> tuple[int, int, int, int]:
        m = self.mode()
        w, h = (m.width, m.height) if m is not None else (0, 0)
        return self.x, self.y, round(w / (self.scale or 1.0)), round(h / (self.scale or 1.0))


class KdeOutputs:
    """One connection to KWin: its outputs as it describes them, and :meth:`apply` for a new configuration."""

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.conn = Connection(path, timeout)
        self.outputs: dict[int, KdeOutput] = {}  # by device object id
        self.manager: int | None = None
        try:
            registry = Registry(self.conn)
            registry.on_global = partial(self._global, registry)
            self.conn.roundtrip()  # the globals and the binds
            if self.manager is None:
                raise WaylandError(f"the compositor at {path} offers no {MANAGEMENT}: it is not KWin")
            self.conn.roundtrip()  # each device's state and its modes
            self.conn.roundtrip()
        except (WaylandError, OSError) as e:
            self.conn.close()
            if isinstance(e, WaylandError):
                raise
            raise WaylandError(f"KWin at {path} did not answer: {e}") from e

    def __enter__(self) -> KdeOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def _global(self, registry: Registry, g: Global) -> None:
        if g.interface == DEVICE:
            oid = registry.bind(g, 2, None)  # version 2: the name event
            out = KdeOutput(oid)
            self.outputs[oid] = out
            self.conn.handlers[oid] = partial(self._device_event, out)
        elif g.interface == MANAGEMENT and self.manager is None:
            self.manager = registry.bind(g, 1)

    def _device_event(self, out: KdeOutput, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:  # geometry(x, y, physical w, physical h, subpixel, make, model, transform)
            out.x, out.y = args.int(), args.int()
        elif opcode == 1:  # current_mode(mode)
            out.current = args.uint()
        elif opcode == 2:  # mode(new_id): a mode object the compositor made
            mode = KdeMode(args.uint())
            out.modes[mode.id] = mode
            conn.handlers[mode.id] = partial(self._mode_event, out, mode)
        elif opcode == 4:  # scale(fixed)
            out.scale = args.fixed()
        elif opcode == 6:  # enabled(int)
            out.enabled = bool(args.int())
        elif opcode == 14:  # name(string), since 2
            out.name = args.string()

    @staticmethod
    def _mode_event(out: KdeOutput, mode: KdeMode, opcode: int, args: Args, conn: Connection) -> None:
        if opcode == 0:  # size(width, height)
            mode.width, mode.height = args.int(), args.int()
        elif opcode == 1:  # refresh(mHz)
            mode.refresh_mhz = args.int()
        elif opcode == 3:  # removed
            out.modes.pop(mode.id, None)

    def named(self, name: str) -> KdeOutput | None:
        return next((o for o in self.outputs.values() if o.name == name), None)

    def apply(self, modes: dict[int, int], positions: dict[int, tuple[int, int]]) -> None:
        """One configuration: ``modes`` (device id -> mode id) and ``positions`` (device id -> x, y), applied
        together; WaylandError if KWin answers failed."""
        assert self.manager is not None
        answer: list[str] = []
        reason: list[str] = []

        def event(opcode: int, args: Args, conn: Connection) -> None:
            if opcode == 0:
                answer.append("applied")
            elif opcode == 1:
                answer.append("failed")
            elif opcode == 2:
                reason.append(args.string())

        config = self.conn.new_id(event)
        self.conn.send(self.manager, 0, config)  # create_configuration
        for device, mode in modes.items():
            self.conn.send(config, 1, device, mode)  # mode(outputdevice, mode)
        for device, (x, y) in positions.items():
            self.conn.send(config, 3, device, x, y)  # position(outputdevice, x, y)
        self.conn.send(config, 5)  # apply
        while not answer:
            self.conn.dispatch_once()
        with contextlib.suppress(WaylandError):
            self.conn.send(config, 6)  # destroy
        if answer[0] != "applied":
            raise WaylandError("KWin refused the configuration" + (f": {reason[0]}" if reason else ""))
        self.conn.roundtrip()  # the devices' new state
