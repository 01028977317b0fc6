#!/bin/bash
# SPDX-License-Identifier: MIT
#
# inbound.sh - inbound inspection ([inbound.NAME], keys in the HSM), measured three ways, every
# variant interleaved with the others (A, B, C, A, B, C, ...), medians of the rounds:
#  1. full handshakes/s through tlsmint (P-256 key in SoftHSM, [hsm] workers = 2, 2 loops)
#     divided by raw SoftHSM signatures/s (hsm_bench's plain C_Sign loop, 2 sessions, a P-256
#     key of the same token) measured in the same run;
#  2. CPU per full handshake: tlsmint (proxy + signer processes) against nginx terminating TLS
#     with the same kind of certificate from a key file and proxying to the same backend;
#  3. resumed handshakes/s (session tickets) through tlsmint against the same nginx.
# The load generator is tlsmint-bench (2 threads, closed loop); every connection fetches a small
# page from an nginx backend (plain HTTP) through the TLS terminator.
#
# usage: bench/inbound.sh [BUILD_DIR]   (default build/release, configured with -Dbench=true
#        for hsm_bench). Environment: INB_ROUNDS (default 3), INB_SECONDS (per run, default 8),
#        INB_CONC (connections in flight, default 32), INB_TLS (1.3 or 1.2, default 1.3),
#        INB_LATENCY_MS (default 0): tests/faultp11 in front of SoftHSM adds this much to every
#        C_Sign, for tlsmint's signers and the raw signatures alike, so that the HSM and not the
#        CPU is the limit, as with a network HSM: the ratio then shows how much of the HSM's
#        signing rate the handshakes get.
# Writes bench/results/inbound.md, or inbound-LATENCYms.md with a latency (and prints it). Owns a mktemp directory (token, nginx, logs)
# and every process it starts; removes and stops them on any exit. Touch /work/wt/FUZZ_PAUSE
# (or whatever pauses background load) yourself before running it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

here="$(cd "$(dirname "$0")" && pwd)"
build="$(cd "${1:-build/release}" && pwd)"
tlsmint="$build/cli/tlsmint"
lg="$build/bench/loadgen/tlsmint-bench"
hb="$build/bench/hsm_bench"
for f in "$tlsmint" "$lg" "$hb"; do
    if [ ! -x "$f" ]; then
        echo "inbound.sh: $f missing (meson configure BUILD -Dbench=true && ninja -C BUILD)" >&2
        exit 2
    fi
done
rounds="${INB_ROUNDS:-3}"
secs="${INB_SECONDS:-8}"
conc="${INB_CONC:-32}"
tls="${INB_TLS:-1.3}"
lat="${INB_LATENCY_MS:-0}"
case "$lat" in '' | *[!0-9]*) echo "inbound.sh: INB_LATENCY_MS must be a number" >&2; exit 2 ;; esac

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tlsmint-inbound-bench.XXXXXX")"
chmod 755 "$tmp"
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do
        pkill -KILL -P "$p" 2>/dev/null || true
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    [ -n "${INB_KEEP:-}" ] || rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


echo "== setup" >&2
"$tlsmint" init --dir "$tmp/state" >/dev/null
export SOFTHSM2_CONF="$tmp/state/hsm/softhsm2.conf"
conf="$tmp/state/tlsmint.conf"
"$tlsmint" -c "$conf" inbound keygen --label bench-web >/dev/null
"$tlsmint" -c "$conf" inbound csr --label bench-web --subject /CN=localhost --san DNS:localhost \
    --out "$tmp/web.csr" >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/ca.key" \
    -out "$tmp/ca.pem" -subj "/CN=bench org CA" -days 2 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl x509 -req -in "$tmp/web.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 1 -copy_extensions copy -out "$tmp/web.pem" 2>/dev/null
# nginx: the same kind of certificate (P-256, same CA and names), its key in a file
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$tmp/soft.key" \
    -out "$tmp/soft.csr" -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
openssl x509 -req -in "$tmp/soft.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 1 -copy_extensions copy -out "$tmp/soft.pem" 2>/dev/null

fault_hsm=""
if [ "$lat" -gt 0 ]; then
    softhsm=$(sed -n 's/^module *= *//p' "$conf" | head -1)
    build_faultp11 "$tmp/libfaultp11.so"
    echo "latency_ms=$lat" >"$tmp/fault.ctl"
    fault_hsm=$(printf 'module = %s\nenv = FAULTP11_MODULE=%s\nenv = FAULTP11_CONTROL=%s' \
        "$tmp/libfaultp11.so" "$softhsm" "$tmp/fault.ctl")
fi

