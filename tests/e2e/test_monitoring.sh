#!/bin/bash
# SPDX-License-Identifier: MIT
# test_monitoring.sh - dist/tlsmint-alerts.yml passes `promtool check rules` and its unit tests
# (`promtool test rules`: each alert fires on its state and renders its annotations); a live
# /metrics scrape of a proxy with two HSM members, after real traffic, passes
# `promtool check metrics` without a single lint; every metric the rules use is exported.
. "$(dirname "$0")/lib.sh"
SRC=$(cd "$(dirname "$0")/../.." && pwd)

command -v promtool >/dev/null || { echo "SKIP: no promtool (Debian: prometheus)"; exit 77; }

echo "== the rules"
out=$(promtool check rules "$SRC/dist/tlsmint-alerts.yml" 2>&1)
check_contains "promtool check rules" "SUCCESS" "$out"
out=$(cd "$SRC/tests/e2e" && promtool test rules tlsmint-alerts.test.yml 2>&1)
check_eq "promtool test rules: exit 0" "0" "$?"
check_contains "promtool test rules: SUCCESS" "SUCCESS" "$out"

echo "== a live scrape"
make_pki "$WORK/pki"
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) PPORT=$(free_port) MPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
CONF="$S/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent ""
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
# a second HA member on the same token: every per-member family has two members' samples
{
    echo "[hsm.second]"
    grep -E '^(module|env|token|pin_file|key_label) ' "$CONF" | head -n 5
} >>"$CONF"
start_tlsmint "$CONF" "$WORK/tlsmint.log" || exit 1
for _ in 1 2 3; do
    curl -sS --max-time 10 --cacert "$S/ca/forward-trust.pem" -x "http://127.0.0.1:$PPORT" \
        "https://localhost:$OPORT/index.html" >/dev/null 2>&1
done
# the second member logs in on its own: scraped again (bounded) until it is up
scrape_both() {
    curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" >"$WORK/metrics.txt" &&
        grep -qF 'tlsmint_hsm_member_up{member="second"} 1' "$WORK/metrics.txt"
}
wait_for 100 scrape_both
check_contains "two members in the scrape" 'tlsmint_hsm_member_up{member="second"} 1' "$(cat "$WORK/metrics.txt")"
out=$(promtool check metrics <"$WORK/metrics.txt" 2>&1)
rc=$?
check_eq "promtool check metrics: exit 0, no lint" "0:" "$rc:$out"
# metrics the rules use: all exported, but for features this proxy does not run
optional="tlsmint_shared_cache_up tlsmint_export_dropped_total" # [cache] shared; [export] (off here)
for m in $(grep -o 'tlsmint_[a-z_]*' "$SRC/dist/tlsmint-alerts.yml" | sort -u); do
    case " $optional " in *" $m "*) continue ;; esac
    check "the rules' metric $m is exported" grep -q "^$m[{ ]" "$WORK/metrics.txt"
done
kill -TERM "$TLSMINT_PID"; wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
finish
