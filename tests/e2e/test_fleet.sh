#!/bin/bash
# SPDX-License-Identifier: MIT
# test_fleet.sh - many nodes: three tlsmint processes restored from one bundle (one SoftHSM
# token, one forward-trust key) share leaves through one real redis-server ([cache] shared).
# 300 hosts through all three nodes at once cost 300 signatures in all; redis-server killed
# during load: no client fails, the nodes sign alone and show it down; it comes back: sharing
# resumes without a restart; poisoned entries (copied under another key, bit-flipped, made by
# another CA) are refused and counted while clients get correct leaves; a warm restart from the
# sealed snapshot costs no signature; a corrupt snapshot is one warning and a cold start; bad
# [cache] keys are FILE:LINE errors; every node exits cleanly with no sanitizer report.
. "$(dirname "$0")/lib.sh"
FLEET_PY="$(cd "$(dirname "$0")" && pwd)/fleet.py"

command -v redis-server >/dev/null || { echo "redis-server missing (make deps)"; exit 77; }
python3 "$FLEET_PY" pki "$WORK/pki" 520 || exit 1
head -c 32 /dev/urandom >"$WORK/mk"
chmod 600 "$WORK/mk"

# ---- redis-server on a free port and a unix socket, no persistence, with a password
RPORT=$(free_port)
RSOCK="$WORK/redis.sock"
head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$WORK/redis.pw"
chmod 600 "$WORK/redis.pw"
start_redis() {
    redis-server --port "$RPORT" --bind 127.0.0.1 --unixsocket "$RSOCK" --unixsocketperm 700 \
        --save '' --appendonly no --requirepass "$(cat "$WORK/redis.pw")" \
        --dir "$WORK" --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    PIDS+=($REDIS_PID)
    wait_port "$RPORT"
}
rcli() { redis-cli -p "$RPORT" -a "$(cat "$WORK/redis.pw")" --no-auth-warning "$@"; }
start_redis

# ---- one origin serving a certificate per SNI name
OPORT=$(free_port)
mkdir -p "$WORK/origin/www" "$WORK/origin/logs" "$WORK/origin/tmp"
echo "hello-from-origin" >"$WORK/origin/www/index.html"
cat >"$WORK/origin/nginx.conf" <<NGX
daemon off;
worker_processes 1;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/origin/tmp;
  proxy_temp_path $WORK/origin/tmp;
  fastcgi_temp_path $WORK/origin/tmp;
  uwsgi_temp_path $WORK/origin/tmp;
  scgi_temp_path $WORK/origin/tmp;
  server {
    listen 127.0.0.1:$OPORT ssl;
    ssl_certificate $WORK/pki/hosts/\$ssl_server_name.pem;
    ssl_certificate_key $WORK/pki/hosts/\$ssl_server_name.key;
    root $WORK/origin/www;
  }
}
NGX
chmod -R a+rX "$WORK/origin" "$WORK/pki"
nginx -c "$WORK/origin/nginx.conf" -e "$WORK/origin/logs/error.log" &
PIDS+=($!)
wait_port "$OPORT"

# ---- three nodes from one bundle
A="$WORK/A" B="$WORK/B" C="$WORK/C"
"$TLSMINT" init --dir "$A" --master-key-file "$WORK/mk" >"$WORK/init.out" 2>&1 || { cat "$WORK/init.out"; exit 1; }
"$TLSMINT" -c "$A/tlsmint.conf" backup --out "$WORK/fleet.bundle" >/dev/null 2>&1
for n in B C; do
    "$TLSMINT" restore --in "$WORK/fleet.bundle" --dir "$WORK/$n" --master-key-file "$WORK/mk" >"$WORK/restore.$n" 2>&1
    check_eq "node $n restored from the bundle" "0" "$?"
done
declare -A PORT PID
node_conf() { # node_conf NODE URL
    local c="$WORK/$1/tlsmint.conf"
    PORT[$1]=$(free_port)
    set_conf "$c" listen explicit "127.0.0.1:${PORT[$1]}"
    set_conf "$c" listen transparent ""
    set_conf "$c" listen threads 2
    set_conf "$c" upstream ca_file "$WORK/pki/root.pem"
    set_conf "$c" admin metrics ""
    set_conf "$c" hsm sign_timeout_ms 3000
    set_conf "$c" cache shared "$2"
    set_conf "$c" cache shared_password_file "$WORK/redis.pw"
    # generous on a shared 2-core machine under ASan: a late answer is a second signature
    set_conf "$c" cache shared_timeout_ms 1000
    set_conf "$c" cache shared_lock_ms 5000
    set_conf "$c" cache snapshot "$WORK/$1/cache.snap"
}
node_start() { # node_start NODE
    start_tlsmint "$WORK/$1/tlsmint.conf" "$WORK/$1.log.$((++STARTS))" || return 1
    PID[$1]=$TLSMINT_PID
    LOG[$1]="$WORK/$1.log.$STARTS"
}
declare -A LOG
STARTS=0
node_conf A "redis://127.0.0.1:$RPORT/0"
node_conf B "unix:$RSOCK"
node_conf C "redis://127.0.0.1:$RPORT"
for n in A B C; do node_start $n || exit 1; done

