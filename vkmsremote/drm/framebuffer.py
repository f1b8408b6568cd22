"""Framebuffers: reading one the kernel scans out (GETFB2 -> PRIME dma-buf -> mmap, with DMA_BUF_IOCTL_SYNC
around CPU access), and making our own (dumb buffers + ADDFB2, RMFB).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card
from vkmsremote.drm.fourcc import DRM_FORMAT_MOD_LINEAR, DrmFormat, format_name
from vkmsremote.drm.ioctl import DmaBufSync, drm_error, drm_ioctl
from vkmsremote.errors import DrmError, UnsupportedFormatError

# Bits per pixel of the single-plane RGB formats we can make dumb buffers for.
FORMAT_BPP: dict[int, int] = {
    DrmFormat.XRGB8888: 32, DrmFormat.ARGB8888: 32, DrmFormat.XBGR8888: 32, DrmFormat.ABGR8888: 32,
    DrmFormat.RGBX8888: 32, DrmFormat.BGRX8888: 32,
    DrmFormat.RGB565: 16, DrmFormat.BGR565: 16, DrmFormat.RGB888: 24, DrmFormat.BGR888: 24,
}


@dataclass(frozen=True, slots=True)
class FramebufferInfo:
    """DRM_IOCTL_MODE_GETFB2. The GEM ``handles`` belong to the card fd that asked: release them with
    :func:`release_handles` (:func:`export_planes` does, and zeroes them)."""

    fb_id: int
    width: int
    height: int
    format: int
    flags: int
    handles: tuple[int, int, int, int]
    pitches: tuple[int, int, int, int]
    offsets: tuple[int, int, int, int]
    modifiers: tuple[int, int, int, int]

    @property
    def modifier(self) -> int:
        return self.modifiers[0] if self.flags & k.DRM_MODE_FB_MODIFIERS else DRM_FORMAT_MOD_LINEAR

    @property
    def num_planes(self) -> int:
        return sum(1 for p in self.pitches if p)

    def __str__(self) -> str:
        return f"fb {self.fb_id}: {self.width}x{self.height} {format_name(self.format)} pitch {self.pitches[0]}"


def get_framebuffer(card: Card, fb_id: int) -> FramebufferInfo:
    arg = k.drm_mode_fb_cmd2(fb_id=fb_id)
    card.ioctl(k.DRM_IOCTL_MODE_GETFB2, arg, "DRM_IOCTL_MODE_GETFB2", fb_id)
    return FramebufferInfo(
        fb_id=fb_id, width=arg.width, height=arg.height, format=arg.pixel_format, flags=arg.flags,
        handles=tuple(arg.handles), pitches=tuple(arg.pitches), offsets=tuple(arg.offsets),
        modifiers=tuple(arg.modifier),
    )


def release_handles(card: Card, info: FramebufferInfo) -> None:
    for handle in set(info.handles) - {0}:
        card.gem_close(handle)


def prime_export(card: Card, handle: int, *, writable: bool = False) -> int:
    """DRM_IOCTL_PRIME_HANDLE_TO_FD: a dma-buf fd (close-on-exec) for a GEM handle."""
    flags = k.DRM_CLOEXEC | (k.DRM_RDWR if writable else 0)
    arg = k.drm_prime_handle(handle=handle, flags=flags, fd=-1)
    card.ioctl(k.DRM_IOCTL_PRIME_HANDLE_TO_FD, arg, "DRM_IOCTL_PRIME_HANDLE_TO_FD", handle)
    return int(arg.fd)


def dma_buf_sync(fd: int, flags: DmaBufSync) -> None:
    """DMA_BUF_IOCTL_SYNC: bracket CPU access (START ... END) so caches and fences are honoured."""
    drm_ioctl(fd, k.DMA_BUF_IOCTL_SYNC, k.dma_buf_sync(flags=int(flags)), f"DMA_BUF_IOCTL_SYNC({flags!r})")


class DmaBufMapping:
    """An mmap of a whole dma-buf. Owns ``fd`` (closed by :meth:`close`)."""

    def __init__(self, fd: int, *, writable: bool = False) -> None:
        self.fd = fd
        self.writable = writable
        self._inode = os.fstat(fd).st_ino
        self.size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            self.mmap: mmap.mmap | None = mmap.mmap(fd, self.size, mmap.MAP_SHARED, prot)
        except OSError as exc:
            os.close(fd)
            raise drm_error("mmap of dma-buf", exc.errno or errno.EIO) from None
        self.data: npt.NDArray[np.uint8] = np.frombuffer(self.mmap, dtype=np.uint8)
        if not writable:
            self.data.flags.writeable = False

    @property
    def closed(self) -> bool:
        return self.mmap is None

    @property
    def inode(self) -> int:
        """The dma-buf's inode number: the same buffer gives the same number on every export."""
        return self._inode

    def begin(self, write: bool = False) -> None:
        dma_buf_sync(self.fd, DmaBufSync.START | (DmaBufSync.RW if write else DmaBufSync.READ))

    def end(self, write: bool = False) -> None:
        dma_buf_sync(self.fd, DmaBufSync.END | (DmaBufSync.RW if write else DmaBufSync.READ))

    @contextlib.contextmanager
    def access(self, write: bool = False) -> Iterator[npt.NDArray[np.uint8]]:
        self.begin(write)
        try:
            yield self.data
        finally:
            self.end(write)

    def close(self) -> None:
        if self.mmap is None:
            return
        mm, self.mmap = self.mmap, None
        self.data = np.empty(0, np.uint8)
        # If a caller still holds a numpy view, the mapping lives on until that view is freed.
        with contextlib.suppress(BufferError):
            mm.close()
        os.close(self.fd)
        self.fd = -1


