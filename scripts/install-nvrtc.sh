#!/usr/bin/env bash
# Installs NVIDIA's NVRTC (CUDA 13.0) from PyPI, without a GPU or a CUDA toolkit,
# and prints the directory that holds libnvrtc.so.13 (and libnvrtc-builtins.so.13*),
# ready for LD_LIBRARY_PATH:
#
#   export LD_LIBRARY_PATH="$(bash scripts/install-nvrtc.sh):$LD_LIBRARY_PATH"
#
# Usage: scripts/install-nvrtc.sh [DIR]   (DIR defaults to .nvrtc-deps at the repo root)
# Everything but the final directory goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/.nvrtc-deps}"

find_libdir() {
    local lib
    lib="$(find "$dir" -name 'libnvrtc.so.13*' ! -name '*builtins*' -print 2>/dev/null | sort | head -n 1)"
    [ -n "$lib" ] && dirname "$lib"
}

libdir="$(find_libdir || true)"
if [ -z "$libdir" ]; then
    echo "install-nvrtc: installing nvidia-cuda-nvrtc 13.0 into $dir" >&2
    mkdir -p "$dir"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$dir" 'nvidia-cuda-nvrtc==13.0.*' >&2
    libdir="$(find_libdir || true)"
fi
if [ -z "$libdir" ]; then
    echo "install-nvrtc: libnvrtc.so.13 not found under $dir after installing" >&2
    exit 1
fi
if ! ls "$libdir"/libnvrtc-builtins.so.13* >/dev/null 2>&1; then
    echo "install-nvrtc: libnvrtc-builtins.so.13* missing next to $libdir/libnvrtc.so.13" >&2
    exit 1
fi

# cudarc's dynamic loader (cuda-13000) tries libnvrtc.so, ..., libnvrtc.so.13 in turn;
# the wheel ships only versioned names, so add the unversioned ones too.
lib="$(find "$libdir" -maxdepth 1 -name 'libnvrtc.so.13*' ! -name '*builtins*' | sort | head -n 1)"
[ -e "$libdir/libnvrtc.so.13" ] || ln -sf "$(basename "$lib")" "$libdir/libnvrtc.so.13"
[ -e "$libdir/libnvrtc.so" ] || ln -sf libnvrtc.so.13 "$libdir/libnvrtc.so"

echo "$libdir"
