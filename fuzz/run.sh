#!/usr/bin/env bash
# Runs every Onramp fuzz target for a fixed time each and fails if any of them
# finds a crash, a panic, a failed assertion, a timeout or an out-of-memory.
#
#   fuzz/run.sh                           # 30 s per target
#   FUZZ_SECONDS=300 fuzz/run.sh          # longer
#   FUZZ_TARGETS="csr_der est_body" fuzz/run.sh
#
# cargo-fuzz needs unstable compiler flags (-Zsanitizer); Onramp builds on the
# stable toolchain, so RUSTC_BOOTSTRAP=1 is set for the fuzz build only.
# New inputs go to fuzz/corpus/<target> (git-ignored); the committed seeds in
# fuzz/seeds/<target> are read but never written. A crashing input is saved
# under fuzz/artifacts/<target>/.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
ALL_TARGETS="csr_der est_body cert_der ocsp_request scep_message firmware_version names mqtt_packets template provisioning_requests jobs_requests shadow_update subscriptions policy"
TARGETS=${FUZZ_TARGETS:-$ALL_TARGETS}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
installed=$(cargo fuzz --version 2>/dev/null || true)
if [ "$installed" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "note: using $installed (pinned: $CARGO_FUZZ_VERSION)"
fi

echo "==> building fuzz targets"
build_start=$SECONDS
cargo fuzz build --fuzz-dir fuzz
echo "    built in $((SECONDS - build_start)) s"

failed=()
summary=()
for target in $TARGETS; do
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    log=$(mktemp "${TMPDIR:-/tmp}/onramp-fuzz-$target.XXXXXX")
    echo "==> $target for ${FUZZ_SECONDS} s (log: $log)"
    start=$SECONDS
    status=0
    cargo fuzz run --fuzz-dir fuzz "$target" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    took=$((SECONDS - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(sed -n 's/^#[0-9]*[[:space:]]*DONE[[:space:]]*cov: \([0-9]*\).*/\1/p' "$log" | tail -n 1)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        summary+=("$(printf '%-17s ok     %4d s  %10s execs  cov %-5s corpus %s' \
            "$target" "$took" "${runs:-?}" "${cov:-?}" "$corpus")")
        rm -f "$log"
    else
        summary+=("$(printf '%-17s FAILED %4d s  exit %s, log %s' "$target" "$took" "$status" "$log")")
        failed+=("$target")
        # Show the finding: libFuzzer's report and the Rust panic message.
        grep -E -A 40 '^(==[0-9]+==ERROR|thread .* panicked)' "$log" | head -n 80 || tail -n 60 "$log"
        ls -1 "fuzz/artifacts/$target" 2>/dev/null | sed "s|^|    artifact: fuzz/artifacts/$target/|" || true
    fi
done

echo
echo "==> summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found problems in: ${failed[*]}"
    echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/<file>"
    exit 1
fi
echo "no crashes"
