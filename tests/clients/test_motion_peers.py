"""CopyRect from detected moves, reproduced by clients nobody here wrote: LibVNCClient, noVNC's decoders (in
node) and TigerVNC's viewer (under Xvfb), on the scrolling and window-drag workloads; the CopyRect
rectangles in each stream are counted.

LibVNCClient and noVNC get a whole sequence of updates (first frame Raw, then every later frame as the
session would build it with server.motion.encode_update: CopyRect first, the rest Raw) and must end on the
last frame exactly, which they cannot if any copy or any strip were wrong (errors would carry on from
frame to frame). TigerVNC's viewer talks to the real server and is screenshotted after each frame.
"""

from __future__ import annotations

import itertools
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rfb.test_motion import frames

from clients.support import ControlledSource, ServerThread
from clients.test_encodings_libvncclient import client_binary, run_client
from clients.test_tigervnc import display, viewer, wait_for
from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert_array
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings, make_encoder
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat
from vkmsremote.server.motion import Choice, encode_update

__all__ = ["client_binary", "display"]  # pytest fixtures used here

W, H = 640, 400
STEPS = 10


def motion_updates(workload: str, pf: PixelFormat) -> tuple[list[list[EncodedRect]], np.ndarray, int]:
    """(updates, last frame, CopyRect count) for a workload, as the session would send them to ``pf``."""
    seq = frames(workload, STEPS + 1, W, H)
    raw = make_encoder(Encoding.RAW, EncoderSettings())
    assert raw is not None
    updates: list[list[EncodedRect]] = [raw.encode(seq[0][0], Rect(0, 0, W, H), pf)]
    copies = 0
    for (old, _), (new, damage) in itertools.pairwise(seq):
        rects, _ = encode_update(raw, None, new, 0, old, list(damage), pf, Choice(None, True))
        updates.append([(Rect(r.x, r.y, r.width, r.height), r.encoding, r.payload) for r in rects])
        copies += sum(r.encoding == Encoding.COPY_RECT for r in rects)
    return updates, seq[-1][0], copies


@pytest.mark.parametrize("workload", ["scrolling", "window-drag"])
def test_libvncclient_reproduces_moves(client_binary: Path, workload: str) -> None:
    updates, last, copies = motion_updates(workload, NATIVE)
    assert copies >= STEPS - 1, copies
    fb, seen = run_client(client_binary, W, H, NATIVE, lambda pf, s: updates, len(updates), encodings="copyrect raw")
    assert Encoding.COPY_RECT in seen["encodings"]  # type: ignore[operator]
    assert np.array_equal(fb[..., :3], last[..., :3])


# --- noVNC (Debian's novnc, its CopyRect and Raw decoders, in node) ----------------------------------------

