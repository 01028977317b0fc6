#!/bin/bash
# SPDX-License-Identifier: MIT
# test_inbound.sh - inbound inspection end to end: our own servers' certificates, their keys made
# inside a SoftHSM token by `tlsmint inbound keygen`, CSRs signed through the HSM and issued by an
# organisation CA (openssl), nginx backends (plain and TLS); real clients (curl, openssl s_client,
# python) that trust the organisation's CA only. Checks: TLS 1.2 ECDHE-ECDSA and ECDHE-RSA, TLS
# 1.3 (RSA-PSS too), 20 MiB byte-identical, the server key is the HSM key and not extractable, an
# RSA-key-exchange-only client is refused and the log says why, resumption costs no signature,
# missing/mismatched keys stop the start, an expired certificate warns, and the outage of a
# network HSM (p11-kit server killed and restarted).
. "$(dirname "$0")/lib.sh"

P11CLIENT=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
SOFTHSM=/usr/lib/softhsm/libsofthsm2.so

echo "== setup: token, keys in the HSM, CSRs, the organisation CA"
make_pki "$WORK/pki"
"$TLSMINT" init --dir "$WORK/state" >/dev/null || { echo "init failed"; exit 1; }
export SOFTHSM2_CONF="$WORK/state/hsm/softhsm2.conf"
BASE="$WORK/state/tlsmint.conf"
PIN=$(cat "$WORK/state/hsm/pin")
O="$WORK/org"
mkdir -p "$O" "$WORK/run"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$O/ca.key" \
    -out "$O/ca.pem" -subj "/O=Example/CN=Example Org CA" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null

out=$("$TLSMINT" -c "$BASE" inbound keygen --label inbound-web 2>&1)
check_eq "keygen (EC P-256) succeeds" "0" "$?"
check_contains "keygen says the key is made inside and never extractable" "never extractable" "$out"
out=$("$TLSMINT" -c "$BASE" inbound keygen --label inbound-rsa --key-type rsa-2048 2>&1)
check_eq "keygen (RSA-2048) succeeds" "0" "$?"
out=$("$TLSMINT" -c "$BASE" inbound keygen --label inbound-web 2>&1)
check "keygen refuses a label that exists" test $? -ne 0
check_contains "... saying so" "already exists" "$out"
out=$("$TLSMINT" -c "$BASE" inbound keygen --label x --key-type dsa 2>&1)
check "keygen refuses an unknown key type" test $? -eq 2

issue() { # issue LABEL NAME: CSR through the HSM, certificate from the organisation CA
    "$TLSMINT" -c "$BASE" inbound csr --label "$1" --subject "/O=Example/CN=localhost" \
        --san DNS:localhost,IP:127.0.0.1 --out "$O/$2.csr" >"$O/$2.csr.out" 2>&1 || return 1
    openssl req -in "$O/$2.csr" -noout -verify 2>&1 | grep -q "verify OK" || return 1
    openssl x509 -req -in "$O/$2.csr" -CA "$O/ca.pem" -CAkey "$O/ca.key" -CAcreateserial \
        -days 20 -copy_extensions copy -out "$O/$2.pem" 2>/dev/null
}
check "CSR for the EC key, signed through the HSM, verifies; certificate issued" issue inbound-web web
check "CSR for the RSA key, the same" issue inbound-rsa rsa
check_contains "the CSR carries the SANs" "IP Address:127.0.0.1" \
    "$(openssl req -in "$O/web.csr" -noout -text 2>/dev/null)"
out=$("$TLSMINT" -c "$BASE" inbound csr --label nope --subject /CN=x --out "$O/x.csr" 2>&1)
check "csr for a key that is not there fails" test $? -ne 0
check_contains "... naming it" "nope" "$out"
# an expired certificate for the same HSM key (python's cryptography signs it)
python3 - "$O/web.csr" "$O/ca.pem" "$O/ca.key" "$O/old.pem" <<'EOF'
import sys, datetime
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
csr = x509.load_pem_x509_csr(open(sys.argv[1], "rb").read())
ca = x509.load_pem_x509_certificate(open(sys.argv[2], "rb").read())
key = serialization.load_pem_private_key(open(sys.argv[3], "rb").read(), None)
now = datetime.datetime.now(datetime.timezone.utc)
b = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
     .public_key(csr.public_key()).serial_number(x509.random_serial_number())
     .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1)))
