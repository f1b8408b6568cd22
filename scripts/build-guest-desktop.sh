#!/usr/bin/env bash
# Builds the desktop variant of the Debian 13 guest: scripts/build-guest.sh's tree (built first if
# missing) copied and given GNOME Shell / Mutter, KWin, Mesa's llvmpipe and a test user, for
# tests/guest/test_desktops_guest.py. scripts/test.sh boots it for every guest test (the plain tree still
# serves TigerVNC's viewer and VKMSREMOTE_DESKTOPS=0).
#
#   scripts/build-guest-desktop.sh            # build if missing, print the tree's path on stdout
#   scripts/build-guest-desktop.sh --force    # rebuild
#
# Cache: ${VKMSREMOTE_CACHE:-~/.cache/vkmsremote}/guest-desktop/<hash>/root, hash over this script and
# the default tree's hash (so a new default tree makes a new desktop tree). build-guest.sh removes the
# other trees under guest/ only, never this folder.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${VKMSREMOTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vkmsremote}
force=0
[ "${1:-}" = "--force" ] && force=1
say() { printf '\033[1m[guest-desktop]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[guest-desktop] error:\033[0m %s\n' "$*" >&2; exit 1; }

packages=(
  # Plasma's compositor and GNOME's (Mutter alone and the Shell), no recommends
  kwin-wayland mutter gnome-shell
  # software rendering (llvmpipe, kms_swrast), D-Bus in the user session, gdbus/gsettings
  libgl1-mesa-dri libegl-mesa0 libgbm1 dbus-user-session libglib2.0-bin dconf-gsettings-backend
  # fonts (the shells refuse to draw text without one) and a Wayland terminal to type into
  fonts-dejavu-core foot
  # the tests' peers: vncdotool's dependencies (vncdotool itself from PyPI, below), wev for clicks
  python3-twisted python3-pil wev
  # Xwayland and X clients (xev, xwininfo) for the Xwayland test
  xwayland x11-utils
)
base_tree=$("$top/scripts/build-guest.sh")
base_hash=$(basename "$(dirname "$base_tree")")
hash=$( (cat "$0"; echo "$base_hash") | sha256sum | cut -c1-12)
base=$cache/guest-desktop
out=$base/$hash
mkdir -p "$base"
exec 9>"$base/build.lock"
flock 9
if [ -f "$out/.complete" ] && [ $force = 0 ]; then
  echo "$hash" > "$base/current"
  say "cached desktop guest tree $out/root"
  echo "$out/root"; exit 0
fi
say "copying $base_tree and installing ${#packages[@]} packages (a few minutes)"
start=$(date +%s)
rm -rf "$out"; mkdir -p "$out"
cp -a "$base_tree" "$out/root"
root=$out/root
# apt in the copied tree: its own mount namespace (proc, dev, sys gone when it ends), no service starts.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod 0755 "$root/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# vncdotool (pure Python, not packaged by Debian): the wheel fetched by the host's pip, installed without deps.
pip=$top/.venv/bin/pip
[ -x "$pip" ] || pip="python3 -m pip"
mkdir -p "$root/tmp-wheels"
$pip download -q --no-deps "vncdotool==1.4.2" -d "$root/tmp-wheels" >&2 || die "pip could not download vncdotool"
unshare --mount --propagation private bash -euc '
  root=$1; shift
  mount -t proc proc "$root/proc"; mount --rbind /dev "$root/dev"; mount --rbind /sys "$root/sys"
  mount -t tmpfs tmpfs "$root/tmp"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q update
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends install "$@"
  chroot "$root" apt-get clean
  chroot "$root" python3 -m pip install -q --break-system-packages --no-index --no-deps --no-cache-dir \
    /tmp-wheels/vncdotool-1.4.2-py3-none-any.whl
' _ "$root" "${packages[@]}" >&2 || die "apt-get install in the copied tree failed"
rm -rf "$root/usr/sbin/policy-rc.d" "$root/tmp-wheels"
# The desktop's user: a seat session's owner (video, render, input for DRM and evdev), no password.
chroot "$root" useradd -m -u 1000 -G video,render,input -s /bin/bash desk
chroot "$root" passwd -d desk >/dev/null
touch "$out/.complete"
echo "$hash" > "$base/current"
for d in "$base"/*/; do
  d=${d%/}; [ "$d" = "$out" ] || rm -rf "$d"
done
say "built in $(( $(date +%s) - start ))s: $root ($(du -sh "$root" | cut -f1))"
echo "$root"
