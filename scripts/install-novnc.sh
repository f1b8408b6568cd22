#!/usr/bin/env bash
# Installs noVNC (the library: core/ and vendor/) from the npm registry into a data directory outside the
# git tree, where `vkmsremote ... --web` finds it (vkmsremote/web/novnc.py). Pinned version, checked
# against the registry's sha512 integrity hash before anything is unpacked. Idempotent; run as root (the
# default directory is /usr/local/share/vkmsremote/novnc, readable by the unprivileged web process).
#   VKMSREMOTE_NOVNC_DIR   where to install (default /usr/local/share/vkmsremote/novnc)
set -euo pipefail
version=1.7.0
integrity=sha512-ucEJOx4T2avIRCleodk7YobZj5O2Ga2AeLfQ69A/yjG9HHba2+PDgwSkN3FttrmG+70ZGx21sElNFouK13RzyA==
dest=${VKMSREMOTE_NOVNC_DIR:-/usr/local/share/vkmsremote/novnc}

say() { printf '\033[1m[novnc]\033[0m %s\n' "$*" >&2; }

if [ -f "$dest/package.json" ] && grep -q "\"version\": \"$version\"" "$dest/package.json"; then
  say "noVNC $version present in $dest"
  exit 0
fi
if ! command -v npm >/dev/null; then  # this machine's node ships npm; a bare Debian gets Debian's
  say "installing Debian's npm"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >&2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "fetching @novnc/novnc@$version from the npm registry"
(cd "$work" && npm pack --silent "@novnc/novnc@$version" >/dev/null)
tarball=$(ls "$work"/*.tgz)
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
if [ "$got" != "$integrity" ]; then
  say "integrity check failed for $tarball: expected $integrity, got $got"
  exit 1
fi
mkdir -p "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked"
rm -rf "$dest.new"
mkdir -p "$(dirname "$dest")"
mv "$work/unpacked/package" "$dest.new"
chmod -R a+rX "$dest.new"
rm -rf "$dest"
mv "$dest.new" "$dest"
say "noVNC $version installed in $dest"
