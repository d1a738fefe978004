#!/usr/bin/env bash
# make fuzz: runs every cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each, all
# targets at once (one core each), starting from the committed seed corpus in fuzz/corpus.
# New inputs the fuzzer finds go to target/fuzz-corpus/<target>, so the repository's corpus
# only changes on purpose; a crash leaves its input in fuzz/artifacts/<target>/ and fails.
#
#   FUZZ_SECONDS   how long each target runs (default 60)
#   FUZZ_TARGETS   which targets (default: all)
#
# cargo-fuzz needs a nightly compiler for its sanitizer flags: the `nightly` toolchain when
# rustup has one, else the stable compiler with RUSTC_BOOTSTRAP=1. Debug assertions are on,
# so an arithmetic overflow is a crash too.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-frame_decoder handshake}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

cargo "${toolchain[@]}" fuzz build --release --debug-assertions
mkdir -p target/fuzz-logs
pids=()
for t in $targets; do
    mkdir -p "target/fuzz-corpus/$t"
    log="target/fuzz-logs/$t.log"
    echo "fuzz: $t for ${seconds}s (log: $log)"
    cargo "${toolchain[@]}" fuzz run --release --debug-assertions "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$log" 2>&1 &
    pids+=($!)
done

failed=0
i=0
for t in $targets; do
    log="target/fuzz-logs/$t.log"
    if wait "${pids[$i]}"; then result=ok; else result=FAILED; failed=1; fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    corpus=$(find "target/fuzz-corpus/$t" -type f | wc -l)
    echo "fuzz: $t: $result, ${execs:-?} executions in ${seconds}s, ${cov:-cov: ?}," \
        "$corpus inputs found so far in target/fuzz-corpus/$t"
    if [[ $result == FAILED ]]; then
        tail -40 "$log"
        ls "fuzz/artifacts/$t" 2>/dev/null | sed 's|^|fuzz: crash input: fuzz/artifacts/'"$t"'/|'
    fi
    i=$((i + 1))
done
exit $failed
