"""The ctypes mirrors in vkmsremote.drm.ioctl against the C headers (libdrm-dev's drm.h, drm_mode.h,
drm_fourcc.h and linux/dma-buf.h): a C program compiled here prints sizeof/offsetof of every struct and
every request number and constant, and each is compared with Python's view.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vkmsremote.drm import ioctl as k
from vkmsremote.drm.connector import ConnectorType
from vkmsremote.drm.fourcc import DRM_FORMAT_MOD_INVALID, DrmFormat

HEADERS = ("drm.h", "drm_mode.h", "drm_fourcc.h")
INCLUDE = Path("/usr/include/libdrm")

STRUCTS: list[tuple[str, Any]] = [
    (("union " if issubclass(cls, ctypes.Union) else "struct ") + cls.__name__, cls)
    for cls in (
        k.drm_version, k.drm_set_client_cap, k.drm_gem_close, k.drm_prime_handle,
        k.drm_crtc_get_sequence,
        k.drm_crtc_queue_sequence, k.drm_mode_modeinfo, k.drm_mode_card_res, k.drm_mode_crtc,
        k.drm_mode_get_encoder, k.drm_mode_get_connector, k.drm_mode_property_enum, k.drm_mode_get_property,
        k.drm_mode_get_blob, k.drm_mode_create_blob, k.drm_mode_destroy_blob, k.drm_mode_fb_cmd2,
        k.drm_mode_create_dumb, k.drm_mode_map_dumb, k.drm_mode_destroy_dumb, k.drm_mode_get_plane_res,
        k.drm_mode_get_plane, k.drm_mode_obj_get_properties, k.drm_mode_atomic, k.drm_event,
        k.drm_event_vblank, k.drm_event_crtc_sequence, k.dma_buf_sync,
    )
]

REQUESTS = [name for name in dir(k) if name.startswith(("DRM_IOCTL_", "DMA_BUF_IOCTL_")) and name != "DRM_IOCTL_BASE"]

# Python value -> the C macro that must equal it.
CONSTANTS: dict[str, int] = {
    **{f"DRM_CLIENT_CAP_{c.name}": c.value for c in k.ClientCap},
    **{f"DRM_MODE_OBJECT_{c.name}": c.value for c in k.ObjectType},
    **{f"DRM_EVENT_{c.name}": c.value for c in k.EventType},
    "DRM_MODE_PROP_PENDING": k.PropFlag.PENDING, "DRM_MODE_PROP_RANGE": k.PropFlag.RANGE,
    "DRM_MODE_PROP_IMMUTABLE": k.PropFlag.IMMUTABLE, "DRM_MODE_PROP_ENUM": k.PropFlag.ENUM,
    "DRM_MODE_PROP_BLOB": k.PropFlag.BLOB, "DRM_MODE_PROP_BITMASK": k.PropFlag.BITMASK,
    "DRM_MODE_PROP_OBJECT": k.PropFlag.OBJECT, "DRM_MODE_PROP_SIGNED_RANGE": k.PropFlag.SIGNED_RANGE,
    "DRM_MODE_PROP_ATOMIC": k.PropFlag.ATOMIC, "DRM_MODE_PROP_LEGACY_TYPE": k.PROP_LEGACY_TYPE,
    "DRM_MODE_PROP_EXTENDED_TYPE": k.PROP_EXTENDED_TYPE,
    "DRM_MODE_PAGE_FLIP_EVENT": k.AtomicFlag.PAGE_FLIP_EVENT, "DRM_MODE_PAGE_FLIP_ASYNC": k.AtomicFlag.PAGE_FLIP_ASYNC,
    "DRM_MODE_ATOMIC_TEST_ONLY": k.AtomicFlag.TEST_ONLY, "DRM_MODE_ATOMIC_NONBLOCK": k.AtomicFlag.NONBLOCK,
    "DRM_MODE_ATOMIC_ALLOW_MODESET": k.AtomicFlag.ALLOW_MODESET,
    "DRM_MODE_FB_MODIFIERS": k.DRM_MODE_FB_MODIFIERS, "DRM_CLOEXEC": k.DRM_CLOEXEC, "DRM_RDWR": k.DRM_RDWR,
    "DRM_CRTC_SEQUENCE_RELATIVE": k.CRTC_SEQUENCE_RELATIVE,
    "DRM_CRTC_SEQUENCE_NEXT_ON_MISS": k.CRTC_SEQUENCE_NEXT_ON_MISS,
    "DMA_BUF_SYNC_READ": k.DmaBufSync.READ, "DMA_BUF_SYNC_WRITE": k.DmaBufSync.WRITE,
    "DMA_BUF_SYNC_RW": k.DmaBufSync.RW, "DMA_BUF_SYNC_START": k.DmaBufSync.START,
    "DMA_BUF_SYNC_END": k.DmaBufSync.END,
    "DRM_FORMAT_MOD_LINEAR": 0, "DRM_FORMAT_MOD_INVALID": DRM_FORMAT_MOD_INVALID,
    **{f"DRM_FORMAT_{f.name}": f.value for f in DrmFormat},
    "DRM_MODE_CONNECTOR_Unknown": ConnectorType.UNKNOWN, "DRM_MODE_CONNECTOR_VGA": ConnectorType.VGA,
    "DRM_MODE_CONNECTOR_DVII": ConnectorType.DVII, "DRM_MODE_CONNECTOR_9PinDIN": ConnectorType.DIN_9PIN,
    "DRM_MODE_CONNECTOR_DisplayPort": ConnectorType.DISPLAYPORT, "DRM_MODE_CONNECTOR_HDMIA": ConnectorType.HDMIA,
    "DRM_MODE_CONNECTOR_eDP": ConnectorType.EDP, "DRM_MODE_CONNECTOR_VIRTUAL": ConnectorType.VIRTUAL,
    "DRM_MODE_CONNECTOR_WRITEBACK": ConnectorType.WRITEBACK, "DRM_MODE_CONNECTOR_USB": ConnectorType.USB,
}


def _fields(cls: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, _ctype in cls._fields_:
        out.append((prefix + name, getattr(cls, name)))
    return out


@pytest.fixture(scope="module")
def c_view(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed (scripts/setup-host.sh installs build-essential)"
    for h in HEADERS:
        assert (INCLUDE / h).exists(), f"{INCLUDE / h} missing: install libdrm-dev (scripts/setup-host.sh)"
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <stdint.h>", "#include <sys/ioctl.h>", "#include <fcntl.h>",
             *(f"#include <{h}>" for h in HEADERS), "#include <linux/dma-buf.h>",
             "int main(void) {", 'printf("{\\n");']

    def emit(key: str, expr: str, guard: str | None = None) -> None:
        stmt = f'printf("\\"{key}\\": %llu,\\n", (unsigned long long)({expr}));'
        lines.extend([f"#ifdef {guard}", stmt, "#endif"] if guard else [stmt])

    for cname, cls in STRUCTS:
        emit(f"sizeof {cname}", f"sizeof({cname})")
        for fname, _ in _fields(cls):
            emit(f"offsetof {cname}.{fname}", f"offsetof({cname}, {fname})")
            emit(f"sizeof {cname}.{fname}", f"sizeof((({cname} *)0)->{fname})")
    for req in REQUESTS:
        emit(req, req)
    for macro in CONSTANTS:
        emit(macro, macro, guard=macro)
    lines += ['printf("\\"end\\": 0}\\n");', "return 0; }"]
    d = tmp_path_factory.mktemp("cview")
    (d / "v.c").write_text("\n".join(lines))
    cc = subprocess.run([gcc, "-Wall", "-Werror", "-I", str(INCLUDE), "-o", str(d / "v"), str(d / "v.c")],
                        capture_output=True, text=True, timeout=60)
    assert cc.returncode == 0, cc.stderr[-3000:]
    out = subprocess.run([str(d / "v")], check=True, capture_output=True, text=True, timeout=10).stdout
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize(("cname", "cls"), STRUCTS, ids=[c for c, _ in STRUCTS])
def test_struct_layout_matches_header(c_view: dict[str, Any], cname: str, cls: Any) -> None:
    assert ctypes.sizeof(cls) == c_view[f"sizeof {cname}"]
    for fname, desc in _fields(cls):
        assert desc.offset == c_view[f"offsetof {cname}.{fname}"], fname
        assert desc.size == c_view[f"sizeof {cname}.{fname}"], fname


@pytest.mark.parametrize("req", REQUESTS)
def test_request_number_matches_header(c_view: dict[str, Any], req: str) -> None:
    assert getattr(k, req) == c_view[req], f"{req}: 0x{getattr(k, req):08x} != 0x{c_view[req]:08x}"


def test_constants_match_header(c_view: dict[str, Any]) -> None:
    compared = 0
    for macro, value in CONSTANTS.items():
        if macro in c_view:  # a header older than the kernel may lack the newest macros
            assert int(value) == c_view[macro], macro
            compared += 1
    assert compared >= len(CONSTANTS) - 2


def test_known_request_numbers() -> None:
    # Independent of the headers: values as printed by strace on x86-64.
    assert k.DRM_IOCTL_VERSION == 0xC0406400
    assert k.DRM_IOCTL_SET_CLIENT_CAP == 0x4010640D
    assert k.DRM_IOCTL_SET_MASTER == 0x641E
    assert k.DRM_IOCTL_MODE_GETFB2 == 0xC06864CE
    assert k.DRM_IOCTL_MODE_ATOMIC == 0xC03864BC
    assert k.DMA_BUF_IOCTL_SYNC == 0x40086200
