#!/usr/bin/env bash
# setup.sh -- make a Debian 12 machine ready to build and test gst-vpu.
#
# Idempotent: installs only the Debian packages that are missing (one
# `apt-get update`, only when something must be installed), checks the Rust
# toolchain (rustup's; never installed from apt), and generates the Linux 6.12
# V4L2 uapi headers that v4l2r needs (scripts/linux-uapi.sh). Runs as root, or
# through sudo otherwise. A second run on a ready machine changes nothing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
min_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$repo/Cargo.toml")

packages=(
  # GStreamer 1.22: headers for the -sys crates, gst-inspect/gst-launch, and
  # the peer elements that tests and benchmarks put beside ours.
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav
  # gst-device-monitor-1.0, which lists our device provider's VPUs.
  gstreamer1.0-plugins-base-apps
  # Building: C toolchain (linking, openh264's C++), pkg-config for the -sys
  # crates, libclang for v4l2r's bindgen, nasm for openh264, meson/ninja.
  build-essential pkg-config libclang-dev nasm meson ninja-build git ca-certificates
  xz-utils
  # FFmpeg 5.1's libavcodec for the emulated VPU's H.264 engines: decoding,
  # and encoding with libx264 (libavcodec59 pulls in libx264-164);
  # ffmpeg-sys-next runs bindgen against these headers. libavformat: the
  # ffmpeg-next binding's packet API needs it.
  libavcodec-dev libavformat-dev libavutil-dev
  # The VM tests (scripts/vm-test.sh): ../shared/vm boots Debian's 6.12 kernel
  # in qemu (TCG) with vicodec/vkms built from linux-source-6.12 against
  # linux-headers (the kernel packages are added below, pinned), on a
  # busybox initramfs made with cpio; kmod for modinfo/depmod.
  qemu-system-x86 busybox-static cpio kmod
)
# Linux 6.12 uapi headers for v4l2r 0.0.8 (see README, "Why v4l2r 0.0.8"),
# pinned to the version ../shared/vm builds its kernel modules from: that
# script installs exactly this version, and apt refuses to downgrade, so any
# other version here would break the VM tests.
ksrc_version=${VMBED_DEBVER:-6.12.107-1~deb12u1}

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
installed linux-source-6.12 || missing+=("linux-source-6.12=$ksrc_version")
# The guest kernel of the VM tests: the release ../shared/vm/build-modules.sh
# builds its modules for (VMBED_KVER there), from bookworm-security.
kver=${VMBED_KVER:-6.12.107+deb12-amd64}
installed "linux-image-$kver" || installed "linux-image-$kver-unsigned" \
  || missing+=("linux-image-$kver")
installed "linux-headers-$kver" || missing+=("linux-headers-$kver")

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "setup.sh: not root and no sudo; as root, run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}"
  "${as_root[@]}" apt-get update -q
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust: rustup's toolchain, >= rust-version in Cargo.toml, with rustfmt and
# clippy (scripts/test.sh runs both).
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  echo "setup.sh: no Rust toolchain on PATH; install rustup (https://rustup.rs)," \
    "then: rustup toolchain install stable" >&2
  exit 1
fi
have_rust=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$min_rust" "${have_rust%%-*}" | sort -V | head -n1)" != "$min_rust" ]; then
  echo "setup.sh: rustc $have_rust is older than $min_rust; run: rustup update stable" >&2
  exit 1
fi
for component in rustfmt clippy; do
  tool=${component/rustfmt/fmt}
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add "$component"
    else
      echo "setup.sh: cargo $tool is missing and there is no rustup to add it" >&2
      exit 1
    fi
  fi
done

"$repo/scripts/linux-uapi.sh"
echo "setup.sh: ready (Debian packages present, rustc $have_rust, $(cat "$repo/.deps/linux-uapi/VERSION") uapi headers)"
