#!/usr/bin/env bash
# Builds the Debian 13 (trixie) guest tree that vkmsremote's booted-systemd tests run in (and whose
# TigerVNC 1.15 viewer tests/test_motion_tigervnc.py runs with chroot): mmdebstrap, cached like the
# kernel, rebuilt when this script (its package list, hooks, guest files) changes.
#
#   scripts/build-guest.sh            # build if missing, print the tree's path on stdout
#   scripts/build-guest.sh --force    # rebuild
#
# Cache: ${VKMSREMOTE_CACHE:-~/.cache/vkmsremote}/guest/<hash>/root, "current" names the newest.
# The tree is never booted read-write: vkmsremote.vm.guest mounts it read-only over 9p under a tmpfs
# overlay (/sbin/vkmsremote-init below), so every boot starts from the same files.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${VKMSREMOTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vkmsremote}
mirror=${VKMSREMOTE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
force=0
[ "${1:-}" = "--force" ] && force=1
say() { printf '\033[1m[guest]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[guest] error:\033[0m %s\n' "$*" >&2; exit 1; }

packages=(
  # PID 1, logind, D-Bus, udev (the unit under a real systemd)
  systemd systemd-sysv dbus udev libpam-systemd kmod iproute2 procps util-linux
  # vkmsremote's runtime dependencies (simplejpeg is not in Debian: pip, below) and the guest tests'
  python3 python3-pip python3-numpy python3-pyudev python3-cryptography python3-evdev python3-websockets
  python3-pytest python3-pytest-timeout
  # DRM tools for the tests' checks
  libdrm-tests
  # Debian 13's TigerVNC viewer (1.15: RA2, Open H.264), also used from the host with chroot
  tigervnc-viewer
)
hash=$(cat "$0" | sha256sum | cut -c1-12)
base=$cache/guest
out=$base/$hash
mkdir -p "$base"
exec 9>"$base/build.lock"
flock 9
if [ -f "$out/.complete" ] && [ $force = 0 ]; then
  echo "$hash" > "$base/current"
  say "cached guest tree $out/root"
  echo "$out/root"; exit 0
fi

# simplejpeg is not packaged by Debian: its wheel for trixie's Python 3.13, fetched by the host's pip.
pip=$top/.venv/bin/pip
[ -x "$pip" ] || pip="python3 -m pip"
wheels=$base/wheels-$hash
rm -rf "$wheels"
$pip download -q --only-binary=:all: --python-version 3.13 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --no-deps "simplejpeg>=1.7" -d "$wheels" 2>/dev/null \
  || die "pip could not download a simplejpeg wheel for Python 3.13"
say "mmdebstrap: Debian 13 with ${#packages[@]} packages into $out/root (about a minute)"
start=$(date +%s)
rm -rf "$out"; mkdir -p "$out"
# The customize hooks run in the finished tree (chroot, network still there).
mmdebstrap --quiet --variant=apt --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook="cp -r '$wheels' \"\$1/tmp/wheels\"" \
  --customize-hook='chroot "$1" python3 -m pip install -q --break-system-packages --no-index --no-cache-dir --find-links /tmp/wheels "simplejpeg>=1.7" && rm -rf "$1/tmp/wheels"' \
  --customize-hook='echo vkmsremote-guest > "$1/etc/hostname"' \
  --customize-hook='passwd --root "$1" -d root >/dev/null' \
  trixie "$out/root" "$mirror" >&2 || die "mmdebstrap failed (network access to $mirror?)"

root=$out/root
mkdir -p "$root/overlay" "$root/checkout" "$root/guest-run"

# PID 1 before systemd: a tmpfs overlay over the read-only 9p root, then systemd in it.
cat > "$root/sbin/vkmsremote-init" <<'INIT'
#!/bin/sh
# Root is the cached guest tree, read-only over 9p: every write of this boot goes to a tmpfs.
mount -t tmpfs -o mode=0755 vkmsremote-overlay /overlay || exit 1
mkdir -p /overlay/upper /overlay/work /overlay/root
mount -t overlay -o lowerdir=/,upperdir=/overlay/upper,workdir=/overlay/work overlay /overlay/root || exit 1
cd /overlay/root && mkdir -p oldroot && pivot_root . oldroot || exit 1
umount -l /oldroot
exec chroot . /lib/systemd/systemd "$@"
INIT
chmod 0755 "$root/sbin/vkmsremote-init"

# The run's shares: the checkout (read-only) and the results directory (read-write, holds run.sh).
cat >> "$root/etc/fstab" <<'FSTAB'
checkout /checkout 9p trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro,nofail 0 0
results /guest-run 9p trans=virtio,version=9p2000.L,msize=512000,nofail 0 0
FSTAB
# The run: once the system is up, run the host's run.sh, then power off.
cat > "$root/etc/systemd/system/vkmsremote-guest-run.service" <<'UNIT'
[Unit]
Description=vkmsremote guest run (the host's guest-run/run.sh)
After=multi-user.target
RequiresMountsFor=/guest-run /checkout
ConditionPathExists=/guest-run/run.sh

[Service]
Type=oneshot
ExecStart=/bin/bash /guest-run/run.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
ExecStopPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/vkmsremote-guest-run.service \
  "$root/etc/systemd/system/multi-user.target.wants/vkmsremote-guest-run.service"
# No persistent journal (the root is an overlay anyway), a serial console only, no getty on tty1.
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$root/etc/systemd/journald.conf.d/vkmsremote.conf"
ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root/etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$root/etc/systemd/system/apt-daily-upgrade.timer"
# vkmsremote "installed" from the checkout: a .pth file (what pip install -e writes) and the console script.
pyver=$(chroot "$root" python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
mkdir -p "$root/usr/local/lib/python$pyver/dist-packages"
echo /checkout > "$root/usr/local/lib/python$pyver/dist-packages/vkmsremote-checkout.pth"
cat > "$root/usr/local/bin/vkmsremote" <<'BIN'
#!/usr/bin/python3
import sys

from vkmsremote.cli import main

sys.exit(main())
BIN
chmod 0755 "$root/usr/local/bin/vkmsremote"
rm -rf "$wheels"
touch "$out/.complete"
echo "$hash" > "$base/current"
# Older trees are removed (one guest tree in the cache).
for d in "$base"/*/; do
  d=${d%/}; [ "$d" = "$out" ] || rm -rf "$d"
done
say "built in $(( $(date +%s) - start ))s: $root ($(du -sh "$root" | cut -f1))"
echo "$root"
