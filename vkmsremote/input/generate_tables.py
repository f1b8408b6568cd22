"""Regenerates vkmsremote/input/tables.py from real sources (a developer tool, not used at run time).

    python -m vkmsremote.input.generate_tables --kernel-source DIR > vkmsremote/input/tables.py

Two sources, both read, never hand-typed:

* The US keymap: libxkbcommon (libxkbcommon.so.0 through ctypes, Debian ``libxkbcommon0``) compiles
  rules ``evdev``, model ``pc105``, layout ``us`` from /usr/share/X11/xkb (Debian ``xkb-data``), exactly as
  Xorg and Wayland compositors do. For every key we record the keysym it produces in each of the eight
  combinations of Shift (held), Caps Lock and Num Lock (locked): ``KEY_SYMS``. Keysyms reachable only
  with other modifiers (Sys_Req = Alt+Print, Break = Control+Pause, XF86Switch_VT_1 ...) go to
  ``OTHER_LEVEL_SYMS``: they are pressed as plain keys, the client holds the modifier itself.
* XT scancodes (QEMU extended key event, "qnum" numbering: 0xE0-prefixed codes as 0x80|code): Linux's own
  AT keyboard driver, drivers/input/keyboard/atkbd.c in translated mode (``atkbd_set_keycode_table``:
  ``keycode[i] = atkbd_set2_keycode[atkbd_unxlate_table[i]]`` and the same with 0x80 for the E0 page),
  so an XT scancode gives the evdev code a PS/2 keyboard on Linux would report.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from vkmsremote.errors import UsageError
from vkmsremote.input.layout import RuleNames

RULES, MODEL, LAYOUT = "evdev", "pc105", "us"
XKB_KEYCODE_OFFSET = 8  # xkb keycode = evdev code + 8 (keycodes/evdev)
STATES = 8  # index bit 0: Shift held, bit 1: Caps Lock locked, bit 2: Num Lock locked


@dataclass(frozen=True, slots=True)
class XkbTables:
    key_syms: dict[int, tuple[int, ...]]
    other_level_syms: dict[int, int]
    names: dict[int, str]


def _load_xkbcommon() -> ctypes.CDLL:
    """libxkbcommon with its prototypes: the one loader, vkmsremote.input.layout's."""
    from vkmsremote.input.layout import xkbcommon

    return xkbcommon()


def xkb_tables() -> XkbTables:
    """The US keymap as libxkbcommon compiles it from the installed xkb-data."""
    lib = _load_xkbcommon()
    ctx = lib.xkb_context_new(0)
    names = RuleNames(RULES.encode(), MODEL.encode(), LAYOUT.encode(), b"", b"")
    keymap = lib.xkb_keymap_new_from_names(ctx, ctypes.byref(names), 0)
    if not keymap:
        raise UsageError(f"libxkbcommon could not compile {RULES}/{MODEL}/{LAYOUT}", hint="install xkb-data")
    state = lib.xkb_state_new(keymap)
    shift, lock, num = (1 << lib.xkb_keymap_mod_get_index(keymap, m) for m in (b"Shift", b"Lock", b"Mod2"))

    def name(sym: int) -> str:
        buf = ctypes.create_string_buffer(64)
        lib.xkb_keysym_get_name(sym, buf, len(buf))
        return buf.value.decode()

    key_syms: dict[int, tuple[int, ...]] = {}
    level_syms: dict[int, int] = {}
    for xkb_code in range(lib.xkb_keymap_min_keycode(keymap), lib.xkb_keymap_max_keycode(keymap) + 1):
        code = xkb_code - XKB_KEYCODE_OFFSET
        syms = []
        for index in range(STATES):
            depressed = shift if index & 1 else 0
            locked = (lock if index & 2 else 0) | (num if index & 4 else 0)
            lib.xkb_state_update_mask(state, depressed, 0, locked, 0, 0, 0)
            syms.append(int(lib.xkb_state_key_get_one_sym(state, xkb_code)))
        if any(syms):
            key_syms[code] = tuple(syms)
        for level in range(lib.xkb_keymap_num_levels_for_key(keymap, xkb_code, 0)):
            out = ctypes.POINTER(ctypes.c_uint32)()
            count = lib.xkb_keymap_key_get_syms_by_level(keymap, xkb_code, 0, level, ctypes.byref(out))
            for i in range(count):
                level_syms.setdefault(int(out[i]), code)
    lib.xkb_state_unref(state)
    lib.xkb_keymap_unref(keymap)
    lib.xkb_context_unref(ctx)
    in_states = {s for syms in key_syms.values() for s in syms}
    other = {sym: code for sym, code in sorted(level_syms.items()) if sym not in in_states and sym}
    all_syms = in_states | set(other)
    return XkbTables(key_syms, other, {s: name(s) for s in sorted(all_syms) if s})


