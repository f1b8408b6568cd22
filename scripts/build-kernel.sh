#!/usr/bin/env bash
# Builds the small test kernel vkmsremote's VM tests boot: Debian's newest linux-source-7.x
# (VKMS with configfs), fetched through a private apt state (the system's apt sources are not
# touched), configured from tinyconfig plus scripts/kernel.config, cached outside the repo.
#
#   scripts/build-kernel.sh            # build if missing, print the bzImage path on stdout
#   scripts/build-kernel.sh --force    # rebuild
#
# Cache: ${VKMSREMOTE_CACHE:-~/.cache/vkmsremote}/kernel/<source-version>-<config-hash>/bzImage, and the
# modules (VKMS is one, as in distributions' kernels) in modroot/lib/modules/<release> beside it.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${VKMSREMOTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vkmsremote}
force=0
[ "${1:-}" = "--force" ] && force=1

say() { printf '\033[1m[kernel]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[kernel] error:\033[0m %s\n' "$*" >&2; exit 1; }

fragment=$top/scripts/kernel.config
config_hash=$(cat "$fragment" "$0" | sha256sum | cut -c1-12)

# One build at a time: concurrent callers (parallel VM runs) wait, then find the cached kernel.
mkdir -p "$cache"
exec 9>"$cache/build-kernel.lock"
if ! flock -n 9; then
  say "another build-kernel.sh is running; waiting for it"
  flock 9
fi

# 1. Find the newest linux-source-7.x through a private apt state.
aptdir=$cache/apt
mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$aptdir/src"
cat > "$aptdir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
SRC
apt_opts=(-o "Dir::Etc::sourcelist=$aptdir/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache::Archives=$aptdir/archives"
          -o "Dir::Cache::pkgcache=$aptdir/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$aptdir/srcpkgcache.bin"
          -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")

pick_version() {
  apt-cache "${apt_opts[@]}" search --names-only '^linux-source-[0-9]+\.[0-9]+$' 2>/dev/null \
    | awk '{print $1}' | sed 's/linux-source-//' | awk -F. '$1>=7' | sort -V | tail -1
}

src_pkg=
if [ -f "$cache/kernel/current" ] && [ $force = 0 ]; then
  cur=$(cat "$cache/kernel/current")
  if [ -f "$cache/kernel/$cur/bzImage" ] && [ -f "$cache/kernel/$cur/modroot/.complete" ] \
     && [ "${cur##*-}" = "$config_hash" ]; then
    say "cached kernel $cache/kernel/$cur/bzImage"
    echo "$cache/kernel/$cur/bzImage"
    exit 0
  fi
fi

say "refreshing private apt lists (trixie-backports, sid)"
apt-get "${apt_opts[@]}" -q update >&2 || die "apt-get update on the private sources failed; check network access to Debian's mirror"
ver=$(pick_version)
[ -n "$ver" ] || die "no linux-source-7.x found in trixie-backports or sid"
src_pkg=linux-source-$ver
full=$(apt-cache "${apt_opts[@]}" show "$src_pkg" | awk '/^Version:/{print $2}' | sort -V | tail -1)
id="$full-$config_hash"
out=$cache/kernel/$id
if [ -f "$out/bzImage" ] && [ -f "$out/modroot/.complete" ] && [ $force = 0 ]; then
  echo "$id" > "$cache/kernel/current"
  say "cached kernel $out/bzImage"
  echo "$out/bzImage"; exit 0
fi

say "downloading $src_pkg ($full)"
debdir=$aptdir/src/$full
mkdir -p "$debdir"
if ! ls "$debdir"/linux-source-*.deb >/dev/null 2>&1; then
  (cd "$debdir" && apt-get "${apt_opts[@]}" -q download "$src_pkg=$full" >&2) || die "apt-get download $src_pkg failed"
fi
build=$cache/build/$full
if [ ! -f "$build/.extracted" ]; then
  say "extracting sources to $build"
  rm -rf "$build" "$build.deb"; mkdir -p "$build" "$build.deb"
  deb=$(ls "$debdir"/linux-source-*.deb | head -1)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$build.deb" --wildcards './usr/src/linux-source-*.tar.xz'
  tarball=$(ls "$build.deb"/usr/src/linux-source-*.tar.xz)
  tar -xJf "$tarball" -C "$build" --strip-components=1
  rm -rf "$build.deb"
  touch "$build/.extracted"
fi
[ -f "$build/drivers/gpu/drm/vkms/vkms_configfs.c" ] || die "$src_pkg has no drivers/gpu/drm/vkms/vkms_configfs.c: VKMS configfs needs Linux 6.19+"

say "configuring (tinyconfig + scripts/kernel.config)"
make -C "$build" -s ARCH=x86_64 tinyconfig >&2
"$build/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null
make -C "$build" -s ARCH=x86_64 olddefconfig >&2
missing=0
while read -r line; do
  case "$line" in CONFIG_*=y|CONFIG_*=m) ;; *) continue ;; esac
  grep -qx "$line" "$build/.config" || { say "warning: $line did not stick"; missing=1; }
done < "$fragment"
for must in CONFIG_MODULES=y CONFIG_MODULE_UNLOAD=y CONFIG_DRM_VKMS=m CONFIG_CONFIGFS_FS=y CONFIG_INPUT_UINPUT=y CONFIG_VIRTIO_CONSOLE=y CONFIG_9P_FS=y; do
  grep -qx "$must" "$build/.config" || die "$must is not set after configuration"
done

jobs=$(( $(nproc) + 1 ))
say "building bzImage and modules with -j$jobs (about 5 minutes on 2 cores); log: $build/build.log"
start=$(date +%s)
( make -C "$build" ARCH=x86_64 -j"$jobs" bzImage modules > "$build/build.log" 2>&1 ) &
pid=$!
while kill -0 $pid 2>/dev/null; do
  sleep 15
  n=$(grep -c '^  CC' "$build/build.log" 2>/dev/null || true)
  say "... $(( $(date +%s) - start ))s, $n objects compiled"
done
wait $pid || { tail -30 "$build/build.log" >&2; die "kernel build failed; see $build/build.log"; }
rm -rf "$out"; mkdir -p "$out"
make -C "$build" -s ARCH=x86_64 INSTALL_MOD_PATH="$out/modroot" INSTALL_MOD_STRIP=1 modules_install >&2 \
  || die "modules_install failed (depmod comes with Debian's kmod package)"
find "$out/modroot" -name vkms.ko | grep -q . || die "no vkms.ko was built"
touch "$out/modroot/.complete"
cp "$build/arch/x86/boot/bzImage" "$out/bzImage"
cp "$build/.config" "$out/config"
echo "$id" > "$cache/kernel/current"
say "built in $(( $(date +%s) - start ))s: $out/bzImage"
echo "$out/bzImage"
