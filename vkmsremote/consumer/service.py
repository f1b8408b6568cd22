"""The consumer socket as part of ``vkmsremote up``: options, set-up as root, serving after the drop.

``prepare`` runs as root before the privilege drop: it binds the socket (owner root, the chosen group and
mode) and opens the tap's own card fd. ``start``/``close`` run in the unprivileged server's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vkmsremote.consumer.options import socket_path
from vkmsremote.errors import VkmsRemoteError

log = logging.getLogger(__name__)


@dataclass
class ConsumerService:
    path: Path
    server: Any  # ConsumerServer
    card: Any  # Card (the tap's own fd)
    target: Any  # service.up.ServeTarget
    exporter: Any
    _task: asyncio.Task[None] | None = None
    _reader: Any = None

    @classmethod
    def prepare(cls, args: argparse.Namespace, target: Any, exporter: Any) -> ConsumerService | None:
        """As root: bind the socket and open the tap's card fd (None with ``--consumer-socket none`` or
        ``--capture writeback``, where the broker is busy with writeback jobs)."""
        from vkmsremote.consumer.protocol import Hello, Mode
        from vkmsremote.consumer.server import ConsumerServer, bind_socket
        from vkmsremote.drm.card import Card

        path = socket_path(args, target.name)
        if path is None:
            return None
        if getattr(args, "capture", "getfb2") == "writeback":
            log.warning("no consumer socket with --capture writeback (the broker then serves writeback jobs)")
            return None
        try:
            listener = bind_socket(path, group=args.consumer_group, mode=args.consumer_mode)
        except (OSError, VkmsRemoteError) as exc:
            # Optional: VNC serving goes on without it (e.g. a systemd unit without CAP_CHOWN for the group).
            log.warning("no consumer socket at %s: %s; serving VNC without it", path, exc)
            return None
        try:
            card = Card.open(target.card)
        except BaseException:
            listener.close()
            path.unlink(missing_ok=True)
            raise
        hello = Hello(target.name, target.card, target.drm_name, target.connector_id, target.crtc_id, os.getpid(),
                      Mode(0, 0, 0, False))
        server = ConsumerServer(listener, hello, max_consumers=args.max_consumers, path=path)
        return cls(path, server, card, target, exporter)

    async def start(self) -> None:
        from vkmsremote.capture.crtc import CrtcReader
        from vkmsremote.consumer.tap import ScanoutTap, run_tap

        self._reader = CrtcReader(self.card, self.target.crtc_id, own_card=True, exporter=_Shared(self.exporter),
                                  desktop_name=f"{self.target.name} consumers")
        self.server.start()
        tap = ScanoutTap(self._reader, self.server)
        self._task = asyncio.get_running_loop().create_task(run_tap(tap), name="vkmsremote-consumer-tap")

    async def close(self) -> None:
        if self._task is not None:
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            self._task = None
        await self.server.close()
        if self._reader is not None:
            await self._reader.close()
        elif not self.card.closed:
            self.card.close()


class _Shared:
    """The VNC reader's exporter, lent to the tap: the tap's reader must not close it."""

    def __init__(self, exporter: Any) -> None:
        self._exporter = exporter

    def export(self, fb_id: int, known: tuple[int, ...] | None = None) -> Any:
        return self._exporter.export(fb_id, known)

    def close(self) -> None:
        """The VNC path owns the exporter."""
