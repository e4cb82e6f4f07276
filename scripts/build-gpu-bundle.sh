#!/usr/bin/env bash
# Builds gpu-bundle/: stripped release test binaries (cuda_primitives, cuda_training,
# api, ground_truth), the mep-mnist benchmark, and MNIST gzipped, so that
# scripts/gpu-check.sh can run them on a GPU machine that has no Rust toolchain.
#
# Usage (from anywhere, on the build machine):
#   bash scripts/build-gpu-bundle.sh
# Honours CARGO_TARGET_DIR. MNIST is taken from data/mnist (scripts/fetch-mnist.sh);
# without it the bundle has no data and the benchmark rows of gpu-check.sh fail.
# The bundle must stay under 60 MiB (what a device call may carry).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="$root/gpu-bundle"
limit_mib=60
tests=(cuda_primitives cuda_training api ground_truth resume)

command -v cargo >/dev/null || { echo "build-gpu-bundle: cargo not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "build-gpu-bundle: python3 not found (parses cargo's JSON)" >&2; exit 1; }

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/mnist"

echo "build-gpu-bundle: building release test binaries" >&2
test_args=()
for t in "${tests[@]}"; do test_args+=(--test "$t"); done
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test --release --no-run --message-format=json "${test_args[@]}" >"$json"

# One "name<TAB>path" line per test executable of the requested targets.
python3 - "$json" "${tests[@]}" >"$json.list" <<'EOF'
import json, sys
path, wanted = sys.argv[1], set(sys.argv[2:])
found = {}
for line in open(path):
    line = line.strip()
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    t = msg["target"]
    if t["name"] in wanted and "test" in t["kind"] and msg["profile"]["test"]:
        found[t["name"]] = msg["executable"]
missing = sorted(wanted - set(found))
if missing:
    sys.exit("build-gpu-bundle: no executable for test target(s): " + ", ".join(missing))
for name, exe in sorted(found.items()):
    print(f"{name}\t{exe}")
EOF
while IFS=$'\t' read -r name exe; do
    cp "$exe" "$bundle/bin/$name"
    echo "  test $name <- $exe" >&2
done <"$json.list"
rm -f "$json.list"

echo "build-gpu-bundle: building mep-mnist" >&2
cargo build --release --bin mep-mnist
target_dir="${CARGO_TARGET_DIR:-$root/target}"
cp "$target_dir/release/mep-mnist" "$bundle/bin/mep-mnist"

if command -v strip >/dev/null; then
    strip "$bundle"/bin/*
else
    echo "build-gpu-bundle: strip not found; binaries left unstripped" >&2
fi
chmod +x "$bundle"/bin/*

mnist_files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
have_mnist=yes
for f in "${mnist_files[@]}"; do
    if [ -f "data/mnist/$f" ]; then
        gzip -9 -c "data/mnist/$f" >"$bundle/mnist/$f.gz"
    elif [ -f "data/mnist/$f.gz" ]; then
        cp "data/mnist/$f.gz" "$bundle/mnist/$f.gz"
    else
        have_mnist=no
    fi
done
if [ "$have_mnist" = no ]; then
    echo "build-gpu-bundle: WARNING: data/mnist is incomplete (run scripts/fetch-mnist.sh); the bundle has no MNIST" >&2
    rm -f "$bundle"/mnist/*
fi

{
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "rustc: $(rustc --version 2>/dev/null || echo unknown)"
    echo "manifest_dir: $root"
    echo "tests: ${tests[*]}"
    echo "mnist: $have_mnist"
} >"$bundle/MANIFEST"

bytes="$(du -sb "$bundle" | cut -f1)"
mib="$(python3 -c "print(f'{$bytes / 2**20:.1f}')")"
echo "build-gpu-bundle: $bundle is $mib MiB:" >&2
(cd "$bundle" && du -ab bin mnist | sort -k2 | awk '{printf "  %8.1f MiB  %s\n", $1 / 1048576, $2}') >&2
if [ "$bytes" -ge $((limit_mib * 1024 * 1024)) ]; then
    echo "build-gpu-bundle: ERROR: the bundle is over $limit_mib MiB" >&2
    exit 1
fi
echo "$mib MiB"
