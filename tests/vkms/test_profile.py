"""Profiles: TOML parsing and the kernel's validation rules (vkms_config_is_valid), without a kernel."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vkmsremote.errors import ProfileError
from vkmsremote.vkms.profile import PROFILE_DIR, load_profile, parse_profile, resolve_profile
from vkmsremote.vkms.spec import ConnectorStatus, PlaneType

BASE: dict[str, Any] = {
    "device": {"name": "dev"},
    "planes": {"primary": {"type": "primary", "possible_crtcs": ["crtc0"]}},
    "crtcs": {"crtc0": {}},
    "encoders": {"enc0": {"possible_crtcs": ["crtc0"]}},
    "connectors": {"XR-0": {"possible_encoders": ["enc0"]}},
}


def variant(**changes: Any) -> dict[str, Any]:
    """BASE with top-level tables replaced (None deletes one)."""
    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, source="p.toml")
    return str(info.value)


def test_shipped_xr0_is_one_connector_with_primary_cursor_and_writeback() -> None:
    spec = load_profile("xr-0")
    assert spec.name == "vkmsremote"
    assert [(p.name, p.type, p.possible_crtcs) for p in spec.planes] == [
        ("primary", PlaneType.PRIMARY, ("crtc0",)),
        ("cursor", PlaneType.CURSOR, ("crtc0",)),
    ]
    assert [(c.name, c.writeback) for c in spec.crtcs] == [("crtc0", True)]
    assert [(e.name, e.possible_crtcs) for e in spec.encoders] == [("enc0", ("crtc0",))]
    assert [(k.name, k.possible_encoders, k.status) for k in spec.connectors] == [
        ("XR-0", ("enc0",), ConnectorStatus.CONNECTED)
    ]
    assert spec.source == str(PROFILE_DIR / "xr-0.toml")


def test_shipped_xr_dual_puts_xr0_and_xr1_on_separate_crtcs() -> None:
    spec = load_profile(PROFILE_DIR / "xr-dual.toml")
    assert [k.name for k in spec.connectors] == ["XR-0", "XR-1"]
    enc = {e.name: e.possible_crtcs for e in spec.encoders}
    crtc_of = {k.name: enc[k.possible_encoders[0]] for k in spec.connectors}
    assert crtc_of == {"XR-0": ("crtc0",), "XR-1": ("crtc1",)}
    for crtc in ("crtc0", "crtc1"):
        types = sorted(p.type for p in spec.planes if crtc in p.possible_crtcs)
        assert types == [PlaneType.PRIMARY, PlaneType.CURSOR]


def test_default_profile_is_xr0() -> None:
    assert resolve_profile(None) == PROFILE_DIR / "xr-0.toml"


def test_order_of_tables_is_kept() -> None:
    data = variant(crtcs={"b": {}, "a": {}},
                   planes={"pb": {"type": "primary", "possible_crtcs": ["b"]},
                           "pa": {"type": "primary", "possible_crtcs": ["a"]}},
                   encoders={"enc0": {"possible_crtcs": ["b", "a"]}})
    spec = parse_profile(data)
    assert [c.name for c in spec.crtcs] == ["b", "a"]
    assert [p.name for p in spec.planes] == ["pb", "pa"]
    assert spec.encoders[0].possible_crtcs == ("b", "a")


def test_minimal_profile_is_valid_and_defaults_apply() -> None:
    spec = parse_profile(BASE)
    assert spec.crtcs[0].writeback is False
    assert spec.connectors[0].status is ConnectorStatus.CONNECTED


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (variant(planes={}), "planes: 0 defined, the kernel needs 1 to 31"),
        (variant(crtcs=None), "crtcs: 0 defined"),
        (variant(encoders={}), "encoders: 0 defined"),
        (variant(connectors={f"k{i}": {"possible_encoders": ["enc0"]} for i in range(32)}),
         "connectors: 32 defined, the kernel needs 1 to 31"),
        (variant(planes={"primary": {"type": "primary", "possible_crtcs": []}}),
         "planes.primary.possible_crtcs: links to no CRTC"),
        (variant(planes={"primary": {"type": "primary", "possible_crtcs": ["crtc9"]}}),
         "planes.primary.possible_crtcs: unknown CRTC 'crtc9' (defined: crtc0)"),
        (variant(planes={"primary": {"type": "primary", "possible_crtcs": ["crtc0", "crtc0"]}}),
         "links the same CRTC twice"),
        (variant(planes={"o": {"type": "overlay", "possible_crtcs": ["crtc0"]}}),
         "crtcs.crtc0: no primary plane links to it; exactly one must"),
        (variant(planes={"a": {"type": "primary", "possible_crtcs": ["crtc0"]},
                         "b": {"type": "primary", "possible_crtcs": ["crtc0"]}}),
         "crtcs.crtc0: 2 primary planes (a, b); exactly one allowed"),
        (variant(planes={"p": {"type": "primary", "possible_crtcs": ["crtc0"]},
                         "c1": {"type": "cursor", "possible_crtcs": ["crtc0"]},
                         "c2": {"type": "cursor", "possible_crtcs": ["crtc0"]}}),
         "crtcs.crtc0: 2 cursor planes (c1, c2); at most one allowed"),
        (variant(encoders={"enc0": {"possible_crtcs": []}}), "encoders.enc0.possible_crtcs: links to no CRTC"),
        (variant(crtcs={"crtc0": {}, "crtc1": {}},
                 planes={"p0": {"type": "primary", "possible_crtcs": ["crtc0"]},
                         "p1": {"type": "primary", "possible_crtcs": ["crtc1"]}}),
         "crtcs.crtc1: no encoder links to it"),
        (variant(connectors={"XR-0": {"possible_encoders": []}}), "connectors.XR-0.possible_encoders: links to no encoder"),
        (variant(connectors={"XR-0": {"possible_encoders": ["encX"]}}), "unknown encoder 'encX'"),
        (variant(device={"name": "vkms"}), "reserved by the vkms module's default device"),
        (variant(device={"name": "a/b"}), "device name 'a/b' must be"),
        (variant(device={}), "device.name: missing or not a string"),
        (variant(device=None), "[device] table missing"),
        (variant(crtcs={"..": {}}), "crtcs.'..': name must be"),
    ],
)
def test_kernel_rules_are_enforced_with_a_message_naming_the_object(data: dict[str, Any], expected: str) -> None:
    message = error_of(data)
    assert expected in message
    assert message.startswith("p.toml: ")
    assert "docs/configfs.md" in message  # the fix


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({**BASE, "monitors": {}}, "unknown top-level key(s) monitors"),
        (variant(crtcs={"crtc0": {"writebak": True}}), "crtcs.crtc0: unknown key(s) writebak; allowed: writeback"),
        (variant(crtcs={"crtc0": {"writeback": 1}}), "crtcs.crtc0.writeback: must be true or false"),
        (variant(planes={"primary": {"type": "main", "possible_crtcs": ["crtc0"]}}),
         "planes.primary.type: 'main' is not one of \"overlay\", \"primary\", \"cursor\""),
        (variant(planes={"primary": {"possible_crtcs": ["crtc0"]}}), "planes.primary.type: missing"),
        (variant(planes={"primary": {"type": "primary", "possible_crtcs": "crtc0"}}),
         "planes.primary.possible_crtcs: must be a list of names"),
        (variant(connectors={"XR-0": {"possible_encoders": ["enc0"], "status": "on"}}),
         "connectors.XR-0.status: 'on' is not one of"),
        (variant(planes=["x"]), "planes: must be a table"),
        (variant(planes={"p": 3}), "planes.p: must be a table"),
    ],
)
def test_format_errors_name_the_key(data: dict[str, Any], expected: str) -> None:
    assert expected in error_of(data)


def test_statuses_parse() -> None:
    for word, value in (("connected", 1), ("disconnected", 2), ("unknown", 3)):
        spec = parse_profile(variant(connectors={"XR-0": {"possible_encoders": ["enc0"], "status": word}}))
        assert int(spec.connectors[0].status) == value


def test_malformed_toml_file_names_file_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nname = \"x\nplanes = 3\n")
    with pytest.raises(ProfileError) as info:
        load_profile(bad)
    assert str(bad) in str(info.value)
    assert "not valid TOML" in str(info.value) and "line 2" in str(info.value)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="file not found"):
        load_profile(tmp_path / "nope.toml")
    with pytest.raises(ProfileError, match=r"no profile named 'xr-9'.*xr-0, xr-dual"):
        load_profile("xr-9")


def test_huge_and_binary_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (300 * 1024))
    with pytest.raises(ProfileError, match="larger than"):
        load_profile(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[device]")
    with pytest.raises(ProfileError, match="not UTF-8"):
        load_profile(binary)


_names = st.sampled_from(["crtc0", "crtc1", "enc0", "enc1", "p", "XR-0", "vkms", "", "a/b"])
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _names | st.lists(_names, max_size=3),
    lambda inner: st.dictionaries(_names | st.sampled_from(["type", "possible_crtcs", "possible_encoders",
                                                            "status", "writeback", "name"]), inner, max_size=4),
    max_leaves=12,
)
_docs = st.dictionaries(st.sampled_from(["device", "planes", "crtcs", "encoders", "connectors", "x"]), _values,
                        max_size=5)


@settings(max_examples=150, deadline=None)
@given(_docs)
def test_any_document_either_parses_or_raises_profile_error(doc: dict[str, Any]) -> None:
    doc = {k: v for k, v in doc.items() if v is not None}
    try:
        spec = parse_profile(doc)
    except ProfileError as e:
        assert str(e)
    else:
        assert 1 <= len(spec.planes) <= 31
