#!/usr/bin/env bash
# The CUDA backend end to end on the emulated GPU (emu/, see emu/src/lib.rs), against
# the CPU: `mep-mnist --device cuda --json --train-subset N` on the emulator and the
# same run with --device cpu, plus the per-step host costs of the seed configuration
# (tests/cuda_training.rs, host_costs_per_step_of_the_seed_configuration).
#
# Prints as its last line one JSON object: emulated_test_acc, cpu_test_acc, and per
# steady-state step with CUDA graphs (the default): graph_launches_per_step,
# launches_per_step and cublas_calls_per_step (outside graphs), graph_nodes_per_step
# (the work inside the graph), graph_path_nodes_per_step (its longest chain of
# dependent operations: the graph's branches run side by side), syncs_per_step,
# copies_per_step; the same step without
# graphs (MEP_CUDA_GRAPHS=0): eager_launches_per_step, eager_cublas_calls_per_step;
# emulator_errors, ok.
# Exits non-zero when the test accuracies differ by more than 0.5 point, when any
# emulator check fired (a `mep-emu: error:` line, or a non-zero error counter), or
# when the emulated run fails.
#
# Usage: scripts/emulated-gpu.sh [--broken]
#   --broken  builds mep-mnist with the test-only feature `broken-gemm-lda` (one
#             GEMM's lda off by one) and succeeds only if the check above FAILS: the
#             proof that the emulator can fail.
# Environment: MEP_EMU_SUBSET (default 6400), MEP_MNIST_DIR (default data/mnist).
set -euo pipefail
cd "$(dirname "$0")/.."

broken=0
[ "${1:-}" = "--broken" ] && broken=1
subset="${MEP_EMU_SUBSET:-6400}"
data="${MEP_MNIST_DIR:-data/mnist}"
work="$(mktemp -d "${TMPDIR:-/tmp}/mep-emu.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "emulated-gpu: building the emulator and mep-mnist" >&2
# host-kernels: the same build of the library as the test suite's, so nothing rebuilds.
features=(--features host-kernels)
[ "$broken" = 1 ] && features=(--features host-kernels,broken-gemm-lda)
cargo build --release --quiet --bin mep-mnist "${features[@]}"
emu_path="$(bash scripts/emu-libdir.sh):$(bash scripts/install-nvrtc.sh)"
run_args=(--json --train-subset "$subset" --data-dir "$data" --seed 0)

echo "emulated-gpu: mep-mnist on the emulated GPU (train subset $subset)" >&2
emu_rc=0
LD_LIBRARY_PATH="$emu_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" MEP_EMU_COUNTERS="$work/counters.json" \
    target/release/mep-mnist --device cuda "${run_args[@]}" >"$work/emu.json" 2>"$work/emu.log" || emu_rc=$?
grep -a "mep-emu: error" "$work/emu.log" | head -n 20 >&2 || true
[ "$emu_rc" = 0 ] || { echo "emulated-gpu: the emulated run failed (exit $emu_rc):" >&2; tail -n 5 "$work/emu.log" >&2; }

if [ "$broken" = 1 ]; then
    # Leave no sabotaged target/release/mep-mnist behind.
    echo "emulated-gpu: rebuilding mep-mnist without the sabotage" >&2
    cargo build --release --quiet --bin mep-mnist --features host-kernels
    if [ "$emu_rc" != 0 ] || grep -qa "mep-emu: error" "$work/emu.log"; then
        echo '{"broken_backend_detected":true,"ok":true}'
        exit 0
    fi
    echo '{"broken_backend_detected":false,"ok":false}'
    exit 1
fi

echo "emulated-gpu: mep-mnist on the CPU" >&2
target/release/mep-mnist --device cpu "${run_args[@]}" >"$work/cpu.json" 2>"$work/cpu.log"

echo "emulated-gpu: per-step host costs of the seed configuration" >&2
LD_LIBRARY_PATH="$emu_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" MEP_REQUIRE_GPU=1 \
    MEP_EMU_STEP_COUNTS="$work/steps.json" \
    cargo test --release --quiet --features host-kernels --test cuda_training \
    host_costs_per_step_of_the_seed_configuration >"$work/steps.log" 2>&1 ||
    { tail -n 20 "$work/steps.log" >&2; echo '{}' >"$work/steps.json"; }

python3 - "$work" "$emu_rc" <<'PY'
import json, sys, os
work, emu_rc = sys.argv[1], int(sys.argv[2])
def last_json(path):
    try:
        lines = [l for l in open(path) if l.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else {}
    except OSError:
        return {}
emu, cpu = last_json(f"{work}/emu.json"), last_json(f"{work}/cpu.json")
steps, counters = last_json(f"{work}/steps.json"), last_json(f"{work}/counters.json")
log_errors = sum("mep-emu: error" in l for l in open(f"{work}/emu.log", errors="replace"))
errors = max(counters.get("errors", 0), log_errors)
ea, ca = emu.get("test_acc"), cpu.get("test_acc")
out = {
    "emulated_test_acc": ea,
    "cpu_test_acc": ca,
    "launches_per_step": steps.get("launches_per_step"),
    "cublas_calls_per_step": steps.get("cublas_calls_per_step"),
    "syncs_per_step": steps.get("syncs_per_step"),
    "copies_per_step": steps.get("copies_per_step"),
    "graph_launches_per_step": steps.get("graph_launches_per_step"),
    "graph_nodes_per_step": steps.get("graph_nodes_per_step"),
    "graph_path_nodes_per_step": steps.get("graph_path_nodes_per_step"),
    "eager_launches_per_step": steps.get("eager_launches_per_step"),
    "eager_cublas_calls_per_step": steps.get("eager_cublas_calls_per_step"),
    "emulator_errors": errors,
}
problems = []
if emu_rc != 0: problems.append(f"emulated run exited {emu_rc}")
if errors: problems.append(f"{errors} emulator checks fired")
if ea is None or ca is None: problems.append("missing test_acc")
elif abs(ea - ca) * 100 > 0.5: problems.append(f"accuracies differ by {abs(ea - ca) * 100:.2f} points")
if steps.get("launches_per_step") is None: problems.append("no per-step counts")
out["ok"] = not problems
if problems: out["problems"] = problems
print(json.dumps(out))
sys.exit(0 if out["ok"] else 1)
PY
