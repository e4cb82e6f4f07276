#!/usr/bin/env bash
# Builds the emulated GPU (emu/, a cdylib) and prints the directory that holds it
# under the names cudarc loads (libcuda.so, libcuda.so.1, libcublas.so, .so.12, .so.13),
# ready for LD_LIBRARY_PATH:
#
#   export LD_LIBRARY_PATH="$(bash scripts/emu-libdir.sh):$(bash scripts/install-nvrtc.sh)"
#
# Everything but the final directory goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p mep-emu >&2
dir="$PWD/target/emu-lib"
mkdir -p "$dir"
for n in libcuda.so libcuda.so.1 libcublas.so libcublas.so.13 libcublas.so.12; do
    ln -sf ../release/libmep_emu.so "$dir/$n"
done
echo "$dir"