class MappedFramebuffer:
    """A framebuffer exported and mapped once: every plane's bytes as a view over its dma-buf.

    :func:`map_framebuffer` makes one; keep it while the fb id exists and :meth:`close` it afterwards.
    """

    def __init__(self, info: FramebufferInfo, buffers: dict[int, DmaBufMapping], plane_buffer: tuple[int, ...]) -> None:
        self.info = info
        self._buffers = buffers  # keyed by the buffer's dma-buf inode
        self._plane_buffer = plane_buffer  # plane index -> key into _buffers

    @property
    def identity(self) -> tuple[int, ...]:
        """The dma-buf inode of each plane: compare with a later export's identity to detect that an fb id
        now names a different buffer (ids are reused after RMFB)."""
        return tuple(self._buffers[h].inode for h in self._plane_buffer)

    def buffer_fds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(one dma-buf fd per distinct buffer in the order the planes first use them, each plane's index
        into those fds): what the consumer socket passes on (still owned by this mapping)."""
        keys = list(dict.fromkeys(self._plane_buffer))
        return tuple(self._buffers[key].fd for key in keys), tuple(keys.index(key) for key in self._plane_buffer)

    def plane_bytes(self, plane: int = 0) -> npt.NDArray[np.uint8]:
        """The plane's bytes from its offset on (1-D uint8 view; ``pitches[plane]`` bytes per row)."""
        buf = self._buffers[self._plane_buffer[plane]]
        return buf.data[self.info.offsets[plane]:]

    def plane_rows(self, plane: int = 0, bytes_per_pixel: int | None = None) -> npt.NDArray[np.uint8]:
        """The plane as a (height, pitch) uint8 view, or (height, width, bpp) if ``bytes_per_pixel`` given."""
        pitch, h = self.info.pitches[plane], self.info.height
        raw = self.plane_bytes(plane)
        last_row = self.info.width * bytes_per_pixel if bytes_per_pixel else pitch
        if h == 0 or raw.size < pitch * (h - 1) + last_row:
            raise DrmError(f"framebuffer {self.info.fb_id} plane {plane}: buffer smaller than pitch x height", errno.EINVAL,
                           object_id=self.info.fb_id)
        rows = np.lib.stride_tricks.as_strided(raw, shape=(h, pitch), strides=(pitch, 1), writeable=False)
        if bytes_per_pixel is None:
            return rows
        w = self.info.width
        return np.lib.stride_tricks.as_strided(raw, shape=(h, w, bytes_per_pixel), strides=(pitch, bytes_per_pixel, 1),
                                               writeable=False)

    def begin(self) -> None:
        for buf in self._buffers.values():
            buf.begin()

    def end(self) -> None:
        for buf in self._buffers.values():
            buf.end()

    @contextlib.contextmanager
    def reading(self) -> Iterator[MappedFramebuffer]:
        """DMA_BUF_IOCTL_SYNC START/END (read) around a block of CPU reads."""
        self.begin()
        try:
            yield self
        finally:
            self.end()

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.close()
        self._buffers.clear()

    def __enter__(self) -> MappedFramebuffer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


