#!/bin/bash
# SPDX-License-Identifier: MIT
# fleet.sh [--nodes N] [--hosts H] [--requests R] [--clients C] [--zipf S] [--timeout-ms MS]
#          [--out FILE] [BUILD_DIR]
# Many nodes behind one client set: N tlsmint processes (default 8, one loop each, restored
# from one bundle, one SoftHSM token), one redis-server, one nginx origin with a certificate per
# host name. R requests (default 3000) to H hosts (default 600) with a Zipf(S = 1.0) popularity,
# each to a node picked at random (a load balancer), C at a time (default 16), twice: without
# [cache] shared, then with it (fresh nodes, empty Redis). Reports HSM signatures / distinct
# hosts (with shared the target is <= 1.02, without about N), the hit ratio per node, and the
# extra latency of a Redis hit over a local hit (p50/p99): a fresh node asks for H hosts that
# are all in Redis, then for the same hosts again (all local hits), measured by the clients
# (connect to response) and by the proxy (access log: time the handshake waited for its leaf).
# [cache] shared_timeout_ms is MS (default 5, the default of the key). Writes FILE (default
# bench/results/fleet.md). Needs redis-server, nginx, python3-cryptography.
set -euo pipefail
NODES=8 HOSTS=600 REQS=3000 CLIENTS=16 ZIPF=1.0 TIMEOUT=5 OUT=bench/results/fleet.md
BUILD=build/release
while [ $# -gt 0 ]; do
    case $1 in
    --nodes) NODES=$2; shift 2 ;;
    --hosts) HOSTS=$2; shift 2 ;;
    --requests) REQS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --zipf) ZIPF=$2; shift 2 ;;
    --timeout-ms) TIMEOUT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    -*) echo "fleet.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -d "$1" ] || { echo "fleet.sh: no build directory $1" >&2; exit 2; }
       BUILD=$1; shift ;;
    esac
done
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
ROOT=$PWD
TLSMINT="$(realpath "$BUILD/cli/tlsmint")"
FLEET_PY="$ROOT/tests/e2e/fleet.py"
[ -x "$TLSMINT" ] || { echo "no $TLSMINT: build first (make build)" >&2; exit 1; }
T=$(mktemp -d /tmp/tlsmint-fleet-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

echo "fleet bench: $NODES nodes, $HOSTS hosts, $REQS requests, $CLIENTS clients, zipf $ZIPF ($BUILD)"
python3 "$FLEET_PY" pki "$T/pki" "$HOSTS"
head -c 32 /dev/urandom >"$T/mk"
chmod 600 "$T/mk"
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$T" \
    --logfile "$T/redis.log" &
PIDS+=($!)
wait_port "$RPORT"
OPORT=$(free_port)
mkdir -p "$T/origin/www" "$T/origin/tmp"
echo "hello-from-origin" >"$T/origin/www/index.html"
cat >"$T/origin/nginx.conf" <<NGX
daemon off;
worker_processes 1;
pid $T/origin/nginx.pid;
error_log $T/origin/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $T/origin/tmp;
  proxy_temp_path $T/origin/tmp;
  fastcgi_temp_path $T/origin/tmp;
  uwsgi_temp_path $T/origin/tmp;
  scgi_temp_path $T/origin/tmp;
  server {
    listen 127.0.0.1:$OPORT ssl;
    ssl_certificate $T/pki/hosts/\$ssl_server_name.pem;
    ssl_certificate_key $T/pki/hosts/\$ssl_server_name.key;
    root $T/origin/www;
  }
}
NGX
chmod -R a+rX "$T/origin" "$T/pki"
chmod a+x "$T"
nginx -c "$T/origin/nginx.conf" -e "$T/origin/error.log" &
PIDS+=($!)
wait_port "$OPORT"

"$TLSMINT" init --dir "$T/n1" --master-key-file "$T/mk" >/dev/null
"$TLSMINT" -c "$T/n1/tlsmint.conf" backup --out "$T/fleet.bundle" >/dev/null
for i in $(seq 2 "$NODES"); do
    "$TLSMINT" restore --in "$T/fleet.bundle" --dir "$T/n$i" --master-key-file "$T/mk" >/dev/null
