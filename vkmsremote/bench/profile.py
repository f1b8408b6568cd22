"""py-spy around a running VNC server: sample it without stopping it, then say where the samples fall.

Stages are recognised by the first matching function in each sampled stack (innermost stage wins when
stages nest, e.g. the damage tracker called from the CRTC reader counts as damage):

* damage   vkmsremote/capture/damage.py (compare, crop, copy into the stable frame) and the session's
           tile grid of pending damage (vkmsremote/rfb/region.py)
* capture  the rest of CrtcReader / SyntheticCrtc (ioctls, mapping, format conversion, vblank waits)
* snapshot Hub._publish (the hub's copy of each frame)
* encode   the session's encoders (pixel conversion, Tight/JPEG, zlib)
* send     Session._write and asyncio's socket writes
* other    the event loop, the RFB protocol, thread hand-offs
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

STAGE_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("damage", ("(vkmsremote/capture/damage.py", "SyntheticCrtc._compare (", "(vkmsremote/rfb/region.py")),
    ("encode", ("encode_update (", "(vkmsremote/server/moves.py", "(vkmsremote/rfb/encodings/", "(vkmsremote/rfb/convert.py")),
    ("snapshot", ("_publish (",)),
    ("send", ("_write (vkmsremote/server/session.py", "_write_ready (", "sock_send", "_sock_sendall")),
    ("capture", ("(vkmsremote/capture/", "(vkmsremote/drm/", "(vkmsremote/bench/scanout.py")),
)


def py_spy() -> str:
    exe = Path(sys.executable).parent / "py-spy"
    found = str(exe) if exe.exists() else shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy is not installed (pip install -e .[dev])")
    return found


def spy(pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start sampling process ``pid`` (all threads, --nonblocking: the process is never paused)."""
    return subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                             "--rate", str(rate), "--nonblocking", "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


WAITING = ("EpollSelector.select (", "_worker (concurrent/futures/thread.py")
"""Leaves that are a thread waiting (for I/O, for work) although py-spy may count them as active."""


def stage_of(stack: str) -> str:
    for name, keys in STAGE_KEYS:
        if any(k in stack for k in keys):
            return name
    return "other"


def summarize(path: Path, top: int = 12) -> list[str]:
    """Share of samples per stage, and the functions most often on top of the stack (py-spy raw format:
    one ``frame;frame;...;frame count`` line per distinct stack)."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = waiting = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ["(py-spy wrote no profile)"]
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.rsplit(";", 1)[-1]
        if leaf.startswith(WAITING):
            waiting += count
            continue
        total += count
        stages[stage_of(stack)] += count
        leaves[leaf] += count
    if not total:
        return ["(no samples)"]
    out = [f"{total} busy samples ({waiting} more waiting in epoll or for work, left out); by stage:"]
    out += [f"  {name:<9} {100 * n / total:5.1f} %" for name, n in stages.most_common()]
    out.append("  top of stack:")
    out += [f"    {100 * n / total:5.1f} %  {leaf}" for leaf, n in leaves.most_common(top)]
    return out
