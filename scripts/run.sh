#!/usr/bin/env bash
# The README's "run it" command, for a machine without VKMS (such as a fresh Debian 12 box):
#   1. scripts/setup-host.sh    Debian packages + .venv with the project (idempotent)
#   2. scripts/build-kernel.sh  the VKMS test kernel (built once, cached in ~/.cache/vkmsremote/kernel)
#   3. vkmsremote up --vm --drive pattern
#        boots the test kernel in qemu, makes XR-0 there, page-flips an animated test pattern onto it
#        and serves it over VNC; the guest's port 5900 is forwarded to 127.0.0.1:5900 on this host.
# Then point a VNC client at 127.0.0.1:5900 (e.g. `vncviewer 127.0.0.1::5900`). Ctrl-C stops it.
# Extra arguments go to `vkmsremote up` (e.g. --web to also get noVNC on http://127.0.0.1:5800/).
# Without a password the server accepts any client that can reach 127.0.0.1:5900 on this host (see
# docs/up.md); set VKMSREMOTE_PASSWORD (or pass --password-file FILE) to require one.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
port=${VKMSREMOTE_PORT:-5900}

scripts/setup-host.sh
kernel=$(scripts/build-kernel.sh | tail -1)
printf '\033[1m[run]\033[0m VNC server: 127.0.0.1:%s once the VM prints "serving" (Ctrl-C stops it)\n' "$port" >&2
exec env VKMSREMOTE_KERNEL="$kernel" "$top/.venv/bin/python" -m vkmsremote up --vm --drive pattern \
  --port "$port" "$@"
