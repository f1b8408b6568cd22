"""The VNC server process of the host pipeline benchmark: ``python -m vkmsremote.bench.server SCANOUT``.

Serves a :class:`~vkmsremote.bench.scanout.SyntheticCrtc` with the real VncServer on 127.0.0.1 (port 0
unless --port) and times its stages in CPU seconds (time.thread_time, so worker threads count too):

* ``damage``: DamageTracker.update on every vblank (compare with the last frame, copy what changed);
* ``snapshot``: the hub's per-frame copy of the frame and fan-out to sessions (Hub._publish);
* ``encode``: the encoders, pixel format conversion and the move search for CopyRect included (the
  session's encode_update, worker thread), plus Tight's JPEG compressed in its parallel threads
  (tight._jpeg_data there);
* ``send``: Session._write, i.e. transport.write of each finished message (the immediate send(2));
* the rest of the process's CPU time is the event loop, the RFB protocol and deferred socket writes.

Prints one JSON line ``{"port": ..., "pid": ...}`` when listening, then answers each line on stdin:
``stats`` with a JSON line of counters (see :func:`stats`), ``quit`` by shutting down.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vkmsremote.bench.scanout import SyntheticCrtc
from vkmsremote.rfb.encodings import tight as tight_module
from vkmsremote.server import hub as hub_module
from vkmsremote.server import session as session_module
from vkmsremote.server.app import VncServer

F = TypeVar("F", bound=Callable[..., Any])
_lock = threading.Lock()


def timed(stage: str, timings: dict[str, float], fn: F) -> F:
    """``fn`` wrapped to add the CPU time of its thread spent in it to ``timings[stage]``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.thread_time() - t
            with _lock:
                timings[stage] = timings.get(stage, 0.0) + dt

    return wrapper  # type: ignore[return-value]


def timed_in_pool(stage: str, timings: dict[str, float], fn: F) -> F:
    """``fn`` timed as :func:`timed` when it runs in Tight's JPEG threads (in the session's worker thread
    it is already inside a timed ``encode_update``)."""
    inner = timed(stage, timings, fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name.startswith("vkmsremote-jpeg"):
            return inner(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def instrument(timings: dict[str, float]) -> None:
    """Time the server's stages (module-level patches: this process runs nothing else)."""
    session_module.encode_update = timed("encode", timings, session_module.encode_update)
    tight_module._jpeg_data = timed_in_pool("encode", timings, tight_module._jpeg_data)
    hub_module.Hub._publish = timed("snapshot", timings, hub_module.Hub._publish)  # type: ignore[method-assign]
    session_module.Session._write = timed("send", timings, session_module.Session._write)  # type: ignore[method-assign]


def stats(server: VncServer, source: SyntheticCrtc, timings: dict[str, float]) -> dict[str, Any]:
    t = os.times()
    with _lock:
        stages = dict(timings)
    return {
        "t": time.monotonic(),
        "cpu": t.user + t.system,
        "stages": stages,
        "frames": server.hub.frames,
        "vblanks": source.vblanks,
        "probes": source.probes,
        "sessions": [{"updates": r.updates, "bytes": r.bytes_sent, "encoding": int(r.encoding),
                      "rects": r.rectangles, "rect_encodings": {int(k): v for k, v in r.rect_encodings.items()}}
                     for r in server.records],
        "video_encodes": server.ctx.video_share.encodes,
        "video_members": [{k: getattr(v, k) for k in ("shared_frames", "private_frames", "caught_up")}
                          for v in (getattr(s, "_video", None) for s in server.ctx.sessions) if v is not None],
    }


async def serve(scanout: Path, port: int, jpeg_threads: int | None = None) -> None:
    if jpeg_threads is not None:
        tight_module.JPEG_THREADS = max(1, jpeg_threads)
    timings: dict[str, float] = {}
    source = SyntheticCrtc(scanout, timings=timings)
    instrument(timings)
    server = VncServer(source, port=port)
    await server.start()
    print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = line.strip()
            if command == b"stats":
                print(json.dumps(stats(server, source, timings)), flush=True)
            elif command == b"quit":
                break
    finally:
        await server.close()
        await source.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scanout", type=Path, help="scanout file made by vkmsremote.bench.scanout.Scanout.create")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--jpeg-threads", type=int, help="Tight's parallel JPEG threads (1: serial)")
    args = p.parse_args(argv)
    asyncio.run(serve(args.scanout, args.port, args.jpeg_threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
