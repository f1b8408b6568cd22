"""Capture through a CRTC's writeback connector: the composed output of all planes, written by the
kernel into a buffer of ours. Needs DRM master on a card opened with the WRITEBACK_CONNECTORS cap
(so only when vkmsremote itself drives the CRTC, e.g. with capture.driver.PatternDriver).

One capture = one atomic commit on the writeback connector (CRTC_ID, WRITEBACK_FB_ID,
WRITEBACK_OUT_FENCE_PTR; drm_writeback.c), then waiting for the returned sync_file fence, which signals
once the kernel has written the frame (VKMS does it at the next vblank's composition).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import select
import struct
import time

import numpy as np

from vkmsremote.capture.exporter import ExportedFramebuffer, export_dumb_framebuffer
from vkmsremote.drm.atomic import AtomicRequest
from vkmsremote.drm.card import Card
from vkmsremote.drm.connector import Connector
from vkmsremote.drm.crtc import get_crtc
from vkmsremote.drm.fourcc import DrmFormat, format_name
from vkmsremote.drm.framebuffer import DumbFramebuffer
from vkmsremote.drm.ioctl import AtomicFlag, ClientCap
from vkmsremote.drm.properties import get_blob
from vkmsremote.drm.resources import Resources
from vkmsremote.errors import DeviceStateError, DrmError, TimeoutError_, UnsupportedFormatError, UsageError
from vkmsremote.frame import Pixels


def find_writeback_connector(res: Resources, crtc_id: int) -> Connector:
    for conn in res.writeback_connectors():
        if crtc_id in res.possible_crtc_ids(conn):
            return conn
    raise UsageError(f"CRTC {crtc_id} has no writeback connector",
                     hint="enable it in configfs (echo 1 > crtcs/<crtc>/writeback) before enabling the device, "
                          "and open the card with Card.open(path, writeback=True)")


def writeback_formats(card: Card, connector: Connector) -> tuple[int, ...]:
    """The WRITEBACK_PIXEL_FORMATS blob: an array of u32 fourcc codes."""
    props = connector.properties
    blob_id = props.value("WRITEBACK_PIXEL_FORMATS", 0) if props is not None else 0
    if not blob_id:
        return ()
    data = get_blob(card, blob_id)
    return struct.unpack(f"<{len(data) // 4}I", data[: len(data) // 4 * 4])


def wait_fence(fd: int, timeout: float) -> None:
    """Block until a sync_file fence signals (it polls readable then)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError_(f"writeback fence did not signal within {timeout} s",
                                hint="is the CRTC active and its vblank running?")
        if poller.poll(int(left * 1000) + 1):
            return


class WritebackCapture:
    """Captures the composed output of ``crtc_id`` into a dumb buffer through its writeback connector."""

    def __init__(self, card: Card, crtc_id: int, *, timeout: float = 5.0) -> None:
        if not card.client_caps.get(ClientCap.WRITEBACK_CONNECTORS):
            raise UsageError(f"{card.path} was opened without the WRITEBACK_CONNECTORS client cap",
                             hint="open it with Card.open(path, writeback=True)")
        res = Resources.fetch(card, probe=False)
        self.card = card
        self.crtc_id = crtc_id
        self.connector = find_writeback_connector(res, crtc_id)
        formats = writeback_formats(card, self.connector)
        if formats and DrmFormat.XRGB8888 not in formats:
            raise UnsupportedFormatError(
                f"writeback connector {self.connector.name} cannot write XRGB8888 "
                f"(it offers {', '.join(format_name(f) for f in formats)})")
        self.timeout = timeout
        self._fb: DumbFramebuffer | None = None
        self._attached = False
        self.captures = 0

    def _buffer(self, width: int, height: int) -> DumbFramebuffer:
        if self._fb is None or (self._fb.width, self._fb.height) != (width, height):
            if self._fb is not None:
                self._fb.close()
            self._fb = DumbFramebuffer(self.card, width, height, DrmFormat.XRGB8888)
        return self._fb

    def capture(self) -> Pixels:
        """Commit one writeback job, wait for its fence, return a copy of the frame (h, w, 4) B, G, R, X."""
        return np.array(self.capture_into().pixels, copy=True)

    def capture_into(self) -> DumbFramebuffer:
        """Commit one writeback job and wait for its fence; the buffer now holding the frame (XRGB8888,
        the CRTC's mode size). It is reused by the next capture (a new one only when the size changes)."""
        crtc = get_crtc(self.card, self.crtc_id, with_properties=False)
        if not crtc.active or crtc.mode is None:
            raise DeviceStateError(f"CRTC {self.crtc_id} is off: nothing to write back",
                                   hint="light the CRTC first (a modeset by the DRM master)")
        fb = self._buffer(crtc.mode.width, crtc.mode.height)
        fence = ctypes.c_int32(-1)
        req = AtomicRequest(self.card)
        req.add(self.connector, "CRTC_ID", self.crtc_id)
        req.add(self.connector, "WRITEBACK_FB_ID", fb.fb_id)
        req.add(self.connector, "WRITEBACK_OUT_FENCE_PTR", ctypes.addressof(fence))
        # Routing the connector to the CRTC the first time counts as a modeset.
        flags = AtomicFlag.NONE if self._attached else AtomicFlag.ALLOW_MODESET
        for _attempt in range(50):
            try:
                req.commit(flags)
                break
            except DrmError as exc:
                if exc.errno != errno.EBUSY:  # a previous commit (a page flip) is still pending
                    raise
                time.sleep(0.002)
        else:
            raise DrmError("writeback commit", errno.EBUSY, object_id=self.connector.id)
        self._attached = True
        if fence.value < 0:
            raise DrmError("writeback commit returned no out-fence", errno.EINVAL, object_id=self.connector.id)
        try:
            wait_fence(fence.value, self.timeout)
        finally:
            os.close(fence.value)
        self.captures += 1
        return fb

    def close(self) -> None:
        if self._fb is not None:
            self._fb.close()
            self._fb = None


class LocalWritebackExporter:
    """A :class:`~vkmsremote.capture.exporter.WritebackExporter` in this process (it must be the DRM
    master): each call captures one frame in a worker thread and exports the buffer it landed in."""

    def __init__(self, capture: WritebackCapture) -> None:
        self.capture = capture

    def writeback_sync(self, crtc_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        if crtc_id != self.capture.crtc_id:
            raise UsageError(f"this writeback capture is for CRTC {self.capture.crtc_id}, not {crtc_id}")
        fb = self.capture.capture_into()
        return export_dumb_framebuffer(self.capture.card, fb.fb_id, fb.dumb.handle, fb.width, fb.height, fb.pitch,
                                       fb.format, known)

    async def writeback(self, crtc_id: int, known: tuple[int, ...] | None = None) -> ExportedFramebuffer:
        return await asyncio.get_running_loop().run_in_executor(None, self.writeback_sync, crtc_id, known)