for e in csr.extensions:
    b = b.add_extension(e.value, e.critical)
open(sys.argv[4], "wb").write(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
EOF

echo "== backends: nginx plain HTTP, nginx TLS"
B="$WORK/backend"
BPORT=$(free_port)
mkdir -p "$B/www" "$B/logs" "$B/tmp"
echo "hello-from-backend" >"$B/www/index.html"
head -c $((20 * 1024 * 1024)) /dev/urandom >"$B/www/big20.bin"
cat >"$B/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_shutdown_timeout 2s;
pid $B/nginx.pid;
error_log $B/logs/error.log;
events { worker_connections 512; }
http {
  access_log off;
  client_body_temp_path $B/tmp;
  proxy_temp_path $B/tmp;
  fastcgi_temp_path $B/tmp;
  uwsgi_temp_path $B/tmp;
  scgi_temp_path $B/tmp;
  server { listen 127.0.0.1:$BPORT; root $B/www; }
}
EOF
chmod -R a+rX "$B"
nginx -c "$B/nginx.conf" -e "$B/logs/error.log" >>"$B/logs/stdout.log" 2>&1 & # not our stdout
PIDS+=($!)
wait_port "$BPORT"
TPORT=$(free_port)
start_nginx "$WORK/tlsbackend" "$TPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"

P_WEB=$(free_port)
P_RSA=$(free_port)
P_TLS=$(free_port)
P_OLD=$(free_port)
inbound_conf() { # inbound_conf FILE: the base config, forward listeners off, the inbound sections
    cp "$BASE" "$1"
    set_conf "$1" listen explicit ""
    set_conf "$1" listen transparent ""
    set_conf "$1" listen threads 2
    set_conf "$1" admin metrics ""
    set_conf "$1" hsm sign_timeout_ms 300
    cat >>"$1" <<EOF

[inbound.web]
listen = 127.0.0.1:$P_WEB
cert = $O/web.pem
key_label = inbound-web
backend = 127.0.0.1:$BPORT

[inbound.rsa]
listen = 127.0.0.1:$P_RSA
cert = $O/rsa.pem
key_label = inbound-rsa
backend = 127.0.0.1:$BPORT

[inbound.tls]
listen = 127.0.0.1:$P_TLS
cert = $O/web.pem
key_label = inbound-web
backend = 127.0.0.1:$TPORT
backend_tls = yes
backend_ca = $WORK/pki/root.pem
backend_sni = localhost
alpn = h2,http/1.1
EOF
}
CONF="$WORK/inbound.conf"
inbound_conf "$CONF"
set_conf "$CONF" log access "$WORK/access.log"
set_conf "$CONF" admin socket "$WORK/run/inb.sock"

echo "== inbound list"
out=$("$TLSMINT" -c "$CONF" inbound list 2>&1)
check_eq "inbound list: every key present and matching (exit 0)" "0" "$?"
check_contains "inbound list shows the subject" "CN=localhost" "$out"
check_contains "inbound list shows the SANs" "DNS:localhost, IP:127.0.0.1" "$out"
check_contains "inbound list shows the key label and that it matches" \
    "'inbound-web' in the HSM" "$out"
check_contains "... matches the certificate" "matches the certificate" "$out"
check_not_contains "... no error" "status    error" "$out"

echo "== a missing key, a certificate for another key, an expired certificate"
BAD="$WORK/missing.conf"
inbound_conf "$BAD"
set_conf "$BAD" inbound.web key_label nope
set_conf "$BAD" admin socket "$WORK/run/missing.sock"
out=$("$TLSMINT" -c "$BAD" inbound list 2>&1)
check_eq "inbound list: a missing key is an error (exit 1)" "1" "$?"
check_contains "... saying it is not in the HSM" "NOT in the HSM" "$out"
out=$(timeout 20 "$TLSMINT" -c "$BAD" run 2>&1)
check "run refuses to start with a missing key" test $? -ne 0
check_contains "... with the reason" "no private key labelled 'nope'" "$out"
BAD="$WORK/mismatch.conf"
inbound_conf "$BAD"
set_conf "$BAD" inbound.web cert "$O/rsa.pem"
set_conf "$BAD" admin socket "$WORK/run/mismatch.sock"
out=$("$TLSMINT" -c "$BAD" inbound list 2>&1)
check_contains "inbound list: a mismatched certificate" "DOES NOT MATCH" "$out"
out=$(timeout 20 "$TLSMINT" -c "$BAD" run 2>&1)
check "run refuses to start with a certificate for another key" test $? -ne 0
check_contains "... with the reason" "is not the HSM key 'inbound-web'" "$out"
OLD="$WORK/old.conf"
cp "$CONF" "$OLD"
printf "\n[inbound.old]\nlisten = 127.0.0.1:%s\ncert = %s\nkey_label = inbound-web\nbackend = 127.0.0.1:%s\n" \
    "$P_OLD" "$O/old.pem" "$BPORT" >>"$OLD"
out=$("$TLSMINT" -c "$OLD" inbound list 2>&1)
check_eq "inbound list: an expired certificate is no error" "0" "$?"
check_contains "... but a warning" "warning: the certificate has expired" "$out"

echo "== the listeners"
mkdir -p "$WORK/pcap"
set_conf "$OLD" export pcap "$WORK/pcap/inb-%H%M%S.pcap"
set_conf "$OLD" inbound ticket_rotate_s 2
start_tlsmint "$OLD" "$WORK/run.log" || { finish; exit 1; }
PID=$TLSMINT_PID
check_contains "an expired certificate warns at start" "has EXPIRED" "$(cat "$WORK/run.log")"
wait_port "$P_WEB"
sigs() { # inbound signatures so far (ctl hsm)
    "$TLSMINT" -c "$OLD" ctl hsm 2>/dev/null | sed -n 's/.*inbound server keys \([0-9]*\) signatures.*/\1/p' | head -1
}
s0=$(sigs)
body=$(curl -sS --max-time 10 --cacert "$O/ca.pem" "https://localhost:$P_WEB/index.html" 2>&1)
check_eq "curl through [inbound.web] (the organisation CA only)" "hello-from-backend" "$body"
curl -sS --max-time 60 --cacert "$O/ca.pem" "https://localhost:$P_WEB/big20.bin" -o "$WORK/big.out"
check "20 MiB through the inbound listener, byte-identical" cmp -s "$B/www/big20.bin" "$WORK/big.out"
s1=$(sigs)
check "each full handshake was one HSM signature by an inbound key ($s0 -> $s1)" test "$s1" -eq $((s0 + 2))

sclient() { # sclient PORT ARGS...: the handshake's summary
    local p=$1; shift
    echo | timeout 10 openssl s_client -connect "127.0.0.1:$p" -servername localhost \
        -CAfile "$O/ca.pem" -verify_return_error "$@" 2>&1
}
out=$(sclient "$P_WEB" -tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256)
check_contains "s_client TLS 1.2 ECDHE-ECDSA: verified" "Verify return code: 0 (ok)" "$out"
check_contains "... that suite" "ECDHE-ECDSA-AES128-GCM-SHA256" "$out"
out=$(sclient "$P_RSA" -tls1_2 -cipher ECDHE-RSA-AES256-GCM-SHA384)
check_contains "s_client TLS 1.2 ECDHE-RSA (RSA key in the HSM): verified" "Verify return code: 0 (ok)" "$out"
check_contains "... that suite" "ECDHE-RSA-AES256-GCM-SHA384" "$out"
out=$(sclient "$P_RSA" -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256 -sigalgs RSA+SHA256)
check_contains "s_client TLS 1.2 ECDHE-RSA with PKCS#1 v1.5 signatures" "Verify return code: 0 (ok)" "$out"
out=$(sclient "$P_WEB" -tls1_3)
check_contains "s_client TLS 1.3, EC key" "TLSv1.3" "$out"
check_contains "... verified" "Verify return code: 0 (ok)" "$out"
out=$(sclient "$P_RSA" -tls1_3)
check_contains "s_client TLS 1.3, RSA key (RSA-PSS through the HSM)" "Verify return code: 0 (ok)" "$out"
check_contains "... peer signature RSA-PSS" "RSA-PSS" "$out"

# the handshake's public key is the HSM key's: the certificate the client got holds the token's
# public key, and the client checked the handshake signature against it
sclient "$P_WEB" -tls1_3 -showcerts | sed -n '/BEGIN CERT/,/END CERT/p' | head -n 100 >"$WORK/served.pem"
openssl x509 -in "$WORK/served.pem" -pubkey -noout >"$WORK/served.pub" 2>/dev/null
pkcs11-tool --module "$SOFTHSM" --token-label tlsmint --login --pin "$PIN" --read-object \
    --type pubkey --label inbound-web -o "$WORK/hsm.pub.der" >/dev/null 2>&1
openssl pkey -pubin -inform DER -in "$WORK/hsm.pub.der" -out "$WORK/hsm.pub" 2>/dev/null
check "the served certificate's public key is the HSM key's" cmp -s "$WORK/served.pub" "$WORK/hsm.pub"
priv=$(pkcs11-tool --module "$SOFTHSM" --token-label tlsmint --login --pin "$PIN" --list-objects \
    --type privkey 2>/dev/null | grep -A8 "label: *inbound-web")
check_contains "pkcs11-tool: the private key is never extractable" "never extractable" "$priv"
check_contains "pkcs11-tool: ... and sensitive" "sensitive" "$priv"
check_eq "no private key file was written for it" "" \
    "$(grep -rl "PRIVATE KEY" "$WORK/state" "$O" 2>/dev/null | grep -v "$O/ca.key")"

out=$(sclient "$P_WEB" -tls1_2 -cipher AES128-GCM-SHA256:AES256-SHA)
check_contains "an RSA-key-exchange-only client is refused" "Cipher is (NONE)" "$out"
check_contains "... with handshake_failure" "handshake failure" "$out"
wait_for 20 grep -q "offers only RSA key exchange" "$WORK/run.log"
check_contains "... and the log says why" "offers only RSA key exchange" "$(cat "$WORK/run.log")"

python3 - "$P_WEB" "$O/ca.pem" >"$WORK/py.out" 2>&1 <<'EOF'
import ssl, socket, sys, http.client
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
c.request("GET", "/index.html")
r = c.getresponse()
print("status", r.status, r.read().decode().strip())
# resumption: TLS 1.2 and 1.3 tickets (the session comes after the first response in TLS 1.3)
for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ctx.maximum_version = v
    sess = None
    for i in range(3):
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost", session=sess)
        s.sendall(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        print(v.name, i, "reused" if s.session_reused else "full", data.endswith(b"hello-from-backend\n"))
        sess = s.session
        s.close()
EOF
py=$(cat "$WORK/py.out")
check_contains "python (ssl, http.client) through the listener" "status 200 hello-from-backend" "$py"
check_contains "python TLS 1.2: the second connection resumes (ticket)" "TLSv1_2 1 reused True" "$py"
check_contains "python TLS 1.3: the second connection resumes (ticket)" "TLSv1_3 1 reused True" "$py"
s2=$(sigs)
check "resumed handshakes cost no signature (6 s_client + 3 python full, 4 resumed: $s1 -> $s2)" \
    test "$s2" -eq $((s1 + 6 + 3))

# ticket keys rotate every 2 s here: the previous key still resumes, an older one does not
python3 - "$P_WEB" "$O/ca.pem" >"$WORK/rot.out" 2>&1 <<'EOF'
import ssl, socket, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
def hs(sess):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost",
                        session=sess)
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    while s.recv(65536):
        pass
    r, ss = s.session_reused, s.session
    s.close()
    return r, ss
_, s0 = hs(None)
time.sleep(2.5)
r1, _ = hs(s0)  # one rotation since s0's ticket: its key is the previous one
time.sleep(4.5)
r2, _ = hs(s0)  # two rotations: that key is gone
print("after_one_rotation", r1, "after_two", r2)
EOF
rot=$(cat "$WORK/rot.out")
check_contains "tickets: one rotation later, the previous key still resumes" "after_one_rotation True" "$rot"
check_contains "tickets: two rotations later, a full handshake" "after_two False" "$rot"

body=$(curl -sS --max-time 10 --http2 --cacert "$O/ca.pem" -w ' %{http_version}' \
    "https://localhost:$P_TLS/index.html" 2>&1)
check_eq "curl h2 through [inbound.tls] to a TLS backend verified against backend_ca" \
    "hello-from-origin 2" "$(echo $body)"

wait_for 50 grep -q '"listener":"tls"' "$WORK/access.log" # its writer thread
log=$(cat "$WORK/access.log")
check_contains "access log: mode inbound, listener web" '"mode":"inbound","listener":"web"' "$log"
check_contains "access log: listener tls" '"listener":"tls"' "$log"
check_contains "access log: a resumed one" '"resumed":true' "$log"
st=$("$TLSMINT" -c "$OLD" ctl status 2>&1)
check_contains "ctl status shows the listeners" "inbound       web: port $P_WEB" "$st"
hsm=$("$TLSMINT" -c "$OLD" ctl hsm 2>&1)
check_contains "ctl hsm counts minting and inbound signatures apart" "minting 0 signatures" "$hsm"
kill -TERM "$PID"
wait "$PID"
check_eq "clean exit" "0" "$?"
check_not_contains "no sanitizer report" "Sanitizer" "$(cat "$WORK/run.log")"
check "the decrypted traffic reached the [export] pcap files" \
    grep -aqs "hello-from-backend" "$WORK"/pcap/inb-*.pcap

# outage CONF PORT NAME DOWN UP: one python process saves a session while the HSM signs, times
# full handshakes while it cannot (each must fail within sign_timeout_ms + 50 ms), resumes the
# saved session meanwhile, then times how long until a full handshake works again; DOWN and UP
# are shell commands run when it says so (a control file), the proxy is never restarted
cat >"$WORK/outage.py" <<'EOF2'
import ssl, socket, sys, time, os
port, ca, ctl = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca) # one context: its sessions can be resumed
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
def hs(sess=None):
    t0 = time.monotonic()
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                            server_hostname="localhost", session=sess)
    except (ssl.SSLError, OSError) as e:
        return False, (time.monotonic() - t0) * 1000, None, False
    ms = (time.monotonic() - t0) * 1000
    s.sendall(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    ok = data.endswith(b"hello-from-backend\n")
    sess, reused = s.session, s.session_reused
    s.close()
    return ok, ms, sess, reused
def say(what):
    open(ctl, "w").write(what + "\n")
    while os.path.exists(ctl):
        time.sleep(0.01)
ok, ms, sess, _ = hs()
print("before", ok)
say("down")
time.sleep(0.3)
worst = 0
fails = 0
for i in range(5):
    ok, ms, _, _ = hs()
    fails += not ok
    worst = max(worst, ms)
print("down_full_failed", fails, "worst_ms", int(worst))
ok, ms, _, reused = hs(sess)
print("down_resumed", ok and reused)
say("up")
t0 = time.monotonic()
back = False
while time.monotonic() - t0 < 5:
    ok, ms, _, _ = hs()
    if ok:
        back = True
        break
    time.sleep(0.05)
print("back", back, "after_ms", int((time.monotonic() - t0) * 1000))
EOF2
outage() {
    local conf=$1 port=$2 name=$3 down=$4 up=$5 ctlf="$WORK/outage.ctl" pypid o worst after pid
    start_tlsmint "$conf" "$WORK/$name.log" || { bad "$name: tlsmint did not start"; return; }
    pid=$TLSMINT_PID
    wait_port "$port"
    rm -f "$ctlf"
    python3 "$WORK/outage.py" "$port" "$O/ca.pem" "$ctlf" >"$WORK/$name.out" 2>&1 &
    pypid=$!
    for _ in $(seq 1 800); do
        if [ -f "$ctlf" ]; then
            case $(cat "$ctlf") in
            down*) eval "$down" ;;
            up*) eval "$up" ;;
            esac
            rm -f "$ctlf"
        fi
        kill -0 "$pypid" 2>/dev/null || break
        sleep 0.02
    done
    wait "$pypid"
    o=$(cat "$WORK/$name.out")
    echo "$o" | sed 's/^/    /'
    check_contains "$name: a full handshake works" "before True" "$o"
    check_contains "$name: HSM gone, every full handshake fails" "down_full_failed 5" "$o"
    worst=$(echo "$o" | sed -n 's/.*worst_ms \([0-9]*\).*/\1/p')
    check "$name: ... each within sign_timeout_ms + 50 ms (worst ${worst:-?} ms)" test "${worst:-9999}" -lt 350
    check_contains "$name: a resumed session still works" "down_resumed True" "$o"
    after=$(echo "$o" | sed -n 's/.*after_ms \([0-9]*\).*/\1/p')
    check_contains "$name: HSM back, full handshakes again" "back True" "$o"
    check "$name: ... within 2 s (${after:-?} ms), the same proxy process" \
        test "${after:-9999}" -lt 2000 -a -d "/proc/$pid"
    kill -TERM "$pid"
    wait "$pid"
    check_eq "$name: clean exit" "0" "$?"
    check_not_contains "$name: no sanitizer report" "Sanitizer" "$(cat "$WORK/$name.log")"
}

