"""Our Raw, RRE, Hextile and Tight rectangles decoded by noVNC's own decoders (Debian's novnc 1.3) in node.

noVNC is the browser client vkmsremote serves. Its decoder modules (core/decoders/*.js), its receive
queue (core/websock.js) and its vendored pako inflater are copied from /usr/share/novnc into a
temporary ES-module package and driven by a small node script: the encoded rectangles are pushed
into a real ``Websock`` receive queue and each rectangle goes through ``decodeRect`` with a display
stand-in that paints an RGBX canvas and keeps JPEG rectangles (which a browser would decode) for
Python to decode. noVNC always asks for 32 bpp, depth 24, red shift 0, green 8, blue 16 (R, G, B, X
in memory), so that is the format encoded here.

Needs node and the novnc package (scripts/setup-host.sh); without them the tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg

from vkmsremote.frame import Rect
from vkmsremote.rfb.constants import Encoding
from vkmsremote.rfb.convert import convert_array
from vkmsremote.rfb.encodings import EncodedRect, EncoderSettings, make_encoder, samples
from vkmsremote.rfb.pixelformat import PixelFormat

NOVNC = Path("/usr/share/novnc")
NOVNC_PF = PixelFormat(32, 24, False, True, 255, 255, 255, 0, 8, 16)

# What noVNC's modules touch at import time outside a browser: window.console (logging) and the
# WebSocket ready-state numbers (websock.js); nothing here opens a socket.
BROWSER_GLOBALS = """globalThis.window = globalThis;
if (typeof globalThis.WebSocket === 'undefined') {
    globalThis.WebSocket = { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 };
}
"""
HARNESS = r"""
import './browser-globals.js';
import { readFileSync, writeFileSync } from 'fs';
import Websock from './novnc/core/websock.js';
import RawDecoder from './novnc/core/decoders/raw.js';
import RREDecoder from './novnc/core/decoders/rre.js';
import HextileDecoder from './novnc/core/decoders/hextile.js';
import TightDecoder from './novnc/core/decoders/tight.js';

class CanvasStandIn {
    constructor(width, height) {
        this.width = width;
        this.fb = new Uint8Array(width * height * 4);
        this.jpegs = [];
    }
    fillRect(x, y, w, h, color) {
        for (let row = y; row < y + h; row++) {
            for (let col = x; col < x + w; col++) {
                const i = (row * this.width + col) * 4;
                this.fb[i] = color[0]; this.fb[i + 1] = color[1]; this.fb[i + 2] = color[2]; this.fb[i + 3] = 255;
            }
        }
    }
    blitImage(x, y, w, h, arr, offset) {
        for (let row = 0; row < h; row++) {
            const src = offset + row * w * 4;
            this.fb.set(arr.subarray(src, src + w * 4), ((y + row) * this.width + x) * 4);
        }
    }
    imageRect(x, y, w, h, mime, arr) {
        this.jpegs.push({ x, y, w, h, mime, data: Buffer.from(arr).toString('base64') });
    }
}

