#!/usr/bin/env bash
# Runs the prebuilt GPU checks on a Linux machine with an NVIDIA GPU and no Rust
# toolchain, and ends with a markdown table.
#
#   bash scripts/build-gpu-bundle.sh     # on the build machine: makes gpu-bundle/
#   bash scripts/gpu-check.sh            # on the GPU machine, from the repo root
#
# What it does:
#   1. finds NVRTC and cuBLAS for CUDA 13 (a PyTorch environment's site-packages
#      nvidia/cu13/lib, or nvidia/cuda_nvrtc/lib + nvidia/cublas/lib, or the system
#      linker's path) and exports LD_LIBRARY_PATH;
#   2. prints the GPU (nvidia-smi);
#   3. a preflight of at most PREFLIGHT_TIMEOUT (60) seconds: cuda_primitives'
#      `preflight` test (versions loaded, one kernel, one GEMM); if it fails, the
#      verdict is written and nothing else runs (it would fail the same way);
#   4. runs every test of each test binary in gpu-bundle/bin in its own process
#      (`--exact NAME`), with MEP_REQUIRE_GPU=1 (so a GPU that cannot be used is a
#      failure, not a skip), each under CHECK_TIMEOUT;
#   5. runs the benchmark: the seed run on CUDA, a 784-4096-4096-10 run with batch
#      1024 on CUDA, and the seed run on the CPU for comparison.
# A check that would start after DEADLINE seconds (default 420, so that the whole
# run ends inside 9 minutes) is skipped and marked so. The summary is rewritten after
# every check, so a hang or a lost machine loses nothing already measured.
# It keeps going when a check fails and exits 1 if any did; 2 when there is no GPU
# (no nvidia-smi); 3 when the bundle is missing.
#
#   6. profiles a few seed steps with Nsight Compute where the machine has it
#      (PROFILE=0 skips it): the GPU time of each kernel per step;
#   7. the sweep of epoch time against batch size and width (SWEEP=0 skips it).
# Output goes to ${OUT:-gpu-out}/ in few files (so that a device call can bring them
# all back): env.txt, tests.log, bench.log, bench.jsonl, summary.md, and profile.csv
# and profile.md when profiled.
# Environment: GPU_BUNDLE (default gpu-bundle), CHECK_TIMEOUT (seconds per check,
# default 90), PREFLIGHT_TIMEOUT (default 60), DEADLINE (default 420),
# CPU_THREADS (default min(16, nproc)).
set -uo pipefail

bundle="${GPU_BUNDLE:-gpu-bundle}"
outdir="${OUT:-gpu-out}"
check_timeout="${CHECK_TIMEOUT:-90}"
preflight_timeout="${PREFLIGHT_TIMEOUT:-60}"
deadline="${DEADLINE:-420}"
t0="$(date +%s)"
tests=(cuda_primitives cuda_training api ground_truth resume)

say() { echo "gpu-check: $*" >&2; }

if [ ! -d "$bundle/bin" ]; then
    say "no $bundle/bin here ($(pwd)): run scripts/build-gpu-bundle.sh on the build machine and bring gpu-bundle/ along"
    exit 3
fi
mkdir -p "$outdir"
env_txt="$outdir/env.txt"
tests_log="$outdir/tests.log"
bench_log="$outdir/bench.log"
bench_jsonl="$outdir/bench.jsonl"
summary="$outdir/summary.md"
: >"$env_txt"
: >"$tests_log"
: >"$bench_log"
: >"$bench_jsonl"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    say "NO GPU: nvidia-smi is not installed on this machine, so there is no NVIDIA driver to test against."
    say "Run this script on a machine with an NVIDIA GPU (driver for CUDA 13); nothing was run."
    echo "no GPU: nvidia-smi not found" >>"$env_txt"
    exit 2
fi

# ---- libraries ---------------------------------------------------------------------------

# Directories that may hold libnvrtc.so.13 / libcublas.so.13, most likely first.
candidate_dirs() {
    local py
    for py in python3 python; do
        command -v "$py" >/dev/null 2>&1 || continue
        "$py" - <<'EOF' 2>/dev/null
import os, site, sys
roots = []
try:
    roots += site.getsitepackages()
except Exception:
    pass
try:
    roots.append(site.getusersitepackages())
except Exception:
    pass
roots += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
seen = set()
for r in roots:
    for sub in ("nvidia/cu13/lib", "nvidia/cu12/lib", "nvidia/cuda_nvrtc/lib", "nvidia/cublas/lib"):
        d = os.path.join(r, sub)
        if os.path.isdir(d) and d not in seen:
            seen.add(d)
            print(d)
EOF
    done
}

