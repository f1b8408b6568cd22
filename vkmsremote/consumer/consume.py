"""``vkmsremote consume XR-0``: a reference consumer of the consumer socket.

Prints the mapping and one line per FRAME (``--json``: JSON lines), optionally the CRC-32 of each picture
(``--checksums``, what the C client prints too), checks that the damage covers every changed pixel
(``--verify-damage``: a full compare with the previous picture), imports the buffers into EGL
(``--egl``, falls back to mmap and says so) or records them into a video file (``--record``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, TextIO

import numpy as np

from vkmsremote.consumer.client import Consumer, ConsumerFrame
from vkmsremote.consumer.protocol import Buffer, Bye, Mode, Retire
from vkmsremote.errors import VkmsRemoteError

log = logging.getLogger(__name__)


class DamageViolation(VkmsRemoteError):
    """A FRAME's damage missed pixels that changed (``--verify-damage``)."""


def _emit(out: TextIO, as_json: bool, kind: str, fields: dict[str, Any]) -> None:
    if as_json:
        out.write(json.dumps({"type": kind, **fields}) + "\n")
    else:
        out.write(kind + " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items()) + "\n")
    out.flush()


def _text(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float)) else json.dumps(value, separators=(",", ":"))


def changed_outside(previous: np.ndarray, current: np.ndarray, damage: tuple[Any, ...]) -> int:
    """How many pixels differ between the pictures outside every damage rectangle."""
    diff = np.any(previous != current, axis=2)
    for r in damage:
        diff[r.y:r.y + r.h, r.x:r.x + r.w] = False
    return int(np.count_nonzero(diff))


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    started = time.monotonic()
    consumer = Consumer.connect(args.name, timeout=args.timeout)
    importer: Any = None
    recorder: Any = None
    try:
        h = consumer.hello
        _emit(out, args.json, "hello", {
            "name": h.name, "card": h.card, "connector": h.connector, "connector_id": h.connector_id,
            "crtc_id": h.crtc_id, "width": h.mode.width, "height": h.mode.height, "refresh_mhz": h.mode.refresh_mhz,
            "active": h.mode.active, "socket": str(consumer.path)})
        if args.egl:
            from vkmsremote.consumer.egl import open_importer

            importer = open_importer(h.card)
            _emit(out, args.json, "path", {"path": importer.path, "why": importer.why})
        if args.record:
            from vkmsremote.consumer.record import Recorder

            recorder = Recorder(args.record, args.record_fps, args.record_codec)
        previous: np.ndarray | None = None
        frames = 0
        for item in consumer.events(args.timeout):
            if isinstance(item, ConsumerFrame):
                frames += 1
                fields = _frame_fields(item, args, previous)
                if args.verify_damage or recorder is not None:
                    mapped = item.buffer.mapped()
                    with mapped.reading():
                        picture = np.array(item.pixels())
                    if args.verify_damage and previous is not None and item.damage is not None:
                        missed = changed_outside(previous, picture, item.damage)
                        if missed:
                            raise DamageViolation(f"frame {item.event.serial}: {missed} changed pixels lie outside "
                                                  f"its damage {item.damage}")
                        fields["verified"] = True
                    if recorder is not None:
                        recorder.add(picture, item.damage)
                    previous = picture
                if importer is not None:
                    fields.update(importer.read_back(item))
                _emit(out, args.json, "frame", fields)
                if args.frames is not None and frames >= args.frames:
                    break
            elif isinstance(item, Buffer):
                _emit(out, args.json, "buffer", {
                    "buffer": item.buffer_id, "fb": item.fb_id, "width": item.width, "height": item.height,
                    "fourcc": item.fourcc, "modifier": item.modifier, "fds": item.n_fds,
                    "pitches": [p.pitch for p in item.planes], "offsets": [p.offset for p in item.planes]})
            elif isinstance(item, Retire):
                if importer is not None:
                    importer.forget(item.buffer_id)
                _emit(out, args.json, "retire", {"buffer": item.buffer_id})
            elif isinstance(item, Mode):
                previous = None
                _emit(out, args.json, "mode", {"width": item.width, "height": item.height,
                                               "refresh_mhz": item.refresh_mhz, "active": item.active})
            elif isinstance(item, Bye):
                _emit(out, args.json, "bye", {"reason": item.reason.name.lower(), "text": item.text})
            if args.seconds is not None and time.monotonic() - started >= args.seconds:
                break
        _emit(out, args.json, "end", {"frames": frames, "open_fds": consumer.open_fds(),
                                      "buffers": len(consumer.buffers)})
    finally:
        if recorder is not None:
            recorder.close()
        if importer is not None:
            importer.close()
        consumer.close()
    return 0


def _frame_fields(item: ConsumerFrame, args: argparse.Namespace, previous: np.ndarray | None) -> dict[str, Any]:
    e = item.event
    fields: dict[str, Any] = {
        "serial": e.serial, "buffer": e.buffer_id, "fb": item.buffer.meta.fb_id, "vblank": e.vblank_seq,
        "vblank_ns": e.vblank_ns, "sent_ns": e.sent_ns, "received_ns": item.received_ns,
        "new_buffer": bool(e.flags & 2), "view": list(e.view),
        "damage": None if item.damage is None else [[r.x, r.y, r.w, r.h] for r in item.damage]}
    if args.checksums:
        fields["crc32"] = f"{item.checksum():08x}"
    return fields