echo "== network HSM (p11-kit server): killed, then back"
SOCK="$WORK/run/p11kit.sock"
start_p11kit() {
    p11-kit server -f --provider "$SOFTHSM" -n "$SOCK" "pkcs11:token=tlsmint" >>"$WORK/p11kit.log" 2>&1 &
    P11PID=$!
    PIDS+=($P11PID)
    for _ in $(seq 1 100); do [ -S "$SOCK" ] && return 0; sleep 0.05; done
    return 1
}
stop_p11kit() {
    kill -9 $(pgrep -P "$P11PID") "$P11PID" 2>/dev/null
    wait "$P11PID" 2>/dev/null
    rm -f "$SOCK"
}
start_p11kit || { bad "p11-kit server did not start"; finish; exit 1; }
NET="$WORK/net.conf"
inbound_conf "$NET"
set_conf "$NET" admin socket "$WORK/run/net.sock"
set_conf "$NET" log access "$WORK/net.access"
set_conf "$NET" hsm recovery_backoff_max_ms 200
printf "\n[hsm]\nmodule = %s\nenv = P11_KIT_SERVER_ADDRESS=unix:path=%s\n" "$P11CLIENT" "$SOCK" >>"$NET"
printf "\n[master_key]\nmodule = %s\nenv = SOFTHSM2_CONF=%s\n" "$SOFTHSM" "$SOFTHSM2_CONF" >>"$NET"
outage "$NET" "$P_WEB" p11kit stop_p11kit start_p11kit
stop_p11kit

