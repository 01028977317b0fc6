#!/bin/bash
# SPDX-License-Identifier: MIT
#
# run-bench.sh - tlsmint against the origin directly and against sslsplit, same origin, same
# load, same pinning, transparent interception on one machine. Writes bench/results/REPORT.md
# (medians, ratios tlsmint/direct and tlsmint/sslsplit from the same run, machine, commands)
# and bench/results/bench-raw.jsonl (one tlsmint-bench JSON object per measurement).
#
# usage: bench/run-bench.sh [--quick] [--runs N] [--hosts M] [--idle C] [--no-sslsplit]
#                           [--no-perf] [--no-floor] [--scenarios LIST] [--compare BIN]
#                           [--compare-env VAR=VALUE] [--variant NAME=FILE]...
#                           [--variant-bin NAME=BIN]... [--sweep LIST]
#                           [--out DIR] [BUILD_DIR]
#   default (full): 3 runs, handshake/latency 10 s, bulk 5 s, mint 1000 fresh hosts per run
#                   and target, idle 2000 connections (opened at 400/s, BENCH_IDLE_RATE)
#                   held 5 s; about 10 minutes
#   --quick:        1 run, 3 s, 300 hosts, 1000 idle connections; about 2 minutes
#   --scenarios:    comma-separated subset of handshake,mint,bulk1,bulk8,latency,idle
#   --compare BIN:  a second tlsmint binary as one more target, "tlsmint-b" (same set-up,
#                   CPU 0, interleaved with the others): A/B of a change in one run
#   --compare-env:  an environment variable for tlsmint-b (e.g. LD_PRELOAD=... to compare
#                   allocators; with no --compare, tlsmint-b is the same binary)
#   --variant:      one more tlsmint target NAME (its own state, port and uid) whose config has
#                   FILE's lines appended, interleaved with the others (bench/export-cost.sh)
#   --variant-bin:  variant NAME runs the tlsmint binary BIN instead (an A/B of one setting's code)
#   --sweep:        latency at these percentages of the direct maximum conn/s, e.g. 25,50,75,90
#                   (default 50); 50 is always run and is the main table's latency row
#   BENCH_TIMELINE=DIR (environment): each run also writes tlsmint-bench's 100 ms timeline to
#                   DIR/TARGET-SCENARIO-RUN.csv (DIR must be writable by the load's uids)
#   BENCH_THREADS=FILE (environment): each run appends a JSON line with the CPU seconds (and
#                   seconds per GB) of each of the target's threads, by name (bench/export-cost.sh)
#   BENCH_PERF=TARGET-SCENARIO,... BENCH_PERF_DIR=DIR (environment): perf record -g of those
#                   targets during those runs, to DIR/TARGET-SCENARIO-RUN.data (and .json, the
#                   load generator's result, for per-GB figures)
#   --no-floor:     no "floor" target (bench/loadgen/tcp_relay.c: plain TCP relay, no TLS,
#                   bulk only) and no `openssl speed` for the crypto floor
#
# Topology (needs root, iptables, network namespaces, nginx, sslsplit, taskset, setpriv):
#   - a network namespace made here (lo up, plus an unused veth with 192.0.2.1/24: sslsplit
#     resolves its listen address with AI_ADDRCONFIG and will not start when the only IPv4
#     address is on loopback)
#   - origin: nginx from bench/make-origin.sh on 127.0.0.1:9443, CPU 1
#   - tlsmint (transparent 127.0.0.1:18080, 1 loop thread, 1 signer worker, SoftHSM) on CPU 0
#   - sslsplit 0.5.5 (`ssl 127.0.0.1 18081`, netfilter NAT engine, software CA) on CPU 0
#   - tlsmint-bench (1 thread) on CPU 1, dialling 127.0.0.1:9443 as uid 4240 (direct),
#     4241 (nat OUTPUT REDIRECT to tlsmint) or 4242 (REDIRECT to sslsplit). The proxies run as
#     root / nobody, so their own upstream connections are not redirected.
#   - floor: tcp-relay (bench/loadgen/tcp_relay.c, recv/send, 64 KiB) on 127.0.0.1:18082, CPU 0,
#     uid 4243 REDIRECTed to it: the kernel's share of relaying the same bytes, with no TLS;
#     plus `openssl speed -evp aes-128-gcm` on CPU 0 for the crypto's share (decrypt and
#     encrypt once each: 2 / GB/s). Floor of a TLS relay = both.
# BENCH_KEEP=1 keeps the work directory (logs, configurations) also after a good run.
# Runs are interleaved (each scenario: run 1 direct, tlsmint, sslsplit; run 2 ...), so drift
# of the machine hits all three alike. Proxy CPU and memory come from tlsmint-bench --pid
# (process + all descendants: tlsmint's signer child, sslsplit's privsep parent/child).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
. "$here/lib.sh"
quick=0
runs=""
mint_hosts=""
idle_conns=""
with_sslsplit=1
with_perf=1
with_floor=1
scenarios="handshake,mint,bulk1,bulk8,latency,idle"
compare_bin=""
compare_env=""
variants=()
declare -A variant_bin=()
sweep=50
out="$here/results"
build_arg=""
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --runs) runs=$2; shift ;;
    --hosts) mint_hosts=$2; shift ;;
    --idle) idle_conns=$2; shift ;;
    --no-sslsplit) with_sslsplit=0 ;;
    --no-perf) with_perf=0 ;;
    --no-floor) with_floor=0 ;;
    --scenarios) scenarios=$2; shift ;;
    --compare) compare_bin=$2; shift ;;
    --compare-env) compare_env=$2; shift ;;
    --variant) variants+=("$2"); shift ;;
    --variant-bin) variant_bin[${2%%=*}]=${2#*=}; shift ;;
    --sweep) sweep=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) bench_help 3 47; exit 0 ;;
    -*) bench_bad_option "$1" ;;
    *) build_arg=$1 ;;
    esac
    shift
done
build_arg="${build_arg:-$repo/build/release}"
if [ $quick = 1 ]; then
    runs=${runs:-1}; mint_hosts=${mint_hosts:-300}; idle_conns=${idle_conns:-1000}
    hs_dur=3; bulk_dur=3; lat_dur=5; hold=3
else
    runs=${runs:-3}; mint_hosts=${mint_hosts:-1000}; idle_conns=${idle_conns:-2000}
    hs_dur=10; bulk_dur=5; lat_dur=10; hold=5
fi
for v in "$runs" "$mint_hosts" "$idle_conns"; do
    case "$v" in '' | *[!0-9]* | 0) echo "run-bench: bad number '$v'" >&2; exit 2 ;; esac