const [input, output] = process.argv.slice(2);
const data = readFileSync(input);
const sock = new Websock();
sock.init();
sock._DecodeMessage(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
const width = sock.rQshift16(), height = sock.rQshift16(), count = sock.rQshift32();
const display = new CanvasStandIn(width, height);
const decoders = { 0: new RawDecoder(), 2: new RREDecoder(), 5: new HextileDecoder(), 7: new TightDecoder() };
for (let n = 0; n < count; n++) {
    const x = sock.rQshift16(), y = sock.rQshift16(), w = sock.rQshift16(), h = sock.rQshift16();
    const encoding = sock.rQshift32();
    if (!decoders[encoding].decodeRect(x, y, w, h, sock, display, 24)) {
        throw new Error(`rectangle ${n} (encoding ${encoding}) is incomplete`);
    }
}
if (sock.rQlen !== 0) throw new Error(`${sock.rQlen} bytes left over after ${count} rectangles`);
writeFileSync(output, display.fb);
writeFileSync(output + '.json', JSON.stringify(display.jpegs));
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node = shutil.which("node")
    assert node is not None, "node is missing: run scripts/setup-host.sh"
    assert (NOVNC / "core/decoders/tight.js").is_file(), "noVNC is missing: run scripts/setup-host.sh (novnc)"
    root = tmp_path_factory.mktemp("novnc")
    for part in ("core", "vendor"):
        shutil.copytree(NOVNC / part, root / "novnc" / part)
    (root / "package.json").write_text('{"type": "module"}\n')
    (root / "browser-globals.js").write_text(BROWSER_GLOBALS)
    (root / "decode.js").write_text(HARNESS)
    return root


def novnc_decode(harness: Path, width: int, height: int,
                 rects: list[EncodedRect]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    stream = [struct.pack(">HHI", width, height, len(rects))]
    for r, encoding, payload in rects:
        stream.append(struct.pack(">HHHHi", r.x, r.y, r.w, r.h, encoding) + payload)
    (harness / "in.bin").write_bytes(b"".join(stream))
    proc = subprocess.run(["node", "decode.js", "in.bin", "out.bin"], cwd=harness, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"noVNC failed to decode: {proc.stderr[-3000:]}"
    fb = np.frombuffer((harness / "out.bin").read_bytes(), dtype=np.uint8).reshape(height, width, 4)
    return fb.copy(), json.loads((harness / "out.bin.json").read_text())


def test_fixture_runs_novncs_decoders(harness: Path) -> None:
    # a rectangle with a bad Tight compression-control byte must be rejected by noVNC's real decoder
    bad: list[EncodedRect] = [(Rect(0, 0, 1, 1), Encoding.TIGHT, bytes((0xF0,)))]
    with pytest.raises(AssertionError, match="Illegal tight compression"):
        novnc_decode(harness, 1, 1, bad)


def mixed_frame(height: int, width: int) -> np.ndarray:
    frame = samples.text_like(height, width)
    frame[: height // 2, width // 2:] = samples.photo_like(height // 2, width - width // 2)
    frame[height // 2:, width // 2:] = samples.solid(height - height // 2, width - width // 2, (9, 99, 199, 0))
    frame[height // 2 + 3:height // 2 + 20, width // 2 + 5:width // 2 + 38] = samples.noise(17, 33)
    return frame


@pytest.mark.parametrize("encoding", [Encoding.RAW, Encoding.RRE, Encoding.HEXTILE, Encoding.TIGHT],
                         ids=lambda e: e.name)
def test_lossless(harness: Path, encoding: Encoding) -> None:
    height, width = 90, 150
    frame = mixed_frame(height, width)
    encoder = make_encoder(encoding, EncoderSettings(compress_level=3))
    assert encoder is not None
    rects = [Rect(0, 0, width, 45), Rect(0, 45, 75, 45), Rect(75, 45, 1, 1), Rect(76, 45, 74, 45),
             Rect(75, 46, 1, 44)]
    encoded = [item for r in rects for item in encoder.encode(frame, r, NOVNC_PF)]
    fb, jpegs = novnc_decode(harness, width, height, encoded)
    assert not jpegs
    expected = convert_array(frame, NOVNC_PF)
    bad = np.argwhere(np.any(fb[..., :3] != expected[..., :3], axis=-1))
    assert bad.size == 0, f"{len(bad)} pixels differ, first at (y, x) {tuple(bad[0])}"


def test_tight_jpeg_and_lossless_mixed(harness: Path) -> None:
    height, width = 120, 200
    frame = samples.text_like(height, width)
    frame[:80] = samples.photo_like(80, width, t=2)
    encoder = make_encoder(Encoding.TIGHT, EncoderSettings(quality_level=7, compress_level=2))
    assert encoder is not None
    encoded = encoder.encode(frame, Rect(0, 0, width, 80), NOVNC_PF)
    encoded += encoder.encode(frame, Rect(0, 80, width, 40), NOVNC_PF)
    fb, jpegs = novnc_decode(harness, width, height, encoded)
    assert [(j["x"], j["y"], j["w"], j["h"], j["mime"]) for j in jpegs] == [(0, 0, width, 80, "image/jpeg")]
    photo = simplejpeg.decode_jpeg(base64.b64decode(jpegs[0]["data"]), colorspace="BGR")
    mse = np.mean((photo.astype(np.float64) - frame[:80, :, :3].astype(np.float64)) ** 2)
    assert 10 * np.log10(255.0 ** 2 / mse) >= 35.0
    expected = convert_array(frame[80:], NOVNC_PF)
    assert np.array_equal(fb[80:, :, :3], expected[..., :3])