metric() { # metric NODE NAME{labels}: its value (0 when absent)
    local v
    v=$("$TLSMINT" -c "$WORK/$1/tlsmint.conf" ctl metrics 2>/dev/null | awk -v k="$2" '$1 == k {print $2; exit}')
    echo "${v:-0}"
}
sigs() { metric "$1" 'tlsmint_hsm_signatures_total{member="hsm",result="ok"}'; }
sigsum() { echo $(( $(sigs A) + $(sigs B) + $(sigs C) )); }
shared_ev() { metric "$1" "tlsmint_shared_cache_events_total{event=\"$2\"}"; }
wait_up() { # wait_up NODE WANT (1/0), up to 8 s
    for _ in $(seq 1 80); do
        [ "$(metric "$1" tlsmint_shared_cache_up)" = "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
for n in A B C; do check "node $n: shared cache up" wait_up $n 1; done
spec() { # spec FIRST LAST NODES...: one line per host and node, interleaved
    local first=$1 last=$2 k n; shift 2
    for k in $(seq "$first" "$last"); do for n in "$@"; do echo "${PORT[$n]} h$k.test"; done; done
}
load() { python3 "$FLEET_PY" load "$A/ca/forward-trust.pem" "$OPORT" "$@"; }

echo "== 300 hosts through three nodes at once"
out=$(spec 1 300 A B C | load --threads 30)
check_eq "900 clients verified their leaf (chain to the fleet CA + host name)" "ok=900 failed=0" "$(echo "$out" | head -n 1)"
if [ "$(echo "$out" | head -n 1)" != "ok=900 failed=0" ]; then # what the nodes saw
    echo "$out"
    for n in A B C; do
        echo "   node $n outcomes: $(grep -o '"outcome":"[a-z_]*"' "${LOG[$n]}" | sort | uniq -c | tr '\n' ' ')"
        grep -E ' (WARN|ERROR) ' "${LOG[$n]}" | tail -n 5 | sed 's/^/     /'
        grep -v '"outcome":"ok"' "${LOG[$n]}" | grep '"outcome"' | head -n 2 | sed 's/^/     /'
    done
    tail -n 5 "$WORK/origin/logs/error.log" | sed 's/^/   origin: /'
fi
check_eq "each host signed once for the whole fleet: 300 signatures over 3 nodes" "300" "$(sigsum)"
for n in A B C; do echo "   node $n: $(sigs $n) signatures, $(shared_ev $n hit) shared hits, $(shared_ev $n lock_waited) lock waits, $(shared_ev $n timeout) timeouts"; done
hits=$(( $(shared_ev A hit) + $(shared_ev B hit) + $(shared_ev C hit) ))
check_eq "the other 600 came from Redis" "600" "$hits"
shared_lines=$(cat "${LOG[A]}" "${LOG[B]}" "${LOG[C]}" | grep -c '"cache":"shared"')
check_eq "the access log says cache shared for each of them" "$hits" "$shared_lines"
check_eq "nothing refused so far" "0" "$(( $(shared_ev A rejected) + $(shared_ev B rejected) + $(shared_ev C rejected) ))"
out=$("$TLSMINT" -c "$B/tlsmint.conf" ctl cache)
check_contains "ctl cache shows the shared tier" "shared        unix:$RSOCK up" "$out"
check_contains "ctl cache shows its events" "lock_waited=" "$out"
check_eq "no private key in Redis" "" "$(rcli --scan --pattern 'tlsmint:leaf:*' | head -n 50 | while read -r k; do rcli GET "$k"; done | grep -a 'PRIVATE')"

echo "== redis-server killed during load"
before=$(sigsum)
spec 301 420 A B C | load --threads 12 >"$WORK/load2.out" &
LPID=$!
sleep 1.5
kill -9 "$REDIS_PID"
wait "$LPID"
check_eq "no client connection failed while Redis died" "ok=360 failed=0" "$(head -n 1 "$WORK/load2.out")"
after=$(sigsum)
check "signatures rose: the nodes signed alone ($before -> $after)" test "$after" -gt "$before"
for n in A B C; do check "node $n shows the shared cache down" wait_up $n 0; done
check_contains "ctl cache says down" "down" "$("$TLSMINT" -c "$A/tlsmint.conf" ctl cache | grep '^shared')"
check_contains "the log says the node works alone" "this node works alone" "$(cat "${LOG[A]}")"
t0=$(date +%s%N)
out=$(spec 421 440 A B C | load --threads 12)
t1=$(date +%s%N)
check_eq "with Redis gone: every client served" "ok=60 failed=0" "$(echo "$out" | head -n 1)"
echo "   60 connections with Redis down: $(( (t1 - t0) / 1000000 )) ms"

start_redis
for n in A B C; do check "node $n: shared cache up again without a restart" wait_up $n 1; done
before=$(sigsum)
out=$(spec 441 470 A B C | load --threads 30)
check_eq "after Redis came back: every client served" "ok=90 failed=0" "$(echo "$out" | head -n 1)"
check_eq "sharing resumed: 30 new hosts, 30 signatures" "30" "$(( $(sigsum) - before ))"

echo "== redis-server stalls (SIGSTOP): nothing waits past shared_timeout_ms for long"
kill -STOP "$REDIS_PID"
to0=$(shared_ev A timeout)
out=$(spec 501 520 A | load --threads 4 --times "$WORK/stall.times")
check_eq "Redis stalled: every client served" "ok=20 failed=0" "$(echo "$out" | head -n 1)"
check "the late answers are counted as timeouts" test "$(shared_ev A timeout)" -gt "$to0"
check "a connection silent for a second is dropped: A shows down" wait_up A 0
slowest=$(awk '{print $3}' "$WORK/stall.times" | sort -n | tail -n 1)
echo "   slowest client while Redis was stalled: ${slowest}s (shared_timeout_ms 1000)"
check "no client waited much past the 1000 ms deadline (slowest ${slowest}s)" \
    awk -v s="$slowest" 'BEGIN {exit !(s < 3)}'
kill -CONT "$REDIS_PID"
check "Redis answers again: A reconnects" wait_up A 1

echo "== poisoning"
rkey() { # rkey K: the Redis key of host hK.test (forward-trust CA, EC leaf)
    echo "tlsmint:leaf:$(sha256sum "$WORK/pki/hosts/h$1.test.der" | cut -c1-64)0000"
}
check_eq "the entry of h441 is where the nodes put it" "1" "$(rcli EXISTS "$(rkey 441)")"
# (1) a good entry copied under another host's key
rcli COPY "$(rkey 441)" "$(rkey 471)" >/dev/null
# (2) a bit-flipped entry: publish h472 through A alone, flip one bit in Redis
out=$(spec 472 472 A | load)
rcli --raw GET "$(rkey 472)" | head -c -1 >"$WORK/e472"
python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[len(b)//2]^=0x10; open(sys.argv[1],"wb").write(b)' "$WORK/e472"
rcli -x SET "$(rkey 472)" <"$WORK/e472" >/dev/null
# (3) an entry made by another CA: a node D of another deployment with the same master key
D="$WORK/D"
"$TLSMINT" init --dir "$D" --master-key-file "$WORK/mk" >/dev/null 2>&1
node_conf D "redis://127.0.0.1:$RPORT"
node_start D || exit 1
wait_up D 1
out=$(python3 "$FLEET_PY" load "$D/ca/forward-trust.pem" "$OPORT" <<<"${PORT[D]} h473.test")
check_eq "node D (another CA) served h473 and published it" "ok=1 failed=0" "$(echo "$out" | head -n 1)"
kill -TERM "${PID[D]}"; wait "${PID[D]}"
rej0=$(shared_ev C rejected) sigs0=$(sigs C)
out=$(spec 471 473 C | load)
check_eq "clients of C got correct leaves for the three poisoned hosts" "ok=3 failed=0" "$(echo "$out" | head -n 1)"
check_eq "C refused and counted the three entries" "3" "$(( $(shared_ev C rejected) - rej0 ))"
check_eq "and signed the three leaves itself" "3" "$(( $(sigs C) - sigs0 ))"
out=$("$TLSMINT" -c "$C/tlsmint.conf" ctl cache)
check_contains "ctl cache: two entries with a bad HMAC" "bad HMAC=2" "$out"
check_contains "ctl cache: one entry from another CA" "another CA=1" "$out"
check_contains "the refusal is logged with its reason" "shared cache: refused an entry" "$(cat "${LOG[C]}")"
sigs0=$(sigsum)
out=$(spec 471 473 A B | load)
check_eq "the others now get C's leaves (C overwrote the poison)" "ok=6 failed=0" "$(echo "$out" | head -n 1)"
check_eq "... without a signature" "$sigs0" "$(sigsum)"

echo "== warm restart"
for n in A B C; do
    kill -TERM "${PID[$n]}"; wait "${PID[$n]}"
    check_eq "node $n: clean exit" "0" "$?"
    check_not_contains "node $n: no sanitizer report" "Sanitizer" "$(cat "${LOG[$n]}")"
    check_not_contains "node $n: no runtime error" "runtime error" "$(cat "${LOG[$n]}")"
done
check_contains "A wrote its snapshot on SIGTERM" "leaves written" "$(cat "${LOG[A]}")"
check_eq "the snapshot is 0600" "600" "$(stat -c %a "$A/cache.snap")"
check_eq "no leaf in clear in it" "" "$(grep -la 'h1.test' "$A/cache.snap")"
rcli FLUSHALL >/dev/null # only the snapshot can spare the signatures now
node_start A || exit 1
check_contains "A loaded its snapshot before listening" "leaves loaded" "$(cat "${LOG[A]}")"
out=$(spec 1 300 A | load --threads 30)
check_eq "warm A serves the 300 hosts" "ok=300 failed=0" "$(echo "$out" | head -n 1)"
check_eq "... with 0 signatures" "0" "$(sigs A)"
kill -TERM "${PID[A]}"; wait "${PID[A]}"

cp "$A/cache.snap" "$WORK/good.snap"
for how in tampered truncated not-a-snapshot another-CA; do
    case $how in
    tampered) python3 -c 'import sys; b=bytearray(open(sys.argv[1],"rb").read()); b[len(b)//2]^=1; open(sys.argv[1],"wb").write(b)' "$A/cache.snap" ;;
    truncated) head -c $(( $(stat -c %s "$WORK/good.snap") / 2 )) "$WORK/good.snap" >"$A/cache.snap" ;;
    not-a-snapshot) cp "$A/keys/leaf-pool.enc" "$A/cache.snap" ;; # sealed, by the same key, but not this
    another-CA) cp "$D/cache.snap" "$A/cache.snap" ;; # opens (same master key): entries refused
    esac
    rcli FLUSHALL >/dev/null
    node_start A
    check_eq "$how snapshot: A starts anyway" "0" "$?"
    if [ "$how" = another-CA ]; then
        check_contains "$how snapshot: its leaves are refused" "0 leaves loaded, 1 skipped" "$(cat "${LOG[A]}")"
    else
        check_eq "$how snapshot: one warning" "1" "$(grep -c 'cache snapshot .* ignored' "${LOG[A]}")"
    fi
    out=$(spec 1 5 A | load)
    check_eq "$how snapshot: cold start serves clients" "ok=5 failed=0" "$(echo "$out" | head -n 1)"
    check_eq "$how snapshot: cold (5 signatures)" "5" "$(sigs A)"
    kill -TERM "${PID[A]}"; wait "${PID[A]}"
    check_eq "$how snapshot: clean exit" "0" "$?"
    check_not_contains "$how snapshot: no sanitizer report" "Sanitizer" "$(cat "${LOG[A]}")"