done
case ",$sweep," in *[!0-9,]* | *,0,* | *,,*) echo "run-bench: bad --sweep '$sweep'" >&2; exit 2 ;; esac
case ",$sweep," in *,50,*) ;; *) sweep="50,$sweep" ;; esac
for v in "${variants[@]}"; do
    case "$v" in
    [a-z]*=?*) [ -r "${v#*=}" ] || { echo "run-bench: --variant $v: cannot read ${v#*=}" >&2; exit 2; } ;;
    *) echo "run-bench: --variant wants NAME=FILE, got '$v'" >&2; exit 2 ;;
    esac
done

die() { echo "run-bench: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespace, iptables)"
[ -d "$build_arg" ] || die "no build directory $build_arg"
build="$(cd "$build_arg" && pwd)"
TLSMINT="$build/cli/tlsmint"
LG="$build/bench/loadgen/tlsmint-bench"
RELAY="$build/bench/loadgen/tcp-relay"
for f in "$TLSMINT" "$LG"; do [ -x "$f" ] || die "$f missing (ninja -C $build_arg)"; done
[ $with_floor = 0 ] || [ -x "$RELAY" ] || die "$RELAY missing (ninja -C $build_arg)"
with_b=0
if [ -n "$compare_bin$compare_env" ]; then
    with_b=1
    compare_bin=${compare_bin:-$TLSMINT}
    [ -x "$compare_bin" ] || die "no executable $compare_bin (--compare)"
    compare_bin="$(cd "$(dirname "$compare_bin")" && pwd)/$(basename "$compare_bin")"
fi
has_sc() { case ",$scenarios," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
for c in nginx iptables ip taskset setpriv openssl python3 ss; do
    command -v $c >/dev/null || die "$c not found"
done
if [ $with_sslsplit = 1 ] && ! command -v sslsplit >/dev/null; then
    die "sslsplit not found: apt-get install -y sslsplit (or --no-sslsplit)"
fi
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (proxy on CPU 0, origin and load on CPU 1)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((idle_conns * 2 + 200)) ] ||
    die "open files limit $(ulimit -n) too low for $idle_conns idle connections"

OPORT=9443
TM_PORT=18080
SS_PORT=18081
FL_PORT=18082
TB_PORT=18083
declare -A UID_OF=([direct]=4240 [tlsmint]=4241 [sslsplit]=4242 [floor]=4243 [tlsmint-b]=4244)
targets=(direct tlsmint)
[ $with_b = 1 ] && targets+=(tlsmint-b)
[ $with_sslsplit = 1 ] && targets+=(sslsplit)
[ $with_floor = 1 ] && targets+=(floor)
# the floor relays raw bytes: only the bulk scenarios mean something for it
runs_in() { [ "$1" != floor ] || case "$2" in bulk*) return 0 ;; *) return 1 ;; esac; }
total_hosts=$((1 + runs * mint_hosts + mint_hosts))   # h1 + fresh ranges per run + perf

work="$(mktemp -d "${TMPDIR:-/tmp}/tlsmint-bench.XXXXXX")"
chmod 755 "$work"
origin="$build/bench-origin"   # kept between runs: certificates are reused
NS="tlsmint-bench-$$"
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    if [ $rc != 0 ] || [ -n "${BENCH_KEEP:-}" ]; then
        echo "run-bench: rc $rc; logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

