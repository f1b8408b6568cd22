"""The consumer socket beside the VNC path, on the host: a VNC server (vkmsremote's, over the pattern
source) and a consumer server on one event loop, the pattern's frames handed to the consumer socket as page
flips by a tap inside the VNC path (consumer_support.TappedSource). A real VNC client (LibVNCClient, through
scripts/bench_client.c, Raw) measures its frame rate alone and then beside a consumer that never reads: same
run, same server. The stuck consumer fills its socket buffer, is dropped, and the VNC frame rate does not
change. (The DRM side, the tap on VKMS, is tested in tests/vm/test_consumer_vm.py.)"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from consumer_support import ServerThread, TappedSource

from vkmsremote.bench.client import BenchClient, build_client
from vkmsremote.consumer.client import Consumer
from vkmsremote.server.app import VncServer
from vkmsremote.server.pattern import PatternSource

W, H = 640, 480


def test_a_consumer_that_never_reads_does_not_change_the_vnc_fps(tmp_path: Path) -> None:
    binary = build_client()
    # 16 KiB of socket buffer (the kernel doubles it): the stuck consumer is full after a few dozen flips,
    # within the measurement even on a loaded host (256 KiB in `up`).
    st = ServerThread(tmp_path / "XR-0.sock", width=W, height=H, send_buffer=16 * 1024)
    source = st.call(lambda: TappedSource(PatternSource(W, H, fps=30), st.server, W, H))
    vnc = VncServer(source, port=0)
    asyncio.run_coroutine_threadsafe(vnc.start(), st.loop).result(30)
    serving = asyncio.run_coroutine_threadsafe(vnc.serve_forever(), st.loop)
    stuck: socket.socket | None = None
    try:
        def fps(seconds: float) -> float:
            client = BenchClient(binary, "127.0.0.1", vnc.port, "raw", seconds).start()
            client.wait_first_update(60)
            assert client.wait(seconds + 60) == 0, client.stderr()
            updates = client.snapshot()
            assert client.size == (W, H) and len(updates) > 10, (client.size, len(updates))
            return (len(updates) - 1) / (updates[-1].t - updates[0].t)

        alone = fps(4)
        with Consumer.connect(str(st.path)) as reading:  # a consumer that reads gets the flips (the tap is live)
            frame = next(reading.frames(timeout=10))
            assert frame.buffer.meta.width == W and frame.damage is None
        flips_before = source.flips
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stuck.connect(str(st.path))  # never reads
        with_stuck = fps(4)
        stuck_flips = source.flips - flips_before
        print(f"VNC fps (LibVNCClient, Raw, {W}x{H}, pattern at 30/s): alone {alone:.1f}, beside a consumer that "
              f"never reads {with_stuck:.1f} (ratio {with_stuck / alone:.2f}); {stuck_flips} flips "
              f"meanwhile, stuck consumer dropped: {st.server.dropped_slow}")
        assert st.server.dropped_slow == 1 and not st.server.consumers  # filled its buffer, dropped
        assert stuck_flips > 20
        assert with_stuck >= 0.7 * alone, (alone, with_stuck)
    finally:
        if stuck is not None:
            stuck.close()
        serving.cancel()
        asyncio.run_coroutine_threadsafe(vnc.close(), st.loop).result(30)
        st.close()
