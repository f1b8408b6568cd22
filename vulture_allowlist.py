"""Names in vkmsremote/ that vulture reports as unused but that are used where it cannot see.

Read by scripts/deadcode.py (the ``deadcode`` stage of scripts/test.sh), which also runs this file: an
entry whose name no longer exists fails the check, so the list cannot go stale. Each group says why its
names are used; anything else vulture finds is dead and goes. Entries go through the real objects where
they are class attributes, so a rename breaks here too.
"""

# ruff: noqa: B018
from __future__ import annotations

import vkmsremote.consumer as consumer_package
from vkmsremote.bench.xdraw import XShmSegmentInfo
from vkmsremote.capture.xwd import XwdHeader
from vkmsremote.drm import ioctl as k
from vkmsremote.drm.fourcc import DrmFormat
from vkmsremote.rfb.constants import Encoding, SecurityResult, VeNCryptSubtype, VeNCryptSubtypeResult
from vkmsremote.rfb.messages import ClipboardFormat, ExtendedDesktopSizeStatus
from vkmsremote.service.privileges import Cap
from vkmsremote.web.transport import WebSocketStream

# ctypes struct fields the kernel (or libXext) reads: written by us, never read back in Python.
k.drm_mode_get_connector.modes_ptr
k.drm_mode_get_connector.encoders_ptr
k.drm_mode_get_connector.props_ptr
k.drm_mode_get_connector.prop_values_ptr
k.drm_mode_obj_get_properties.props_ptr
k.drm_mode_obj_get_properties.prop_values_ptr
k.drm_mode_get_property.values_ptr
k.drm_mode_get_property.enum_blob_ptr
k.drm_mode_get_plane.format_type_ptr
XShmSegmentInfo.shmaddr
XShmSegmentInfo.readOnly

# Mirrors of the kernel's UAPI value tables, checked member by member against libdrm's headers by
# tests/test_drm_ioctl.py; a member is the name of a value the kernel may use, not code.
k.ClientCap.STEREO_3D
k.ClientCap.ASPECT_RATIO
k.ClientCap.CURSOR_PLANE_HOTSPOT
k.ObjectType.ENCODER
k.ObjectType.MODE
k.ObjectType.PROPERTY
k.ObjectType.FB
# Formats named in messages: fourcc.format_name() looks any code up in DrmFormat ("NV12 (NV12) cannot be read").
DrmFormat.XRGB2101010
DrmFormat.ARGB16161616
DrmFormat.NV12
DrmFormat.YUYV
# Capability numbers (linux/capability.h) named in privilege messages by service.privileges.
Cap.CHOWN
Cap.DAC_OVERRIDE
Cap.SETGID
Cap.SETUID
Cap.SETPCAP
Cap.NET_BIND_SERVICE

# Protocol registries (RFC 6143 / rfbproto): values a peer may send, decoded through the enum.
VeNCryptSubtype.PLAIN
VeNCryptSubtype.TLS_NONE
VeNCryptSubtype.TLS_VNC
VeNCryptSubtype.TLS_PLAIN
SecurityResult.TOO_MANY_ATTEMPTS
Encoding.X_CURSOR
VeNCryptSubtypeResult.REJECTED
ExtendedDesktopSizeStatus.FORWARDED


class _Any:
    """Stands for instances whose attributes vulture flags (instance attributes cannot be checked here)."""

    def __getattr__(self, name: str) -> None:
        return None


_ = _Any()

# Set for a library that reads it: ssl.SSLContext.num_tickets (server/tls.py); PyAV's codec context and
# frame (rfb/encodings/h264.py: pix_fmt, thread_count, pts); __aexit__'s parameters (web/server.py) are the
# protocol's signature.
_.num_tickets
_.pix_fmt
_.thread_count
_.pts
_.exc_type
_.tb
# asyncio.Transport's interface, implemented by web/transport.py's WebSocketStream and called by asyncio's
# streams (StreamWriter, StreamReaderProtocol), not by our code.
WebSocketStream.can_write_eof
WebSocketStream.writelines
WebSocketStream.get_write_buffer_limits
WebSocketStream.pause_reading
WebSocketStream.resume_reading
WebSocketStream.is_reading
WebSocketStream.get_protocol
WebSocketStream.set_protocol

# Module __getattr__ (PEP 562): vkmsremote.consumer's lazy exports, called by the import system.
consumer_package.__getattr__

# Dead, left for the owners of the files (reported to the lead; not this branch's files):
# vkms/device.py DownResult.left_alone (written, never read).
_.left_alone

# XWDFileHeader fields (X11/XWDFile.h) kept in their order so the header round-trips (XwdHeader.to_bytes
# writes every field); the source itself reads only the ones that describe the pixels.
XwdHeader.file_version
XwdHeader.bitmap_unit
XwdHeader.bitmap_bit_order
XwdHeader.bitmap_pad
XwdHeader.bits_per_rgb
XwdHeader.colormap_entries
XwdHeader.window_width
XwdHeader.window_height
XwdHeader.window_x
XwdHeader.window_y
XwdHeader.window_bdrwidth

# rfbproto "Extended Clipboard" format bits, named as the spec lists them: the server handles text only,
# but a client's caps/notify may carry the others (rfb.messages.ClipboardFormat reads them by bit).
ClipboardFormat.RTF
ClipboardFormat.DIB
ClipboardFormat.FILES