log() { echo "== $*" >&2; }
IN() { ip netns exec "$NS" "$@"; }
# start_bg NAME CPU CMD...: in the namespace, pinned; the real pid lands in $work/NAME.pid
start_bg() {
    local name=$1 cpu=$2
    shift 2
    rm -f "$work/$name.pid"
    IN bash -c 'echo $$ >"$0"; exec taskset -c "$1" "${@:2}"' "$work/$name.pid" "$cpu" "$@" \
        >"$work/$name.log" 2>&1 &
    for _ in $(seq 1 100); do [ -s "$work/$name.pid" ] && break; sleep 0.05; done
    [ -s "$work/$name.pid" ] || die "$name did not start"
    PIDS+=("$(cat "$work/$name.pid")")
    CMD_OF[$name]="$cpu $(printf '%q ' "$@")"
}
declare -A CMD_OF PORT_OF
# alive PID: running, not a zombie waiting to be reaped
alive() { local s; s=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$s" != Z ]; }
# restart_bg NAME: a fresh process with NAME's command, listening again on PORT_OF[NAME].
# The idle scenario needs one: a process keeps the heap of its earlier connections, and the
# next connections reuse it, so RSS grows only by what is new (0.3 KiB per connection in run 2)
restart_bg() {
    local name=$1 old
    old=$(cat "$work/$name.pid")
    kill -TERM "$old" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$old" || break; sleep 0.05; done
    alive "$old" && kill -KILL "$old"
    eval "start_bg $name ${CMD_OF[$name]}"
    wait_listen "${PORT_OF[$name]}" || { cat "$work/$name.log" >&2; die "$name did not restart"; }
    PID_OF[$name]=$(cat "$work/$name.pid")
}
# wait for a listener without connecting to it (a connection to sslsplit's port that was not
# redirected would make it connect to itself)
wait_listen() {
    for _ in $(seq 1 200); do
        [ -n "$(IN ss -Hltn "sport = :$1")" ] && return 0
        sleep 0.05
    done
    return 1
}
# rss_tree PID: summed VmRSS (kB) of PID and its descendants
rss_tree() {
    python3 - "$1" <<'EOF'
import os, sys
root = int(sys.argv[1]); kids = {}
for d in os.listdir('/proc'):
    if d.isdigit():
        try:
            f = open(f'/proc/{d}/stat').read(); ppid = int(f[f.rindex(')') + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except Exception: pass
tot, todo = 0, [root]
while todo:
    p = todo.pop(); todo += kids.get(p, [])
    try:
        for l in open(f'/proc/{p}/status'):
            if l.startswith('VmRSS:'): tot += int(l.split()[1])
    except Exception: pass
print(tot)
EOF
}
hwm_tree() { python3 -c "
import sys,os
p=sys.argv[1]; s=0
import subprocess
out=subprocess.run(['ps','-o','pid=','--ppid',p],capture_output=True,text=True).stdout.split()
for q in [p]+out:
    try:
        for l in open('/proc/%s/status'%q):
            if l.startswith('VmHWM:'): s+=int(l.split()[1])
    except Exception: pass
print(s)" "$1"; }

# ---------------------------------------------------------------- setup
log "origin: $total_hosts hosts in $origin"
"$here/make-origin.sh" "$origin" "$total_hosts" "$OPORT" 1 >"$work/make-origin.log"
chmod -R a+rX "$origin"

log "namespace $NS"
ip netns add "$NS"
IN ip link set lo up
# Loopback clients reuse a port as soon as its last connection is closed, while conntrack keeps
# the closed connection's entry (TIME_WAIT 120 s) with its NAT redirect: a new connection of
# another target with the same 4-tuple could then reach the previous target's proxy (seen as
# up to 30 % certificate errors in the idle scenario). Entries of closed connections go at once.
IN sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1 \
    net.netfilter.nf_conntrack_tcp_timeout_close=1
IN ip link add bvnull0 type veth peer name bvnull1
IN ip addr add 192.0.2.1/24 dev bvnull0
IN ip link set bvnull0 up
IN ip link set bvnull1 up

mkdir -p "$work/trust" "$out"
start_bg nginx 1 nginx -c "$origin/nginx.conf" -e "$origin/logs/error.log"
NGINX_PID=$(cat "$work/nginx.pid")
wait_listen $OPORT || die "origin did not start"
cp "$origin/root.pem" "$work/trust/origin-root.pem"

# tm_state DIR PORT: a tlsmint state in DIR with the benchmark's overrides, listening on PORT
tm_state() {
    "$TLSMINT" init --dir "$1" >"$1-init.log"
    cat >>"$1/tlsmint.conf" <<EOF

; --- run-bench.sh overrides
[listen]
explicit    =
transparent = 127.0.0.1:$2
threads     = 1
[hsm]
workers     = 1
[upstream]
ca_file     = $origin/root.pem
[log]
level       = warn
access      = /dev/null
[admin]
metrics     =
socket      = $1/run/admin.sock
EOF
}
log "tlsmint state"
tm_state "$work/tm" $TM_PORT
CONF="$work/tm/tlsmint.conf"
cp "$work/tm/ca/forward-trust.pem" "$work/trust/tlsmint-ca.pem"

if [ $with_sslsplit = 1 ]; then
    log "sslsplit CA (software key file, EC P-256) and leaf key (EC P-256)"
    mkdir -p "$work/ss"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$work/ss/ca.key" -out "$work/ss/ca.pem" -subj "/O=bench/CN=sslsplit bench CA" \
        -days 30 -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign" 2>/dev/null
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ss/leaf.key" \
        2>/dev/null
    chmod 600 "$work/ss/ca.key" "$work/ss/leaf.key"
    cp "$work/ss/ca.pem" "$work/trust/sslsplit-ca.pem"
fi
chmod -R a+rX "$work/trust"

TM_CMD=("$TLSMINT" -c "$CONF" run)
SS_CMD=(sslsplit -k "$work/ss/ca.key" -c "$work/ss/ca.pem" -K "$work/ss/leaf.key"
    ssl 127.0.0.1 "$SS_PORT")
start_bg tlsmint 0 "${TM_CMD[@]}"
TM_PID=$(cat "$work/tlsmint.pid")
PORT_OF[tlsmint]=$TM_PORT
wait_listen $TM_PORT || { cat "$work/tlsmint.log" >&2; die "tlsmint did not start"; }
IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport $OPORT \
    -m owner --uid-owner "${UID_OF[tlsmint]}" -j REDIRECT --to-ports $TM_PORT
TB_PID=""
if [ $with_b = 1 ]; then
    mkdir -p "$work/tmb"
    cp -a "$work/tm/." "$work/tmb/"
    CONF_B="$work/tmb/tlsmint.conf"
    sed -i -e "s#$work/tm/#$work/tmb/#g" -e "s#^transparent = 127.0.0.1:$TM_PORT#transparent = 127.0.0.1:$TB_PORT#" "$CONF_B"
    grep -q "127.0.0.1:$TB_PORT" "$CONF_B" || die "cannot make tlsmint-b's configuration"
    TB_CMD=(env ${compare_env:+"$compare_env"} "$compare_bin" -c "$CONF_B" run)
    start_bg tlsmint-b 0 "${TB_CMD[@]}"
    TB_PID=$(cat "$work/tlsmint-b.pid")
    PORT_OF[tlsmint-b]=$TB_PORT
    wait_listen $TB_PORT || { cat "$work/tlsmint-b.log" >&2; die "tlsmint-b did not start"; }
    IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport $OPORT \
        -m owner --uid-owner "${UID_OF[tlsmint-b]}" -j REDIRECT --to-ports $TB_PORT
fi
FL_PID=""
if [ $with_floor = 1 ]; then
    start_bg floor 0 "$RELAY" $FL_PORT 127.0.0.1:$OPORT
    FL_PID=$(cat "$work/floor.pid")
    wait_listen $FL_PORT || { cat "$work/floor.log" >&2; die "tcp-relay did not start"; }
    IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport $OPORT \
        -m owner --uid-owner "${UID_OF[floor]}" -j REDIRECT --to-ports $FL_PORT
fi
SS_PID=""
if [ $with_sslsplit = 1 ]; then
    start_bg sslsplit 0 "${SS_CMD[@]}"
    SS_PID=$(cat "$work/sslsplit.pid")
    PORT_OF[sslsplit]=$SS_PORT
    wait_listen $SS_PORT || { cat "$work/sslsplit.log" >&2; die "sslsplit did not start"; }
    IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport $OPORT \
        -m owner --uid-owner "${UID_OF[sslsplit]}" -j REDIRECT --to-ports $SS_PORT
fi
declare -A PID_OF=([direct]="" [tlsmint]="$TM_PID" [sslsplit]="$SS_PID" [floor]="$FL_PID"
    [tlsmint-b]="$TB_PID")
declare -A CA_OF=([direct]="$work/trust/origin-root.pem" [tlsmint]="$work/trust/tlsmint-ca.pem"
    [sslsplit]="$work/trust/sslsplit-ca.pem" [floor]="$work/trust/origin-root.pem")
if [ $with_b = 1 ]; then
    cp "$work/tmb/ca/forward-trust.pem" "$work/trust/tlsmint-b-ca.pem"
    chmod a+r "$work/trust/tlsmint-b-ca.pem"
    CA_OF[tlsmint-b]="$work/trust/tlsmint-b-ca.pem"
fi
vi=0
for v in "${variants[@]}"; do   # NAME=FILE: another tlsmint, the same overrides plus FILE
    name=${v%%=*} port=$((TM_PORT + 10 + vi)) uid=$((4250 + vi))
    vi=$((vi + 1))
    log "tlsmint variant $name (port $port, uid $uid): $(grep -v '^ *;' "${v#*=}" | paste -sd' ')"
    tm_state "$work/tm-$name" "$port"
    { echo; echo "; --- variant $name"; cat "${v#*=}"; } >>"$work/tm-$name/tlsmint.conf"
    cp "$work/tm-$name/ca/forward-trust.pem" "$work/trust/$name-ca.pem"
    chmod a+r "$work/trust/$name-ca.pem"
    vbin=${variant_bin[$name]:-$TLSMINT}
    [ -x "$vbin" ] || die "no executable $vbin (--variant-bin $name)"
    start_bg "$name" 0 "$vbin" -c "$work/tm-$name/tlsmint.conf" run
    wait_listen "$port" || { cat "$work/$name.log" >&2; die "tlsmint $name did not start"; }
    IN iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1 --dport $OPORT \
        -m owner --uid-owner "$uid" -j REDIRECT --to-ports "$port"
    targets+=("$name")
    UID_OF[$name]=$uid
    PID_OF[$name]=$(cat "$work/$name.pid")
    PORT_OF[$name]=$port
    CA_OF[$name]="$work/trust/$name-ca.pem"
done

raw="$work/raw.jsonl"
cmds="$work/commands.txt"
: >"$raw"
: >"$cmds"
# lg TARGET SCENARIO_TAG RUN EXTRA_JSON ARGS...: one tlsmint-bench run, one raw line
lg() {
    local target=$1 tag=$2 run=$3 extra=$4
    shift 4
    local uid=${UID_OF[$target]} pidopt=()
    [ -n "${PID_OF[$target]}" ] && pidopt=(--pid "${PID_OF[$target]}")
    local tlopt=()   # BENCH_TIMELINE=DIR: the load generator's 100 ms timeline of each run
    [ -n "${BENCH_TIMELINE:-}" ] && tlopt=(--timeline "$BENCH_TIMELINE/$target-$tag-$run.csv")
    local cmd=(taskset -c 1 setpriv --reuid="$uid" --regid="$uid" --clear-groups
        "$LG" "$@" --connect 127.0.0.1:$OPORT --threads 1 --cafile "${CA_OF[$target]}"
        "${pidopt[@]}" "${tlopt[@]}" --json -q)
    [ "$run" = 1 ] && echo "$target $tag: ip netns exec \$NS ${cmd[*]}" >>"$cmds"
    local res s0 s1
    s0=$(grep -E '^cpu[01] ' /proc/stat | paste -sd' ')
    local pp="" th0=""
    case ",${BENCH_PERF:-}," in *",$target-$tag,"*)
        perf record -q -g -F 999 -p "${PID_OF[$target]}" -o "$BENCH_PERF_DIR/$target-$tag-$run.data" \
            2>/dev/null &
        pp=$! ;;
    esac
    [ -n "${BENCH_THREADS:-}" ] && [ -n "${PID_OF[$target]}" ] && th0=$(thread_cpu "${PID_OF[$target]}")
    res=$(IN "${cmd[@]}" 2>>"$work/lg.err") || die "tlsmint-bench failed: ${cmd[*]}"
    if [ -n "$pp" ]; then
        kill -INT "$pp"
        wait "$pp" || true
        echo "$res" >"$BENCH_PERF_DIR/$target-$tag-$run.json"
    fi
    if [ -n "$th0" ]; then
        python3 - "$th0" "$(thread_cpu "${PID_OF[$target]}")" "$res" "$target" "$tag" "$run" \
            >>"$BENCH_THREADS" <<'EOF'
import collections, json, sys
d = collections.Counter()  # clock ticks (USER_HZ 100) per thread name
for sign, text in ((-1, sys.argv[1]), (1, sys.argv[2])):
    for line in text.splitlines():
        name, ticks = line.rsplit(" ", 1)
        d[name] += sign * int(ticks)
r = json.loads(sys.argv[3])
gb = r["mb_per_s"] * r["elapsed_s"] / 1000
print(json.dumps({"target": sys.argv[4], "tag": sys.argv[5], "run": int(sys.argv[6]), "gb": gb,
                  "cpu_s": {k: v / 100 for k, v in d.items() if v > 0},
                  "s_per_gb": {k: v / 100 / gb for k, v in d.items() if v > 0} if gb > 0 else {}}))
EOF
    fi
    s1=$(grep -E '^cpu[01] ' /proc/stat | paste -sd' ')
    printf '{"target":"%s","tag":"%s","run":%s,"extra":%s,"cpus":%s,"r":%s}\n' \
        "$target" "$tag" "$run" "$extra" "$(cpu_busy "$s0" "$s1")" "$res" >>"$raw"
    python3 -c '
import json,sys
r=json.loads(sys.argv[1]); p=r.get("pids",{})
print("   %-9s %-10s run %s: ok %d failed %d  %.1f conn/s  %.1f MB/s  cpu %.3f ms/conn  %.2f s/GB  p99 req %.2f ms" % (
  sys.argv[2], sys.argv[3], sys.argv[4], r["ok"], r["failed"], r["conn_per_s"], r["mb_per_s"],
  p.get("cpu_ms_per_conn",0), p.get("cpu_s_per_gb",0), r["latency_ms"]["request"]["p99"]))' \
        "$res" "$target" "$tag" "$run" >&2
}
# thread_cpu PID: "NAME TICKS" (utime + stime) of each of its threads
thread_cpu() {
    local t
    for t in /proc/"$1"/task/*; do
        echo "$(cat "$t/comm" 2>/dev/null) $(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null || echo 0)"
    done
}
# cpu_busy "cpu0 ... cpu1 ..." "cpu0 ... cpu1 ...": each CPU's busy share (not idle, not iowait,
# which io_uring waits are counted as) between two /proc/stat readings, as JSON
cpu_busy() {
    echo "$1 $2" | awk '{ for (c = 0; c < 2; c++) { b = 0; t = 0
        for (i = 2; i <= 9; i++) { d = $(22 + c * 11 + i) - $(c * 11 + i); t += d; if (i != 5 && i != 6) b += d }
        v[c] = t > 0 ? 100 * b / t : 0 }
        printf "{\"cpu0\":%.1f,\"cpu1\":%.1f}", v[0], v[1] }'
}
median_direct_cps() {
    python3 - "$raw" <<'EOF'
import json, sys, statistics
v = [json.loads(l)['r']['conn_per_s'] for l in open(sys.argv[1])
     if json.loads(l)['target'] == 'direct' and json.loads(l)['tag'] == 'handshake']
print(int(statistics.median(v)))
EOF
}

# ---------------------------------------------------------------- warm-up
log "warm-up (caches, upstream sessions, page cache)"
for t in "${targets[@]}"; do
    IN setpriv --reuid="${UID_OF[$t]}" --regid="${UID_OF[$t]}" --clear-groups "$LG" handshake \
        --connect 127.0.0.1:$OPORT --host h1.bench.test --path /index.html --requests 200 \
        --cafile "${CA_OF[$t]}" -q >/dev/null 2>>"$work/lg.err"
    IN setpriv --reuid="${UID_OF[$t]}" --regid="${UID_OF[$t]}" --clear-groups "$LG" bulk \
        --connect 127.0.0.1:$OPORT --host h1.bench.test --cafile "${CA_OF[$t]}" -q \
        >/dev/null 2>>"$work/lg.err"
done

# ---------------------------------------------------------------- scenarios
if has_sc handshake; then
log "handshake: new connection per request, one host (cache hits), ${hs_dur}s x $runs"
for r in $(seq 1 "$runs"); do
    for t in "${targets[@]}"; do
        runs_in "$t" handshake || continue
        lg "$t" handshake "$r" '{}' handshake --host h1.bench.test --path /index.html \
            --concurrency 32 --duration "$hs_dur"
    done
done
fi

if has_sc mint; then
log "mint: $mint_hosts distinct hosts each visited once (cache misses) x $runs"
for r in $(seq 1 "$runs"); do
    first=$((2 + (r - 1) * mint_hosts))
    for t in "${targets[@]}"; do
        runs_in "$t" mint || continue
        lg "$t" mint "$r" "{\"first\":$first}" mint --host-pattern 'h%d.bench.test' \
            --first "$first" --count "$mint_hosts" --path /index.html --concurrency 32 \
            --timeout-ms 20000
    done
done
fi

for c in 1 8; do
    has_sc "bulk$c" || continue
    log "bulk: $c connection(s) downloading /big.bin (64 MiB) for ${bulk_dur}s x $runs"
    for r in $(seq 1 "$runs"); do
        for t in "${targets[@]}"; do
            lg "$t" "bulk$c" "$r" '{}' bulk --host h1.bench.test --path /big.bin --conns "$c" \
                --duration "$bulk_dur" --timeout-ms 20000
        done
    done
done

aes_gbs=""
if [ $with_floor = 1 ] && { has_sc bulk1 || has_sc bulk8; }; then
    log "crypto floor: openssl speed -evp aes-128-gcm, 16 KiB blocks, CPU 0 (x $runs)"
    for r in $(seq 1 "$runs"); do
        # the last column is 16384-byte blocks, in kB/s (1000 bytes)
        v=$(taskset -c 0 openssl speed -evp aes-128-gcm -bytes 16384 -seconds 2 2>/dev/null |
            awk '/^(AES-128-GCM|aes-128-gcm)/ {x=$NF} END {sub(/k$/, "", x); print x}')
        echo "   openssl speed aes-128-gcm run $r: ${v:-?} kB/s" >&2
        [ -n "$v" ] && aes_gbs="$aes_gbs $v"
    done
fi

if has_sc latency; then
if has_sc handshake; then
    max_cps=$(median_direct_cps)
else
    max_cps=$(( ${BENCH_RATE:-400} * 2 ))
fi
for pct in ${sweep//,/ }; do
    rate=$(( max_cps * pct / 100 ))
    [ "$rate" -ge 10 ] || rate=10
    tag=latency
    [ "$pct" = 50 ] || tag=latency-$pct
    log "latency: open loop at $rate conn/s ($pct % of the direct max $max_cps) for ${lat_dur}s x $runs"
    for r in $(seq 1 "$runs"); do
        for t in "${targets[@]}"; do
            runs_in "$t" latency || continue
            lg "$t" "$tag" "$r" "{\"rate\":$rate,\"pct\":$pct}" handshake --host h1.bench.test \
                --path /index.html --rate "$rate" --duration "$lat_dur"
        done
    done
done
fi

# peak RSS of the whole run: VmHWM now, and of each fresh process the idle scenario starts
declare -A HWM
hwm_max() {
    local t=$1 v
    [ -n "${PID_OF[$t]:-}" ] || return 0
    v=$(hwm_tree "${PID_OF[$t]}")
    [ "${HWM[$t]:-0}" -ge "$v" ] || HWM[$t]=$v
}
for t in tlsmint sslsplit; do hwm_max "$t"; done

# warm_up TARGET: 1 s of handshakes, 32 at a time, not recorded: a fresh process makes its
# one-time allocations (the leaf of h1, OpenSSL's tables, the allocator's arenas) before the
# idle base is taken, so that they are not divided among the held connections
warm_up() {
    IN taskset -c 1 setpriv --reuid="${UID_OF[$1]}" --regid="${UID_OF[$1]}" --clear-groups \
        "$LG" handshake --host h1.bench.test --path /index.html --concurrency 32 --duration 1 \
        --connect 127.0.0.1:$OPORT --threads 1 --timeout-ms 20000 --cafile "${CA_OF[$1]}" -q \
        >/dev/null 2>>"$work/lg.err" || true
    sleep 1   # let the proxy close the upstream sides
}
if has_sc idle; then
# each idle run is on a fresh proxy process (restart_bg), so that the RSS delta is what the held
# connections cost and not what they did not have to add to a heap earlier scenarios grew;
# opened at idle_rate per second, not all at once: 2,000 handshakes begun together queue up on
# CPU 1 (the client's and the origin's halves) past the proxy's 10 s handshake timeout
idle_rate=${BENCH_IDLE_RATE:-400}
log "idle: $idle_conns established connections (opened at $idle_rate/s) held ${hold}s x $runs"
for r in $(seq 1 "$runs"); do
    for t in "${targets[@]}"; do
        runs_in "$t" idle || continue
        base=0
        if [ -n "${PID_OF[$t]}" ]; then
            hwm_max "$t"
            restart_bg "$t"
            warm_up "$t"
            base=$(rss_tree "${PID_OF[$t]}")
        fi
        [ "$t" = direct ] && base=$(rss_tree "$NGINX_PID")
        lg "$t" idle "$r" "{\"rss_base_kb\":$base,\"nginx_rss_kb_end\":0}" idle \
            --host h1.bench.test --conns "$idle_conns" --hold "$hold" --timeout-ms 30000 \
            --rate "$idle_rate"
        sleep 1   # let the proxies close the upstream sides
    done
done
fi

for t in tlsmint sslsplit; do hwm_max "$t"; done
TM_PID=${PID_OF[tlsmint]}   # perf below: the idle scenario restarted it
has_sc handshake && has_sc mint || with_perf=0

# ---------------------------------------------------------------- perf profile of tlsmint
perf_file="$work/perf-handshake.txt"
: >"$perf_file"
if [ $with_perf = 1 ] && command -v perf >/dev/null; then
    for kind in handshake mint; do
        log "perf: tlsmint under the $kind load (5 s)"
        if [ $kind = handshake ]; then
            args=(handshake --host h1.bench.test --duration 8)
        else
            args=(mint --host-pattern 'h%d.bench.test' --first $((2 + runs * mint_hosts))
                --count "$mint_hosts")
        fi
        IN taskset -c 1 setpriv --reuid="${UID_OF[tlsmint]}" --regid="${UID_OF[tlsmint]}" \
            --clear-groups "$LG" "${args[@]}" --connect 127.0.0.1:$OPORT --path /index.html \
            --concurrency 32 --threads 1 --timeout-ms 20000 --cafile "${CA_OF[tlsmint]}" -q \
            >/dev/null 2>>"$work/lg.err" &
        lgp=$!
        sleep 0.3
        signer=$(ps -o pid= --ppid "$TM_PID" | tr -d ' ' | paste -sd, -)
        perf record -q -F 1999 -o "$work/perf-$kind.data" \
            -p "$TM_PID${signer:+,$signer}" -- sleep 3 >/dev/null 2>&1 || true
        wait $lgp || true
        perf report -i "$work/perf-$kind.data" --stdio --no-children --sort dso \
            >"$work/perf-$kind.dso" 2>/dev/null || true
        perf report -i "$work/perf-$kind.data" --stdio --no-children --sort dso,symbol \
            >"$work/perf-$kind.sym" 2>/dev/null || true
        {
            echo "### tlsmint (pid $TM_PID + signer $signer) under the $kind load, 3 s"
            echo ''
            echo '```'
            echo "by library:"
            grep -E '^ +[0-9]' "$work/perf-$kind.dso" | head -8 || true
            echo "top symbols (self):"
            grep -E '^ +[0-9]' "$work/perf-$kind.sym" | head -25 || true
            echo '```'
            echo ''
        } >>"$perf_file"
    done
fi

# ---------------------------------------------------------------- report
log "report"
cp "$raw" "$out/bench-raw.jsonl"
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM; $(uname -sr); $(openssl version | cut -d' ' -f1-2); nginx $(nginx -v 2>&1 | sed 's/.*\///'); $(sslsplit -V 2>&1 | head -1 || true)"
mode_flag=""
[ $quick = 1 ] && mode_flag=" --quick"
rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (+ local changes)')"
python3 - "$raw" "$out/REPORT.md" "$cmds" "$perf_file" "$aes_gbs" <<EOF
import json, sys, statistics as st
raw, dst, cmdf, perff, aes = sys.argv[1:6]
rows = [json.loads(l) for l in open(raw)]
targets = "${targets[*]}".split()
hwm = {"tlsmint": "${HWM[tlsmint]:-0}", "sslsplit": "${HWM[sslsplit]:-0}"}
def vals(t, tag, f):
    return [f(r) for r in rows if r["target"] == t and r["tag"] == tag]
def med(t, tag, f):
    v = [x for x in vals(t, tag, f) if x is not None]
    return st.median(v) if v else None
def fails(t, tag):
    v = vals(t, tag, lambda r: (r["r"]["failed"], r["r"]["attempted"]))
    return sum(a for a, _ in v), sum(b for _, b in v)
cps = lambda r: r["r"]["conn_per_s"]
mbs = lambda r: r["r"]["mb_per_s"]
cpu_conn = lambda r: r["r"]["pids"]["cpu_ms_per_conn"] if "pids" in r["r"] else None
cpu_gb = lambda r: r["r"]["pids"]["cpu_s_per_gb"] if "pids" in r["r"] else None
hwm_mb = lambda r: r["r"]["pids"]["rss_peak_sampled_kb"] / 1024 if "pids" in r["r"] else None
p99 = lambda r: r["r"]["latency_ms"]["request"]["p99"]
p50 = lambda r: r["r"]["latency_ms"]["request"]["p50"]
hs99 = lambda r: r["r"]["latency_ms"]["handshake"]["p99"]
def idle_kb(r):
    up = r["r"].get("idle", {}).get("held_at_end", 0)
    if "pids" not in r["r"] or up == 0: return None
    return (r["r"]["pids"]["vmrss_kb"] - r["extra"]["rss_base_kb"]) / up
def fmt(v, d=1):
    return "—" if v is None else f"{v:,.{d}f}"
def ratio(a, b):
    return "—" if a is None or b in (None, 0) else f"{a / b:.2f}"
def runs_of(t, tag, f, d=1):
    return " / ".join(fmt(x, d) for x in vals(t, tag, f))
has_ss = "sslsplit" in targets
nruns = max(r["run"] for r in rows)
rate = next((r["extra"]["rate"] for r in rows if r["tag"] == "latency"), None)
L = []
L.append("# tlsmint benchmark: tlsmint vs direct vs sslsplit")
L.append("")
L.append("Generated by \`bench/run-bench.sh$mode_flag\` on $(date -u +%Y-%m-%dT%H:%MZ); tlsmint $rev.")
L.append(f"Medians of {nruns} run(s) per cell; runs interleaved (direct, tlsmint, sslsplit) so that")
L.append("machine drift hits all three alike. **Machine:** $machine.")
L.append("")
L.append("## Main table")
L.append("")
hdr = "| metric | direct | tlsmint | sslsplit | tlsmint/direct | tlsmint/sslsplit |"
L.append(hdr); L.append("|---|---:|---:|---:|---:|---:|")
def line(name, f, tag, d=1, direct=True):
    dv = med("direct", tag, f) if direct else None
    tv = med("tlsmint", tag, f)
    sv = med("sslsplit", tag, f) if has_ss else None
    L.append(f"| {name} | {fmt(dv, d)} | {fmt(tv, d)} | {fmt(sv, d)} | {ratio(tv, dv)} | {ratio(tv, sv)} |")
line("handshake, cache hit: conn/s", cps, "handshake", 0)
line("handshake, cache hit: proxy CPU ms/conn", cpu_conn, "handshake", 3, False)
line("mint, cache miss: conn/s", cps, "mint", 0)
line("mint, cache miss: proxy CPU ms/conn", cpu_conn, "mint", 3, False)
line("bulk, 1 conn: MB/s", mbs, "bulk1", 0)
line("bulk, 1 conn: proxy CPU s/GB", cpu_gb, "bulk1", 2, False)
line("bulk, 8 conns: MB/s", mbs, "bulk8", 0)
line("bulk, 8 conns: proxy CPU s/GB", cpu_gb, "bulk8", 2, False)
line("idle: proxy RSS per established connection, KiB", idle_kb, "idle", 1, False)
L.append(f"| latency @ {rate} conn/s: request p50, ms | {fmt(med('direct','latency',p50),2)} | {fmt(med('tlsmint','latency',p50),2)} | {fmt(med('sslsplit','latency',p50),2) if has_ss else '—'} | {ratio(med('tlsmint','latency',p50), med('direct','latency',p50))} | {ratio(med('tlsmint','latency',p50), med('sslsplit','latency',p50)) if has_ss else '—'} |")
L.append(f"| latency @ {rate} conn/s: request p99, ms | {fmt(med('direct','latency',p99),2)} | {fmt(med('tlsmint','latency',p99),2)} | {fmt(med('sslsplit','latency',p99),2) if has_ss else '—'} | {ratio(med('tlsmint','latency',p99), med('direct','latency',p99))} | {ratio(med('tlsmint','latency',p99), med('sslsplit','latency',p99)) if has_ss else '—'} |")
d99 = med("direct", "latency", p99)
add = lambda t: None if med(t, "latency", p99) is None or d99 is None else med(t, "latency", p99) - d99
L.append(f"| latency @ {rate} conn/s: p99 **added** over direct, ms | 0 | {fmt(add('tlsmint'),2)} | {fmt(add('sslsplit'),2) if has_ss else '—'} | | {ratio(add('tlsmint'), add('sslsplit')) if has_ss else '—'} |")
L.append(f"| peak RSS (VmHWM summed, the largest of the run's processes), MiB | — | {fmt(int(hwm['tlsmint'])/1024)} | {fmt(int(hwm['sslsplit'])/1024) if has_ss else '—'} | | {ratio(int(hwm['tlsmint']), int(hwm['sslsplit'])) if has_ss and int(hwm['sslsplit']) else '—'} |")
line("peak RSS sampled during handshake scenario, MiB", hwm_mb, "handshake", 1, False)
L.append("")
if "floor" in targets or "tlsmint-b" in targets:
    L.append("")
    L.append("## The floor of a TLS relay here, and the A/B target")
    L.append("")
    aesv = [float(x) * 1000 / 1e9 for x in aes.split()]
    aes_gbs = st.median(aesv) if aesv else None
    crypto = 2 / aes_gbs if aes_gbs else None
    if aes_gbs:
        L.append(f"AES-128-GCM on CPU 0 (\`openssl speed -evp aes-128-gcm -bytes 16384\`, median of {len(aesv)}): "
                 f"{aes_gbs:.2f} GB/s, so decrypting and re-encrypting costs {crypto:.3f} s/GB. The TCP "
                 "floor is tcp-relay (plain recv/send relay, no TLS) carrying the same TLS bytes.")
        L.append("")
    cols = [t for t in targets if t != "direct"]
    L.append("| bulk | direct | " + " | ".join(cols) + " | crypto + TCP floor | tlsmint ÷ floor | tlsmint ÷ sslsplit | tlsmint ÷ direct |")
    L.append("|---|---:|" + "---:|" * (len(cols) + 4))
    for tag in ["bulk1", "bulk8"]:
        if not vals("tlsmint", tag, mbs):
            continue
        fl = med("floor", tag, cpu_gb) if "floor" in targets else None
        floor = fl + crypto if fl is not None and crypto is not None else None
        tv = med("tlsmint", tag, cpu_gb)
        sv = med("sslsplit", tag, cpu_gb) if has_ss else None
        L.append(f"| {tag}: proxy CPU s/GB | — | " + " | ".join(fmt(med(t, tag, cpu_gb), 3) for t in cols) +
                 f" | {fmt(floor, 3)} | {ratio(tv, floor)} | {ratio(tv, sv)} | — |")
        L.append(f"| {tag}: MB/s | {fmt(med('direct', tag, mbs), 0)} | " + " | ".join(fmt(med(t, tag, mbs), 0) for t in cols) +
                 f" | | | {ratio(med('tlsmint', tag, mbs), med('sslsplit', tag, mbs)) if has_ss else '—'} | {ratio(med('tlsmint', tag, mbs), med('direct', tag, mbs))} |")
    if "tlsmint-b" in targets:
        L.append("")
        L.append("tlsmint-b ($compare_bin${compare_env:+ with $compare_env}) against tlsmint, same run, medians:")
        L.append("")
        L.append("| scenario, metric | tlsmint | tlsmint-b | b ÷ a |")
        L.append("|---|---:|---:|---:|")
        for tag, name, f, d in [("handshake", "CPU ms/conn", cpu_conn, 3), ("mint", "CPU ms/conn", cpu_conn, 3),
                                ("bulk1", "CPU s/GB", cpu_gb, 3), ("bulk1", "MB/s", mbs, 0),
                                ("bulk8", "CPU s/GB", cpu_gb, 3), ("bulk8", "MB/s", mbs, 0),
                                ("latency", "req p99 ms", p99, 2), ("idle", "KiB/conn", idle_kb, 1)]:
            a, b = med("tlsmint", tag, f), med("tlsmint-b", tag, f)
            if a is None and b is None:
                continue
            L.append(f"| {tag}, {name} | {fmt(a, d)} | {fmt(b, d)} | {ratio(b, a)} |")
    L.append("")
p90 = lambda r: r["r"]["latency_ms"]["request"]["p90"]
sweep = sorted({r["extra"]["pct"] for r in rows if r["tag"].startswith("latency") and "pct" in r["extra"]})
if len(sweep) > 1:
    L.append("")
    L.append("## Latency under a fixed load: the sweep")
    L.append("")
    L.append("Open loop at each share of the direct maximum conn/s (handshake scenario, medians of "
             f"{nruns}); **added** = the target's request percentile minus direct's, in ms.")
    L.append("")
    others = [t for t in targets if t not in ("direct", "floor")]
    busy = lambda c: (lambda r: r.get("cpus", {}).get(c))
    L.append("| share | conn/s | direct p50 / p90 / p99 | " +
             " | ".join(f"{t} added p50 / p90 / p99" for t in others) +
             " | CPU 1 busy % (origin + load): direct / " + " / ".join(others) +
             " | CPU 0 busy % (proxy): " + " / ".join(others) + " |")
    L.append("|---|---:|---:|" + "---:|" * len(others) + "---:|---:|")
    for pct in sweep:
        tag = "latency" if pct == 50 else f"latency-{pct}"
        rt = next((r["extra"]["rate"] for r in rows if r["tag"] == tag), None)
        d = [med("direct", tag, f) for f in (p50, p90, p99)]
        cells = []
        for t in others:
            v = [med(t, tag, f) for f in (p50, p90, p99)]
            cells.append(" / ".join("—" if x is None or y is None else f"{x - y:+.2f}"
                                    for x, y in zip(v, d)))
        c1 = " / ".join(fmt(med(t, tag, busy("cpu1")), 0) for t in ["direct"] + others)
        c0 = " / ".join(fmt(med(t, tag, busy("cpu0")), 0) for t in others)
        L.append(f"| {pct} % | {rt} | " + " / ".join(fmt(x, 2) for x in d) + " | " +
                 " | ".join(cells) + f" | {c1} | {c0} |")
    L.append("")
L.append("Ratios: > 1 is better for conn/s and MB/s; < 1 is better for CPU, RSS and latency.")
L.append("Proxy CPU = utime+stime of the proxy process and all its descendants over the run")
L.append("(tlsmint: proxy + SoftHSM signer child; sslsplit: both privsep processes). Direct has no")
L.append("proxy, so its CPU cells are empty; its conn/s and MB/s are limited by nginx and the load")
L.append("generator sharing CPU 1 - the proxy has CPU 0 to itself.")
L.append("")
L.append("## Failures (failed / attempted, all runs)")
L.append("")
L.append("| scenario | " + " | ".join(targets) + " |")
L.append("|---|" + "---:|" * len(targets))
for tag in ["handshake", "mint", "bulk1", "bulk8", "latency", "idle"]:
    if any(vals(t, tag, cps) for t in targets):
        L.append(f"| {tag} | " + " | ".join("%d / %d" % fails(t, tag) for t in targets) + " |")
L.append("")
L.append("## Per-run values")
L.append("")
L.append("| scenario, metric | " + " | ".join(targets) + " |")
L.append("|---|" + "---|" * len(targets))
for tag, name, f, d in [("handshake", "conn/s", cps, 0), ("handshake", "CPU ms/conn", cpu_conn, 3),
                        ("mint", "conn/s", cps, 0), ("mint", "CPU ms/conn", cpu_conn, 3),
                        ("bulk1", "MB/s", mbs, 0), ("bulk1", "CPU s/GB", cpu_gb, 2),
                        ("bulk8", "MB/s", mbs, 0), ("bulk8", "CPU s/GB", cpu_gb, 2),
                        ("latency", "req p99 ms", p99, 2), ("latency", "hs p99 ms", hs99, 2),
                        ("idle", "KiB/conn", idle_kb, 1)]:
    L.append(f"| {tag}, {name} | " + " | ".join(runs_of(t, tag, f, d) for t in targets) + " |")
L.append("")
L.append("## Setup")
L.append("")
L.append("""- One machine, transparent interception. A network namespace made by the script: \`lo\`
  up, and an unused veth pair with 192.0.2.1/24 (sslsplit resolves its listen address with
  AI_ADDRCONFIG and refuses to start if the only IPv4 address is on loopback).
- Origin: nginx 1 worker (\`bench/make-origin.sh DIR N 9443 1\`: one EC P-256 certificate per
  host h1..hN.bench.test, TLS 1.2/1.3, session tickets on), pinned to CPU 1.
- Load: \`tlsmint-bench\`, 1 thread, pinned to CPU 1, dialling 127.0.0.1:9443 as uid 4240
  (direct), 4241 or 4242. iptables \`nat OUTPUT -d 127.0.0.1 --dport 9443 -m owner --uid-owner
  4241 -j REDIRECT --to-ports 18080\` (tlsmint) and 4242 -> 18081 (sslsplit); the proxies'
  own upstream connections (root / nobody) are not redirected.
- tlsmint: \`tlsmint init\` state + overrides \`[listen] explicit = (off), transparent =
  127.0.0.1:18080, threads = 1\`, \`[hsm] workers = 1\` (SoftHSM, EC P-256 forward-trust key
  in the token), \`[upstream] ca_file = origin root\` (upstream chains **verified**),
  \`[log] level = warn, access = /dev/null\`, metrics off. Pinned to CPU 0 (signer child inherits).
- sslsplit 0.5.5: \`sslsplit -k ca.key -c ca.pem -K leaf.key ssl 127.0.0.1 18081\` (netfilter
  NAT engine, no logging, drops to nobody), pinned to CPU 0. Its CA is a software EC P-256 key
  **in a PEM file** (sslsplit needs the CA private key in a file; tlsmint's never leaves the
  HSM - one of the points of comparison); leaf key EC P-256 given with \`-K\` so both proxies
  serve P-256 leaves. sslsplit 0.5.5 does **not verify upstream certificates** (it forges
  whatever it gets), so it does less work per miss than tlsmint. Plain \`ssl\` proxyspec (no
  HTTP rewriting), like tlsmint.
- Clients trust the CA of what they talk to (\`--cafile\`: origin root, tlsmint
  forward-trust CA, sslsplit CA) and verify chain and name.
- Scenarios: **handshake** = closed loop, concurrency 32, new TCP+TLS connection per request
  (GET /index.html, Connection: close) to h1 (leaf cache hits); **mint** = the same over
  ${mint_hosts} hosts each visited once, a fresh host range per run, so every connection is a
  leaf cache miss (and no upstream session to resume) for both proxies; **bulk** = 1 and 8
  connections downloading a 64 MiB body again and again; **latency** = open loop at half the
  direct median conn/s; **idle** = ${idle_conns} connections established through TLS (opened at ${idle_rate:-400}/s) and held
  by a freshly started proxy after a warm-up of 32 connections (RSS per connection = (summed
  VmRSS at the end of the hold - before) / connections held).
""")
L.append("## Exact commands (run 1; \$NS = the namespace)")
L.append("")
L.append("\`\`\`")
L.append("bench/make-origin.sh \$ORIGIN $total_hosts 9443 1")
L.append("ip netns exec \$NS taskset -c 1 nginx -c \$ORIGIN/nginx.conf -e \$ORIGIN/logs/error.log")
L.append("ip netns exec \$NS taskset -c 0 $(printf "%s " "${TM_CMD[@]}")")
L.append("ip netns exec \$NS taskset -c 0 $(printf "%s " "${SS_CMD[@]}")")
for l in open(cmdf):
    L.append(l.rstrip())
L.append("\`\`\`")
L.append("")
perf = open(perff).read().strip()
if perf:
    L.append("## Where tlsmint spends CPU (perf record -F 1999, self time)")
    L.append("")
    L.append(perf)
    L.append("")
open(dst, "w").write("\n".join(L) + "\n")
print("\n".join(L[:40]))
EOF
cp "$perf_file" "$out/perf-tlsmint.txt" 2>/dev/null || true
log "done: $out/REPORT.md"
