"""Profiles: TOML files describing one VKMS device, turned into a validated ``DeviceSpec``.

Format (see configfs/xr-0.toml and docs/configfs.md)::

    [device]
    name = "vkmsremote"            # the configfs directory /sys/kernel/config/vkms/<name>

    [planes.primary]               # tables are created in the order they appear
    type = "primary"               # "primary" | "cursor" | "overlay"
    possible_crtcs = ["crtc0"]

    [crtcs.crtc0]
    writeback = true               # optional, default false

    [encoders.enc0]
    possible_crtcs = ["crtc0"]

    [connectors.XR-0]
    possible_encoders = ["enc0"]
    status = "connected"           # optional: "connected" | "disconnected" | "unknown"

Unknown keys are errors (a typo must not silently produce a different device).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vkmsremote.errors import ProfileError

from .spec import (
    ConnectorSpec,
    ConnectorStatus,
    CrtcSpec,
    DeviceSpec,
    EncoderSpec,
    Layout,
    PlaneSpec,
    PlaneType,
)

PROFILE_DIR = Path(__file__).resolve().parents[2] / "configfs"
"""The profiles shipped with the source tree (configfs/*.toml)."""

DEFAULT_PROFILE = "xr-0"
MAX_PROFILE_BYTES = 256 * 1024

_TOP_KEYS = {"device", "planes", "crtcs", "encoders", "connectors"}
_HINT = "fix the profile; see docs/configfs.md for the format"


def resolve_profile(name_or_path: str | Path | None) -> Path:
    """A profile path from a path or a shipped profile's name ("xr-0", "xr-dual")."""
    if name_or_path is None:
        name_or_path = DEFAULT_PROFILE
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists() or "/" in str(name_or_path):
        return path
    shipped = PROFILE_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml")) if PROFILE_DIR.is_dir() else []
    raise ProfileError(
        f"no profile named {str(name_or_path)!r}",
        hint=f"give a path to a .toml file or one of: {', '.join(known) or '(none shipped)'}",
    )


def load_profile(name_or_path: str | Path | None = None) -> DeviceSpec:
    """Read, parse and validate a profile. Raises ProfileError naming the file and the key at fault."""
    path = resolve_profile(name_or_path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError("file not found", path=str(path), hint="check the path given to --profile") from None
    except OSError as e:
        raise ProfileError(f"cannot read: {e.strerror}", path=str(path), hint="check the file's permissions") from None
    if len(raw) > MAX_PROFILE_BYTES:
        raise ProfileError(f"larger than {MAX_PROFILE_BYTES} bytes", path=str(path), hint=_HINT)
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ProfileError("not UTF-8 text", path=str(path), hint=_HINT) from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"not valid TOML: {e}", path=str(path), hint=_HINT) from None
    return parse_profile(data, source=str(path))


def parse_profile(data: Mapping[str, Any], *, source: str = "") -> DeviceSpec:
    """Turn parsed TOML into a DeviceSpec (validated: raises ProfileError)."""

    def fail(message: str) -> ProfileError:
        return ProfileError(message, path=source, hint=_HINT)

    extra = set(data) - _TOP_KEYS
    if extra:
        raise fail(f"unknown top-level key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    device = _table(data, "device", fail)
    _only_keys(device, {"name"}, "device", fail)
    name = device.get("name")
    if not isinstance(name, str):
        raise fail("device.name: missing or not a string")

    planes: list[PlaneSpec] = []
    for pname, t in _named_tables(data, "planes", fail):
        _only_keys(t, {"type", "possible_crtcs"}, f"planes.{pname}", fail)
        ptype = _enum(t, "type", PlaneType, f"planes.{pname}", fail, default=None)
        assert isinstance(ptype, PlaneType)
        planes.append(PlaneSpec(pname, ptype, _names(t, "possible_crtcs", f"planes.{pname}", fail)))

    crtcs: list[CrtcSpec] = []
    for cname, t in _named_tables(data, "crtcs", fail):
        _only_keys(t, {"writeback"}, f"crtcs.{cname}", fail)
        wb = t.get("writeback", False)
        if not isinstance(wb, bool):
            raise fail(f"crtcs.{cname}.writeback: must be true or false")
        crtcs.append(CrtcSpec(cname, wb))

    encoders: list[EncoderSpec] = []
    for ename, t in _named_tables(data, "encoders", fail):
        _only_keys(t, {"possible_crtcs"}, f"encoders.{ename}", fail)
        encoders.append(EncoderSpec(ename, _names(t, "possible_crtcs", f"encoders.{ename}", fail)))

    connectors: list[ConnectorSpec] = []
    for kname, t in _named_tables(data, "connectors", fail):
        _only_keys(t, {"possible_encoders", "status"}, f"connectors.{kname}", fail)
        status = _enum(t, "status", ConnectorStatus, f"connectors.{kname}", fail, default=ConnectorStatus.CONNECTED)
        assert isinstance(status, ConnectorStatus)
        connectors.append(ConnectorSpec(kname, _names(t, "possible_encoders", f"connectors.{kname}", fail), status))

    layout = Layout(tuple(planes), tuple(crtcs), tuple(encoders), tuple(connectors))
    return DeviceSpec(name, layout, source=source)


def _table(data: Mapping[str, Any], key: str, fail: Any) -> Mapping[str, Any]:
    t = data.get(key)
    if not isinstance(t, dict):
        raise fail(f"[{key}] table missing")
    return t


def _named_tables(data: Mapping[str, Any], key: str, fail: Any) -> list[tuple[str, Mapping[str, Any]]]:
    t = data.get(key, {})
    if not isinstance(t, dict):
        raise fail(f"{key}: must be a table of [{key}.<name>] tables")
    out: list[tuple[str, Mapping[str, Any]]] = []
    for name, sub in t.items():
        if not isinstance(sub, dict):
            raise fail(f"{key}.{name}: must be a table ([{key}.{name}])")
        out.append((name, sub))
    return out


def _only_keys(t: Mapping[str, Any], allowed: set[str], where: str, fail: Any) -> None:
    extra = set(t) - allowed
    if extra:
        raise fail(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}")


def _names(t: Mapping[str, Any], key: str, where: str, fail: Any) -> tuple[str, ...]:
    v = t.get(key)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise fail(f"{where}.{key}: must be a list of names, e.g. {key} = [\"...\"]")
    return tuple(v)


def _enum(
    t: Mapping[str, Any], key: str, enum: type[PlaneType] | type[ConnectorStatus], where: str, fail: Any,
    *, default: PlaneType | ConnectorStatus | None,
) -> PlaneType | ConnectorStatus:
    v = t.get(key)
    choices = ", ".join(f'"{m.name.lower()}"' for m in enum)
    if v is None:
        if default is None:
            raise fail(f"{where}.{key}: missing; one of {choices}")
        return default
    if not isinstance(v, str) or v.upper() not in enum.__members__:
        raise fail(f"{where}.{key}: {v!r} is not one of {choices}")
    return enum[v.upper()]
