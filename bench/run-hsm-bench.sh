#!/bin/bash
# SPDX-License-Identifier: MIT
#
# run-hsm-bench.sh - signatures/s through the hsm_offload pool (submit -> dispatcher -> signer ->
# completion) against a plain C_Sign loop on the same number of sessions, measured in the same
# hsm_bench process, for ec-p256 and rsa-2048 at 1 and 2 workers. Target: pool >= 90 % of plain.
#
# usage: bench/run-hsm-bench.sh [BUILD_DIR]     (default build/release, configured with
#        -Dbench=true). Writes a markdown table to stdout and to bench/results/hsm.md.
# Environment: HSM_BENCH_MIN_TIME (seconds per repetition, default 3), HSM_BENCH_REPS (default 3).
# Owns a mktemp directory with two fresh `tlsmint init` state dirs (private SoftHSM stores);
# removes it, and stops hsm_bench and its signers, on any exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
build_arg="${1:-build/release}"
if [ ! -d "$build_arg" ]; then
    echo "run-hsm-bench: no build directory $build_arg" >&2
    exit 2
fi
build="$(cd "$build_arg" && pwd)"
tlsmint="$build/cli/tlsmint"
bench="$build/bench/hsm_bench"
for f in "$tlsmint" "$bench"; do
    if [ ! -x "$f" ]; then
        echo "run-hsm-bench: $f missing; configure with -Dbench=true and build:" >&2
        echo "  meson configure $build_arg -Dbench=true && ninja -C $build_arg" >&2
        exit 2
    fi
done
min_time="${HSM_BENCH_MIN_TIME:-3}"
reps="${HSM_BENCH_REPS:-3}"
keys=(ec-p256 rsa-2048)
workers_list=(1 2)

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tlsmint-hsm-bench.XXXXXX")"
bench_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
        # signers die with their parent too (PR_SET_PDEATHSIG), this is belt and braces
        pkill -KILL -P "$bench_pid" 2>/dev/null || true
        kill -KILL "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# busy and total jiffies of the whole machine (steal counts as busy: we could not use it)
cpu_jiffies() {
    local cpu user nice sys idle iowait irq softirq steal rest
    read -r cpu user nice sys idle iowait irq softirq steal rest </proc/stat
    echo "$((user + nice + sys + irq + softirq + steal)) \
$((user + nice + sys + idle + iowait + irq + softirq + steal))"
}
# user + system jiffies of this shell's waited-for children (hsm_bench reaps its signers)
own_jiffies() {
    local f
    read -r -a f <<<"$(sed 's/.*) //' /proc/$$/stat)"
    echo "$((f[13] + f[14]))"
}

for key in "${keys[@]}"; do
    if ! "$tlsmint" init --dir "$tmp/$key" --key-type "$key" >"$tmp/init-$key.log" 2>&1; then
        echo "run-hsm-bench: tlsmint init --key-type $key failed:" >&2
        cat "$tmp/init-$key.log" >&2
        exit 1
    fi
done

for key in "${keys[@]}"; do
    conf="$tmp/$key/tlsmint.conf"
    for w in "${workers_list[@]}"; do
        # only the [hsm] section's workers line (signer threads = PKCS#11 sessions)
        sed -i -E "/^\[hsm\]/,/^\[/ s/^(workers[[:space:]]*=[[:space:]]*)([0-9]+|auto)/\\1$w/" "$conf"
        got="$(awk -F'[=;]' '/^\[/ { sec = $0 } sec == "[hsm]" && $1 ~ /^workers[ \t]*$/ {
            gsub(/[ \t]/, "", $2); print $2 }' "$conf")"
        if [ "$got" != "$w" ]; then
            echo "run-hsm-bench: could not set workers = $w in $conf" >&2
            exit 1
        fi
        echo "== $key, workers = $w ($reps x ${min_time}s per benchmark)" >&2
        read -r s0_busy s0_all < <(cpu_jiffies)
        c0=$(own_jiffies)
        t0=$(date +%s.%N)
        HSM_BENCH_CONFIG="$conf" HSM_BENCH_KEY="$key" HSM_BENCH_WORKERS="$w" \
            TLSMINT_BIN="$tlsmint" HSM_BENCH_MIN_TIME="$min_time" \
            "$bench" --benchmark_repetitions="$reps" \
            --benchmark_enable_random_interleaving=true \
            --benchmark_counters_tabular=true \
            --benchmark_out="$tmp/$key-w$w.json" --benchmark_out_format=json >&2 &
        bench_pid=$!
        rc=0
        wait "$bench_pid" || rc=$?
        bench_pid=""
        if [ "$rc" -ne 0 ]; then
            echo "run-hsm-bench: hsm_bench failed for $key, workers = $w (exit $rc)" >&2
            exit 1
        fi
        # CPU the rest of the machine used meanwhile: all busy time minus ours (hsm_bench and
        # the signers it reaped), in cores; the numbers are only comparable when this is ~0
        read -r s1_busy s1_all < <(cpu_jiffies)
        c1=$(own_jiffies)
        t1=$(date +%s.%N)
        echo "$t0 $t1 $((s1_busy - s0_busy)) $((s1_all - s0_all)) $((c1 - c0)) $(nproc)" \
            >"$tmp/$key-w$w.load"
    done
done

mkdir -p "$here/results"
python3 - "$tmp" "$min_time" "$reps" "$here/results/hsm.md" "${keys[@]}" <<'EOF'
import json, os, platform, statistics, sys, time

tmp, min_time, reps, out_path, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"