echo "== sign deadline: the HSM hangs (fault module), then answers again"
if [ -n "${FAULTP11_PATH:-}" ]; then
    FCTL="$WORK/fault.ctl"
    : >"$FCTL"
    HANG="$WORK/hang.conf"
    inbound_conf "$HANG"
    set_conf "$HANG" admin socket "$WORK/run/hang.sock"
    set_conf "$HANG" log access "$WORK/hang.access"
    set_conf "$HANG" hsm hang_timeout_ms 1500
    set_conf "$HANG" hsm recovery_backoff_max_ms 200
    printf "\n[hsm]\nmodule = %s\nenv = FAULTP11_MODULE=%s\nenv = FAULTP11_CONTROL=%s\n" \
        "$FAULTP11_PATH" "$SOFTHSM" "$FCTL" >>"$HANG"
    outage "$HANG" "$P_WEB" hang "echo hang=1 >$FCTL" ": >$FCTL"
    check_contains "hang: the access log says the deadline passed" '"reason":"hsm-timeout"' \
        "$(cat "$WORK/hang.access")"
else
    bad "FAULTP11_PATH is not set (meson sets it)"
fi

# queue full: [hsm] queue_size = 2 and one session signing at 400 ms (fault module), then a burst
# of 12 full handshakes at once. Two hold the queue and finish; every other one must end with an
# alert at once (not after the 3 s sign deadline), each counted, with a rate-limited log line.
echo "== queue full: a burst of full handshakes overflows [hsm] queue_size"
cat >"$WORK/burst.py" <<'EOF'
import ssl, socket, sys, time, threading
port, ca, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
res = [None] * n
bar = threading.Barrier(n)
def one(i):
    bar.wait()
    t0 = time.monotonic()
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                            server_hostname="localhost")
        res[i] = ("ok", time.monotonic() - t0, "")
        s.close()
    except ssl.SSLError as e:
        res[i] = ("alert" if "alert" in str(e).lower() else "ssl", time.monotonic() - t0, str(e))
    except OSError as e:
        res[i] = ("os", time.monotonic() - t0, str(e))
