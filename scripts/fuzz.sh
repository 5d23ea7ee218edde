#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS (default 60) each; fails on the first crash.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, coverage instrumentation); the project
# builds on stable, so RUSTC_BOOTSTRAP=1 unlocks them on the stable toolchain. The committed seed
# corpus (fuzz/corpus/<target>) is read but never written: new inputs go to fuzz/work/<target>
# (ignored by git). A crash leaves its input in fuzz/artifacts/<target>/: turn it into a unit test.
#
#   FUZZ_SECONDS=30 scripts/fuzz.sh            every target
#   FUZZ_SECONDS=600 scripts/fuzz.sh resp      one target
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_EACH="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -O
status=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t"
    echo "== fuzz $t for ${SECONDS_EACH}s"
    log="work/$t.log"
    # -rss_limit_mb: the decoders are bounded; a blow-up past 2 GB is a bug, not noise.
    if cargo fuzz run -O "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$log" 2>&1; then
        grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units)" "$log" || true
    else
        tail -40 "$log" >&2
        echo "fuzz target $t FAILED: the input is in fuzz/artifacts/$t/" >&2
        status=1
    fi
done
exit $status