done
declare -A PORT NPID
for i in $(seq 1 "$NODES"); do
    PORT[$i]=$(free_port)
    cp "$T/n$i/tlsmint.conf" "$T/n$i/base.conf"
    printf '\n[listen]\nexplicit = 127.0.0.1:%s\ntransparent =\nthreads = 1\n[upstream]\nca_file = %s\n[admin]\nmetrics =\n[log]\nlevel = warn\naccess = %s\n' \
        "${PORT[$i]}" "$T/pki/root.pem" "$T/n$i/access.log" >>"$T/n$i/base.conf"
done
start_nodes() { # start_nodes SHARED_URL [SNAPSHOT_OF_NODE_1]
    for i in $(seq 1 "$NODES"); do
        cp "$T/n$i/base.conf" "$T/n$i/tlsmint.conf"
        printf '[cache]\nshared = %s\nshared_timeout_ms = %s\n' "$1" "$TIMEOUT" >>"$T/n$i/tlsmint.conf"
        if [ "$i" = 1 ] && [ -n "${2:-}" ]; then
            printf 'snapshot = %s\n' "$2" >>"$T/n$i/tlsmint.conf"
        fi
        : >"$T/n$i/access.log"
        "$TLSMINT" -c "$T/n$i/tlsmint.conf" run >"$T/n$i/run.log" 2>&1 &
        NPID[$i]=$!
        PIDS+=($!)
        # one at a time: signers opening one SoftHSM token store at once can miss the token
        wait_port "${PORT[$i]}" || { cat "$T/n$i/run.log" >&2; exit 1; }
    done
    if [ -n "$1" ]; then
        for i in $(seq 1 "$NODES"); do
            for _ in $(seq 1 100); do
                "$TLSMINT" -c "$T/n$i/tlsmint.conf" ctl metrics | grep -q '^tlsmint_shared_cache_up 1' && break
                sleep 0.1
            done
        done
    fi
}
stop_nodes() {
    for i in $(seq 1 "$NODES"); do kill -TERM "${NPID[$i]}"; done
    for i in $(seq 1 "$NODES"); do wait "${NPID[$i]}" || true; done
}
metric() { # metric NODE NAME: value (0 when absent)
    { "$TLSMINT" -c "$T/n$1/tlsmint.conf" ctl metrics 2>/dev/null || true; } | awk -v k="$2" '$1 == k && !f {v = $2; f = 1} END {print f ? v : 0}'
}
# the request sequence: Zipf popularity over the hosts, a random node per request (same seed
# for both runs, so both see exactly the same requests)
python3 - "$HOSTS" "$REQS" "$ZIPF" "$NODES" >"$T/seq" <<'PY'
import random, sys
h, r, s, n = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(11)
w = [1.0 / (k ** s) for k in range(1, h + 1)]
for host in rnd.choices(range(1, h + 1), weights=w, k=r):
    print(rnd.randint(1, n), host)
PY
DISTINCT=$(awk '{print $2}' "$T/seq" | sort -u | wc -l)
run() { # run LABEL SHARED_URL
    redis-cli -p "$RPORT" FLUSHALL >/dev/null
    start_nodes "$2"
    awk -v ports="$(for i in $(seq 1 "$NODES"); do printf '%s ' "${PORT[$i]}"; done)" \
        'BEGIN {split(ports, p, " ")} {print p[$1], "h" $2 ".test"}' "$T/seq" >"$T/spec.$1"
    local t0 t1 out
    t0=$(date +%s.%N)
    out=$(python3 "$FLEET_PY" load "$T/n1/ca/forward-trust.pem" "$OPORT" --threads "$CLIENTS" \
        --times "$T/times.$1" <"$T/spec.$1")
    t1=$(date +%s.%N)
    local sigs=0 rows="" i
    for i in $(seq 1 "$NODES"); do
        local s hit miss shit reqs sto swait
        s=$(metric "$i" 'tlsmint_hsm_signatures_total{member="hsm",result="ok"}')
        hit=$(metric "$i" 'tlsmint_cache_events_total{event="hit"}')
        miss=$(metric "$i" 'tlsmint_cache_events_total{event="miss"}')
        shit=$(metric "$i" 'tlsmint_shared_cache_events_total{event="hit"}')
        reqs=$(awk -v n="$i" '$1 == n' "$T/seq" | wc -l)
        sto=$(metric "$i" 'tlsmint_shared_cache_events_total{event="timeout"}')
        swait=$(metric "$i" 'tlsmint_shared_cache_events_total{event="lock_waited"}')
        sigs=$((sigs + s))
        rows+="$i $reqs $hit $shit $s $sto $swait"$'\n'
    done
    stop_nodes
    echo "$1 $sigs $(echo "$out" | head -n 1) $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')" >"$T/sum.$1"
    printf '%s' "$rows" >"$T/nodes.$1"
    echo "  $1: $sigs signatures for $DISTINCT distinct hosts, clients: $(echo "$out" | head -n 1)"
}
run local ""
run shared "redis://127.0.0.1:$RPORT/0"

