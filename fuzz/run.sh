#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each.
#
#   fuzz/run.sh SECONDS [TARGET...]      e.g. fuzz/run.sh 10   (CI)
#                                             fuzz/run.sh 600 metrics_exposition
#
# Installs cargo-fuzz (from crates.io) if it is missing; needs the nightly
# toolchain (cargo xtask setup installs it). Each target starts from
# fuzz/seeds/<target>/ (committed) plus fuzz/corpus/<target>/ (what earlier
# runs found, not committed). A crash stops that target and leaves
# fuzz/artifacts/<target>/crash-*; the script goes on with the others and
# exits 1 at the end. Ends with "N passed, N failed".
#
# FUZZ_SANITIZER=none (cargo xtask test sets it) builds without
# AddressSanitizer: the fuzzed code is safe Rust, so ASan adds little there
# but doubles the build and halves the executions per second. The default
# (address) is for long runs on demand. CARGO_TARGET_DIR is honoured
# (cargo xtask keeps the build in ~/.cache/gupwatch/fuzz-target).
set -uo pipefail
san="${FUZZ_SANITIZER:-address}"

secs="${1:-10}"
shift || true
case "$secs" in
    '' | *[!0-9]*) echo "usage: fuzz/run.sh SECONDS [TARGET...]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked || exit 2
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Release with debug assertions and overflow checks (cargo-fuzz's default).
# One build for all targets.
echo "fuzz/run.sh: building ${#targets[@]} targets" >&2
cargo +nightly fuzz build -s "$san" || exit 2

passed=0
failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz/run.sh: $t for ${secs}s" >&2
    log="$(mktemp)"
    if cargo +nightly fuzz run -s "$san" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
        runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')"
        echo "fuzz/run.sh: $t ok (${runs:-?} runs)" >&2
        passed=$((passed + 1))
    else
        # The panic and the sanitizer's summary, not the input's dump.
        grep -E -A4 "panicked at|^==[0-9]+== ERROR|^SUMMARY|Failing input|Reproduce with" "$log" | grep -v "^Output of" | head -n 40 >&2
        echo "fuzz/run.sh: $t FAILED; the input is in fuzz/artifacts/$t/. Replay it with" >&2
        echo "  cargo +nightly fuzz run $t fuzz/artifacts/$t/<file>" >&2
        echo "then copy it into fuzz/seeds/$t/ (gup-user's tests/fuzz_seeds.rs replays every seed) and fix." >&2
        failed+=("$t")
    fi
    rm -f "$log"
done

[ ${#failed[@]} -eq 0 ] || echo "fuzz/run.sh: failed: ${failed[*]}" >&2
echo "${passed} passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