bport=$(free_port)
nport=$(free_port)
iport=$(free_port)
mkdir -p "$tmp/www" "$tmp/nx" "$tmp/tmpd"
echo "hello" >"$tmp/www/index.html"
cat >"$tmp/nx/nginx.conf" <<EOF
daemon off;
worker_processes 2;
pid $tmp/nx/nginx.pid;
error_log $tmp/nx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/tmpd;
  proxy_temp_path $tmp/tmpd;
  fastcgi_temp_path $tmp/tmpd;
  uwsgi_temp_path $tmp/tmpd;
  scgi_temp_path $tmp/tmpd;
  server { listen 127.0.0.1:$bport backlog=4096; root $tmp/www; }
}
EOF
cat >"$tmp/nx/tls.conf" <<EOF
daemon off;
worker_processes 2;
pid $tmp/nx/tls.pid;
error_log $tmp/nx/tls-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/tmpd;
  proxy_temp_path $tmp/tmpd;
  fastcgi_temp_path $tmp/tmpd;
  uwsgi_temp_path $tmp/tmpd;
  scgi_temp_path $tmp/tmpd;
  server {
    listen 127.0.0.1:$nport ssl backlog=4096;
    ssl_certificate $tmp/soft.pem;
    ssl_certificate_key $tmp/soft.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
    ssl_session_tickets on;
    location / { proxy_pass http://127.0.0.1:$bport; }
  }
}
EOF
chmod -R a+rX "$tmp/www" "$tmp/nx" "$tmp/tmpd" "$tmp/soft.pem" "$tmp/soft.key" # the PIN file stays 0600
nginx -c "$tmp/nx/nginx.conf" -e "$tmp/nx/error.log" &
pids+=($!)
nginx -c "$tmp/nx/tls.conf" -e "$tmp/nx/tls-error.log" &
npid=$!
pids+=($npid)
wait_port "$bport"
wait_port "$nport"

cat >>"$conf" <<EOF

[listen]
explicit =
transparent =
threads = 2

[hsm]
workers = 2
$fault_hsm

[log]
access = $tmp/access.log
level = warn

[admin]
socket = $tmp/tlsmint.sock
metrics =

[inbound.web]
listen = 127.0.0.1:$iport
cert = $tmp/web.pem
key_label = bench-web
backend = 127.0.0.1:$bport
EOF
"$tlsmint" -c "$conf" run >"$tmp/run.log" 2>&1 &
tpid=$!
pids+=($tpid)
wait_port "$iport" || { cat "$tmp/run.log" >&2; exit 1; }

# one load run: prints "conn_per_s cpu_s ok" (cpu: the process trees of the given pids)
load() { # load PORT RESUME(0|1) PID
    local port=$1 resume=$2 pid=$3 extra=()
    [ "$resume" = 1 ] && extra+=(--resume)
    "$lg" handshake --connect "127.0.0.1:$port" --host localhost --cafile "$tmp/ca.pem" \
        --threads 2 --concurrency "$conc" --duration "$secs" --tls "$tls" --path /index.html \
        --pid "$pid" --json -q "${extra[@]}" >"$tmp/lg.json" 2>"$tmp/lg.err" || true
    python3 - "$tmp/lg.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["conn_per_s"], d["pids"]["cpu_s"], d["ok"], d.get("resumed", 0))
EOF
}

raw_signs() { # raw SoftHSM P-256 signatures/s, 2 sessions (hsm_bench plain)
    HSM_BENCH_CONFIG="$conf" HSM_BENCH_KEY=ec-p256 HSM_BENCH_WORKERS=2 TLSMINT_BIN="$tlsmint" \
        HSM_BENCH_MIN_TIME="$secs" CC_BENCH= "$hb" --benchmark_filter='^hsm_plain/' \
        --benchmark_out="$tmp/hb.json" --benchmark_out_format=json >/dev/null 2>"$tmp/hb.err" || true
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print([b["sig_per_s"] for b in d["benchmarks"] if "sig_per_s" in b][0])' "$tmp/hb.json"
}

echo "round,variant,per_s,cpu_s,ok,resumed" >"$tmp/raw.csv"
for r in $(seq 1 "$rounds"); do
    echo "== round $r/$rounds" >&2
    s=$(raw_signs)
    echo "$r,raw_sign,$s,0,0,0" >>"$tmp/raw.csv"
    read -r a b c d < <(load "$iport" 0 "$tpid")
    echo "$r,tlsmint_full,$a,$b,$c,$d" >>"$tmp/raw.csv"
    read -r a b c d < <(load "$nport" 0 "$npid")
    echo "$r,nginx_full,$a,$b,$c,$d" >>"$tmp/raw.csv"
    read -r a b c d < <(load "$iport" 1 "$tpid")
    echo "$r,tlsmint_resumed,$a,$b,$c,$d" >>"$tmp/raw.csv"
    read -r a b c d < <(load "$nport" 1 "$npid")
    echo "$r,nginx_resumed,$a,$b,$c,$d" >>"$tmp/raw.csv"
