"""Client-to-server messages through the protocol parser (whole and one byte at a time), server messages
byte for byte, and the caps on every peer-supplied length. Every byte string is spelled out and commented
with the RFC 6143 / rfbproto field it encodes."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from vkmsremote.errors import ProtocolError
from vkmsremote.rfb.auth import SecurityPolicy
from vkmsremote.rfb.messages import (
    BGR233,
    Bell,
    ClientCutText,
    ClientFence,
    EnableContinuousUpdates,
    EndOfContinuousUpdates,
    FramebufferUpdate,
    FramebufferUpdateRequest,
    KeyEvent,
    PointerEvent,
    QemuExtendedKeyEvent,
    Rectangle,
    Screen,
    ServerCutText,
    ServerFence,
    ServerInit,
    SetDesktopSize,
    SetEncodings,
    SetPixelFormat,
    bgr233_colour_map,
    cursor_rect,
    cursor_with_alpha_rect,
    desktop_name_rect,
    desktop_size_rect,
    extended_desktop_size_rect,
    qemu_extended_key_event_rect,
)
from vkmsremote.rfb.pixelformat import NATIVE, PixelFormat
from vkmsremote.rfb.protocol import NEED_DATA, ClientCutTextDiscarded, ClientInit, ServerConnection, State


def normal_connection(**kwargs: object) -> ServerConnection:
    """A connection past the handshake (RFB 3.8, security None), ServerInit sent."""
    conn = ServerConnection(SecurityPolicy(), **kwargs)  # type: ignore[arg-type]
    assert conn.data_to_send() == b"RFB 003.008\n"
    conn.receive_data(b"RFB 003.008\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"\x01\x01"  # one security type: None
    conn.receive_data(b"\x01")  # the client picks None
    events = drain(conn)
    conn.receive_data(b"\x01")  # ClientInit shared-flag 1
    events += drain(conn)
    assert isinstance(events[-1], ClientInit)
    conn.send(ServerInit(64, 48, NATIVE, "test"))
    conn.data_to_send()
    assert conn.state is State.NORMAL
    return conn


def drain(conn: ServerConnection) -> list[object]:
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def parse_whole(data: bytes, **kwargs: object) -> list[object]:
    conn = normal_connection(**kwargs)
    conn.receive_data(data)
    return drain(conn)


def parse_bytewise(data: bytes, **kwargs: object) -> list[object]:
    conn = normal_connection(**kwargs)
    events: list[object] = []
    for i in range(len(data)):
        conn.receive_data(data[i:i + 1])
        got = drain(conn)
        if i < len(data) - 1:
            assert got == [] or all(isinstance(e, ClientCutTextDiscarded) for e in got), (i, got)
        events += got
    return events


def check(data: bytes, expected: object) -> None:
    assert parse_whole(data) == [expected]
    assert parse_bytewise(data) == [expected]
    to_bytes = getattr(expected, "to_bytes")  # noqa: B009 - every client message serialises itself
    assert to_bytes() == data


# --- client to server ---------------------------------------------------------------------------------


def test_set_pixel_format() -> None:
    data = bytes([
        0,              # message-type SetPixelFormat
        0, 0, 0,        # padding
        16,             # bits-per-pixel
        16,             # depth
        1,              # big-endian-flag
        1,              # true-colour-flag
        0x00, 0x1F,     # red-max 31
        0x00, 0x3F,     # green-max 63
        0x00, 0x1F,     # blue-max 31
        11, 5, 0,       # red-, green-, blue-shift
        0, 0, 0,        # padding
    ])
    check(data, SetPixelFormat(PixelFormat(16, 16, True, True, 31, 63, 31, 11, 5, 0)))


def test_set_pixel_format_is_validated() -> None:
    data = bytes([
        0, 0, 0, 0,     # SetPixelFormat, padding
        24, 24, 0, 1,   # bits-per-pixel 24: not allowed (8, 16 or 32 only)
        0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
    ])
    with pytest.raises(ProtocolError, match="bits-per-pixel 24"):
        parse_whole(data)
    conn = normal_connection()
    conn.receive_data(bytes([0, 0, 0, 0, 32, 24, 0, 1, 0, 254, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]))  # red-max 254
    with pytest.raises(ProtocolError, match="red-max 254"):
        conn.next_event()
    assert conn.state is State.ERROR
    with pytest.raises(ProtocolError):  # a failed connection stays failed
        conn.next_event()


def test_set_encodings() -> None:
    data = bytes([
        2,                          # message-type SetEncodings
        0,                          # padding
        0, 3,                       # number-of-encodings 3
        0x00, 0x00, 0x00, 0x10,     # 16 ZRLE
        0x00, 0x00, 0x00, 0x00,     # 0 Raw
        0xFF, 0xFF, 0xFE, 0xCC,     # -308 ExtendedDesktopSize (S32)
    ])
    check(data, SetEncodings((16, 0, -308)))


def test_set_encodings_count_is_capped() -> None:
    data = bytes([2, 0, 0xFF, 0xFF])  # SetEncodings claiming 65535 encodings (cap 1024): refused at once
    with pytest.raises(ProtocolError, match="65535 encodings"):
        parse_whole(data)


def test_framebuffer_update_request() -> None:
    data = bytes([
        3,              # message-type FramebufferUpdateRequest
        1,              # incremental
        0x00, 0x0A,     # x-position 10
        0x00, 0x14,     # y-position 20
        0x01, 0x00,     # width 256
        0x00, 0x80,     # height 128
    ])
    check(data, FramebufferUpdateRequest(True, 10, 20, 256, 128))
    check(bytes([3, 0, 0, 0, 0, 0, 0, 0, 0, 0]), FramebufferUpdateRequest(False, 0, 0, 0, 0))  # empty area


def test_key_event() -> None:
    data = bytes([
        4,                          # message-type KeyEvent
        1,                          # down-flag
        0, 0,                       # padding
        0x00, 0x00, 0xFF, 0x0D,     # key XK_Return 0xff0d
    ])
    check(data, KeyEvent(True, 0xFF0D))


def test_pointer_event() -> None:
    data = bytes([
        5,              # message-type PointerEvent
        0b0000_0101,    # button-mask: left and right
        0x07, 0x80,     # x-position 1920
        0x04, 0x38,     # y-position 1080
    ])
    check(data, PointerEvent(5, 1920, 1080))


def test_client_cut_text() -> None:
    data = bytes([
        6,                          # message-type ClientCutText
        0, 0, 0,                    # padding
        0x00, 0x00, 0x00, 0x04,     # length 4
    ]) + "caf\xe9".encode("latin-1")  # text, ISO 8859-1
    check(data, ClientCutText(b"caf\xe9"))


def test_client_cut_text_too_long_is_skipped_not_buffered() -> None:
    text = b"x" * 100
    data = bytes([6, 0, 0, 0, 0, 0, 0, 100]) + text  # ClientCutText of 100 bytes, limit set to 10
    follow = bytes([4, 1, 0, 0, 0, 0, 0, 0x61])  # then KeyEvent down 'a'
    for parse in (parse_whole, parse_bytewise):
        assert parse(data + follow, max_cut_text=10) == [ClientCutTextDiscarded(100), KeyEvent(True, 0x61)]


def test_client_cut_text_extended_clipboard_length_is_an_error() -> None:
    data = bytes([6, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFC])  # length -4: Extended Clipboard, never negotiated
    with pytest.raises(ProtocolError, match="Extended Clipboard"):
        parse_whole(data)


def test_enable_continuous_updates() -> None:
    data = bytes([
        150,            # message-type EnableContinuousUpdates
        1,              # enable-flag
        0x00, 0x00,     # x-position 0
        0x00, 0x00,     # y-position 0
        0x00, 0x40,     # width 64
        0x00, 0x30,     # height 48
    ])
    check(data, EnableContinuousUpdates(True, 0, 0, 64, 48))


def test_client_fence() -> None:
    data = bytes([
        248,                        # message-type ClientFence
        0, 0, 0,                    # padding
        0x80, 0x00, 0x00, 0x05,     # flags: Request | SyncNext | BlockBefore
        3,                          # length 3
        0xAA, 0xBB, 0xCC,           # payload
    ])
    check(data, ClientFence(0x8000_0005, b"\xaa\xbb\xcc"))


def test_client_fence_payload_is_capped() -> None:
    data = bytes([248, 0, 0, 0, 0x80, 0, 0, 0, 65])  # payload length 65 (> 64)
    with pytest.raises(ProtocolError, match="65 bytes"):
        parse_whole(data)


def test_set_desktop_size() -> None:
    data = bytes([
        251,                        # message-type SetDesktopSize
        0,                          # padding
        0x05, 0x00,                 # width 1280
        0x02, 0xD0,                 # height 720
        1,                          # number-of-screens
        0,                          # padding
        0x00, 0x00, 0x00, 0x07,     # screen id 7
        0x00, 0x00, 0x00, 0x00,     # x, y
        0x05, 0x00, 0x02, 0xD0,     # width 1280, height 720
        0x00, 0x00, 0x00, 0x01,     # flags (preserved, unknown)
    ])
    check(data, SetDesktopSize(1280, 720, (Screen(7, 0, 0, 1280, 720, 1),)))


def test_qemu_extended_key_event() -> None:
    data = bytes([
        255,                        # message-type QEMU
        0,                          # submessage-type 0: extended key event
        0x00, 0x01,                 # down-flag
        0x00, 0x00, 0xFF, 0x53,     # keysym XK_Right
        0x00, 0x00, 0x00, 0xCD,     # keycode: XT 0xe0 0x4d encoded as 0xcd
    ])
    check(data, QemuExtendedKeyEvent(True, 0xFF53, 0xCD))


def test_qemu_other_submessage_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="submessage-type 1"):
        parse_whole(bytes([255, 1, 0, 0]))  # QEMU audio: never negotiated


def test_unknown_message_type_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="unknown client message type 7"):
        parse_whole(bytes([7]))  # 7 (FileTransfer): unknown length, the stream cannot be resynchronised


def test_several_messages_in_one_chunk_and_split_across_chunks() -> None:
    a = KeyEvent(True, 0x41).to_bytes()
    b = PointerEvent(1, 3, 4).to_bytes()
    c = FramebufferUpdateRequest(True, 0, 0, 64, 48).to_bytes()
    assert parse_whole(a + b + c) == [KeyEvent(True, 0x41), PointerEvent(1, 3, 4),
                                      FramebufferUpdateRequest(True, 0, 0, 64, 48)]
    conn = normal_connection()
    blob = a + b + c
    conn.receive_data(blob[:5])
    assert drain(conn) == []
    conn.receive_data(blob[5:14])  # rest of KeyEvent (8 bytes) + PointerEvent (6)
    assert drain(conn) == [KeyEvent(True, 0x41), PointerEvent(1, 3, 4)]
    conn.receive_data(blob[14:])
    assert drain(conn) == [FramebufferUpdateRequest(True, 0, 0, 64, 48)]


# --- server to client ------------------------------------------------------------------------------------


def test_server_init_bytes() -> None:
    assert ServerInit(1920, 1080, NATIVE, "XR-0").to_bytes() == bytes([
        0x07, 0x80,                 # framebuffer-width 1920
        0x04, 0x38,                 # framebuffer-height 1080
        32, 24, 0, 1,               # bits-per-pixel, depth, big-endian-flag, true-colour-flag
        0x00, 0xFF, 0x00, 0xFF, 0x00, 0xFF,  # red-, green-, blue-max 255
        16, 8, 0,                   # red-, green-, blue-shift (XRGB8888 little-endian)
        0, 0, 0,                    # padding
        0, 0, 0, 4,                 # name-length
    ]) + b"XR-0"                    # name-string (UTF-8)


def test_framebuffer_update_bytes() -> None:
    update = FramebufferUpdate([Rectangle(1, 2, 3, 4, 0, b"\x11" * 48), desktop_name_rect("é")])
    assert update.to_bytes() == bytes([
        0, 0,                       # message-type FramebufferUpdate, padding
        0, 2,                       # number-of-rectangles
        0, 1, 0, 2, 0, 3, 0, 4,     # x 1, y 2, w 3, h 4
        0, 0, 0, 0,                 # encoding Raw
    ]) + b"\x11" * 48 + bytes([     # 3 x 4 pixels of 4 bytes
        0, 0, 0, 0, 0, 0, 0, 0,     # DesktopName: x, y, w, h all zero
        0xFF, 0xFF, 0xFE, 0xCD,     # encoding -307
        0, 0, 0, 2, 0xC3, 0xA9,     # name-length 2, "é" in UTF-8
    ])


def test_pseudo_rectangles() -> None:
    assert desktop_size_rect(800, 600) == Rectangle(0, 0, 800, 600, -223)
    eds = extended_desktop_size_rect(1, 3, 800, 600, [Screen(9, 0, 0, 800, 600)])
    assert eds.header_bytes() == bytes([0, 1, 0, 3, 0x03, 0x20, 0x02, 0x58]) + struct.pack(">i", -308)
    assert eds.payload == bytes([
        1, 0, 0, 0,                 # number-of-screens 1, padding
        0, 0, 0, 9,                 # id 9
        0, 0, 0, 0,                 # x, y
        0x03, 0x20, 0x02, 0x58,     # 800 x 600
        0, 0, 0, 0,                 # flags
    ])
    with pytest.raises(ProtocolError):
        extended_desktop_size_rect(0, 0, 1, 1, [])
    assert qemu_extended_key_event_rect() == Rectangle(0, 0, 0, 0, -258)


def test_cursor_rectangles() -> None:
    bgra = np.zeros((2, 9, 4), dtype=np.uint8)
    bgra[0, 0] = (10, 20, 30, 255)      # opaque: mask bit 1, premultiplied unchanged
    bgra[1, 8] = (200, 100, 50, 128)    # half transparent: mask bit 1 (>= 128), premultiplied ~halved
    rect = cursor_rect(3, 4, 9, 2, b"P" * (2 * 9 * 4), bgra[:, :, 3])
    assert (rect.x, rect.y, rect.width, rect.height, rect.encoding) == (3, 4, 9, 2, -239)
    assert rect.payload[-4:] == bytes([
        0b1000_0000, 0b0000_0000,   # row 0: pixel 0 valid; rows padded to 2 bytes (9 pixels)
        0b0000_0000, 0b1000_0000,   # row 1: pixel 8 valid
    ])
    alpha = cursor_with_alpha_rect(1, 1, bgra)
    assert alpha.encoding == -314 and alpha.payload[:4] == bytes([0, 0, 0, 0])  # S32 encoding Raw
    rgba = np.frombuffer(alpha.payload[4:], dtype=np.uint8).reshape(2, 9, 4)
    assert tuple(rgba[0, 0]) == (30, 20, 10, 255)
    assert tuple(rgba[1, 8]) == ((50 * 128 + 127) // 255, (100 * 128 + 127) // 255, (200 * 128 + 127) // 255, 128)


def test_small_server_messages() -> None:
    assert Bell().to_bytes() == bytes([2])                       # Bell
    assert EndOfContinuousUpdates().to_bytes() == bytes([150])   # EndOfContinuousUpdates
    assert ServerFence(0x5, b"ab").to_bytes() == bytes([248, 0, 0, 0, 0, 0, 0, 5, 2]) + b"ab"
    assert ServerCutText.from_str("a\r\nb€").to_bytes() == bytes([3, 0, 0, 0, 0, 0, 0, 4]) + b"a\nb?"


def test_bgr233_colour_map() -> None:
    msg = bgr233_colour_map()
    data = msg.to_bytes()
    assert data[:6] == bytes([1, 0, 0, 0, 1, 0])  # SetColourMapEntries, padding, first-colour 0, 256 colours
    assert len(data) == 6 + 256 * 6
    # index b<<6 | g<<3 | r: 0b11_111_111 is white, 0b00_000_111 pure red
    assert data[6 + 255 * 6:6 + 256 * 6] == b"\xff\xff" * 3
    assert data[6 + 7 * 6:6 + 8 * 6] == bytes([0xFF, 0xFF, 0, 0, 0, 0])
    BGR233.validate()