th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in th:
    t.start()
for t in th:
    t.join()
for k in ("ok", "alert", "ssl", "os"):
    print(k, sum(1 for r in res if r[0] == k))
print("worst_refused_ms", int(max([r[1] for r in res if r[0] != "ok"] or [0]) * 1000))
for r in res:
    if r[0] not in ("ok", "alert"):
        print("other:", r[2])
EOF
if [ -n "${FAULTP11_PATH:-}" ]; then
    QCTL="$WORK/queue.ctl"
    echo "latency_ms=400" >"$QCTL"
    QF="$WORK/queue.conf"
    MPORT=$(free_port)
    inbound_conf "$QF"
    set_conf "$QF" admin socket "$WORK/run/queue.sock"
    set_conf "$QF" admin metrics "127.0.0.1:$MPORT"
    set_conf "$QF" log access "$WORK/queue.access"
    set_conf "$QF" hsm queue_size 2
    set_conf "$QF" hsm workers 1
    set_conf "$QF" hsm sign_timeout_ms 3000
    set_conf "$QF" hsm hang_timeout_ms 10000
    printf "\n[hsm]\nmodule = %s\nenv = FAULTP11_MODULE=%s\nenv = FAULTP11_CONTROL=%s\n" \
        "$FAULTP11_PATH" "$SOFTHSM" "$QCTL" >>"$QF"
    if start_tlsmint "$QF" "$WORK/queue.log"; then
        pid=$TLSMINT_PID
        wait_port "$P_WEB"
        python3 "$WORK/burst.py" "$P_WEB" "$O/ca.pem" 12 >"$WORK/burst.out" 2>&1
        o=$(cat "$WORK/burst.out")
        echo "$o" | sed 's/^/    /'
        nok=$(echo "$o" | sed -n 's/^ok //p')
        nalert=$(echo "$o" | sed -n 's/^alert //p')
        worst=$(echo "$o" | sed -n 's/^worst_refused_ms //p')
        check "queue full: the handshakes the queue holds complete (${nok:-?})" test "${nok:-0}" -ge 1
        check "queue full: the overflow is refused (${nalert:-?} of 12)" test "${nalert:-0}" -ge 1
        check_eq "queue full: every handshake either completes or ends with an alert" "12" \
            "$((${nok:-0} + ${nalert:-0}))"
        check "queue full: refused at once, well before the 3 s deadline (worst ${worst:-?} ms)" \
            test "${worst:-9999}" -lt 1000
        m=$(curl -sS --max-time 5 "http://127.0.0.1:$MPORT/metrics" 2>&1)
        check_contains "queue full: the metric counts each refusal" \
            "tlsmint_hsm_refused_total{reason=\"queue_full\"} ${nalert:-x}" "$m"
        check_contains "queue full: ... and the listener's refusals" \
            "tlsmint_inbound_refused_total{listener=\"web\",reason=\"hsm\"} ${nalert:-x}" "$m"
        wait_for 50 grep -q '"reason":"hsm-queue-full"' "$WORK/queue.access"
        check_contains "queue full: the access log gives the reason" '"reason":"hsm-queue-full"' \
            "$(cat "$WORK/queue.access")"
        : >"$QCTL"
        body=$(curl -sS --max-time 10 --cacert "$O/ca.pem" "https://localhost:$P_WEB/index.html" 2>&1)
        check_eq "queue full: the proxy keeps serving afterwards" "hello-from-backend" "$body"
        kill -TERM "$pid"
        wait "$pid"
        check_eq "queue full: clean exit" "0" "$?"
        lines=$(grep -c "(queue full): handshake ended with an alert" "$WORK/queue.log")
        check "queue full: the log says why ($lines lines), at most 5 in a window" \
            test "$lines" -ge 1 -a "$lines" -le 5
        if [ "${nalert:-0}" -gt 5 ]; then
            check_contains "queue full: ... the rest counted in a rate-limited summary" \
                "rate-limited: $((nalert - lines)) more like" "$(cat "$WORK/queue.log")"
        fi
        check_not_contains "queue full: no sanitizer report" "Sanitizer" "$(cat "$WORK/queue.log")"
    else
        bad "queue full: tlsmint did not start"
    fi
fi

finish