done
hsm=$("$tlsmint" -c "$conf" ctl hsm 2>&1 | grep "by use" || true)
mkdir -p "$here/results"
name=inbound
[ "$lat" -gt 0 ] && name=inbound-${lat}ms
python3 - "$tmp/raw.csv" "$here/results/$name.md" "$rounds" "$secs" "$conc" "$tls" "$hsm" "$lat" <<'EOF'
import csv, os, platform, statistics, sys, time
rows = list(csv.DictReader(open(sys.argv[1])))
out, rounds, secs, conc, tls, hsm, lat = sys.argv[2:9]
by = {}
for r in rows:
    by.setdefault(r["variant"], []).append(r)
def med(v, f):
    return statistics.median(float(x[f]) for x in by[v])
def cpu_us(v):
    # per connection, each round on its own, then the median
    return statistics.median(float(x["cpu_s"]) / max(1.0, float(x["ok"])) * 1e6 for x in by[v])
ratios = [float(t["per_s"]) / float(s["per_s"]) for t, s in zip(by["tlsmint_full"], by["raw_sign"])]
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
L = ["# Inbound inspection: handshakes through an HSM-held key", "",
     f"Generated by `bench/inbound.sh` on {time.strftime('%Y-%m-%d %H:%M %Z')}. Machine: "
     f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, shared with "
     "other work (background fuzzing paused). Device: SoftHSM 2 (P-256 key inside the token, "
     "`[hsm] workers = 2`)" + (f", with tests/faultp11 adding {lat} ms to every C_Sign (tlsmint's "
     "signers and the raw signatures alike: the HSM, not the CPU, is the limit)" if lat != "0" else "") +
     ", tlsmint 2 loops; nginx 2 workers with the same kind of certificate "
     "(P-256, same CA) from a key file, proxying to the same plain nginx backend.", "",
     f"Load: tlsmint-bench handshake, 2 threads, {conc} connections in flight, TLS {tls}, "
     f"GET /index.html (6 bytes) per connection, {secs} s per run; {rounds} rounds, each round "
     "runs every variant once in the same order (raw signatures, tlsmint full, nginx full, "
     "tlsmint resumed, nginx resumed). Medians of the rounds; ratios are taken within a round. "
     "CPU is the TLS terminator's process tree (tlsmint: proxy + signer processes; nginx: master "
     "+ workers), not the load generator's or the backend's.", "",
     "| | per second | CPU per connection |", "|---|---|---|",
     f"| raw SoftHSM signatures (hsm_bench plain C_Sign, 2 sessions) | {med('raw_sign','per_s'):,.0f} | - |",
     f"| tlsmint full handshakes (one HSM signature each) | {med('tlsmint_full','per_s'):,.0f} | {cpu_us('tlsmint_full'):,.0f} us |",
     f"| nginx full handshakes (key file) | {med('nginx_full','per_s'):,.0f} | {cpu_us('nginx_full'):,.0f} us |",
     f"| tlsmint resumed handshakes (tickets, no signature) | {med('tlsmint_resumed','per_s'):,.0f} | {cpu_us('tlsmint_resumed'):,.0f} us |",
     f"| nginx resumed handshakes | {med('nginx_resumed','per_s'):,.0f} | {cpu_us('nginx_resumed'):,.0f} us |",
     "",
     f"- Full handshakes/s through tlsmint / raw SoftHSM signatures/s: median "
     f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{x:.2f}' for x in ratios)}; target 0.7).",
     f"- CPU per full handshake, tlsmint / nginx: {cpu_us('tlsmint_full') / cpu_us('nginx_full'):.2f}.",
     f"- Resumed handshakes/s, tlsmint / nginx: {med('tlsmint_resumed','per_s') / med('nginx_resumed','per_s'):.2f}.",
     f"- Resumed connections as the load generator counted them: tlsmint "
     f"{statistics.median(float(x['resumed']) for x in by['tlsmint_resumed']):,.0f} of "
     f"{statistics.median(float(x['ok']) for x in by['tlsmint_resumed']):,.0f}, nginx "
     f"{statistics.median(float(x['resumed']) for x in by['nginx_resumed']):,.0f} of "
     f"{statistics.median(float(x['ok']) for x in by['nginx_resumed']):,.0f} (median round).",
     f"- `ctl hsm` at the end: `{hsm.strip()}`", "",
     "Raw rows (round, variant, per_s, cpu_s, ok, resumed):", "", "```"]
L += [",".join(r[k] for k in ("round", "variant", "per_s", "cpu_s", "ok", "resumed")) for r in rows]
L += ["```", ""]
open(out, "w").write("\n".join(L))
print("\n".join(L))
EOF