_ARRAY = r"static const (?:unsigned short|u8) {name}\[[^\]]*\] = \{{(?P<body>[^}}]*)\}};"


def _c_array(source: str, name: str) -> list[int]:
    match = re.search(_ARRAY.format(name=re.escape(name)), source)
    if match is None:
        raise UsageError(f"atkbd.c has no array {name}", hint="pass the top of a Linux source tree")
    return [int(tok, 0) for tok in re.findall(r"0x[0-9a-fA-F]+|\d+", match.group("body"))]


def xt_table(kernel_source: pathlib.Path) -> dict[int, int]:
    """qnum (XT scancode, 0x80|code for the E0 page) -> evdev code, as Linux's atkbd translates it."""
    atkbd = (kernel_source / "drivers/input/keyboard/atkbd.c").read_text()
    set2 = _c_array(atkbd, "atkbd_set2_keycode")
    set2 += [0] * (512 - len(set2))  # C zero-fills the rest of the 512-entry array
    unxlate = _c_array(atkbd, "atkbd_unxlate_table")
    if len(unxlate) != 128:
        raise UsageError(f"atkbd_unxlate_table has {len(unxlate)} entries, expected 128")
    key_null = 255  # ATKBD_KEY_NULL; ATKBD_KEY_UNKNOWN is 0
    table: dict[int, int] = {}
    for i, set2_code in enumerate(unxlate):
        for qnum, code in ((i, set2[set2_code]), (i | 0x80, set2[set2_code | 0x80])):
            if code not in (0, key_null):
                table[qnum] = code
    return table


def _kernel_version(kernel_source: pathlib.Path) -> str:
    makefile = (kernel_source / "Makefile").read_text()
    parts = [re.search(rf"^{k} = (\S*)", makefile, re.M) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")]
    return ".".join(m.group(1) for m in parts if m)


def _deb_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def render(xkb: XkbTables, xt: dict[int, int], kernel_version: str) -> Iterator[str]:
    from evdev import ecodes

    def key_name(code: int) -> str:
        n = ecodes.KEY.get(code) or ecodes.BTN.get(code) or str(code)
        return n if isinstance(n, str) else n[0]

    yield '"""GENERATED by ``python -m vkmsremote.input.generate_tables``: do not edit (see that module).'
    yield ""
    yield f"US keymap: libxkbcommon, rules {RULES}, model {MODEL}, layout {LAYOUT},"
    yield f"xkb-data {_deb_version('xkb-data')}, libxkbcommon0 {_deb_version('libxkbcommon0')}."
    yield f"XT scancodes: Linux {kernel_version} drivers/input/keyboard/atkbd.c, translated mode."
    yield '"""'
    yield ""
    yield "from __future__ import annotations"
    yield ""
    yield "# evdev code -> keysym in each state; index bit 0 Shift held, bit 1 Caps Lock, bit 2 Num Lock."
    yield "KEY_SYMS: dict[int, tuple[int, ...]] = {"
    for code, syms in xkb.key_syms.items():
        shown = " ".join(dict.fromkeys(xkb.names.get(s, "0") for s in syms))
        yield f"    {code}: ({', '.join(f'0x{s:04x}' for s in syms)}),  # {key_name(code)}: {shown}"
    yield "}"
    yield ""
    yield "# keysym -> evdev code for keysyms that need modifiers other than Shift/Caps/Num (pressed plainly)."
    yield "OTHER_LEVEL_SYMS: dict[int, int] = {"
    for sym, code in xkb.other_level_syms.items():
        yield f"    0x{sym:04x}: {code},  # {xkb.names.get(sym, '?')} on {key_name(code)}"
    yield "}"
    yield ""
    yield "# XT scancode (qnum: 0x80|code for the 0xE0 page) -> evdev code."
    yield "XT_TO_EVDEV: dict[int, int] = {"
    for qnum, code in sorted(xt.items()):
        yield f"    0x{qnum:02x}: {code},  # {key_name(code)}"
    yield "}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kernel-source", type=pathlib.Path, required=True,
                        help="top of a Linux source tree (scripts/build-kernel.sh unpacks one under ~/.cache)")
    args = parser.parse_args(argv)
    xkb = xkb_tables()
    xt = xt_table(args.kernel_source)
    for line in render(xkb, xt, _kernel_version(args.kernel_source)):
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