NO_HANDLES = (0, 0, 0, 0)


def export_planes(card: Card, fb_id: int) -> tuple[FramebufferInfo, tuple[int, ...], tuple[int, ...]]:
    """GETFB2 + PRIME_HANDLE_TO_FD of every plane's buffer on ``card`` (root or DRM master): the one place
    that turns an fb id into dma-bufs.

    Returns the fb's info (``handles`` zeroed: the GEM handles are released here), its *identity* (the
    dma-buf inode of each plane's buffer: exporting a GEM object again gives the same dma-buf) and one
    dma-buf fd per distinct buffer, in the order the buffers first appear in the planes. The caller owns the fds.
    """
    info = get_framebuffer(card, fb_id)
    fds: dict[int, int] = {}  # inode -> fd, in plane order
    try:
        identity = []
        for plane in range(info.num_planes):
            if info.handles[plane] == 0:
                raise DrmError("DRM_IOCTL_MODE_GETFB2 returned no buffer handle", errno.EACCES, object_id=fb_id,
                               hint="reading another client's framebuffer needs root (CAP_SYS_ADMIN) or DRM master")
            fd = prime_export(card, info.handles[plane])
            inode = os.fstat(fd).st_ino
            identity.append(inode)
            if inode in fds:
                os.close(fd)
            else:
                fds[inode] = fd
        out = tuple(fds.values())
        fds.clear()  # handed over to the caller
        return replace(info, handles=NO_HANDLES), tuple(identity), out
    finally:
        for fd in fds.values():
            os.close(fd)
        release_handles(card, info)


def map_planes(info: FramebufferInfo, identity: tuple[int, ...], fds: tuple[int, ...]) -> MappedFramebuffer:
    """Map (read-only) the buffers :func:`export_planes` describes: ``fds`` holds one fd per distinct inode of
    ``identity``, in first-appearance order. The mapping owns the fds (closed here if mapping fails)."""
    distinct = list(dict.fromkeys(identity))
    if len(fds) != len(distinct):
        for fd in fds:
            os.close(fd)
        raise ValueError(f"{len(fds)} fds for {len(distinct)} distinct buffers of fb {info.fb_id}")
    buffers: dict[int, DmaBufMapping] = {}
    pending = list(fds)
    try:
        for inode in distinct:
            fd = pending.pop(0)
            buffers[inode] = DmaBufMapping(fd)  # closes fd itself if mmap fails
            if buffers[inode].inode != inode:
                raise DrmError(f"framebuffer {info.fb_id}: the fd passed for buffer {inode} is "
                               f"buffer {buffers[inode].inode}", errno.EINVAL, object_id=info.fb_id)
    except BaseException:
        for fd in pending:
            os.close(fd)
        for buf in buffers.values():
            buf.close()
        raise
    return MappedFramebuffer(info, buffers, identity)


def map_framebuffer(card: Card, fb_id: int, *, require_linear: bool = True) -> MappedFramebuffer:
    """GETFB2 + PRIME export + mmap of every plane's buffer (read-only). Needs root or DRM master
    (the kernel gives other clients no handles)."""
    info, identity, fds = export_planes(card, fb_id)
    if require_linear and info.modifier != DRM_FORMAT_MOD_LINEAR:
        for fd in fds:
            os.close(fd)
        raise UnsupportedFormatError(
            f"framebuffer {fb_id} has a non-linear modifier 0x{info.modifier:016x}",
            hint="vkmsremote reads only linear framebuffers; make the client allocate linear buffers")
    return map_planes(info, identity, fds)


# --- our own buffers ----------------------------------------------------------------------------------------


def add_framebuffer(card: Card, width: int, height: int, pixel_format: int, handles: tuple[int, ...],
                    pitches: tuple[int, ...], offsets: tuple[int, ...] = (0,), modifiers: tuple[int, ...] | None = None) -> int:
    """DRM_IOCTL_MODE_ADDFB2 -> the new framebuffer id."""
    arg = k.drm_mode_fb_cmd2(width=width, height=height, pixel_format=pixel_format)
    for i, h in enumerate(handles):
        arg.handles[i] = h
        arg.pitches[i] = pitches[i]
        arg.offsets[i] = offsets[i] if i < len(offsets) else 0
    if modifiers is not None:
        arg.flags |= k.DRM_MODE_FB_MODIFIERS
        for i, m in enumerate(modifiers):
            arg.modifier[i] = m
    card.ioctl(k.DRM_IOCTL_MODE_ADDFB2, arg, f"DRM_IOCTL_MODE_ADDFB2({width}x{height} {format_name(pixel_format)})")
    return int(arg.fb_id)


