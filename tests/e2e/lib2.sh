# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# lib2.sh - more helpers for the end-to-end tests, sourced after lib.sh: raw clients
# (tlsclient.py), access-log lookups, nginx origins with extra directives, liveness checks.

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TLSCLIENT="$E2E_DIR/tlsclient.py"

# rawc CASE ARGS...: runs a tlsclient.py case, prints its key=value line
rawc() { python3 "$TLSCLIENT" "$@"; }

# kv KEY "k=v k=v ...": the value of KEY
kv() {
    local k=$1 w
    for w in $2; do
        case $w in "$k="*) echo "${w#*=}"; return 0 ;; esac
    done
    echo ""
}

# jf KEY JSONLINE: one field of a JSON line ("<invalid>" when the line is no JSON object)
jf() {
    python3 -c 'import json,sys
try:
    v = json.loads(sys.argv[2])[sys.argv[1]]
except Exception:
    v = "<invalid>"
print(str(v).lower() if isinstance(v, bool) else v)' "$1" "$2"
}

# alog_client LOGFILE CLIENT [SECS]: waits (default 3 s) for the access-log line of CLIENT
# ("127.0.0.1:PORT"), prints it (empty when there is none)
alog_client() {
    local f=$1 who=$2 secs=${3:-3} i line
    for i in $(seq 1 $((secs * 20))); do
        line=$(grep -F "\"client\":\"$who\"" "$f" 2>/dev/null | tail -n 1)
        [ -n "$line" ] && { echo "$line"; return 0; }
        sleep 0.05
    done
    echo ""
}

# Logs that get a line per connection or request (the proxy's access log, written by its own
# thread a moment after the connection ended; an origin's access log) are read by count, never
# as the last line after a fixed sleep: on a busy machine that was the previous connection's
# line. LOG_SEEN[FILE] counts the lines of FILE the checks have reached.
declare -A LOG_SEEN
# log_next FILE [K]: K more lines (default 1) are due in FILE since the last call for it: waits
# (at most 10 s) until FILE holds that many and puts its last line in LINE. Lines that never come
# fail a check of their own (LINE is then empty). Run it in the test's own shell, not in $(...),
# or the count does not advance.
log_next() {
    local f=$1 want n=0
    want=$((${LOG_SEEN[$f]:-0} + ${2:-1}))
    for _ in $(seq 1 200); do
        n=$(wc -l 2>/dev/null <"$f") || n=0
        [ "$n" -ge "$want" ] && break
        sleep 0.05
    done
    if [ "$n" -ge "$want" ]; then
        LINE=$(tail -n 1 "$f")
    else
        bad "$f: $n lines after 10 s, $want expected"
        LINE=""
    fi
    LOG_SEEN[$f]=$n
}
# log_wait FILE TEXT: waits (at most 10 s) until the last line of FILE holds TEXT, for a line
# told apart by its content; LINE is the last line then (or after the 10 s, for the check)
log_wait() {
    for _ in $(seq 1 200); do
        LINE=$(tail -n 1 "$1" 2>/dev/null)
        case "$LINE" in *"$2"*) return 0 ;; esac
        sleep 0.05
    done
}
# ALOG: the proxy's access log the checks read; alog_next [K] is log_next "$ALOG" [K]
ALOG=${ALOG:-}
alog_next() { log_next "$ALOG" "${1:-1}"; }
# alog_use FILE: ALOG is FILE from now on, every line it holds already taken as seen
alog_use() {
    ALOG=$1
    LOG_SEEN[$1]=$(wc -l 2>/dev/null <"$1") || LOG_SEEN[$1]=0
}
# alog_sync: after connections whose lines are not counted (not all of them get one), waits
# until ALOG stops growing (settle_lines) and takes every line in it as seen
alog_sync() {
    LOG_SEEN[$ALOG]=$(settle_lines "$ALOG")
}

# write_nginx DIR LISTEN CERT KEY [EXTRA]: DIR/nginx.conf for a TLS origin on LISTEN
# ("ADDR:PORT") serving DIR/www with HTTP/1.1 and h2 (NGINX_LISTEN_OPTS, default "ssl http2";
# "ssl" for an HTTP/1.1-only origin); EXTRA goes into the server block.
# Its access log DIR/logs/access.log has one line per request:
#   REMOTE_ADDR SSL_PROTOCOL SERVER_PROTOCOL SNI URI STATUS
write_nginx() {
    local d=$1 listen=$2 cert=$3 key=$4 extra=${5:-}
    mkdir -p "$d/www" "$d/logs" "$d/tmp"
    echo "hello-from-origin" >"$d/www/index.html"
    cat >"$d/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_shutdown_timeout 2s;
pid $d/nginx.pid;
error_log $d/logs/error.log;
events { worker_connections 512; }
http {
  log_format e2e '\$remote_addr \$ssl_protocol \$server_protocol \$ssl_server_name \$uri \$status';
  access_log $d/logs/access.log e2e;
  client_body_temp_path $d/tmp;
  proxy_temp_path $d/tmp;
  fastcgi_temp_path $d/tmp;
  uwsgi_temp_path $d/tmp;
  scgi_temp_path $d/tmp;
  server {
    listen $listen ${NGINX_LISTEN_OPTS:-ssl http2};
    ssl_certificate $cert;
    ssl_certificate_key $key;
    root $d/www;
    $extra
  }
}
EOF
    chmod -R a+rX "$d"
}