def median_of(b_list, kind, field, med_entries):
    if (kind, field) in med_entries:
        return med_entries[(kind, field)]
    vals = [b[field] for b in b_list[kind] if field in b]
    return statistics.median(vals) if vals else None

FIELDS = ("sig_per_s", "cpu_us_per_sig", "tax_us_per_sig", "sig_per_wake")
rows, devices, failed = [], set(), False
for key in keys:
    for w in (1, 2):
        with open(os.path.join(tmp, f"{key}-w{w}.json")) as f:
            doc = json.load(f)
        ctx = doc.get("context", {})
        devices.add(f"{ctx.get('hsm_device', '?')}, {ctx.get('hsm_alg', '?')}")
        med, runs = {}, {"plain": [], "pool": []}
        for b in doc["benchmarks"]:
            kind = "plain" if b["run_name"].startswith("hsm_plain/") else "pool"
            if b.get("error_occurred"):
                failed = True
                print(f"run-hsm-bench: {b['name']}: {b.get('error_message')}", file=sys.stderr)
                continue
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") == "median":
                for field in FIELDS:
                    if field in b:
                        med[(kind, field)] = b[field]
            elif b.get("run_type") == "iteration":
                runs[kind].append(b)
        r = {"key": key, "w": w, "runs": runs}
        for kind in ("plain", "pool"):
            for field in FIELDS:
                r[(kind, field)] = median_of(runs, kind, field, med)
        r["window"] = int(runs["pool"][0].get("window", 0)) if runs["pool"] else 0
        # other load: busy jiffies of the machine minus ours, in cores
        try:
            with open(os.path.join(tmp, f"{key}-w{w}.load")) as f:
                t0, t1, busy, total, own, ncpu = f.read().split()
            r["other"] = max(0.0, (int(busy) - int(own)) / int(total) * int(ncpu)) if int(total) else None
        except (OSError, ValueError):
            r["other"] = None
        if r[("plain", "sig_per_s")] is None or r[("pool", "sig_per_s")] is None:
            failed = True
            continue
        rows.append(r)

def fmt_num(x, pat="{:,.0f}"):
    return "?" if x is None else pat.format(x)

lines = [
    "# hsm_offload: signatures/s through the pool vs a plain C_Sign loop",
    "",
    f"Generated by `bench/run-hsm-bench.sh` on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
    f"Machine: {os.cpu_count()} CPUs, {cpu_model()}, {platform.system()} {platform.release()}.",
    "Device: " + "; ".join(sorted(devices)) + ".",
    "",
    f"Each number is the median of {reps} repetitions of >= {min_time} s (Google Benchmark, wall "
    "time, repetitions randomly interleaved). Plain: one session and one thread per worker, "
    "`hsm_direct_sign` in a loop. Pool: one submitting thread keeping `window` jobs in flight "
    "through `hsm_sign_submit` -> dispatcher -> signer process -> `hsm_cq`. Both in the same "
    "process on the same token, never at the same time. Target: pool >= 90 % of plain.",
    "",
    "| key type | workers | plain C_Sign/s | through pool/s | ratio |",
    "|---|---|---|---|---|",
]
for r in rows:
    ratio = r[("pool", "sig_per_s")] / r[("plain", "sig_per_s")]
    mark = "" if ratio >= 0.90 else " (below 90 %)"
    lines.append(f"| {r['key']} | {r['w']} | {fmt_num(r[('plain', 'sig_per_s')])} | "
                 f"{fmt_num(r[('pool', 'sig_per_s')])} | {ratio * 100:.1f} %{mark} |")
lines += [
    "",
    "CPU per signature (medians). Plain: this process. Pool: submitter, dispatcher and signer "
    "processes; \"outside workers\" is the part not spent in the signer worker threads "
    "(submitter, dispatcher, signer frame reader), i.e. what the path itself costs. \"Other "
    "load\" is the CPU the rest of the machine used during the case: it disturbs the rates above "
    "much more than CPU per signature. With workers = cores, the pool can reach at most about "
    "plain CPU / pool CPU of the plain rate.",
    "",
    "| key type | workers | plain CPU us/sig | pool CPU us/sig | of which outside workers "
    "| plain/pool CPU | sig per submitter wake-up | other load (cores) |",
    "|---|---|---|---|---|---|---|---|",
]
for r in rows:
    pc, qc = r[("plain", "cpu_us_per_sig")], r[("pool", "cpu_us_per_sig")]
    cr = f"{pc / qc * 100:.1f} %" if pc and qc else "?"
    lines.append(f"| {r['key']} | {r['w']} | {fmt_num(pc, '{:.1f}')} | {fmt_num(qc, '{:.1f}')} | "
                 f"{fmt_num(r[('pool', 'tax_us_per_sig')], '{:.1f}')} | {cr} | "
                 f"{fmt_num(r[('pool', 'sig_per_wake')], '{:.1f}')} | "
                 f"{fmt_num(r['other'], '{:.2f}')} |")
lines += ["", "Repetitions (sig/s):", ""]
for r in rows:
    f = lambda xs: ", ".join(f"{b['sig_per_s']:,.0f}" for b in xs)
    lines.append(f"- {r['key']}, workers {r['w']}: plain [{f(r['runs']['plain'])}]; "
                 f"pool [{f(r['runs']['pool'])}] (window {r['window']})")
text = "\n".join(lines) + "\n"
with open(out_path, "w") as f:
    f.write(text)
print(text)
sys.exit(1 if failed else 0)
EOF