def remove_framebuffer(card: Card, fb_id: int) -> None:
    """DRM_IOCTL_MODE_RMFB (turns off any plane still showing it)."""
    card.ioctl(k.DRM_IOCTL_MODE_RMFB, ctypes.c_uint(fb_id), "DRM_IOCTL_MODE_RMFB", fb_id)


class DumbBuffer:
    """A CPU-mappable buffer from DRM_IOCTL_MODE_CREATE_DUMB."""

    def __init__(self, card: Card, width: int, height: int, bpp: int = 32) -> None:
        arg = k.drm_mode_create_dumb(width=width, height=height, bpp=bpp)
        card.ioctl(k.DRM_IOCTL_MODE_CREATE_DUMB, arg, f"DRM_IOCTL_MODE_CREATE_DUMB({width}x{height}x{bpp})")
        self.card = card
        self.width, self.height, self.bpp = width, height, bpp
        self.handle, self.pitch, self.size = int(arg.handle), int(arg.pitch), int(arg.size)
        self._mmap: mmap.mmap | None = None

    def map(self) -> mmap.mmap:
        """DRM_IOCTL_MODE_MAP_DUMB + mmap of the card fd at the returned offset (read-write, cached)."""
        if self._mmap is None:
            arg = k.drm_mode_map_dumb(handle=self.handle)
            self.card.ioctl(k.DRM_IOCTL_MODE_MAP_DUMB, arg, "DRM_IOCTL_MODE_MAP_DUMB", self.handle)
            try:
                self._mmap = mmap.mmap(self.card.fd, self.size, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE, offset=arg.offset)
            except OSError as exc:
                raise drm_error("mmap of dumb buffer", exc.errno or errno.EIO, self.handle) from None
        return self._mmap

    def destroy(self) -> None:
        if self._mmap is not None:
            mm, self._mmap = self._mmap, None
            with contextlib.suppress(BufferError):
                mm.close()
        if self.handle and not self.card.closed:
            handle, self.handle = self.handle, 0
            self.card.ioctl(k.DRM_IOCTL_MODE_DESTROY_DUMB, k.drm_mode_destroy_dumb(handle=handle),
                            "DRM_IOCTL_MODE_DESTROY_DUMB", handle)


class DumbFramebuffer:
    """A dumb buffer registered as a framebuffer, mapped for drawing.

    ``rows`` is a writable (height, pitch) uint8 view; ``pixels`` a (height, width, bytes_per_pixel) view.
    Call :meth:`close` (RMFB + destroy) when done; the card must still be open.
    """

    def __init__(self, card: Card, width: int, height: int, pixel_format: int = DrmFormat.XRGB8888) -> None:
        bpp = FORMAT_BPP.get(pixel_format)
        if bpp is None:
            raise UnsupportedFormatError(f"cannot make a dumb framebuffer in {format_name(pixel_format)}",
                                         hint=f"use one of {', '.join(format_name(f) for f in FORMAT_BPP)}")
        self.card = card
        self.format = pixel_format
        self.width, self.height = width, height
        self.dumb = DumbBuffer(card, width, height, bpp)
        try:
            self.fb_id = add_framebuffer(card, width, height, pixel_format, (self.dumb.handle,), (self.dumb.pitch,))
        except BaseException:
            self.dumb.destroy()
            raise
        self.pitch = self.dumb.pitch
        mm = self.dumb.map()
        raw = np.frombuffer(mm, dtype=np.uint8)
        self.rows: npt.NDArray[np.uint8] = raw[: self.pitch * height].reshape(height, self.pitch)
        bytes_pp = bpp // 8
        self.pixels: npt.NDArray[np.uint8] = self.rows[:, : width * bytes_pp].reshape(height, width, bytes_pp)

    def close(self) -> None:
        self.rows = self.pixels = np.empty((0, 0, 4), np.uint8)
        if self.fb_id and not self.card.closed:
            fb, self.fb_id = self.fb_id, 0
            remove_framebuffer(self.card, fb)
        self.dumb.destroy()

    def __enter__(self) -> DumbFramebuffer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
