"""The options of the consumer socket (``vkmsremote up``) and of ``vkmsremote consume``, and where the
socket lives. Light on purpose (argparse, os, pathlib only): the CLI builds its parser from this module."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_MAX_CONSUMERS = 8
DEFAULT_GROUP = "video"
DEFAULT_MODE = 0o660
STATE_DIR_ENV = "VKMSREMOTE_STATE_DIR"
SYSTEM_DIR = Path("/run/vkmsremote")


def default_socket_path(connector: str) -> Path:
    """Where ``up`` puts a connector's consumer socket unless told otherwise (``status`` looks there)."""
    return Path(os.environ.get(STATE_DIR_ENV) or SYSTEM_DIR) / f"{connector}.sock"


def socket_path(args: argparse.Namespace, connector: str) -> Path | None:
    """The socket ``up --consumer-socket`` asks for (None: no socket)."""
    chosen = getattr(args, "consumer_socket", None)
    if chosen == "none":
        return None
    if chosen:
        return Path(chosen)
    return default_socket_path(connector)


def _mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"mode {text!r} is not octal (e.g. 0660)") from None
    if mode & ~0o777:
        raise argparse.ArgumentTypeError(f"mode {text!r} is not a permission mode")
    return mode


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    """``up``'s consumer socket options."""
    grp = parser.add_argument_group("local consumers (docs/consumer-protocol.md)")
    grp.add_argument("--consumer-socket", metavar="PATH|none",
                     help="consumer socket (default: <state dir>/<connector>.sock, e.g. /run/vkmsremote/XR-0.sock; "
                          "none: no socket)")
    grp.add_argument("--consumer-group", default=DEFAULT_GROUP, metavar="GROUP",
                     help=f"group that may connect (default {DEFAULT_GROUP}, as DRM devices)")
    grp.add_argument("--consumer-mode", type=_mode, default=DEFAULT_MODE, metavar="OCTAL",
                     help=f"the socket's permission mode (default {DEFAULT_MODE:04o})")
    grp.add_argument("--max-consumers", type=_count, default=DEFAULT_MAX_CONSUMERS, metavar="N",
                     help=f"consumers at once (default {DEFAULT_MAX_CONSUMERS})")


def add_consume_arguments(p: argparse.ArgumentParser) -> None:
    """``vkmsremote consume``'s options."""
    p.add_argument("name", nargs="?", default="XR-0", help="connector name (default XR-0) or socket path")
    p.add_argument("--frames", type=_count, metavar="N", help="stop after N frames (default: until the server stops)")
    p.add_argument("--seconds", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="fail if nothing arrives for S seconds (default 30)")
    p.add_argument("--json", action="store_true", help="JSON lines: hello, buffer, frame, retire, mode, bye")
    p.add_argument("--checksums", action="store_true", help="CRC-32 of each frame's picture")
    p.add_argument("--verify-damage", action="store_true",
                   help="check each frame's damage against a full compare with the previous picture")
    p.add_argument("--egl", action="store_true",
                   help="import each buffer once into EGL (EGL_EXT_image_dma_buf_import) and read pixels back "
                        "through GL; falls back to mmap when EGL cannot")
    p.add_argument("--record", metavar="FILE", help="record the frames into a video file (PyAV; e.g. out.mkv)")
    p.add_argument("--record-fps", type=float, default=30.0, metavar="N", help="--record: frame rate (default 30)")
    p.add_argument("--record-codec", default="libx264", metavar="NAME",
                   help="--record: encoder (default libx264; ffv1 is lossless)")
