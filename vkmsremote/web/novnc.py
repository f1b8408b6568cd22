"""Which noVNC the web listener serves, and what it can do.

Preferred: noVNC from the npm registry (``@novnc/novnc``, pinned with its integrity hash), installed by
``scripts/install-novnc.sh`` into a data directory outside the git tree. That package is the library only
(``core/``, ``vendor/``), so the page around it is ours (``vkmsremote/web/page/``). Fallback: Debian's
``novnc`` package (1.3, the full app with its own ``vnc.html``). Nothing of noVNC is copied into this tree.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vkmsremote.errors import UsageError

NOVNC_ENV: Final = "VKMSREMOTE_NOVNC"
NPM_ROOT: Final = Path("/usr/local/share/vkmsremote/novnc")
"""Where scripts/install-novnc.sh unpacks the npm package (its ``package/`` folder's contents)."""
DEBIAN_ROOT: Final = Path("/usr/share/novnc")

FEATURES: Final = (
    ("ZRLE", "core/decoders/zrle.js"),
    ("H.264", "core/decoders/h264.js"),
    ("RSA-AES (RA2ne)", "core/ra2.js"),
)
"""A feature, and the file of noVNC that brings it."""


@dataclass(frozen=True, slots=True)
class NovncBundle:
    root: Path
    version: str
    kind: str
    """"npm" (the library; our page drives it) or "app" (a full noVNC app with its own vnc.html)."""

    @property
    def lacks(self) -> tuple[str, ...]:
        return tuple(name for name, path in FEATURES if not (self.root / path).is_file())

    def describe(self) -> str:
        text = f"noVNC {self.version} ({'npm registry' if self.kind == 'npm' else 'distribution package'}, {self.root})"
        if self.lacks:
            text += f"; lacks {', '.join(self.lacks)}"
        return text


def load_bundle(root: Path) -> NovncBundle:
    """The noVNC at ``root``; UsageError if it is not one."""
    if not (root / "core" / "rfb.js").is_file():
        raise UsageError(f"no noVNC at {root} (core/rfb.js missing)",
                         hint="run scripts/install-novnc.sh (scripts/setup-host.sh does), or install Debian's novnc")
    package = root / "package.json"
    if (root / "vnc.html").is_file() and not package.is_file():
        return NovncBundle(root, _debian_version(root), "app")
    version = "unknown"
    if package.is_file():
        with contextlib.suppress(OSError, ValueError):
            version = str(json.loads(package.read_text()).get("version", "unknown"))
    return NovncBundle(root, version, "npm")


def _debian_version(root: Path) -> str:
    changelog = Path("/usr/share/doc/novnc/changelog.Debian.gz")
    if root == DEBIAN_ROOT and changelog.is_file():
        import gzip

        try:
            with gzip.open(changelog, "rt", errors="replace") as f:
                first = f.readline()  # "novnc (1:1.3.0-1) unstable; urgency=..."
            return first.split("(", 1)[1].split(")", 1)[0].split(":")[-1].split("-")[0]
        except (OSError, IndexError):
            pass
    return "unknown"


def find_bundle(explicit: Path | None = None) -> NovncBundle:
    """The noVNC to serve: ``explicit``, else $VKMSREMOTE_NOVNC, else the npm install, else Debian's package."""
    if explicit is not None:
        return load_bundle(explicit)
    env = os.environ.get(NOVNC_ENV)
    if env:
        return load_bundle(Path(env))
    for root in (NPM_ROOT, DEBIAN_ROOT):
        if (root / "core" / "rfb.js").is_file():
            return load_bundle(root)
    raise UsageError("no noVNC web client installed",
                     hint="run scripts/install-novnc.sh (noVNC from the npm registry; scripts/setup-host.sh does), "
                          "or install Debian's novnc package")
