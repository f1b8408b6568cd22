"""Host tests of the DRM layer that need no kernel DRM: fourcc math, event parsing, modes, properties,
finding a VKMS device's card in a sysfs tree, and errno mapping."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.card import Card, card_for_vkms_device, list_cards
from vkmsremote.drm.connector import ConnectorType, connector_name
from vkmsremote.drm.events import CrtcSequenceEvent, UnknownEvent, VblankEvent, parse_events
from vkmsremote.drm.fourcc import (
    DRM_FORMAT_BIG_ENDIAN,
    DRM_FORMAT_MOD_INVALID,
    DrmFormat,
    format_name,
    fourcc,
    fourcc_str,
    modifier_name,
)
from vkmsremote.drm.mode import Mode
from vkmsremote.drm.properties import Property
from vkmsremote.errors import DeviceStateError, DrmError, UsageError

# --- fourcc ---


def test_fourcc_packs_first_char_in_low_byte() -> None:
    # drm_fourcc.h: #define DRM_FORMAT_XRGB8888 fourcc_code('X', 'R', '2', '4') = 0x34325258
    assert fourcc("XR24") == 0x34325258
    assert int(DrmFormat.XRGB8888) == 0x34325258
    assert ord("R") | ord("G") << 8 | ord("1") << 16 | ord("6") << 24 == DrmFormat.RGB565


def test_fourcc_roundtrip_and_names() -> None:
    for f in DrmFormat:
        assert fourcc(fourcc_str(f)) == f
    assert fourcc_str(DrmFormat.XRGB8888 | DRM_FORMAT_BIG_ENDIAN) == "XR24-BE"
    assert fourcc_str(0x00000001) == "????"
    assert format_name(DrmFormat.ARGB8888) == "ARGB8888 (AR24)"
    assert format_name(fourcc("Y210")) == "Y210 (0x30313259)"
    with pytest.raises(ValueError):
        fourcc("XR2")


def test_modifier_names() -> None:
    assert modifier_name(0) == "LINEAR"
    assert modifier_name(DRM_FORMAT_MOD_INVALID) == "INVALID"
    assert modifier_name((0x01 << 56) | 1) == "INTEL:0x1"  # I915_FORMAT_MOD_X_TILED


# --- events ---


def _vblank(ev_type: int, user_data: int, seq: int, crtc: int) -> bytes:
    e = k.drm_event_vblank()
    e.base.type, e.base.length = ev_type, ctypes.sizeof(e)
    e.user_data, e.tv_sec, e.tv_usec, e.sequence, e.crtc_id = user_data, 12, 500000, seq, crtc
    return bytes(e)


def _sequence(user_data: int, seq: int) -> bytes:
    e = k.drm_event_crtc_sequence()
    e.base.type, e.base.length = k.EventType.CRTC_SEQUENCE, ctypes.sizeof(e)
    e.user_data, e.time_ns, e.sequence = user_data, 123456789, seq
    return bytes(e)


def test_parse_several_events_in_one_read() -> None:
    data = _vblank(k.EventType.FLIP_COMPLETE, 7, 100, 35) + _sequence(9, 101) + _vblank(k.EventType.VBLANK, 1, 102, 35)
    evs = parse_events(data)
    assert evs == [
        VblankEvent(k.EventType.FLIP_COMPLETE, 7, 12, 500000, 100, 35),
        CrtcSequenceEvent(9, 123456789, 101),
        VblankEvent(k.EventType.VBLANK, 1, 12, 500000, 102, 35),
    ]
    assert isinstance(evs[0], VblankEvent) and evs[0].timestamp == 12.5


def test_parse_unknown_event_kept_with_payload() -> None:
    # A driver-private event (type 0x80000000 range), 8-byte header + 4-byte payload.
    head = k.drm_event(type=0x80000001, length=12)
    assert parse_events(bytes(head) + b"abcd") == [UnknownEvent(0x80000001, b"abcd")]


@pytest.mark.parametrize("bad", [
    bytes(k.drm_event(type=1, length=4)),  # length shorter than the header
    _vblank(k.EventType.VBLANK, 0, 0, 0)[:20],  # record cut short
    _vblank(k.EventType.VBLANK, 0, 0, 0) + b"xyz",  # trailing bytes
])
def test_parse_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(DrmError) as ei:
        parse_events(bad)
    assert ei.value.errno == errno.EPROTO


# --- modes and properties ---


def _mode_1024x768() -> Mode:
    # The CVT/DMT 1024x768@60 timings (65 MHz, htotal 1344, vtotal 806), as drm_mode.h lays them out.
    info = k.drm_mode_modeinfo(clock=65000, hdisplay=1024, hsync_start=1048, hsync_end=1184, htotal=1344,
                               vdisplay=768, vsync_start=771, vsync_end=777, vtotal=806, vrefresh=60,
                               flags=0xA, type=0x48, name=b"1024x768")
    return Mode.from_struct(info)


def test_mode_from_struct_and_bytes() -> None:
    m = _mode_1024x768()
    assert (m.name, m.width, m.height, m.vrefresh) == ("1024x768", 1024, 768, 60)
    assert len(m.raw) == 68
    assert Mode.from_bytes(m.raw) == m
    assert m.preferred  # type 0x48 = DRIVER | PREFERRED
    assert abs(m.refresh - 60.004) < 0.001
    assert str(m) == "1024x768@60.00"
    with pytest.raises(ValueError):
        Mode.from_bytes(m.raw[:-1])


def test_property_kinds_and_enums() -> None:
    enum_prop = Property(7, "type", int(k.PropFlag.ENUM | k.PropFlag.IMMUTABLE), (0, 1, 2),
                         (("Overlay", 0), ("Primary", 1), ("Cursor", 2)))
    assert enum_prop.kind == "enum" and enum_prop.immutable
    assert enum_prop.enum_value("Cursor") == 2 and enum_prop.enum_name(1) == "Primary"
    with pytest.raises(UsageError, match="Overlay, Primary, Cursor"):
        enum_prop.enum_value("Sprite")
    assert Property(1, "FB_ID", int(k.PropFlag.OBJECT | k.PropFlag.ATOMIC), (0xFBFBFBFB,), ()).kind == "object"
    assert Property(2, "CRTC_X", int(k.PropFlag.SIGNED_RANGE | k.PropFlag.ATOMIC), (0, 0), ()).kind == "signed_range"
    assert Property(3, "MODE_ID", int(k.PropFlag.BLOB | k.PropFlag.ATOMIC), (), ()).kind == "blob"


def test_connector_names_as_the_kernel_makes_them() -> None:
    assert connector_name(ConnectorType.VIRTUAL, 1) == "Virtual-1"
    assert connector_name(ConnectorType.HDMIA, 2) == "HDMI-A-2"
    assert connector_name(ConnectorType.WRITEBACK, 1) == "Writeback-1"
    assert connector_name(99, 1) == "Type99-1"


# --- finding the card of a configfs device in sysfs ---


def _fake_sysfs(root: Path) -> None:
    """/sys as the VM shows it: card0 belongs to faux device 'xr', card1 to 'other', card2 to a PCI GPU."""
    for name, device in (("card0", "devices/faux/xr"), ("card1", "devices/faux/other"),
                         ("card2", "devices/pci0000:00/0000:00:02.0")):
        (root / device / "drm" / name).mkdir(parents=True)
        (root / device / "drm" / name / "device").symlink_to(root / device)
        (root / "class" / "drm").mkdir(parents=True, exist_ok=True)
        (root / "class" / "drm" / name).symlink_to(root / device / "drm" / name)
    # Entries that are not primary nodes must be ignored.
    (root / "class" / "drm" / "card0-Virtual-1").mkdir()
    (root / "class" / "drm" / "renderD128").mkdir()
    (root / "class" / "drm" / "version").write_text("drm 1.1.0\n")


def test_list_cards_reads_sysfs(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path)
    nodes = list_cards(tmp_path, "/dev")
    assert [(n.name, n.bus, n.device_name, n.dev_path) for n in nodes] == [
        ("card0", "faux", "xr", "/dev/dri/card0"),
        ("card1", "faux", "other", "/dev/dri/card1"),
        ("card2", "pci0000:00", "0000:00:02.0", "/dev/dri/card2"),
    ]


def test_card_for_vkms_device_matches_by_name_not_order(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path)
    assert card_for_vkms_device("other", tmp_path).dev_path == "/dev/dri/card1"
    assert card_for_vkms_device("xr", tmp_path).minor == 0
    with pytest.raises(DeviceStateError, match="'XR-0'"):
        card_for_vkms_device("XR-0", tmp_path)
    assert list_cards(tmp_path / "missing") == []


# --- errors ---


def test_ioctl_errno_becomes_drm_error_with_op() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        card = Card(fd, "/dev/null")
        with pytest.raises(DrmError) as ei:
            card.set_client_cap(k.ClientCap.ATOMIC)
        assert ei.value.errno == errno.ENOTTY
        assert ei.value.op == "DRM_IOCTL_SET_CLIENT_CAP(ATOMIC)"
        with pytest.raises(DrmError) as ei2:
            card.gem_close(5)
        assert ei2.value.object_id == 5 and "object 5" in str(ei2.value)
    finally:
        os.close(fd)


def test_errno_hints() -> None:
    err = k.drm_error("DRM_IOCTL_MODE_ATOMIC", errno.EACCES)
    assert "root" in err.hint and "Permission denied" in str(err)
    assert k.drm_error("x", errno.ENOENT, 36).object_id == 36
    assert k.drm_error("x", errno.EXDEV).hint == ""


def test_open_missing_card_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DrmError) as ei:
        Card.open(tmp_path / "card9")
    assert ei.value.errno == errno.ENOENT and "enabled" in ei.value.hint


def test_closed_card_refuses_use() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    card = Card(fd, "/dev/null")
    card.close()
    assert card.closed
    with pytest.raises(DrmError, match="closed card"):
        card.fileno()