done

echo "== configuration errors"
cp "$A/tlsmint.conf" "$WORK/bad.conf"
printf '\n[cache]\nshared = redis://127.0.0.1/0\n' >>"$WORK/bad.conf"
line=$(wc -l <"$WORK/bad.conf")
out=$("$TLSMINT" -c "$WORK/bad.conf" run 2>&1)
check "bad URL: refused" test $? -ne 0
check_contains "bad URL: FILE:LINE: [cache] shared" "$WORK/bad.conf:$line: [cache] shared:" "$out"
cp "$A/tlsmint.conf" "$WORK/bad.conf"
cp "$WORK/redis.pw" "$WORK/pw.open" && chmod 644 "$WORK/pw.open"
printf '\n[cache]\nshared_password_file = %s\n' "$WORK/pw.open" >>"$WORK/bad.conf"
line=$(wc -l <"$WORK/bad.conf")
out=$("$TLSMINT" -c "$WORK/bad.conf" run 2>&1)
check "password file readable by others: refused" test $? -ne 0
check_contains "password file: FILE:LINE: [cache] shared_password_file" "$WORK/bad.conf:$line: [cache] shared_password_file:" "$out"
cp "$A/tlsmint.conf" "$WORK/bad.conf"
printf '\n[cache]\nshared_password_file = %s\n' "$WORK/nonexistent.pw" >>"$WORK/bad.conf"
out=$("$TLSMINT" -c "$WORK/bad.conf" run 2>&1)
check_contains "unreadable password file: FILE:LINE error" "$WORK/bad.conf:$(wc -l <"$WORK/bad.conf"): [cache] shared_password_file:" "$out"
check_not_contains "the password is never printed" "$(cat "$WORK/redis.pw")" "$(cat "$WORK"/*.log.*) $out"
finish