NOVNC = Path("/usr/share/novnc")
NOVNC_PF = PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)  # what noVNC asks for: R, G, B, X
HARNESS = r"""
import './browser-globals.js';
import { readFileSync, writeFileSync } from 'fs';
import Websock from './novnc/core/websock.js';
import RawDecoder from './novnc/core/decoders/raw.js';
import CopyRectDecoder from './novnc/core/decoders/copyrect.js';

// The canvas operations noVNC's Display offers its decoders, on a plain RGBA array.
class CanvasStandIn {
    constructor(width, height) { this.width = width; this.height = height; this.fb = new Uint8Array(width * height * 4); }
    blitImage(x, y, w, h, arr, offset) {
        for (let row = 0; row < h; row++) {
            const src = offset + row * w * 4;
            this.fb.set(arr.subarray(src, src + w * 4), ((y + row) * this.width + x) * 4);
        }
    }
    copyImage(oldX, oldY, newX, newY, w, h) {  // like drawImage of the canvas onto itself: source first
        const copy = new Uint8Array(w * h * 4);
        for (let row = 0; row < h; row++) {
            const s = ((oldY + row) * this.width + oldX) * 4;
            copy.set(this.fb.subarray(s, s + w * 4), row * w * 4);
        }
        for (let row = 0; row < h; row++) {
            this.fb.set(copy.subarray(row * w * 4, (row + 1) * w * 4), ((newY + row) * this.width + newX) * 4);
        }
    }
}

const [input, output] = process.argv.slice(2);
const data = readFileSync(input);
const sock = new Websock();
sock.init();
sock._DecodeMessage(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
const width = sock.rQshift16(), height = sock.rQshift16(), count = sock.rQshift32();
const display = new CanvasStandIn(width, height);
const decoders = { 0: new RawDecoder(), 1: new CopyRectDecoder() };
for (let n = 0; n < count; n++) {
    const x = sock.rQshift16(), y = sock.rQshift16(), w = sock.rQshift16(), h = sock.rQshift16();
    const encoding = sock.rQshift32();
    if (!decoders[encoding].decodeRect(x, y, w, h, sock, display, 24)) {
        throw new Error(`rectangle ${n} (encoding ${encoding}) is incomplete`);
    }
}
if (sock.rQlen !== 0) throw new Error(`${sock.rQlen} bytes left over after ${count} rectangles`);
writeFileSync(output, display.fb);
"""
BROWSER_GLOBALS = """globalThis.window = globalThis;
if (typeof globalThis.WebSocket === 'undefined') {
    globalThis.WebSocket = { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 };
}
"""


@pytest.fixture(scope="module")
def novnc_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("node") is not None, "node is missing: run scripts/setup-host.sh"
    assert (NOVNC / "core/decoders/copyrect.js").is_file(), "noVNC is missing: run scripts/setup-host.sh (novnc)"
    root = tmp_path_factory.mktemp("novnc-copyrect")
    for part in ("core", "vendor"):
        shutil.copytree(NOVNC / part, root / "novnc" / part)
    (root / "package.json").write_text('{"type": "module"}\n')
    (root / "browser-globals.js").write_text(BROWSER_GLOBALS)
    (root / "decode.js").write_text(HARNESS)
    return root


@pytest.mark.parametrize("workload", ["scrolling", "window-drag"])
def test_novnc_reproduces_moves(novnc_harness: Path, workload: str) -> None:
    updates, last, copies = motion_updates(workload, NOVNC_PF)
    assert copies >= STEPS - 1, copies
    rects = [r for u in updates for r in u]  # noVNC applies rectangles one after another, as within an update
    stream = [struct.pack(">HHI", W, H, len(rects))]
    stream += [struct.pack(">HHHHi", r.x, r.y, r.w, r.h, enc) + payload for r, enc, payload in rects]
    (novnc_harness / "in.bin").write_bytes(b"".join(stream))
    proc = subprocess.run(["node", "decode.js", "in.bin", "out.bin"], cwd=novnc_harness, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fb = np.frombuffer((novnc_harness / "out.bin").read_bytes(), np.uint8).reshape(H, W, 4)
    assert np.array_equal(fb[..., :3], convert_array(last, NOVNC_PF)[..., :3])


# --- TigerVNC's viewer against the real server ------------------------------------------------------------

@pytest.mark.parametrize("workload", ["scrolling", "window-drag"])
def test_tigervnc_reproduces_moves(display: dict[str, str], workload: str) -> None:
    seq = frames(workload, 7, W, H)
    src = ControlledSource(seq[0][0])
    with ServerThread(src) as srv, viewer(display, srv.port, "-SecurityTypes", "None",
                                          "-PreferredEncoding", "ZRLE") as proc:
        wait_for(display, seq[0][0], proc)
        for img, damage in seq[1:]:
            src.set_frame(img, damage)
            wait_for(display, img, proc)  # every frame shown exactly
        [rec] = srv.records()
    assert Encoding.COPY_RECT in rec.client_encodings
    assert rec.rect_encodings[Encoding.COPY_RECT] >= 4, rec.rect_encodings