# start_nginx2 DIR PORT CERT KEY [EXTRA]: write_nginx on 127.0.0.1:PORT, started in the background
start_nginx2() {
    write_nginx "$1" "127.0.0.1:$2" "$3" "$4" "${5:-}"
    nginx -c "$1/nginx.conf" -e "$1/logs/error.log" >>"$1/logs/stdout.log" 2>&1 &
    PIDS+=($!)
    wait_port "$2"
}

# nginx_next DIR [K]: log_next on the origin's access log (K more requests reached it)
nginx_next() { log_next "$1/logs/access.log" "${2:-1}"; }

# sign_leaf PKIDIR NAME CN SAN [openssl-ca-dates...]: NAME.pem/NAME.key signed by the make_pki
# root. With -startdate/-enddate arguments the certificate is issued through 'openssl ca' (the
# only OpenSSL 3.0 tool that sets arbitrary validity dates).
sign_leaf() {
    local d=$1 n=$2 cn=$3 san=$4
    shift 4
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/$n.key" \
        -out "$d/$n.csr" -subj "/CN=$cn" 2>/dev/null || return 1
    printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" \
        "$san" >"$d/$n.ext"
    if [ $# -eq 0 ]; then
        openssl x509 -req -in "$d/$n.csr" -CA "$d/root.pem" -CAkey "$d/root.key" \
            -CAcreateserial -out "$d/$n.pem" -days 20 -extfile "$d/$n.ext" 2>/dev/null
        return
    fi
    mkdir -p "$d/ca/newcerts"
    : >"$d/ca/index.txt"
    [ -f "$d/ca/serial" ] || echo 1000 >"$d/ca/serial"
    cat >"$d/ca/ca.cnf" <<EOF
[ ca ]
default_ca = e2e
[ e2e ]
database = $d/ca/index.txt
new_certs_dir = $d/ca/newcerts
serial = $d/ca/serial
default_md = sha256
policy = any
unique_subject = no
email_in_dn = no
[ any ]
commonName = supplied
EOF
    openssl ca -batch -notext -config "$d/ca/ca.cnf" -cert "$d/root.pem" -keyfile "$d/root.key" \
        -in "$d/$n.csr" -out "$d/$n.pem" -extfile "$d/$n.ext" "$@" >"$d/ca/$n.log" 2>&1
}

# serving LABEL: one real request through the explicit proxy gets the origin's body, and the
# proxy process is alive. Uses CA, PROXY, OPORT, TLSMINT_PID.
serving() {
    local out
    out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html" 2>&1)
    check_eq "$1: still serving" "hello-from-origin" "$out"
    check "$1: proxy alive" kill -0 "$TLSMINT_PID"
}

# settle_lines FILE: waits until FILE stops growing (1 s without a new line, at most 10 s),
# prints its line count
settle_lines() {
    local prev=-1 cur same=0
    for _ in $(seq 1 50); do
        cur=$(wc -l <"$1")
        if [ "$cur" = "$prev" ]; then
            same=$((same + 1))
            [ "$same" -ge 5 ] && break
        else
            same=0
        fi
        prev=$cur
        sleep 0.2
    done
    echo "$cur"
}

# check_num "description" A OP B: integer comparison (-lt, -le, -ge, ...) that tolerates
# empty or non-numeric values (they fail the check)
check_num() {
    local d=$1 a=$2 op=$3 b=$4
    case "$a" in '' | *[!0-9]*) bad "$d (not a number: '$a')"; return ;; esac
    if test "$a" "$op" "$b"; then ok "$d ($a $op $b)"; else bad "$d ($a $op $b is false)"; fi
}

# check_secs "description" SECS MAX: a float number of seconds below MAX
check_secs() {
    if python3 -c 'import sys; sys.exit(0 if 0 <= float(sys.argv[1]) < float(sys.argv[2]) else 1)' "$2" "$3" 2>/dev/null; then
        ok "$1 (${2}s < ${3}s)"
    else
        bad "$1 (${2}s, limit ${3}s)"
    fi
}
