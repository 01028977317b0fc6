#!/bin/bash
# tools/fuzz-run.sh BUILD_DIR SECONDS [JOBS] [TARGET...]
# Runs every libFuzzer target of a -Dfuzz=true build (BUILD_DIR/tests/fuzz/fuzz_*) for SECONDS
# each, JOBS at a time, from its seed corpus tests/fuzz/corpus/<target>/ (read only: new inputs
# go to a scratch corpus that is removed afterwards). Every seed, including each crash input
# committed as a regression test, is run first. Fails when a target crashes, leaks, hangs or
# trips a sanitizer; the log and the input are kept under BUILD_DIR/fuzz-logs/.
set -uo pipefail
build="${1:?usage: fuzz-run.sh BUILD_DIR SECONDS [JOBS] [TARGET...]}"
secs="${2:?seconds}"
jobs="${3:-2}"
shift 3 2>/dev/null || shift $#
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "$build" && pwd)"
logs="$build/fuzz-logs"
mkdir -p "$logs"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/tlsmint-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for b in "$build"/tests/fuzz/fuzz_*; do
        [ -x "$b" ] && [ -f "$b" ] && targets+=("$(basename "$b" | sed 's/^fuzz_//')")
    done
fi
[ ${#targets[@]} -gt 0 ] || { echo "fuzz-run: no targets in $build/tests/fuzz"; exit 1; }

run_one() {
    local t="$1" bin="$build/tests/fuzz/fuzz_$1" seeds="$root/tests/fuzz/corpus/$1"
    local work="$scratch/$t" log="$logs/$t.log"
    mkdir -p "$work/corpus" "$work/tmp" "$seeds"
    local extra=()
    case "$t" in
    tls_*)
        # the access log's writer thread frees each line after the input that queued it: every
        # input would look like a leak and stop the world for LeakSanitizer (a few executions a
        # second). Leaks are still found: LeakSanitizer runs at exit and fails the run.
        extra=(-detect_leaks=0) ;;
    esac
    rm -f "$logs/$t-"crash-* "$logs/$t-"leak-* "$logs/$t-"timeout-* "$logs/$t-"oom-*
    TMPDIR="$work/tmp" TLSMINT_BIN="$build/cli/tlsmint" \
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=1" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
        "$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2560 -print_final_stats=1 "${extra[@]}" \
        -artifact_prefix="$logs/$t-" "$work/corpus" "$seeds" >"$log" 2>&1
    local rc=$?
    local done_line execs rate
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    if [ $rc -eq 0 ]; then
        printf 'fuzz %-13s ok    %10s execs %7s exec/s  %s\n' "$t" "${execs:-?}" "${rate:-?}" \
            "$(echo "$done_line" | grep -oE 'cov: [0-9]+ ft: [0-9]+')"
    else
        printf 'fuzz %-13s FAILED (exit %d): %s\n' "$t" "$rc" "$log"
        grep -E 'ERROR: |SUMMARY: |Test unit written|==[0-9]+== *ERROR' "$log" | head -5 | sed 's/^/    /'
    fi
    return $rc
}

fail=0
running=0
pids=()
for t in "${targets[@]}"; do
    [ -x "$build/tests/fuzz/fuzz_$t" ] || { echo "fuzz-run: no target fuzz_$t"; fail=1; continue; }
    run_one "$t" &
    pids+=($!)
    running=$((running + 1))
    if [ $running -ge "$jobs" ]; then
        wait -n || fail=1
        running=$((running - 1))
    fi
done
while [ $running -gt 0 ]; do
    wait -n || fail=1
    running=$((running - 1))
done
if [ $fail -ne 0 ]; then
    echo "== fuzz: ${#targets[@]} targets, ${secs} s each: FAILED (logs and inputs in $logs) =="
    exit 1
fi
echo "== fuzz: ${#targets[@]} targets, ${secs} s each, no crash =="