# Redis hit vs local hit on node 1: Redis still holds every host of the shared run. Pass 1 on a
# fresh process = shared hits; node 1 then writes its snapshot on SIGTERM and starts warm from
# it, so pass 2 = local hits on a fresh process too (no upstream session to resume in either).
redis_hits_phase() {
    start_nodes "redis://127.0.0.1:$RPORT/0" "$T/n1/cache.snap"
    awk '{print $2}' "$T/seq" | sort -un | awk -v p="${PORT[1]}" '{print p, "h" $1 ".test"}' >"$T/spec.lat"
    python3 "$FLEET_PY" load "$T/n1/ca/forward-trust.pem" "$OPORT" --threads 1 --times "$T/times.redis" <"$T/spec.lat" >/dev/null
    LAT_SIGS=$(metric 1 'tlsmint_hsm_signatures_total{member="hsm",result="ok"}')
    LAT_SHIT=$(metric 1 'tlsmint_shared_cache_events_total{event="hit"}')
    cp "$T/n1/access.log" "$T/alog.redis"
    stop_nodes
    start_nodes "redis://127.0.0.1:$RPORT/0" "$T/n1/cache.snap"
    python3 "$FLEET_PY" load "$T/n1/ca/forward-trust.pem" "$OPORT" --threads 1 --times "$T/times.local" <"$T/spec.lat" >/dev/null
    LAT_SIGS=$((LAT_SIGS + $(metric 1 'tlsmint_hsm_signatures_total{member="hsm",result="ok"}')))
    LAT_LHIT=$(metric 1 'tlsmint_cache_events_total{event="hit"}')
    cp "$T/n1/access.log" "$T/alog.local"
    stop_nodes
}
redis_hits_phase

mkdir -p "$(dirname "$OUT")"
python3 - "$T" "$NODES" "$HOSTS" "$REQS" "$CLIENTS" "$ZIPF" "$DISTINCT" "$LAT_SIGS" "$LAT_SHIT" "$LAT_LHIT" "$TIMEOUT" >"$OUT" <<'PY'
import json, os, statistics, sys
t, nodes, hosts, reqs, clients, zipf, distinct, lat_sigs, lat_shit, lat_lhit, tmo = sys.argv[1:]
distinct = int(distinct)
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
def times(name):
    return [float(l.split()[2]) * 1000 for l in open(os.path.join(t, "times." + name)) if l.split()[3] == "1"]
def waits(name):
    out = []
    for l in open(os.path.join(t, "alog." + name)):
        try:
            out.append(float(json.loads(l).get("hsm_wait_ms", 0)))
        except ValueError:
            pass
    return out
print("# Fleet: HSM signatures per host with and without the shared cache\n")
print("`bench/fleet.sh --nodes %s --hosts %s --requests %s --clients %s --zipf %s --timeout-ms %s`"
      " (release build, SoftHSM P-256, one loop per node, redis-server and nginx on the same 2-core"
      " VM, shared with other jobs: read ratios, not absolute times).\n" % (
          nodes, hosts, reqs, clients, zipf, tmo))
