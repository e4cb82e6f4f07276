#!/usr/bin/env bash
# CPU speed check for BENCHMARKS.md (issue 11). Prints, in one run on this machine:
# the CPU model, numpy's fp32 sgemm rate at 2048³ on N threads (the reference rate),
# then R interleaved seed epochs of mep-mnist (epoch_seconds, gflop_per_sec) on N
# threads and on 1 and, when a Python with torch is given, the PyTorch Adam
# baseline's time to 97%. With HOG=1 it then repeats the mep epochs while a
# competing process keeps one core busy (the loaded-machine check of issue 11).
# COMPARE=path/to/another/mep-mnist adds that binary's epoch (N threads) to every
# round, for before/after tables from one interleaved run.
# Usage: bash scripts/cpu-bench.sh [RUNS] [PYTHON_WITH_TORCH]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
torch_py="${2:-}"
threads="${THREADS:-2}"
cargo build --release --quiet --bin mep-mnist
echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), $(nproc) cores; flags: $(grep -o -w -E 'avx512f|avx2|amx_tile|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
py="${torch_py:-python3}"
sgemm() {
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads "$py" - <<'PY'
import time, numpy as np
n = 2048
a = np.random.rand(n, n).astype(np.float32); b = np.random.rand(n, n).astype(np.float32)
a @ b
ts = []
for _ in range(5):
    t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
ts.sort()
print(f"{2 * n**3 / ts[len(ts)//2] / 1e9:.1f}")
PY
}
for i in $(seq 1 "$runs"); do
    rate=$(sgemm)
    mep=$(./target/release/mep-mnist --device cpu --threads "$threads" --json | tail -1)
    mep1=$(./target/release/mep-mnist --device cpu --threads 1 --json | tail -1)
    line="{\"run\": $i, \"numpy_sgemm_gflops\": $rate, \"mep\": $mep, \"mep_1_thread\": $mep1"
    if [ -n "${COMPARE:-}" ]; then
        line="$line, \"compare\": $("$COMPARE" --device cpu --threads "$threads" --json | tail -1)"
    fi
    if [ -n "$torch_py" ]; then
        line="$line, \"torch\": $("$torch_py" scripts/torch_baseline.py --threads "$threads")"
    fi
    echo "$line}"
done
if [ "${HOG:-0}" = 1 ]; then
    # A CPU hog: one busy process for the whole section.
    python3 -c 'while True: pass' &
    hog=$!
    trap 'kill $hog 2>/dev/null' EXIT
    for i in $(seq 1 "$runs"); do
        mep=$(./target/release/mep-mnist --device cpu --threads "$threads" --json | tail -1)
        mep1=$(./target/release/mep-mnist --device cpu --threads 1 --json | tail -1)
        line="{\"run\": $i, \"hog\": 1, \"mep\": $mep, \"mep_1_thread\": $mep1"
        if [ -n "${COMPARE:-}" ]; then
            line="$line, \"compare\": $("$COMPARE" --device cpu --threads "$threads" --json | tail -1)"
            line="$line, \"compare_1_thread\": $("$COMPARE" --device cpu --threads 1 --json | tail -1)"
        fi
        echo "$line}"
    done
    kill $hog
fi
