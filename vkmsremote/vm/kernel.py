"""Locating (or building) the test kernel the VM boots.

scripts/build-kernel.sh is the one authority on the cache: it prints the bzImage path on stdout and
returns at once when a kernel built from the current scripts/kernel.config is cached, so asking it is
cheap and a changed config is never silently ignored.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vkmsremote.errors import VmError

KERNEL_ENV = "VKMSREMOTE_KERNEL"
"""Environment variable naming a bzImage to boot instead of the built one."""


def repo_root() -> Path:
    """The source tree this package was imported from (holds scripts/ and tests/)."""
    return Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Same rule as scripts/build-kernel.sh: $VKMSREMOTE_CACHE, else $XDG_CACHE_HOME/vkmsremote."""
    explicit = os.environ.get("VKMSREMOTE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "vkmsremote"


def cached_kernel() -> Path | None:
    """The bzImage the last successful build recorded as current, without building anything."""
    current = cache_dir() / "kernel" / "current"
    try:
        name = current.read_text().strip()
    except FileNotFoundError:
        return None
    image = cache_dir() / "kernel" / name / "bzImage"
    return image if name and image.is_file() else None


def kernel_modules(image: Path) -> Path | None:
    """The modules of the kernel ``image`` (``<dir>/modroot/lib/modules/<release>``, with modules.dep, as
    scripts/build-kernel.sh installs them beside the bzImage), or None for a kernel without modules."""
    base = image.parent / "modroot" / "lib" / "modules"
    try:
        found = sorted(d for d in base.iterdir() if (d / "modules.dep").is_file())
    except OSError:
        return None
    return found[0] if len(found) == 1 else None


def kernel_image(*, build: bool = True, timeout: float = 3600.0) -> Path:
    """Path of the test kernel's bzImage.

    ``$VKMSREMOTE_KERNEL`` wins. Otherwise scripts/build-kernel.sh is asked (it builds the kernel the
    first time, ~5-8 min on 2 cores; its progress goes to our stderr). With ``build=False`` only the
    cache is consulted.
    """
    explicit = os.environ.get(KERNEL_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise VmError(
                f"${KERNEL_ENV}={explicit} is not a file", hint=f"unset {KERNEL_ENV} or point it at a bzImage"
            )
        return path
    script = repo_root() / "scripts" / "build-kernel.sh"
    if not build or not script.is_file():
        found = cached_kernel()
        if found is not None:
            return found
        if not script.is_file():
            raise VmError(
                f"no cached test kernel in {cache_dir() / 'kernel'} and no {script} to build one",
                hint=f"run scripts/build-kernel.sh from a vkmsremote checkout, or set {KERNEL_ENV}",
            )
        raise VmError(
            f"no cached test kernel in {cache_dir() / 'kernel'}", hint="run scripts/build-kernel.sh"
        )
    try:
        proc = subprocess.run(
            [str(script)], stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise VmError(f"{script} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        raise VmError(f"{script} failed with exit code {proc.returncode}", hint="its error is printed above")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines or not Path(lines[-1].strip()).is_file():
        raise VmError(f"{script} did not print the path of a bzImage (got {proc.stdout[-200:]!r})")
    return Path(lines[-1].strip())