print("The same %s requests (Zipf %s over %s hosts: %d distinct hosts requested, each to a random"
      " node) were sent twice, to fresh nodes each time.\n" % (reqs, zipf, hosts, distinct))
print("| run | HSM signatures | signatures / distinct host | clients ok / failed | wall time s |")
print("|---|---:|---:|---|---:|")
for name in ("local", "shared"):
    f = open(os.path.join(t, "sum." + name)).read().split()
    print("| %s | %s | %.3f | %s / %s | %.1f |" % ("without shared" if name == "local" else "with shared",
          f[1], int(f[1]) / distinct, f[2].split("=")[1], f[3].split("=")[1], float(f[4])))
pairs = len({tuple(l.split()) for l in open(os.path.join(t, "seq"))})
counts = {}
for l in open(os.path.join(t, "seq")):
    counts[l.split()[1]] = counts.get(l.split()[1], 0) + 1
popular = sum(1 for v in counts.values() if v >= 4 * int(nodes))
tot = {"local": [0, 0], "shared": [0, 0]}
for name in ("local", "shared"):
    for l in open(os.path.join(t, "nodes." + name)):
        f = l.split()
        tot[name][0] += int(f[5])
        tot[name][1] += int(f[6])
print("\nWithout the shared tier a host costs one signature per node that sees it: the requests"
      " make %d distinct (node, host) pairs, %.2f per host (most hosts of a Zipf tail are asked"
      " for a few times only; the %d hosts asked for at least %d times cost about %s each). With it,"
      " Redis commands that missed the %s ms deadline (%d timeouts on this loaded VM) are the extra"
      " signatures; %d lookups lost the fleet lock and waited for the winner's leaf.\n" % (
          pairs, pairs / distinct, popular, 4 * int(nodes), nodes, tmo, tot["shared"][0],
          tot["shared"][1]))
print("\nPer node (requests it got, local cache hits, shared hits, signatures; hit ratio = requests"
      " served without a signature by that node):\n")
print("| node | requests | without: local hits | without: signatures | without: hit ratio | with: local hits | with: shared hits | with: signatures | with: hit ratio |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
rows = {}
for name in ("local", "shared"):
    for l in open(os.path.join(t, "nodes." + name)):
        n, r, hit, shit, s = l.split()[:5]
        rows.setdefault(n, {})[name] = (int(r), int(hit), int(shit), int(s))
for n in sorted(rows, key=int):
    lo, sh = rows[n]["local"], rows[n]["shared"]
    print("| %s | %d | %d | %d | %.1f %% | %d | %d | %d | %.1f %% |" % (
        n, lo[0], lo[1], lo[3], 100.0 * (lo[0] - lo[3]) / max(lo[0], 1), sh[1], sh[2], sh[3],
        100.0 * (sh[0] - sh[3]) / max(sh[0], 1)))
r, l = times("redis"), times("local")
wr, wl = waits("redis"), waits("local")
print("\nRedis hit vs local hit: node 1, %d hosts that are all in Redis, one client at a time, each"
      " pass on a fresh process (no upstream TLS session to resume): pass 1 = shared hits (%s shared"
      " hits), then SIGTERM and a warm start from the snapshot, pass 2 = local hits (%s local hits);"
      " %s signatures in both.\n" % (len(r), lat_shit, lat_lhit, lat_sigs))
print("| | p50 ms | p99 ms |")
print("|---|---:|---:|")
print("| client: connect to response, Redis hit | %.2f | %.2f |" % (pct(r, .5), pct(r, .99)))
print("| client: connect to response, local hit | %.2f | %.2f |" % (pct(l, .5), pct(l, .99)))
print("| extra for a Redis hit (difference of the percentiles) | %.2f | %.2f |" % (
    pct(r, .5) - pct(l, .5), pct(r, .99) - pct(l, .99)))
print("| proxy: handshake waiting for its leaf, Redis hit | %.3f | %.3f |" % (pct(wr, .5), pct(wr, .99)))
print("| proxy: handshake waiting for its leaf, local hit | %.3f | %.3f |" % (pct(wl, .5), pct(wl, .99)))
PY
cat "$OUT"
