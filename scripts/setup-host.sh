#!/usr/bin/env bash
# Installs everything vkmsremote's tests, benchmarks and VM runner need on a fresh Debian machine:
# Debian packages (qemu, kernel build tools, DRM tools, VNC peers, Xorg) and a Python venv with the
# project and its dev dependencies. Idempotent; run as root (or with sudo for the apt part).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv=${VKMSREMOTE_VENV:-$top/.venv}
stamp_dir=${XDG_CACHE_HOME:-$HOME/.cache}/vkmsremote
mkdir -p "$stamp_dir"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

debs=(
  # test kernel build (scripts/build-kernel.sh)
  build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils kmod
  # VM runner (virtme-ng runs over the host rootfs) and udev inside the VM
  qemu-system-x86 udev busybox-static
  # DRM tools and libraries
  libdrm2 libdrm-tests drm-info libdrm-dev
  # real VNC peers and display servers for tests and benchmarks
  xvfb x11vnc vncsnapshot tigervnc-viewer xserver-xorg-core xserver-xorg-input-libinput
  x11-utils xdotool xterm imagemagick libjpeg62-turbo
  # the native side by side's peers (scripts/bench_native.py): TigerVNC's x0vncserver and Xvnc
  tigervnc-scraping-server tigervnc-standalone-server
  # LibVNCClient headers: tests/clients/test_encodings_libvncclient.py builds a tiny decoding client
  libvncserver-dev
  # FFmpeg's decoder for the benchmark client's Open H.264 (scripts/bench_client.c)
  libavcodec-dev libswscale-dev libavutil-dev
  # a Debian 13 tree for TigerVNC's 1.15 viewer: Open H.264 and RSA-AES (below)
  mmdebstrap
  # browser client: noVNC 1.7 comes from the npm registry (scripts/install-novnc.sh); Debian's 1.3 is the
  # fallback the tests also check
  novnc chromium chromium-driver
  # node runs noVNC's decoders in tests/clients/test_encodings_novnc.py
  nodejs
  # US keymap check (tests/input/test_keymap.py regenerates vkmsremote/input/tables.py from libxkbcommon)
  libxkbcommon0 xkb-data
  # the desktop's own layout (vkmsremote.input.layout: xkbcomp dumps Xorg's keymap) and its clipboard
  # (vkmsremote.input.clipboard: X selections through xclip, wlroots data-control through wl-clipboard);
  # keyboard layouts and the clipboard: xkbcomp reads Xorg's keymap, xclip/wl-clipboard the selections (sway,
  # listed below, runs headless as the wlroots desktop of tests/desktop/test_sway_desktop.py)
  x11-xkb-utils xclip wl-clipboard
  # keysyms the layout lacks on sway: typed through the virtual-keyboard protocol (vkmsremote.input.spare)
  wtype
  # mode changes and checks on Xorg in the VM (tests/vm/test_compositor_vm.py)
  x11-xserver-utils
  # consumer socket (tests/consumer/test_consumer.py, tests/vm/test_consumer_vm.py): the C client is built through
  # pkg-config; consume --egl uses EGL/GLES/GBM (Mesa); ffmpeg -f kmsgrab captures XR-0 for comparison
  pkg-config libegl1 libegl-mesa0 libgles2 libgbm1 libgl1-mesa-dri ffmpeg
  # Wayland compositors on XR-0 in the VM (tests/vm/test_wayland_vm.py): Weston, sway with seatd,
  # foot (a terminal to type into), wev (shows where clicks land)
  weston sway seatd foot wev
  # `cvt -r`, the reference for vkmsremote.drm.cvt's reduced-blanking modes (tests/drm/test_drm_cvt.py)
  xcvt
)

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
else
  say "Debian packages present"
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating venv $venv"
  python3 -m venv "$venv"
fi
hash=$(cat "$top/pyproject.toml" | sha256sum | cut -c1-16)
if [ ! -f "$venv/.installed-$hash" ]; then
  say "installing Python packages into $venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -e "$top[dev]" >&2
  rm -f "$venv"/.installed-*
  touch "$venv/.installed-$hash"
else
  say "Python packages present"
fi

# One Debian 13 tree (scripts/build-guest.sh: mmdebstrap, cached, rebuilt when its package list changes)
# serves both the booted systemd guest (vkmsremote.vm.guest) and TigerVNC 1.15's viewer (Open H.264,
# RA2; Debian 12 has 1.12), which tests/clients/test_motion_tigervnc.py runs from trixie-tigervnc with chroot.
guest_tree=$("$top/scripts/build-guest.sh")
trixie_dir="$stamp_dir/trixie-tigervnc"
if [ "$(readlink "$trixie_dir" 2>/dev/null)" != "$guest_tree" ]; then
  rm -rf "$trixie_dir" && ln -s "$guest_tree" "$trixie_dir"
fi
"$top/scripts/install-novnc.sh"
