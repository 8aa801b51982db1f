#!/usr/bin/env bash
# CI's check of the fuzz package: builds every fuzz target with the ordinary
# stable toolchain (no sanitizers, no RUSTC_BOOTSTRAP), then runs each target
# binary once over every committed seed in fuzz/seeds/<target>/. Fails if the
# package does not build, if a target has no seeds, if the targets of
# fuzz/Cargo.toml and fuzz/run.sh disagree, or if any seed makes a target
# panic, fail an assertion or crash. fuzz/regress.sh does the same run under
# AddressSanitizer with cargo-fuzz; see docs/fuzzing.md for the difference.
#
#   fuzz/check.sh
#   FUZZ_TARGETS="policy shadow_update" fuzz/check.sh
#
# The binaries are built into the workspace's target directory (or
# CARGO_TARGET_DIR), in the dev profile that fuzz/Cargo.toml sets to match the
# workspace's, so the dependencies the two share are compiled once.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}

# libfuzzer-sys compiles libFuzzer's C++ sources; stock Debian and Ubuntu
# images may have a C linker without a C++ compiler.
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    echo "fuzz check: installing g++ (libFuzzer is C++)" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
    else
        echo "fuzz check: no C++ compiler and no root to install g++; install it and rerun" >&2
        exit 2
    fi
fi

# The list of fuzz/run.sh, so the scripts cannot disagree.
ALL_TARGETS=$(sed -n 's/^ALL_TARGETS="\(.*\)"$/\1/p' fuzz/run.sh)
if [ -z "$ALL_TARGETS" ]; then
    echo "fuzz check: could not read ALL_TARGETS from fuzz/run.sh" >&2
    exit 2
fi
# A target added to fuzz/Cargo.toml but not to that list would never be run.
bins=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -vx onramp-fuzz | sort)
listed=$(tr ' ' '\n' <<<"$ALL_TARGETS" | sort)
if [ "$bins" != "$listed" ]; then
    echo "fuzz check: the [[bin]] targets of fuzz/Cargo.toml and ALL_TARGETS of fuzz/run.sh differ:" >&2
    diff <(echo "$bins") <(echo "$listed") >&2 || true
    exit 2
fi
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}

start=$SECONDS
cargo build --manifest-path fuzz/Cargo.toml --locked --bins --target-dir "$target_dir"
echo "fuzz check: built the fuzz targets in $((SECONDS - start)) s"

passed=0
failed=()
for target in $TARGETS; do
    bin="$target_dir/debug/$target"
    mapfile -t seeds < <(find "fuzz/seeds/$target" -type f 2>/dev/null | sort)
    if [ "${#seeds[@]}" -eq 0 ]; then
        echo "FAILED $target: no seeds in fuzz/seeds/$target"
        failed+=("$target")
        continue
    fi
    log=$(mktemp "${TMPDIR:-/tmp}/onramp-fuzz-check-$target.XXXXXX")
    # Given files rather than a directory, libFuzzer runs each one once and
    # exits: no fuzzing, nothing written.
    if "$bin" -timeout=30 -rss_limit_mb=2048 "${seeds[@]}" >"$log" 2>&1; then
        ran=$(grep -c '^Executed ' "$log" || true)
        if [ "$ran" -ne "${#seeds[@]}" ]; then
            echo "FAILED $target: ran $ran of ${#seeds[@]} seeds (log $log)"
            failed+=("$target")
            continue
        fi
        printf 'ok     %-22s %3d seeds\n' "$target" "$ran"
        passed=$((passed + 1))
        rm -f "$log"
    else
        printf 'FAILED %-22s log %s\n' "$target" "$log"
        grep -E -B 2 -A 40 'panicked|==[0-9]+== ?ERROR' "$log" | head -n 60 || tail -n 40 "$log"
        failed+=("$target")
    fi
done

echo "fuzz check: $((SECONDS - start)) s in total"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "seed regressions in: ${failed[*]}"
    echo "reproduce: $target_dir/debug/<target> fuzz/seeds/<target>/<seed>"
fi
echo "seeds: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
