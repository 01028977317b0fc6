#!/bin/bash
# tools/fuzz-campaign.sh BUILD_DIR WORK_DIR [CPU_SECONDS] [JOBS] [TARGET...]
# A long libFuzzer campaign on a shared machine: each target of a -Dfuzz=true build runs until
# its own process has used CPU_SECONDS of CPU time (default 3600, user + system, read from
# /proc; wall-clock time does not count, so a loaded machine only makes the run longer), JOBS
# targets at a time (default 2), at SCHED_IDLE so that it only takes CPU nobody else wants.
# While the file WORK_DIR/../FUZZ_PAUSE (or $FUZZ_PAUSE) exists the fuzzers are ended (they
# save their corpus), so a benchmark can have the machine; they start again when it is removed.
# The CPU time is kept per target in WORK_DIR/cpu/TARGET, so a campaign that was stopped goes on
# where it was when started again (a target whose budget is spent is skipped).
# A starved SCHED_IDLE process can sit for minutes without CPU, and libFuzzer's -timeout is
# wall-clock time: it is FUZZ_TIMEOUT (default 900 s) here, not the 25 s of tools/fuzz-run.sh.
# The corpus of each target grows in WORK_DIR/corpus/TARGET (seeded from tests/fuzz/corpus/),
# crash inputs go to WORK_DIR/artifacts/, the log to WORK_DIR/TARGET.log, and one line per
# finished target to WORK_DIR/summary.txt: CPU s, wall s, executions, exec/s per CPU second,
# coverage (cov, ft), corpus size, crashes.
set -uo pipefail
build="$(cd "${1:?usage: fuzz-campaign.sh BUILD_DIR WORK_DIR [CPU_SECONDS] [JOBS] [TARGET...]}" && pwd)"
work="${2:?work directory}"
budget="${3:-3600}"
jobs="${4:-2}"
shift 4 2>/dev/null || shift $#
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$work/corpus" "$work/artifacts" "$work/tmp" "$work/cpu"
work="$(cd "$work" && pwd)"
pause="${FUZZ_PAUSE:-$(dirname "$work")/FUZZ_PAUSE}"
hz="$(getconf CLK_TCK)"
timeout="${FUZZ_TIMEOUT:-900}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for b in "$build"/tests/fuzz/fuzz_*; do
        [ -x "$b" ] && [ -f "$b" ] && targets+=("$(basename "$b" | sed 's/^fuzz_//')")
    done
fi

cpu_s() { # CPU seconds used by process $1 (fields 14 and 15 of /proc/PID/stat)
    awk -v hz="$hz" '{ sub(/^.*\) /, ""); print int(($12 + $13) / hz) }' "/proc/$1/stat" 2>/dev/null
}

run_one() {
    local t="$1" bin="$build/tests/fuzz/fuzz_$1" log="$work/$1.log" extra=()
    local before=0
    [ -f "$work/cpu/$t" ] && before="$(cat "$work/cpu/$t")"
    if [ "$before" -ge "$budget" ]; then
        echo "$t: $before s of CPU already, budget $budget s: skipped"
        return 0
    fi
    [ -f "$log" ] && mv "$log" "$log.$before"
    mkdir -p "$work/corpus/$t" "$work/tmp/$t"
    case "$t" in tls_*) extra=(-detect_leaks=0) ;; esac
    local start=$SECONDS pid used=$before rc=0
    # A pause ends the fuzzer (SIGINT: it saves its corpus and prints its stats) and starts it
    # again afterwards. Stopping it instead (SIGSTOP) made libFuzzer's wall-clock -timeout
    # fire on the unit it was running when it went on after a long pause (a 19-minute CI check
    # gave a false "timeout after 1127 s" on an input that runs in 0.07 s).
    while [ "$used" -lt "$budget" ]; do
        while [ -e "$pause" ]; do sleep 2; done
        TMPDIR="$work/tmp/$t" TLSMINT_BIN="$build/cli/tlsmint" \
        ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:allocator_may_return_null=1" \
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
            chrt -i 0 "$bin" -max_total_time=86400 -timeout="$timeout" -rss_limit_mb=2560 \
            -print_final_stats=1 "${extra[@]}" -artifact_prefix="$work/artifacts/$t-" \
            "$work/corpus/$t" "$root/tests/fuzz/corpus/$t" >>"$log" 2>&1 &
        pid=$!
        local seg_before=$used paused=0
        while kill -0 $pid 2>/dev/null; do
            local now_cpu
            now_cpu="$(cpu_s $pid)"
            if [ -n "$now_cpu" ]; then
                used=$((seg_before + now_cpu))
                echo "$used" >"$work/cpu/$t"
            fi
            if [ "$used" -ge "$budget" ]; then
                kill -INT $pid 2>/dev/null; break
            fi
            if [ -e "$pause" ]; then
                kill -INT $pid 2>/dev/null; paused=1; break
            fi
            sleep 2
        done
        wait $pid
        rc=$?
        [ $paused = 1 ] || break   # the budget is spent, or the fuzzer stopped by itself (a crash)
    done
    local last execs cov ft corp crashes
    last="$(grep -aE '^#[0-9]+' "$log" | tail -1)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{ s += $1 } END { if (NR) print s }')"
    [ -n "$execs" ] || execs="$(echo "$last" | sed -E 's/^#([0-9]+).*/\1/')"
    cov="$(echo "$last" | grep -oE 'cov: [0-9]+' | cut -d' ' -f2)"
    ft="$(echo "$last" | grep -oE 'ft: [0-9]+' | cut -d' ' -f2)"
    corp="$(ls "$work/corpus/$t" | wc -l)"
    crashes="$(ls "$work/artifacts" | grep -cE "^$t-(crash|leak|timeout|oom)-")"
    [ "$used" -gt 0 ] || used=1
    printf '%-13s cpu %5ss wall %6ss execs %11s exec/cpu-s %6s cov %5s ft %6s corpus %6s crashes %s rc %s\n' \
        "$t" "$used" "$((SECONDS - start))" "${execs:-?}" "$(( ${execs:-0} / used ))" "${cov:-?}" \
        "${ft:-?}" "$corp" "$crashes" "$rc" | tee -a "$work/summary.txt"
}

running=0
for t in "${targets[@]}"; do
    [ -x "$build/tests/fuzz/fuzz_$t" ] || { echo "fuzz-campaign: no target fuzz_$t"; continue; }
    run_one "$t" &
    running=$((running + 1))
    if [ $running -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait
