#!/bin/bash
# SPDX-License-Identifier: MIT
#
# outage-all.sh - runs bench/outage.sh for the combinations that matter and writes an index:
#   fail closed and fail open, each with
#     p11kit      a network HSM (p11-kit server) killed with SIGKILL and restarted
#     fault-hang  every C_Sign hangs (tests/faultp11)
#     fault-down  the HSM is gone: no slot, CKR_DEVICE_REMOVED (tests/faultp11; skip: --no-down)
#   and fail closed with
#     fault-slow  a slow HSM, not a dead one: C_Sign latency ramps 0 -> 50 ms -> 0 (tests/faultp11)
# into OUT/<mode>-<mechanism>/ (timeline.csv, plot.png, plot.svg, summary.md, ...), and
# OUT/README.md with a table of the summaries and links to the plots.
#
# usage: bench/outage-all.sh [--out DIR] [--no-down] [--rate R] [--miss-share S] [--t1 S]
#                            [--t2 S] [--duration S]
#   --out   default docs/outage; the other options are passed to every bench/outage.sh run
# One origin (bench/make-origin.sh) is made once and shared by the runs: every run starts a
# fresh proxy, so its hosts are never-seen hosts again. About 40 s per run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/docs/outage
DOWN=1
PASS=()
CMDLINE="bench/outage-all.sh${*:+ $*}"
while [ $# -gt 0 ]; do
    case "$1" in
    --out) OUT=${2:?}; shift 2 ;;
    --no-down) DOWN=""; shift ;;
    --rate | --miss-share | --t1 | --t2 | --duration) PASS+=("$1" "${2:?}"); shift 2 ;;
    -h | --help) sed -n '/^# usage:/,/^# One origin/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "outage-all: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ORIGIN=$(mktemp -d /tmp/tlsmint-outage-origin-XXXXXX)
chmod 755 "$ORIGIN"
trap 'rm -rf "$ORIGIN"' EXIT

RUNS=("closed p11kit" "open p11kit" "closed fault-hang" "open fault-hang" "closed fault-slow")
[ -z "$DOWN" ] || RUNS+=("closed fault-down" "open fault-down")

failed=0
for r in "${RUNS[@]}"; do
    set -- $r
    echo "== $1 / $2"
    if ! "$ROOT/bench/outage.sh" --mode "$1" --mechanism "$2" "${PASS[@]}" --origin "$ORIGIN" \
        --out "$OUT/$1-$2"; then
        echo "outage-all: $1 / $2 failed" >&2
        failed=$((failed + 1))
    fi
done

python3 - "$OUT" "$CMDLINE" "${RUNS[@]}" <<'EOF'
import json, os, sys

out, cmdline, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
mech_desc = {
    "p11kit": "network HSM (p11-kit server) SIGKILLed, restarted at t2",
    "fault-hang": "every C_Sign hangs (faultp11 hang=1)",
    "fault-down": "HSM gone: no slot, CKR_DEVICE_REMOVED (faultp11 down=1)",
    "fault-error": "every C_Sign fails, CKR_DEVICE_ERROR (faultp11)",
    "fault-slow": "not an outage: a slow HSM, C_Sign latency ramps 0 -> 50 ms -> 0 (faultp11)",
}
def s(x):
    return "n/a" if x is None else "%.2f s" % x
def ms(x):
    return "n/a" if x is None else "%.0f ms" % x

rows, first = [], None
for r in runs:
    mode, mech = r.split()
    d = "%s-%s" % (mode, mech)
    try:
        j = json.load(open(os.path.join(out, d, "summary.json")))
    except (OSError, ValueError):
        rows.append("| fail %s | %s | run failed | | | | | | |" % (mode, mech))
        continue
    first = first or j
    rows.append("| fail %s | %s | %s | %s | %d / %d / %d / %d | %d / %d | %s (deadline %.0f ms) | %s | [summary](%s/summary.md), [PNG](%s/plot.png), [SVG](%s/plot.svg), [CSV](%s/timeline.csv) |" % (
        mode, mech_desc.get(mech, mech), s(j["detect_s"]), s(j["recover_s"]),
        j["intercepted"], j["bypassed"], j["refused"], j["lost"],
        j["hit_refused"], j["hit_lost"],
        ms(j["max_hsm_wait_ms"]), j["sign_timeout_ms"],
        "**yes** (%d)" % j["late_slack"] if j["waited_past"] else "no", d, d, d, d))

L = ["# HSM outage experiment", ""]
if first:
    L.append("What live traffic sees while the HSM goes away and comes back. Each run: %.0f new "
             "connections/s through the explicit proxy (open loop, tlsmint-bench), %.0f %% of them "
             "to never-seen hosts (cache misses: each needs an HSM signature), the rest to 4 hot hosts "
             "(cache hits); the HSM is taken away at t1 ≈ %.0f s and given back at t2 ≈ %.0f s; "
             "[hsm] sign_timeout_ms = %.0f, hang_timeout_ms = 2000, recovery back-off up to 1 s (defaults). "
             "Made by `%s` (each run: `bench/outage.sh`, see its header)."
             % (first["rate"], first["miss_share"] * 100, first["t1"], first["t2"],
                first["sign_timeout_ms"], cmdline))
L += ["",
      "| mode | outage | time to detect | time to recover after t2 | connections intercepted / bypassed / refused / lost | hits refused / lost | longest HSM wait | waited past the deadline? | files |",
      "|---|---|---|---|---|---|---|---|---|"] + rows
L += ["",
      "*Time to detect*: from t1 to the first connection the proxy refused or passed through, or the "
      "first HSM member state change (`tlsmint ctl hsm`), whichever is first. *Time to recover*: from t2 to "
      "the first cache miss intercepted again. *Lost*: failures other than the proxy's clean refusal "
      "(handshake_failure alert): timeouts, resets, proxy errors. *Longest HSM wait*: the largest "
      "`hsm_wait_ms` in the proxy's access log during the outage (t1 .. t2 + 3 s); *waited past the "
      "deadline* = more than sign_timeout_ms + 50 ms (scheduling slack on a shared 2-core machine).",
      ""]
for r in runs:
    mode, mech = r.split()
    d = "%s-%s" % (mode, mech)
    if os.path.exists(os.path.join(out, d, "plot.png")):
        L += ["## fail %s, %s" % (mode, mech), "",
              "![%s](%s/plot.png)" % (d, d), "",
              "[summary](%s/summary.md) · [timeline.csv](%s/timeline.csv) · [plot.svg](%s/plot.svg)" % (d, d, d), ""]
open(os.path.join(out, "README.md"), "w").write("\n".join(L))
print("\n".join(L[:len(rows) + 6]))
EOF
echo "outage-all: wrote $OUT/README.md"
exit $((failed > 0))