has_lib() { compgen -G "$1/$2*" >/dev/null; }

nvrtc_dir=""
cublas_dir=""
pick_dirs() {
    local d
    while IFS= read -r d; do
        [ -n "$d" ] || continue
        # CUDA 13 first; CUDA 12's user-space libraries work too (cudarc tries both names).
        if [ -z "$nvrtc_dir" ] && { has_lib "$d" libnvrtc.so.13 || has_lib "$d" libnvrtc.so.12; }; then nvrtc_dir="$d"; fi
        if [ -z "$cublas_dir" ] && { has_lib "$d" libcublas.so.13 || has_lib "$d" libcublas.so.12; }; then cublas_dir="$d"; fi
    done
}
pick_dirs < <(candidate_dirs)
if [ -z "$nvrtc_dir" ] || [ -z "$cublas_dir" ]; then
    say "searching / for nvidia/{cu13,cuda_nvrtc,cublas}/lib (python's site-packages did not have both libraries)"
    pick_dirs < <(find / -maxdepth 8 \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type d \
        \( -path '*nvidia/cu13/lib' -o -path '*nvidia/cu12/lib' -o -path '*nvidia/cuda_nvrtc/lib' -o -path '*nvidia/cublas/lib' \) -print 2>/dev/null)
fi
# A system CUDA 13 found by the dynamic linker needs no LD_LIBRARY_PATH entry.
if [ -z "$nvrtc_dir" ] && ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.1[23]'; then nvrtc_dir="(system)"; fi
if [ -z "$cublas_dir" ] && ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.1[23]'; then cublas_dir="(system)"; fi

# cudarc looks for the exact sonames (libnvrtc.so.13, libcublas.so.13, libcublasLt.so.13):
# where a wheel ships only longer names, link them from a private directory.
link_dir="$(mktemp -d /tmp/mep-gpu-libs.XXXXXX)"
add_sonames() {
    local dir="$1" so target
    [ -d "$dir" ] || return 0
    for so in libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13 libnvrtc.so.12 libcublas.so.12 libcublasLt.so.12; do
        if [ ! -e "$dir/$so" ]; then
            target="$(find "$dir" -maxdepth 1 -name "$so.*" ! -name '*builtins*' 2>/dev/null | sort | head -n 1)"
            [ -n "$target" ] && ln -sf "$target" "$link_dir/$so"
        fi
    done
}
lib_path=""
for d in "$nvrtc_dir" "$cublas_dir"; do
    case "$d" in "" | "(system)") continue ;; esac
    add_sonames "$d"
    case ":$lib_path:" in *":$d:"*) ;; *) lib_path="${lib_path:+$lib_path:}$d" ;; esac
done
lib_path="$link_dir${lib_path:+:$lib_path}"
export LD_LIBRARY_PATH="$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) CPUs"
    echo "cpu: $(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed "s/^ *//")"
    echo "glibc: $(ldd --version 2>/dev/null | head -n 1)"
    echo "nvrtc: ${nvrtc_dir:-NOT FOUND}"
    echo "cublas: ${cublas_dir:-NOT FOUND}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "bundle:"
    sed 's/^/  /' "$bundle/MANIFEST" 2>/dev/null || echo "  (no MANIFEST)"
    echo
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
} >>"$env_txt"
cat "$env_txt" >&2
[ -n "$nvrtc_dir" ] || say "WARNING: libnvrtc.so.13 not found (pip install nvidia-cuda-nvrtc==13.*); CUDA checks will fail"
[ -n "$cublas_dir" ] || say "WARNING: libcublas.so.13 not found (pip install nvidia-cublas==13.*); CUDA checks will fail"

# The binaries were linked against the build machine's glibc.
need_glibc="$(objdump -T "$bundle/bin/mep-mnist" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n 1)"
[ -n "$need_glibc" ] && say "binaries need $need_glibc or newer; this machine has: $(ldd --version 2>/dev/null | head -n 1)"

