#!/usr/bin/env python3
"""Dead-code check: vulture over vkmsremote/, failing on anything it finds outside vulture_allowlist.py.

Code under tests/ and scripts/ counts as a use (a function only the benchmarks or a test call is not dead),
but only findings inside vkmsremote/ are reported: the check is about the package. Each name that vulture
cannot see being used (ctypes struct fields written for the kernel, protocol constants, interface methods
called by a library) is listed in vulture_allowlist.py with the reason. Exit status 1 on findings.

    python scripts/deadcode.py [--root DIR] [--min-confidence N]
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import vulture

TOP = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=TOP, help="the checkout to check (default: this one)")
    parser.add_argument("--min-confidence", type=int, default=60, help="vulture's confidence floor (default 60)")
    args = parser.parse_args(argv)
    top = args.root.resolve()
    package, allowlist = top / "vkmsremote", top / "vulture_allowlist.py"
    users = [p for p in (top / "tests", top / "scripts") if p.is_dir()]
    sys.path.insert(0, str(top))  # the allow-list's imports must see this checkout's package
    try:  # every entry must name something that exists
        runpy.run_path(str(allowlist))
    except Exception as e:  # any failure (ImportError, AttributeError, NameError) means a stale entry
        print(f"deadcode: stale entry in {allowlist.name}: {e}", file=sys.stderr)
        return 1
    v = vulture.Vulture()
    v.scavenge([str(package), *map(str, users), str(allowlist)])
    found = [item for item in v.get_unused_code(min_confidence=args.min_confidence)
             if Path(item.filename).resolve().is_relative_to(package)]
    for item in found:
        print(item.get_report())
    if found:
        print(f"deadcode: {len(found)} unused name(s) in vkmsremote/: remove them, or list them in "
              f"{allowlist.name} with the reason they are used", file=sys.stderr)
        return 1
    print("deadcode: nothing unused in vkmsremote/ outside the allow-list", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
