#!/usr/bin/env bash
# Builds the module variant of the test kernel: the same source and options as scripts/build-kernel.sh
# plus scripts/kernel-modules.config (CONFIG_MODULES, CONFIG_DRM_VKMS=m), so VKMS is a loadable module as
# distributions ship it. It is built in a copy of the first build's tree (objects included: kbuild
# rebuilds what the changed options touch), after scripts/build-kernel.sh, whose cache key this leaves alone.
#
#   scripts/build-kernel-modules.sh    # build if missing; prints the bzImage path, then the modules directory
#
# The modules are installed under <kernel dir>/modroot (.../lib/modules/<release>, with modules.dep); the
# guest binds that directory at /lib/modules/<release> (tests/vm/test_module_vm.py) so modprobe finds vkms.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cache=${VKMSREMOTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vkmsremote}

say() { printf '\033[1m[kernel-modules]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[kernel-modules] error:\033[0m %s\n' "$*" >&2; exit 1; }

main_image=$("$top/scripts/build-kernel.sh" | tail -1)
main_id=$(basename "$(dirname "$main_image")")  # <source-version>-<config-hash>
full=${main_id%-*}
tree=$cache/build/$full
[ -f "$tree/.config" ] || die "the first build's tree $tree is missing; run scripts/build-kernel.sh --force"
fragment=$top/scripts/kernel-modules.config
hash=$(cat "$top/scripts/kernel.config" "$fragment" "$0" | sha256sum | cut -c1-12)
out=$cache/kernel/$full-$hash-modules
moddir() { dirname "$(find "$out/modroot" -name modules.dep -print -quit 2>/dev/null)"; }
if [ -f "$out/bzImage" ] && [ -f "$(moddir)/modules.dep" ]; then
  say "cached kernel $out/bzImage"
  echo "$out/bzImage"; moddir; exit 0
fi

exec 9>"$cache/build-kernel.lock"
flock 9
build=$tree-modules
if [ ! -f "$build/.copied" ]; then
  say "copying $tree to $build"
  rm -rf "$build"
  cp -a "$tree" "$build"
  touch "$build/.copied"
fi
say "configuring (tinyconfig + kernel.config + kernel-modules.config)"
make -C "$build" -s ARCH=x86_64 tinyconfig >&2
"$build/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$top/scripts/kernel.config" "$fragment" >/dev/null
make -C "$build" -s ARCH=x86_64 olddefconfig >&2
for must in CONFIG_MODULES=y CONFIG_MODULE_UNLOAD=y CONFIG_DRM_VKMS=m CONFIG_CONFIGFS_FS=y CONFIG_INPUT_UINPUT=y; do
  grep -qx "$must" "$build/.config" || die "$must is not set after configuration"
done
jobs=$(( $(nproc) + 1 ))
say "building bzImage and modules with -j$jobs; log: $build/build.log"
start=$(date +%s)
( make -C "$build" ARCH=x86_64 -j"$jobs" bzImage modules > "$build/build.log" 2>&1 ) &
pid=$!
while kill -0 $pid 2>/dev/null; do
  sleep 15
  say "... $(( $(date +%s) - start ))s, $(grep -c '^  CC' "$build/build.log" 2>/dev/null || true) objects compiled"
done
wait $pid || { tail -30 "$build/build.log" >&2; die "kernel build failed; see $build/build.log"; }
rm -rf "$out"; mkdir -p "$out"
make -C "$build" -s ARCH=x86_64 INSTALL_MOD_PATH="$out/modroot" INSTALL_MOD_STRIP=1 modules_install >&2 \
  || die "modules_install failed (depmod comes with kmod)"
[ -f "$(moddir)/kernel/drivers/gpu/drm/vkms/vkms.ko" ] || die "no vkms.ko was built"
cp "$build/arch/x86/boot/bzImage" "$out/bzImage"
cp "$build/.config" "$out/config"
say "built in $(( $(date +%s) - start ))s: $out/bzImage"
echo "$out/bzImage"
moddir