# The tests find MNIST through MEP_MNIST_DIR (set for each check below).

# ---- checks ------------------------------------------------------------------------------

rows=()   # "check|result|seconds|test_acc|epoch_seconds|samples_per_sec|gemm rate"
failed=0

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
past_deadline() { [ $(($(date +%s) - t0)) -ge "$deadline" ]; }

# The summary as it stands; rewritten after every check.
write_summary() {
    {
        echo "## GPU check: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
        echo
        echo "| check | result | seconds | test_acc | epoch_seconds | samples_per_sec | training GEMM rate vs GEMMs alone |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | --- |"
        local r c res s a e p g
        for r in "${rows[@]}"; do
            IFS='|' read -r c res s a e p g <<<"$r"
            echo "| $c | $res | $s | $a | $e | $p | $g |"
        done
        echo
        if [ "${1:-}" != final ]; then
            echo "(in progress: $(($(date +%s) - t0)) s so far)"
        elif [ "$failed" -eq 0 ]; then
            echo "All checks passed."
        else
            echo "Some checks FAILED: see tests.log and bench.log."
        fi
    } >"$summary.tmp" && mv "$summary.tmp" "$summary"
}

# run_test NAME EXE TEST TIMEOUT: one test of one binary in its own process.
run_test() {
    local name="$1" exe="$2" test="$3" limit="$4" one_log="$link_dir/one.log" start rc secs result
    if past_deadline; then
        rows+=("$name|SKIPPED (deadline ${deadline}s)|-||||")
        failed=1
        write_summary
        return 1
    fi
    say "running $name"
    start="$(now)"
    MEP_REQUIRE_GPU=1 MEP_MNIST_DIR="$bundle/mnist" timeout "$limit" "$exe" "$test" --exact --nocapture >"$one_log" 2>&1
    rc=$?
    secs="$(elapsed "$start" "$(now)")"
    {
        echo "===== $name ====="
        cat "$one_log"
        echo "===== $name: exit $rc after ${secs}s ====="
    } >>"$tests_log"
    if [ "$rc" -eq 0 ] && grep -q '^test result: ok. 1 passed' "$one_log"; then
        result="pass"
    elif [ "$rc" -eq 124 ]; then
        result="FAIL (timeout ${limit}s)"
    else
        result="FAIL (exit $rc)"
    fi
    rows+=("$name|$result|$secs||||")
    write_summary
    [ "$result" = pass ] || { failed=1; return 1; }
}

# Preflight: versions, one kernel, one GEMM. Without it passing nothing else can.
if ! run_test "preflight (versions, one kernel, one GEMM)" "$bundle/bin/cuda_primitives" preflight "$preflight_timeout"; then
    say "preflight failed: see $tests_log; no further checks"
    write_summary final
    cat "$summary"
    rm -rf "$link_dir"
    exit 1
fi
grep -h '^preflight:' "$tests_log" >>"$env_txt" || true

for t in "${tests[@]}"; do
    exe="$bundle/bin/$t"
    if [ ! -x "$exe" ]; then
        rows+=("test $t|MISSING|-||||")
        failed=1
        write_summary
        continue
    fi
    while IFS= read -r name; do
        [ "$t" = cuda_primitives ] && [ "$name" = preflight ] && continue
        run_test "test $t::$name" "$exe" "$name" "$check_timeout" || true
    done < <("$exe" --list --format terse 2>/dev/null | sed -n 's/: test$//p')
done

