#!/bin/bash
# SPDX-License-Identifier: MIT
# test_lognoise.sh - noise an attacker can cause, and logs that cannot be written. A junk flood
# (3,000 connections to the transparent port that were never redirected, 1,000 garbage heads on
# the explicit port) must not turn into one log line each: per call site 5 lines per 10 s and a
# count. With [log] access, audit and keylog all on /dev/full, every line is lost: each log says
# so once with the reason, then as a count every 10 s, the losses are counted in
# tlsmint_log_dropped_total{log=...}, and the proxy keeps serving.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"

echo "== setup"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port)
PPORT=$(free_port)
TPORT=$(free_port)
MPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
CONF="$WORK/state/tlsmint.conf"
set_conf "$CONF" listen explicit "127.0.0.1:$PPORT"
set_conf "$CONF" listen transparent "127.0.0.1:$TPORT"
set_conf "$CONF" listen threads 2
set_conf "$CONF" upstream ca_file "$WORK/pki/root.pem"
set_conf "$CONF" log access /dev/full
set_conf "$CONF" log audit /dev/full
set_conf "$CONF" log keylog /dev/full
set_conf "$CONF" admin socket "$WORK/run/admin.sock"
set_conf "$CONF" admin metrics "127.0.0.1:$MPORT"
LOG="$WORK/tlsmint.log"
start_tlsmint "$CONF" "$LOG" || exit 1
CA="$WORK/state/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"

# dropped LOG: tlsmint_log_dropped_total{log="LOG"} from the metrics endpoint
dropped() {
    curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" |
        awk -v k="tlsmint_log_dropped_total{log=\"$1\"}" '$1 == k { print $2 }'
}
# written PATTERN: proxy log lines matching PATTERN, summaries excluded
written() { grep -F -- "$1" "$LOG" | grep -cv "rate-limited: "; }
# summed PATTERN: the sum of N over "rate-limited: N more like ..." lines that mention PATTERN
summed() {
    grep -F "rate-limited: " "$LOG" | grep -F -- "$1" |
        sed -E 's/.*rate-limited: ([0-9]+) more like.*/\1/' | awk '{ s += $1 } END { print s + 0 }'
}

echo "== logs on /dev/full: traffic flows, each log says so once, the losses are counted"
ok=0
for _ in $(seq 1 20); do
    out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
    [ "$out" = "hello-from-origin" ] && ok=$((ok + 1))
done
check_eq "20 requests through the proxy while every log write fails" "20" "$ok"
logged_all() { # each log has said so (the access log's writer thread may say it last)
    local l
    for l in access audit keylog; do
        grep -q "\[log\] $l /dev/full: cannot write" "$LOG" || return 1
    done
}
wait_for 50 logged_all
for l in access audit keylog; do
    check_eq "[log] $l: one line with the reason" "1" \
        "$(grep -c "\[log\] $l /dev/full: cannot write: No space left on device" "$LOG")"
done
a1=$(dropped access)
k1=$(dropped keylog)
u1=$(dropped audit)
check "tlsmint_log_dropped_total{log=\"access\"} counts the 20 lost lines (${a1:-none})" test "${a1:-0}" -ge 20
check "tlsmint_log_dropped_total{log=\"keylog\"} counts lost secrets (${k1:-none})" test "${k1:-0}" -ge 40
check "tlsmint_log_dropped_total{log=\"audit\"} counts the lost start event (${u1:-none})" test "${u1:-0}" -ge 1

echo "== a junk flood: 3,000 connections that were not redirected, 1,000 garbage heads"
T0=$(date +%s)
python3 - "$TPORT" "$PPORT" <<'PY' >"$WORK/flood.out"
import socket, sys, threading
tport, pport = int(sys.argv[1]), int(sys.argv[2])
done = {"t": 0, "p": 0, "err": 0}
lock = threading.Lock()
def one(port, data, key):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(data)
            while s.recv(4096):
                pass                      # until the proxy closes: it has handled the junk
        except (ConnectionResetError, BrokenPipeError):
            pass
        s.close()
        with lock:
            done[key] += 1
    except OSError:
        with lock:
            done["err"] += 1
def worker(jobs):
    for port, data, key in jobs:
        one(port, data, key)
jobs = [(tport, b"GET / HTTP/1.0\r\n\r\n", "t")] * 3000 + \
       [(pport, b"\x16\x03\x01garbage\r\n\r\n", "p")] * 1000
threads = [threading.Thread(target=worker, args=(jobs[i::8],)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(done["t"], done["p"], done["err"])
PY
read -r nt np nerr <"$WORK/flood.out"
T1=$(date +%s)
echo "     flood: $nt transparent, $np explicit, $nerr failed, in $((T1 - T0)) s"
check_eq "3,000 junk connections to the transparent port were handled" "3000" "$nt"
check_eq "1,000 garbage heads on the explicit port were answered" "1000" "$np"
serving "right after the flood"
PAT="transparent: no original destination"
w=$(written "$PAT")
windows=$(((T1 - T0) / 10 + 2))
check "at most 5 lines per 10 s for the site ($w written, flood of $((T1 - T0)) s)" \
    test "$w" -ge 1 -a "$w" -le $((5 * windows))
# the count of the flood's window arrives within one window after it
for _ in $(seq 1 150); do
    [ "$(summed "$PAT")" -gt 0 ] && break
    sleep 0.1
done
s=$(summed "$PAT")
check "a summary line counts the rest while the proxy runs ($s)" test "$s" -gt 0
grep -F "rate-limited: " "$LOG" | grep -F "$PAT" | head -n 2 | sed 's/^/     /'
check_contains "a summary names the site, not what the client sent" \
    "more like \"conn=%u:%u transparent: no original destination (%s): not a REDIRECTed connection\"" \
    "$(cat "$LOG")"
for _ in $(seq 1 150); do
    grep -q "\[log\] access /dev/full: [0-9]* more lines lost in the last" "$LOG" && break
    sleep 0.1
done
check_contains "[log] access: a count of lost lines every 10 s" "[log] access /dev/full: " \
    "$(grep "more lines lost in the last" "$LOG")"
a2=$(dropped access)
check "the flood's access-log lines are counted as dropped ($a1 -> $a2)" test "${a2:-0}" -ge $((a1 + 4000))
check_eq "still one line with the reason for the access log" "1" \
    "$(grep -c "\[log\] access /dev/full: cannot write" "$LOG")"
serving "after the flood"
lines=$(wc -l <"$LOG")
check "the proxy log stays small: $lines lines for 4,000 junk connections" test "$lines" -lt 120

echo "== exit: the last counts are written, every junk connection is accounted for"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"
check_eq "SIGTERM: exit 0" "0" "$?"
check_eq "written + counted = the 3,000 connections that were not redirected" "3000" \
    "$(($(written "$PAT") + $(summed "$PAT")))"
check_contains "final log: stopped" "main: stopped" "$(tail -n 1 "$LOG")"
errs=$(grep -E "runtime error|AddressSanitizer|LeakSanitizer" "$LOG")
check_eq "no sanitizer report" "" "$errs"
finish
