"""Kernel DRM UAPI: ctypes mirrors of the structs, ioctl request numbers, and the one ioctl wrapper.

Layouts follow include/uapi/drm/drm.h, drm_mode.h and include/uapi/linux/dma-buf.h (x86-64 and every
other LP64 ABI; ``size_t``/pointers/``long`` are 64-bit there). tests/drm/test_drm_ioctl.py compiles a C
program against the installed headers and checks every size, offset and request number below.

All DRM ioctls go through :func:`drm_ioctl`, which is also the single place where an errno becomes a
:class:`~vkmsremote.errors.DrmError` with a hint about what to do.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
from ctypes import c_char, c_int, c_int32, c_int64, c_uint, c_uint16, c_uint32, c_uint64, c_ulong
from enum import IntEnum, IntFlag
from typing import Any

from vkmsremote.errors import DrmError

# --- ioctl request encoding (include/uapi/asm-generic/ioctl.h) -------------------------------------

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    if size >= 1 << _IOC_SIZEBITS:
        raise ValueError(f"ioctl argument of {size} bytes does not fit the size field")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def io(type_: str, nr: int) -> int:
    return _ioc(_IOC_NONE, ord(type_), nr, 0)


def iow(type_: str, nr: int, struct: Any) -> int:
    return _ioc(_IOC_WRITE, ord(type_), nr, ctypes.sizeof(struct))


def iowr(type_: str, nr: int, struct: Any) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, ord(type_), nr, ctypes.sizeof(struct))


DRM_IOCTL_BASE = "d"
DMA_BUF_BASE = "b"

# --- structs ------------------------------------------------------------------------------------------

DRM_DISPLAY_MODE_LEN = 32
DRM_PROP_NAME_LEN = 32


class drm_version(ctypes.Structure):
    _fields_ = [
        ("version_major", c_int), ("version_minor", c_int), ("version_patchlevel", c_int),
        ("name_len", c_ulong), ("name", c_uint64),
        ("date_len", c_ulong), ("date", c_uint64),
        ("desc_len", c_ulong), ("desc", c_uint64),
    ]


class drm_set_client_cap(ctypes.Structure):
    _fields_ = [("capability", c_uint64), ("value", c_uint64)]


class drm_gem_close(ctypes.Structure):
    _fields_ = [("handle", c_uint32), ("pad", c_uint32)]


class drm_prime_handle(ctypes.Structure):
    _fields_ = [("handle", c_uint32), ("flags", c_uint32), ("fd", c_int32)]


class drm_crtc_get_sequence(ctypes.Structure):
    _fields_ = [("crtc_id", c_uint32), ("active", c_uint32), ("sequence", c_uint64), ("sequence_ns", c_int64)]


class drm_crtc_queue_sequence(ctypes.Structure):
    _fields_ = [("crtc_id", c_uint32), ("flags", c_uint32), ("sequence", c_uint64), ("user_data", c_uint64)]


class drm_mode_modeinfo(ctypes.Structure):
    _fields_ = [
        ("clock", c_uint32),
        ("hdisplay", c_uint16), ("hsync_start", c_uint16), ("hsync_end", c_uint16),
        ("htotal", c_uint16), ("hskew", c_uint16),
        ("vdisplay", c_uint16), ("vsync_start", c_uint16), ("vsync_end", c_uint16),
        ("vtotal", c_uint16), ("vscan", c_uint16),
        ("vrefresh", c_uint32), ("flags", c_uint32), ("type", c_uint32),
        ("name", c_char * DRM_DISPLAY_MODE_LEN),
    ]


class drm_mode_card_res(ctypes.Structure):
    _fields_ = [
        ("fb_id_ptr", c_uint64), ("crtc_id_ptr", c_uint64),
        ("connector_id_ptr", c_uint64), ("encoder_id_ptr", c_uint64),
        ("count_fbs", c_uint32), ("count_crtcs", c_uint32),
        ("count_connectors", c_uint32), ("count_encoders", c_uint32),
        ("min_width", c_uint32), ("max_width", c_uint32),
        ("min_height", c_uint32), ("max_height", c_uint32),
    ]


class drm_mode_crtc(ctypes.Structure):
    _fields_ = [
        ("set_connectors_ptr", c_uint64), ("count_connectors", c_uint32),
        ("crtc_id", c_uint32), ("fb_id", c_uint32), ("x", c_uint32), ("y", c_uint32),
        ("gamma_size", c_uint32), ("mode_valid", c_uint32), ("mode", drm_mode_modeinfo),
    ]


class drm_mode_get_encoder(ctypes.Structure):
    _fields_ = [
        ("encoder_id", c_uint32), ("encoder_type", c_uint32), ("crtc_id", c_uint32),
        ("possible_crtcs", c_uint32), ("possible_clones", c_uint32),
    ]


class drm_mode_get_connector(ctypes.Structure):
    _fields_ = [
        ("encoders_ptr", c_uint64), ("modes_ptr", c_uint64),
        ("props_ptr", c_uint64), ("prop_values_ptr", c_uint64),
        ("count_modes", c_uint32), ("count_props", c_uint32), ("count_encoders", c_uint32),
        ("encoder_id", c_uint32), ("connector_id", c_uint32),
        ("connector_type", c_uint32), ("connector_type_id", c_uint32),
        ("connection", c_uint32), ("mm_width", c_uint32), ("mm_height", c_uint32),
        ("subpixel", c_uint32), ("pad", c_uint32),
    ]


class drm_mode_property_enum(ctypes.Structure):
    _fields_ = [("value", c_uint64), ("name", c_char * DRM_PROP_NAME_LEN)]


class drm_mode_get_property(ctypes.Structure):
    _fields_ = [
        ("values_ptr", c_uint64), ("enum_blob_ptr", c_uint64),
        ("prop_id", c_uint32), ("flags", c_uint32), ("name", c_char * DRM_PROP_NAME_LEN),
        ("count_values", c_uint32), ("count_enum_blobs", c_uint32),
    ]


class drm_mode_get_blob(ctypes.Structure):
    _fields_ = [("blob_id", c_uint32), ("length", c_uint32), ("data", c_uint64)]


class drm_mode_create_blob(ctypes.Structure):
    _fields_ = [("data", c_uint64), ("length", c_uint32), ("blob_id", c_uint32)]


class drm_mode_destroy_blob(ctypes.Structure):
    _fields_ = [("blob_id", c_uint32)]


class drm_mode_fb_cmd2(ctypes.Structure):
    _fields_ = [
        ("fb_id", c_uint32), ("width", c_uint32), ("height", c_uint32),
        ("pixel_format", c_uint32), ("flags", c_uint32),
        ("handles", c_uint32 * 4), ("pitches", c_uint32 * 4), ("offsets", c_uint32 * 4),
        ("modifier", c_uint64 * 4),
    ]


class drm_mode_create_dumb(ctypes.Structure):
    _fields_ = [
        ("height", c_uint32), ("width", c_uint32), ("bpp", c_uint32), ("flags", c_uint32),
        ("handle", c_uint32), ("pitch", c_uint32), ("size", c_uint64),
    ]


class drm_mode_map_dumb(ctypes.Structure):
    _fields_ = [("handle", c_uint32), ("pad", c_uint32), ("offset", c_uint64)]


class drm_mode_destroy_dumb(ctypes.Structure):
    _fields_ = [("handle", c_uint32)]


class drm_mode_get_plane_res(ctypes.Structure):
    _fields_ = [("plane_id_ptr", c_uint64), ("count_planes", c_uint32)]


class drm_mode_get_plane(ctypes.Structure):
    _fields_ = [
        ("plane_id", c_uint32), ("crtc_id", c_uint32), ("fb_id", c_uint32),
        ("possible_crtcs", c_uint32), ("gamma_size", c_uint32),
        ("count_format_types", c_uint32), ("format_type_ptr", c_uint64),
    ]


class drm_mode_obj_get_properties(ctypes.Structure):
    _fields_ = [
        ("props_ptr", c_uint64), ("prop_values_ptr", c_uint64),
        ("count_props", c_uint32), ("obj_id", c_uint32), ("obj_type", c_uint32),
    ]


class drm_mode_atomic(ctypes.Structure):
    _fields_ = [
        ("flags", c_uint32), ("count_objs", c_uint32),
        ("objs_ptr", c_uint64), ("count_props_ptr", c_uint64),
        ("props_ptr", c_uint64), ("prop_values_ptr", c_uint64),
        ("reserved", c_uint64), ("user_data", c_uint64),
    ]


class drm_event(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("length", c_uint32)]


class drm_event_vblank(ctypes.Structure):
    _fields_ = [
        ("base", drm_event), ("user_data", c_uint64),
        ("tv_sec", c_uint32), ("tv_usec", c_uint32), ("sequence", c_uint32), ("crtc_id", c_uint32),
    ]


class drm_event_crtc_sequence(ctypes.Structure):
    _fields_ = [("base", drm_event), ("user_data", c_uint64), ("time_ns", c_int64), ("sequence", c_uint64)]


class dma_buf_sync(ctypes.Structure):
    _fields_ = [("flags", c_uint64)]


# --- request numbers (drm.h "DRM_IOCTL_*", dma-buf.h) -----------------------------------------------

D = DRM_IOCTL_BASE
DRM_IOCTL_VERSION = iowr(D, 0x00, drm_version)
DRM_IOCTL_GEM_CLOSE = iow(D, 0x09, drm_gem_close)
DRM_IOCTL_SET_CLIENT_CAP = iow(D, 0x0D, drm_set_client_cap)
DRM_IOCTL_SET_MASTER = io(D, 0x1E)
DRM_IOCTL_DROP_MASTER = io(D, 0x1F)
DRM_IOCTL_PRIME_HANDLE_TO_FD = iowr(D, 0x2D, drm_prime_handle)
DRM_IOCTL_CRTC_GET_SEQUENCE = iowr(D, 0x3B, drm_crtc_get_sequence)
DRM_IOCTL_CRTC_QUEUE_SEQUENCE = iowr(D, 0x3C, drm_crtc_queue_sequence)
DRM_IOCTL_MODE_GETRESOURCES = iowr(D, 0xA0, drm_mode_card_res)
DRM_IOCTL_MODE_GETCRTC = iowr(D, 0xA1, drm_mode_crtc)
DRM_IOCTL_MODE_GETENCODER = iowr(D, 0xA6, drm_mode_get_encoder)
DRM_IOCTL_MODE_GETCONNECTOR = iowr(D, 0xA7, drm_mode_get_connector)
DRM_IOCTL_MODE_GETPROPERTY = iowr(D, 0xAA, drm_mode_get_property)
DRM_IOCTL_MODE_GETPROPBLOB = iowr(D, 0xAC, drm_mode_get_blob)
DRM_IOCTL_MODE_RMFB = iowr(D, 0xAF, c_uint)
DRM_IOCTL_MODE_CREATE_DUMB = iowr(D, 0xB2, drm_mode_create_dumb)
DRM_IOCTL_MODE_MAP_DUMB = iowr(D, 0xB3, drm_mode_map_dumb)
DRM_IOCTL_MODE_DESTROY_DUMB = iowr(D, 0xB4, drm_mode_destroy_dumb)
DRM_IOCTL_MODE_GETPLANERESOURCES = iowr(D, 0xB5, drm_mode_get_plane_res)
DRM_IOCTL_MODE_GETPLANE = iowr(D, 0xB6, drm_mode_get_plane)
DRM_IOCTL_MODE_ADDFB2 = iowr(D, 0xB8, drm_mode_fb_cmd2)
DRM_IOCTL_MODE_OBJ_GETPROPERTIES = iowr(D, 0xB9, drm_mode_obj_get_properties)
DRM_IOCTL_MODE_ATOMIC = iowr(D, 0xBC, drm_mode_atomic)
DRM_IOCTL_MODE_CREATEPROPBLOB = iowr(D, 0xBD, drm_mode_create_blob)
DRM_IOCTL_MODE_DESTROYPROPBLOB = iowr(D, 0xBE, drm_mode_destroy_blob)
DRM_IOCTL_MODE_GETFB2 = iowr(D, 0xCE, drm_mode_fb_cmd2)
DMA_BUF_IOCTL_SYNC = iow(DMA_BUF_BASE, 0, dma_buf_sync)
del D

# --- constants ------------------------------------------------------------------------------------------


class ClientCap(IntEnum):
    """DRM_CLIENT_CAP_* for DRM_IOCTL_SET_CLIENT_CAP."""

    STEREO_3D = 1
    UNIVERSAL_PLANES = 2
    ATOMIC = 3
    ASPECT_RATIO = 4
    WRITEBACK_CONNECTORS = 5
    CURSOR_PLANE_HOTSPOT = 6


class ObjectType(IntEnum):
    """DRM_MODE_OBJECT_*."""

    ANY = 0
    CRTC = 0xCCCCCCCC
    CONNECTOR = 0xC0C0C0C0
    ENCODER = 0xE0E0E0E0
    MODE = 0xDEDEDEDE
    PROPERTY = 0xB0B0B0B0
    FB = 0xFBFBFBFB
    BLOB = 0xBBBBBBBB
    PLANE = 0xEEEEEEEE


class PropFlag(IntFlag):
    """DRM_MODE_PROP_* (drm_mode.h); the extended type lives in bits 6-15."""

    PENDING = 1 << 0
    RANGE = 1 << 1
    IMMUTABLE = 1 << 2
    ENUM = 1 << 3
    BLOB = 1 << 4
    BITMASK = 1 << 5
    OBJECT = 1 << 6
    SIGNED_RANGE = 2 << 6
    ATOMIC = 0x80000000


PROP_LEGACY_TYPE = PropFlag.RANGE | PropFlag.ENUM | PropFlag.BLOB | PropFlag.BITMASK
PROP_EXTENDED_TYPE = 0x0000FFC0


class AtomicFlag(IntFlag):
    """Flags of DRM_IOCTL_MODE_ATOMIC (DRM_MODE_PAGE_FLIP_* and DRM_MODE_ATOMIC_*)."""

    NONE = 0
    PAGE_FLIP_EVENT = 0x01
    PAGE_FLIP_ASYNC = 0x02
    TEST_ONLY = 0x0100
    NONBLOCK = 0x0200
    ALLOW_MODESET = 0x0400


class EventType(IntEnum):
    """struct drm_event.type."""

    VBLANK = 0x01
    FLIP_COMPLETE = 0x02
    CRTC_SEQUENCE = 0x03


class DmaBufSync(IntFlag):
    """DMA_BUF_SYNC_* (include/uapi/linux/dma-buf.h)."""

    READ = 1 << 0
    WRITE = 2 << 0
    RW = READ | WRITE
    START = 0 << 2
    END = 1 << 2


CRTC_SEQUENCE_RELATIVE = 0x00000001
CRTC_SEQUENCE_NEXT_ON_MISS = 0x00000002
DRM_MODE_FB_MODIFIERS = 1 << 1
DRM_CLOEXEC = 0o2000000  # = O_CLOEXEC
DRM_RDWR = 0o2  # = O_RDWR

# --- the ioctl wrapper and the errno -> hint mapping ----------------------------------------------------

_ERRNO_HINTS: dict[int, str] = {
    errno.EACCES: "this needs DRM master or root: run as root, or stop the compositor/display server "
                  "that holds the card",
    errno.EPERM: "this needs DRM master or CAP_SYS_ADMIN: run as root, and make sure no other process "
                 "(a compositor, Xorg, modetest) is DRM master on this card",
    errno.EBUSY: "another DRM master or a pending commit holds the object: retry, or stop the other client",
    errno.ENOENT: "the object no longer exists (unplugged, or its owner removed it): enumerate again",
    errno.EINVAL: "the kernel rejected the arguments: check ids, property values and the mode",
    errno.EOPNOTSUPP: "the driver does not support this: check the kernel has VKMS 6.19+ with configfs",
    errno.ENODEV: "the DRM device went away: it was disabled or removed through configfs",
    errno.ERANGE: "a property value is out of its range",
    errno.ENOSPC: "the kernel ran out of a resource (buffers, blob space)",
}


def errno_hint(err: int) -> str:
    """What to do about a DRM ioctl failing with ``err`` (empty if nothing useful can be said)."""
    return _ERRNO_HINTS.get(err, "")


def drm_error(op: str, err: int, object_id: int | None = None, hint: str = "") -> DrmError:
    return DrmError(op, err, object_id=object_id, hint=hint or errno_hint(err))


def drm_ioctl(fd: int, request: int, arg: Any, op: str, object_id: int | None = None) -> None:
    """Run one ioctl on ``fd`` with a mutable ctypes argument; retry on EINTR/EAGAIN like libdrm's drmIoctl.

    Raises DrmError naming ``op`` and ``object_id`` on failure.
    """
    while True:
        try:
            if arg is None:
                fcntl.ioctl(fd, request, 0)
            else:
                fcntl.ioctl(fd, request, arg, True)
            return
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                continue
            raise drm_error(op, exc.errno or errno.EIO, object_id) from None
