# SPDX-License-Identifier: MIT
# lib.sh - helpers for the end-to-end tests: assertions that count, a test PKI, origins,
# starting tlsmint and waiting for its ports. Everything lives under $WORK and is removed at exit.

set -u
CHECKS=0
FAILS=0
WORK=$(mktemp -d /tmp/tlsmint-e2e-XXXXXX)
chmod 755 "$WORK" # nginx workers read the origin's files
PIDS=()
TLSMINT=${TLSMINT_BIN:?TLSMINT_BIN must point at the tlsmint binary}
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# gone_within TENTHS PID...: true once none of the processes is left, false after TENTHS x 0.1 s
gone_within() {
    local n=$1 p left
    shift
    for _ in $(seq 1 "$n"); do
        left=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && left=1; done
        [ $left = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

# An nginx master killed before its workers have stopped leaves them running, and a worker still
# holding the test's stdout makes meson wait for the test's timeout (e2e_systemd once sat 300 s
# after its last check): SIGTERM first and wait for them (bounded), only then SIGKILL.
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    gone_within 30 "${PIDS[@]}" || for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    # servers started in subshells ($(...)) are not in PIDS: everything that runs from $WORK goes
    local rest
    rest=$(pgrep -f -- "$WORK/")
    if [ -n "$rest" ]; then
        # shellcheck disable=SC2086
        kill $rest 2>/dev/null
        # shellcheck disable=SC2086
        gone_within 30 $rest || pkill -9 -f -- "$WORK/" 2>/dev/null
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

ok() { CHECKS=$((CHECKS + 1)); echo "  ok   $*"; }
bad() { CHECKS=$((CHECKS + 1)); FAILS=$((FAILS + 1)); echo "  FAIL $*"; }
check() { # check "description" command...
    local d=$1; shift
    if "$@"; then ok "$d"; else bad "$d"; fi
}
check_eq() { # check_eq "description" expected actual
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (expected '$2', got '$3')"; fi
}
check_contains() { # check_contains "description" needle haystack
    case "$3" in *"$2"*) ok "$1" ;; *) bad "$1 (no '$2' in: $(echo "$3" | head -c 600))" ;; esac
}
check_not_contains() {
    case "$3" in *"$2"*) bad "$1 (found '$2')" ;; *) ok "$1" ;; esac
}
finish() {
    local pct=100
    [ "$CHECKS" -gt 0 ] && pct=$(((CHECKS - FAILS) * 100 / CHECKS))
    echo "${pct}%: Checks: $CHECKS, Failures: $FAILS, Errors: 0"
    [ "$FAILS" -eq 0 ]
}

# flip_byte FILE POS: inverts every bit of one byte, so the file always changes (writing a
# fixed value left it unchanged when the byte already had that value, 1 time in 256)
flip_byte() {
    python3 -c 'import sys; f=open(sys.argv[1],"r+b"); p=int(sys.argv[2]); f.seek(p); b=f.read(1); f.seek(p); f.write(bytes([b[0]^0xff]))' "$1" "$2"
}

# free_port: a port for a listener, below the ephemeral range and reserved against the tests
# running beside this one (freeport.py says why)
free_port() {
    python3 "$E2E_DIR/freeport.py"
}

# make_pki DIR: a test root, an origin leaf for localhost/127.0.0.1 signed by it, and a
# self-signed origin nobody trusts.
make_pki() {
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/root.key" \
        -out "$d/root.pem" -subj "/CN=tlsmint e2e root" -days 30 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/origin.key" \
        -out "$d/origin.csr" -subj "/CN=localhost" 2>/dev/null
    printf "subjectAltName=DNS:localhost,DNS:bypass.localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" >"$d/ext.cnf"
    openssl x509 -req -in "$d/origin.csr" -CA "$d/root.pem" -CAkey "$d/root.key" -CAcreateserial \
        -out "$d/origin.pem" -days 20 -extfile "$d/ext.cnf" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/origin2.key" \
        -out "$d/origin2.csr" -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in "$d/origin2.csr" -CA "$d/root.pem" -CAkey "$d/root.key" -CAcreateserial \
        -out "$d/origin2.pem" -days 20 -extfile "$d/ext.cnf" 2>/dev/null
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/self.key" \
        -out "$d/self.pem" -subj "/CN=localhost" -days 20 -addext "subjectAltName=DNS:localhost" 2>/dev/null
}

# start_nginx DIR PORT CERT KEY: an origin serving DIR/www over TLS with HTTP/1.1 and h2.
start_nginx() {
    local d=$1 port=$2 cert=$3 key=$4 addr=${5:-127.0.0.1} # addr: [::1] for IPv6
    mkdir -p "$d/www" "$d/logs"
    echo "hello-from-origin" >"$d/www/index.html"
    head -c 3000000 /dev/urandom >"$d/www/big.bin"
    cat >"$d/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_shutdown_timeout 2s;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path $d/tmp;
  proxy_temp_path $d/tmp;
  fastcgi_temp_path $d/tmp;
  uwsgi_temp_path $d/tmp;
  scgi_temp_path $d/tmp;
  server {
    listen $addr:$port ssl http2;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    root $d/www;
  }
}
EOF
    mkdir -p "$d/tmp"
    chmod -R a+rX "$d"
    # not the test's stdout: a worker that outlives the test must not hold meson's pipe
    nginx -c "$d/nginx.conf" -e "$d/logs/error.log" >>"$d/logs/stdout.log" 2>&1 &
    PIDS+=($!)
    addr=${addr#[}
    wait_port "$port" "${addr%]}"
}

# wait_for TENTHS CMD...: runs CMD every 0.1 s until it succeeds (true), at most TENTHS times
# (false): the bounded wait for a condition, where a fixed sleep would flake on a busy machine
# (too short) or waste time on an idle one (too long)
wait_for() {
    local n=$1
    shift
    for _ in $(seq 1 "$n"); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# port_open PORT [HOST]: something accepts TCP connections on HOST (default 127.0.0.1):PORT
port_open() {
    (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null
}

# wait_port PORT [HOST]: waits (at most 5 s) until HOST:PORT accepts connections
wait_port() {
    for _ in $(seq 1 100); do
        port_open "$1" "${2:-127.0.0.1}" && return 0
        sleep 0.05
    done
    echo "port ${2:-127.0.0.1}:$1 never opened" >&2
    return 1
}

# start_tlsmint CONF LOG: runs the proxy in the background, waits for its listeners.
start_tlsmint() {
    "$TLSMINT" -c "$1" run >"$2" 2>&1 &
    TLSMINT_PID=$!
    PIDS+=($TLSMINT_PID)
    for _ in $(seq 1 200); do
        grep -q "tlsmint running" "$2" && return 0
        kill -0 "$TLSMINT_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "tlsmint did not start:" >&2
    cat "$2" >&2
    return 1
}

# set_conf FILE SECTION KEY VALUE: appends an override (later keys win).
set_conf() {
    printf "\n[%s]\n%s = %s\n" "$2" "$3" "$4" >>"$1"
}
