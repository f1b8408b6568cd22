#!/usr/bin/env python3
"""Dead-code check: vulture over vkmsremote/, failing on anything it finds outside vulture_allowlist.py.

Code under tests/ and scripts/ counts as a use (a function only the benchmarks or a test call is not dead),
but only findings inside vkmsremote/ are reported: the check is about the package. Each name that vulture
cannot see being used (ctypes struct fields written for the kernel, protocol constants, interface methods
called by a library) is listed in vulture_allowlist.py with the reason. Exit status 1 on findings.

    python scripts/deadcode.py [--min-confidence N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vulture

TOP = Path(__file__).resolve().parents[1]
PACKAGE = TOP / "vkmsremote"
USERS = [TOP / "tests", TOP / "scripts"]
ALLOWLIST = TOP / "vulture_allowlist.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-confidence", type=int, default=60, help="vulture's confidence floor (default 60)")
    args = parser.parse_args(argv)
    v = vulture.Vulture()
    v.scavenge([str(PACKAGE), *(str(p) for p in USERS if p.is_dir()), str(ALLOWLIST)])
    found = [item for item in v.get_unused_code(min_confidence=args.min_confidence)
             if Path(item.filename).resolve().is_relative_to(PACKAGE)]
    for item in found:
        print(item.get_report())
    if found:
        print(f"deadcode: {len(found)} unused name(s) in vkmsremote/: remove them, or list them in "
              f"{ALLOWLIST.name} with the reason they are used", file=sys.stderr)
        return 1
    print("deadcode: nothing unused in vkmsremote/ outside the allow-list", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