threads="${CPU_THREADS:-$(($(nproc) < 16 ? $(nproc) : 16))}"
benches=(
    "mep-mnist cuda (seed)|--device cuda --data-dir $bundle/mnist --json --gemm-rate"
    "mep-mnist cuda eager, MEP_CUDA_GRAPHS=0 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda unfused, MEP_CUDA_FUSED=0 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda W1 Newton-Schulz as square_products, MEP_CUDA_NS_ITERATION_MAX_K=0 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda W1 Newton-Schulz on cuBLAS, MEP_CUDA_NS_ITERATION_MAX_K=0 MEP_CUDA_SQUARE_MAX_K=0 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda one stream, MEP_CUDA_BRANCHES=1 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda two streams, MEP_CUDA_BRANCHES=2 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda six streams, MEP_CUDA_BRANCHES=6 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda eager unfused, MEP_CUDA_GRAPHS=0 MEP_CUDA_FUSED=0 (seed)|--device cuda --data-dir $bundle/mnist --json"
    "mep-mnist cuda hopfield (seed widths)|--device cuda --energy hopfield --data-dir $bundle/mnist --json"
    "mep-mnist cuda hopfield unfused, MEP_CUDA_FUSED=0 (seed widths)|--device cuda --energy hopfield --data-dir $bundle/mnist --json"
    "mep-mnist cuda hopfield symmetric, phases side by side (seed widths)|--device cuda --energy hopfield --nudging symmetric --data-dir $bundle/mnist --json"
    "mep-mnist cuda hopfield symmetric unfused, MEP_CUDA_FUSED=0 (seed widths)|--device cuda --energy hopfield --nudging symmetric --data-dir $bundle/mnist --json"
    "mep-mnist cuda symmetric nudging, phases side by side (seed widths)|--device cuda --nudging symmetric --data-dir $bundle/mnist --json"
    "mep-mnist cuda symmetric nudging unfused, MEP_CUDA_FUSED=0 (seed widths)|--device cuda --nudging symmetric --data-dir $bundle/mnist --json"
    "mep-mnist cuda 128,128 (symmetric, phases side by side)|--device cuda --hidden 128,128 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 256,256 (symmetric)|--device cuda --hidden 256,256 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 256,256 Newton-Schulz iterations fused, MEP_CUDA_NS_ITERATION_MAX_K=256 (symmetric)|--device cuda --hidden 256,256 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 256,256 unfused, MEP_CUDA_FUSED=0 (symmetric)|--device cuda --hidden 256,256 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 256,256 fused, MEP_CUDA_FUSED_MAX_COUPLINGS=131072 (symmetric)|--device cuda --hidden 256,256 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 256,256 b1024 (symmetric)|--device cuda --hidden 256,256 --batch-size 1024 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 256,256 b1024 fused, MEP_CUDA_FUSED_MAX_COUPLINGS=131072 (symmetric)|--device cuda --hidden 256,256 --batch-size 1024 --data-dir $bundle/mnist --json"
    # The fused phase against the batch (a rows-aware limit): the sweep's fused rows at
    # the same widths and batches are the other half of each comparison.
    "mep-mnist cuda 128 b1024 unfused, MEP_CUDA_FUSED=0|--device cuda --hidden 128 --batch-size 1024 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 128 b4096 unfused, MEP_CUDA_FUSED=0|--device cuda --hidden 128 --batch-size 4096 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 1024 b4096 unfused, MEP_CUDA_FUSED=0|--device cuda --hidden 1024 --batch-size 4096 --data-dir $bundle/mnist --json"
    "mep-mnist cuda 4096,4096 b1024|--device cuda --hidden 4096,4096 --batch-size 1024 --epochs 1 --data-dir $bundle/mnist --json --gemm-rate"
    "mep-mnist cpu ${threads} threads (seed)|--device cpu --threads $threads --data-dir $bundle/mnist --json"
)
for b in "${benches[@]}"; do
    name="${b%%|*}"
    args="${b#*|}"
    if past_deadline; then
        rows+=("$name|SKIPPED (deadline ${deadline}s)|-||||")
        failed=1
        write_summary
        continue
    fi
    say "running $name"
    echo "===== $name: mep-mnist $args =====" >>"$bench_log"
    start="$(now)"
    # shellcheck disable=SC2086 # args is a flag list
    graphs=1
    fused=1
    case "$name" in *MEP_CUDA_GRAPHS=0*) graphs=0 ;; esac
    case "$name" in *MEP_CUDA_FUSED=0*) fused=0 ;; esac
    # The fused phase's coupling limit, where the row names one (the threshold's
    # measurement: the same network fused and not).
    max_couplings="$(printf '%s' "$name" | sed -n 's/.*MEP_CUDA_FUSED_MAX_COUPLINGS=\([0-9]*\).*/\1/p')"
    # The k limit of square_products (Newton–Schulz's Gram-space products), likewise.
    square_max_k="$(printf '%s' "$name" | sed -n 's/.*MEP_CUDA_SQUARE_MAX_K=\([0-9]*\).*/\1/p')"
    # The k limit of ns_iteration (a Newton–Schulz iteration in one launch), likewise.
    ns_max_k="$(printf '%s' "$name" | sed -n 's/.*MEP_CUDA_NS_ITERATION_MAX_K=\([0-9]*\).*/\1/p')"
    # The streams independent branches run on (MEP_CUDA_BRANCHES), likewise.
    branches="$(printf '%s' "$name" | sed -n 's/.*MEP_CUDA_BRANCHES=\([0-9]*\).*/\1/p')"
    out="$(MEP_CUDA_BRANCHES=${branches:-3} MEP_CUDA_FUSED_MAX_COUPLINGS=${max_couplings:-65536} MEP_CUDA_SQUARE_MAX_K=${square_max_k:-256} MEP_CUDA_NS_ITERATION_MAX_K=${ns_max_k:-128} MEP_CUDA_GRAPHS=$graphs MEP_CUDA_FUSED=$fused timeout "$check_timeout" "$bundle/bin/mep-mnist" $args 2>>"$bench_log")"
    rc=$?
    secs="$(elapsed "$start" "$(now)")"
    echo "$out" >>"$bench_log"
    echo "===== $name: exit $rc after ${secs}s =====" >>"$bench_log"
    json="$(printf '%s\n' "$out" | grep '"epoch_seconds"' | tail -n 1)"
    rate_json="$(printf '%s\n' "$out" | grep '"fraction_of_gemm_rate"' | tail -n 1)"
    acc="" eps="" sps="" gf=""
    if [ -n "$rate_json" ]; then
        gf="$(printf '%s' "$rate_json" | python3 -c "import json, sys
