"""The keyboard layout of GNOME Shell and KWin (vkmsremote.input.layout), read the way the desktops store it.

The reads run against a fake /proc (the desktop process's owner and environment) and the files and tool
answers the desktops use; the real desktops are in tests/guest/test_desktops_guest.py, where text typed in
a German layout arrives in foot under both.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vkmsremote.input import layout
from vkmsremote.input.layout import gnome_layout, gnome_sources, kde_layout


def fake_process(root: Path, pid: int, env: dict[str, str], uid: int = 1000) -> Path:
    proc = root / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (proc / str(pid) / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")
    return proc


def test_gnome_sources_parsed() -> None:
    assert gnome_sources("[('xkb', 'de+nodeadkeys'), ('ibus', 'anthy'), ('xkb', 'us')]") == [
        ("de", "nodeadkeys"), ("us", "")]
    assert gnome_sources("@a(ss) []") == []


def test_gnome_layout_from_mru_then_sources_as_the_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = fake_process(tmp_path, 42, {"HOME": "/home/desk", "XDG_RUNTIME_DIR": "/run/user/1000", "LANG": "de_DE.UTF-8"})
    answers = {"mru-sources": "@a(ss) []", "sources": "[('xkb', 'fr+azerty'), ('xkb', 'de')]"}
    calls: list[tuple[list[str], dict[str, str]]] = []

    def run(argv: list[str], env: dict[str, str]) -> str:
        calls.append((argv, dict(env)))
        return answers[argv[-1]]

    monkeypatch.setattr(layout, "_run", run)
    assert gnome_layout(42, proc=proc) == ("fr", "azerty")
    argv, env = calls[0]
    if os.geteuid() != 1000:
        assert argv[:4] == ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"]
    assert argv[-3:] == ["get", "org.gnome.desktop.input-sources", "mru-sources"]
    assert env == {"HOME": "/home/desk", "XDG_RUNTIME_DIR": "/run/user/1000"}
    answers["mru-sources"] = "[('xkb', 'de+nodeadkeys')]"  # the one in use comes first
    assert gnome_layout(42, proc=proc) == ("de", "nodeadkeys")
    answers.update({"mru-sources": "@a(ss) []", "sources": "@a(ss) []"})
    assert gnome_layout(42, proc=proc) is None  # GNOME derives it from de_DE: not guessed


def test_kde_layout_from_kxkbrc(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    proc = fake_process(tmp_path, 7, {"HOME": str(home)})
    assert kde_layout(7, proc=proc) == ("us", "")  # no kxkbrc: libxkbcommon's default
    (home / ".config" / "kxkbrc").write_text("[Layout]\nDisplayNames=,\nLayoutList=de,us\nUse=true\n"
                                             "VariantList=nodeadkeys,\n")
    assert kde_layout(7, proc=proc) == ("de", "nodeadkeys")
    (home / ".config" / "kxkbrc").write_text("[Layout]\nLayoutList=de\nUse=false\n")
    assert kde_layout(7, proc=proc) == ("us", "")  # not in use: KWin applies the default
    (home / ".config" / "kxkbrc").write_text("not an ini file [[[")
    proc2 = fake_process(tmp_path / "b", 8, {"HOME": str(home), "XKB_DEFAULT_LAYOUT": "fr,de"})
    assert kde_layout(8, proc=proc2) == ("fr", "")
