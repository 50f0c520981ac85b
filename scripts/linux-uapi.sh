#!/usr/bin/env bash
# linux-uapi.sh -- make the Linux 6.12 V4L2 uapi headers that v4l2r 0.0.8 needs.
#
# Debian 12's own uapi headers (linux-libc-dev 6.1) predate the AV1 stateless
# controls that v4l2r 0.0.8 binds, so its bindgen step must read newer ones.
# They come from the Debian package linux-source-6.12 (bookworm-security, the
# same kernel series the VM tests boot), processed exactly as the kernel's own
# `make headers_install` does (scripts/headers_install.sh + scripts/unifdef).
# Nothing is vendored: the output is generated, git-ignored, and stamped with
# the package version so that a package upgrade regenerates it.
#
#   scripts/linux-uapi.sh [OUTDIR]     (default: <repo>/.deps/linux-uapi)
#
# OUTDIR then holds linux/{videodev2.h,v4l2-common.h,v4l2-controls.h}, a copy
# of videodev2.h at its top (v4l2r's build.rs watches
# $V4L2R_VIDEODEV2_H_PATH/videodev2.h, while its wrapper includes
# <linux/videodev2.h>) and VERSION. .cargo/config.toml points
# V4L2R_VIDEODEV2_H_PATH here; every other <linux/...> header (types.h,
# ioctl.h, const.h) still comes from the system and is ABI-stable.
# Needs: linux-source-6.12, xz-utils, a C compiler (scripts/setup.sh installs them).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$repo/.deps/linux-uapi}
pkg=linux-source-6.12
tarball=/usr/src/$pkg.tar.xz
# videodev2.h and the two V4L2 headers it includes; nothing else is overlaid.
headers=(videodev2.h v4l2-common.h v4l2-controls.h)

version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null || true)
if [ -z "$version" ] || [ ! -f "$tarball" ]; then
  echo "linux-uapi.sh: $tarball (Debian package $pkg) is missing; run scripts/setup.sh" >&2
  exit 1
fi

if [ "$(cat "$out/VERSION" 2>/dev/null || true)" = "$pkg $version" ] &&
  [ -f "$out/videodev2.h" ] && [ -f "$out/linux/v4l2-controls.h" ]; then
  exit 0 # up to date
fi

echo "linux-uapi.sh: generating V4L2 uapi headers from $pkg $version into $out"
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$(dirname "$out")/.linux-uapi.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$pkg
tar -xJf "$tarball" -C "$work" \
  "$src/scripts/headers_install.sh" "$src/scripts/unifdef.c" \
  "${headers[@]/#/$src/include/uapi/linux/}"

cd "$work/$src"
# headers_install.sh runs ./scripts/unifdef, as under the kernel's Makefile.
"${CC:-cc}" -O2 -w -o scripts/unifdef scripts/unifdef.c
mkdir -p "$work/out/linux"
for h in "${headers[@]}"; do
  sh scripts/headers_install.sh "include/uapi/linux/$h" "$work/out/linux/$h"
done
cp "$work/out/linux/videodev2.h" "$work/out/videodev2.h"
echo "$pkg $version" >"$work/out/VERSION"

# Replace the old tree by renames, so an interrupted run leaves no half tree.
rm -rf "$out.old"
[ ! -e "$out" ] || mv "$out" "$out.old"
mv "$work/out" "$out"
rm -rf "$out.old"