d = json.load(sys.stdin)
print('%.0f GFLOP/s = %.0f%% of %.0f' % (d['train_gflop_per_sec'], 100 * d['fraction_of_gemm_rate'], d['gemm_rate_gflop_per_sec']))" 2>/dev/null)"
    fi
    if [ -n "$json" ]; then
        printf '{"check": "%s", "json": %s}\n' "$name" "$json" >>"$bench_jsonl"
        read -r acc eps sps < <(printf '%s' "$json" | python3 -c "import json, sys
d = json.load(sys.stdin)
print('%.4f %.2f %.0f' % (d['test_acc'], d['epoch_seconds'], d['samples_per_sec']))" 2>/dev/null)
    fi
    if [ "$rc" -eq 0 ] && [ -n "$json" ]; then
        result="pass"
    elif [ "$rc" -eq 124 ]; then
        result="FAIL (timeout ${check_timeout}s)"
        failed=1
    else
        result="FAIL (exit $rc$([ -z "$json" ] && echo ', no JSON'))"
        failed=1
    fi
    rows+=("$name|$result|$secs|$acc|$eps|$sps|$gf")
    write_summary
done

# ---- profile: where a seed step's GPU time goes (Nsight Compute, if the machine has it) ---
# ncu times each kernel of a few steady-state steps of the seed configuration (graphs on;
# ncu profiles a graph's kernel nodes one by one, serialised); profile.md gets the time
# per kernel and per step, to hold against the ms per step measured above: the
# difference is what launching costs. Skipped without ncu (it needs the hardware
# counters: Firecracker machines have them, gVisor ones do not, see the device notes).
profile_md="$outdir/profile.md"
ncu_bin="$(command -v ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)"
if [ "${PROFILE:-1}" = 1 ] && [ -n "$ncu_bin" ] && ! past_deadline; then
    say "profiling a few seed steps with $ncu_bin"
    start="$(now)"
    timeout "${PROFILE_TIMEOUT:-150}" "$ncu_bin" --clock-control none --metrics gpu__time_duration.sum --print-units base \
        --launch-skip "${PROFILE_SKIP:-1500}" --launch-count "${PROFILE_COUNT:-260}" --csv \
        "$bundle/bin/mep-mnist" --device cuda --train-subset 6400 --data-dir "$bundle/mnist" --json \
        >"$outdir/profile.csv" 2>>"$bench_log"
    rc=$?
    python3 - "$outdir/profile.csv" >"$profile_md" 2>&1 <<'PY'
import csv, sys
from collections import OrderedDict
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = [i for i, r in enumerate(rows) if "Kernel Name" in r and "Metric Value" in r]
if not head:
    print("no ncu rows (see bench.log)")
    sys.exit(0)
h = rows[head[0]]
name, metric, value = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Value")
per = OrderedDict()
for r in rows[head[0] + 1:]:
    if len(r) != len(h) or r[metric] != "gpu__time_duration.sum":
        continue
    ns = float(r[value].replace(",", ""))
    k = r[name].split("(")[0][:60]
    c, t = per.get(k, (0, 0.0))
    per[k] = (c + 1, t + ns)
steps = max(per.get("gather_rows", (1, 0))[0], 1)
total = sum(t for _, t in per.values())
print("### GPU time per kernel, seed step (ncu, %d steps profiled, graphs on)" % steps)
print()
print("| kernel | launches per step | µs per step | µs per launch |")
print("| --- | ---: | ---: | ---: |")
for k, (c, t) in sorted(per.items(), key=lambda kv: -kv[1][1]):
    print("| %s | %.1f | %.2f | %.2f |" % (k, c / steps, t / steps / 1e3, t / c / 1e3))
print()
print("Kernel time per step: %.1f µs over %.1f launches (compare the graph run's ms per step)." % (total / steps / 1e3, sum(c for c, _ in per.values()) / steps))
PY
    echo "===== profile: ncu exit $rc after $(elapsed "$start" "$(now)")s =====" >>"$bench_log"
fi

# ---- sweep: epoch time against batch size and width (issue 7's table) ------------------
# Runs while time is left before SWEEP_DEADLINE (default DEADLINE + 30 s); its rows go to
# bench.jsonl (with "sweep": true) and to the summary's second table. A sweep row that
# does not finish is recorded, not counted as a failure: the sweep is a measurement.
sweep_deadline="${SWEEP_DEADLINE:-$((deadline + 30))}"
sweep_rows=()
write_sweep() {
    {
        echo
        echo "### Epoch time against batch size and width (CUDA, layered EP, seed hyper-parameters, 1 epoch)"
        echo
        echo "| hidden | batch | steps | epoch_seconds | ms per step | samples_per_sec | GFLOP/s | test_acc |"
        echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        local r
        for r in "${sweep_rows[@]}"; do echo "$r"; done
    } >>"$summary"
}
if [ "${SWEEP:-1}" = 1 ]; then
    for hidden in 128 1024 4096; do
        for batch in 64 256 1024 4096; do
            if [ $(($(date +%s) - t0)) -ge "$sweep_deadline" ]; then
                sweep_rows+=("| $hidden | $batch | | skipped (sweep deadline ${sweep_deadline}s) | | | | |")
                continue
            fi
            say "sweep hidden=$hidden batch=$batch"
            args="--device cuda --hidden $hidden --batch-size $batch --epochs 1 --data-dir $bundle/mnist --json"
            echo "===== sweep: mep-mnist $args =====" >>"$bench_log"
            # shellcheck disable=SC2086 # args is a flag list
            out="$(timeout 60 "$bundle/bin/mep-mnist" $args 2>>"$bench_log")"
            rc=$?
            echo "$out" >>"$bench_log"
            json="$(printf '%s\n' "$out" | grep '"epoch_seconds"' | tail -n 1)"
            if [ "$rc" -eq 0 ] && [ -n "$json" ]; then
                printf '{"check": "sweep", "sweep": true, "hidden": %s, "batch": %s, "json": %s}\n' "$hidden" "$batch" "$json" >>"$bench_jsonl"
                sweep_rows+=("$(printf '%s' "$json" | python3 -c "import json, math, sys
d = json.load(sys.stdin)
steps = math.ceil(60000 / $batch)
print('| $hidden | $batch | %d | %.3f | %.3f | %.0f | %.0f | %.4f |' % (steps, d['epoch_seconds'], 1e3 * d['epoch_seconds'] / steps, d['samples_per_sec'], d['gflop_per_sec'], d['test_acc']))" 2>/dev/null)")
            else
                sweep_rows+=("| $hidden | $batch | | FAIL (exit $rc) | | | | |")
            fi
        done
    done
fi

write_summary final
[ "${SWEEP:-1}" = 1 ] && write_sweep
[ -s "$profile_md" ] && { echo; cat "$profile_md"; } >>"$summary"
cat "$summary"
rm -rf "$link_dir"
exit "$failed"
