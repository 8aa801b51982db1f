#!/usr/bin/env bash
# Regression run of every Onramp fuzz target over its committed seeds only:
# no fuzzing, no new inputs, so the result depends on the repository alone.
# Fails if any seed makes a target crash, panic, fail an assertion, time out
# or run out of memory. Meant for CI; fuzz/run.sh is for actual fuzzing.
#
#   fuzz/regress.sh                          # every target
#   FUZZ_TARGETS="policy shadow_update" fuzz/regress.sh
#
# cargo-fuzz needs unstable compiler flags (-Zsanitizer); Onramp builds on the
# stable toolchain, so RUSTC_BOOTSTRAP=1 is set for the fuzz build only.
# cargo-fuzz is installed at its pinned version when it is missing.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# The list of fuzz/run.sh, so the two scripts cannot disagree.
ALL_TARGETS=$(sed -n 's/^ALL_TARGETS="\(.*\)"$/\1/p' fuzz/run.sh)
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}
if [ -z "$TARGETS" ]; then
    echo "no targets: could not read ALL_TARGETS from fuzz/run.sh" >&2
    exit 2
fi

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

start=$SECONDS
echo "==> building fuzz targets"
cargo fuzz build --fuzz-dir fuzz
echo "    built in $((SECONDS - start)) s"

failed=()
for target in $TARGETS; do
    seeds="fuzz/seeds/$target"
    count=$(find "$seeds" -type f 2>/dev/null | wc -l)
    if [ "$count" -eq 0 ]; then
        echo "FAILED $target: no seeds in $seeds"
        failed+=("$target")
        continue
    fi
    log=$(mktemp "${TMPDIR:-/tmp}/onramp-regress-$target.XXXXXX")
    # -runs=0 executes each input once and mutates nothing; the seeds
    # directory is the only corpus, and libFuzzer writes to the first corpus
    # directory only when it finds something new, which it cannot with no runs.
    if cargo fuzz run --fuzz-dir fuzz "$target" "$seeds" -- \
        -runs=0 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        printf 'ok     %-22s %3d seeds\n' "$target" "$count"
        rm -f "$log"
    else
        printf 'FAILED %-22s log %s\n' "$target" "$log"
        grep -E -A 40 '^(==[0-9]+==ERROR|thread .* panicked)' "$log" | head -n 60 || tail -n 40 "$log"
        failed+=("$target")
    fi
done

echo "==> $((SECONDS - start)) s in total"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "seed regressions in: ${failed[*]}"
    echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/seeds/<target> -- -runs=0"
    exit 1
fi
echo "every seed of every target passed"
