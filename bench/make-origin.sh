#!/bin/bash
# SPDX-License-Identifier: MIT
#
# make-origin.sh - an nginx origin for tlsmint-bench with N distinct host certificates, so a
# proxy in front of it has to mint N distinct leaves (a wildcard certificate would make every
# upstream certificate identical, and the proxy would mint once).
#
# usage: bench/make-origin.sh DIR N PORT [WORKERS]
# Creates in DIR:
#   root.pem, root.key        a throwaway root CA ("tlsmint bench origin root"); give root.pem
#                             to the proxy as [upstream] ca_file, or to tlsmint-bench --cafile
#   certs/hK.pem, certs/hK.key  for K = 1..N: EC P-256 leaf for hK.bench.test (own key each)
#   hosts.txt                 h1.bench.test .. hN.bench.test, one per line (tlsmint-bench --hosts)
#   www/index.html, www/big.bin (64 MiB of random bytes, for the bulk scenario)
#   nginx.conf                one server block per host on 127.0.0.1:PORT (h1 is the default
#                             server), HTTP/1.1 and h2, TLS 1.2 and 1.3, no access log,
#                             WORKERS worker processes (default 1), timeouts long enough for
#                             tlsmint-bench idle, session resumption on (tickets and a shared
#                             cache, as most origins: a proxy may resume its upstream sessions;
#                             tlsmint-bench itself never resumes)
# Run the origin with:  nginx -c DIR/nginx.conf -e DIR/logs/error.log   (foreground; stop with
# kill). Re-running with the same DIR keeps the root and the certificates that exist, so a
# bigger N only adds hosts.
set -euo pipefail

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    echo "usage: $0 DIR N PORT [WORKERS]" >&2
    exit 2
fi
dir=$1
n=$2
port=$3
workers=${4:-1}
bad() {
    echo "make-origin: $*" >&2
    exit 2
}
case "$n" in '' | *[!0-9]*) bad "N must be a number: '$n'" ;; esac
case "$port" in '' | *[!0-9]*) bad "PORT must be a number: '$port'" ;; esac
case "$workers" in '' | *[!0-9]* | 0) bad "WORKERS must be a positive number: '$workers'" ;; esac
if [ "$n" -lt 1 ] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    echo "make-origin: need N >= 1 and PORT in 1..65535" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "make-origin: openssl not found" >&2; exit 1; }

mkdir -p "$dir/certs" "$dir/www" "$dir/logs" "$dir/tmp"
dir=$(cd "$dir" && pwd)

if [ ! -s "$dir/root.key" ] || [ ! -s "$dir/root.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/root.key" \
        -out "$dir/root.pem" -subj "/CN=tlsmint bench origin root" -days 30 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        2>/dev/null
    chmod 600 "$dir/root.key"
fi

# The certificates: one python process makes all that are missing when python3-cryptography is
# there (2,000 in a few seconds), else one openssl process each, in parallel (2,000 took 20 s on
# two cores). The same certificates either way; existing ones are kept.
todo() {
    seq 1 "$n" | while read -r k; do
        [ -s "$dir/certs/h$k.pem" ] || echo "$k"
    done
}
mkcerts_py=$(cat <<'EOF'
import datetime, os, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
d = sys.argv[1]
root_key = serialization.load_pem_private_key(open(d + "/root.key", "rb").read(), None)
root = x509.load_pem_x509_certificate(open(d + "/root.pem", "rb").read())
now = datetime.datetime.now(datetime.timezone.utc)
aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key())
for line in sys.stdin:
    k = line.strip()
    name = "h%s.bench.test" % k
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=20))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(aki, critical=False)
            .sign(root_key, hashes.SHA256()))
    fd = os.open("%s/certs/h%s.key" % (d, k), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open("%s/certs/h%s.pem" % (d, k), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
EOF
)
if python3 -c 'import cryptography' 2>/dev/null; then
    todo | python3 -c "$mkcerts_py" "$dir"
else
    todo | xargs -r -P "$(nproc)" -I{} openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -nodes -keyout "$dir/certs/h{}.key" -out "$dir/certs/h{}.pem" -subj "/CN=h{}.bench.test" \
        -CA "$dir/root.pem" -CAkey "$dir/root.key" -days 20 \
        -addext "subjectAltName=DNS:h{}.bench.test" -addext "basicConstraints=CA:FALSE" \
        -addext "extendedKeyUsage=serverAuth" 2>/dev/null
fi
missing=0
for k in $(seq 1 "$n"); do
    [ -s "$dir/certs/h$k.pem" ] || missing=$((missing + 1))
done
if [ "$missing" -ne 0 ]; then
    echo "make-origin: $missing certificates were not created" >&2
    exit 1
fi

seq 1 "$n" | sed 's/^/h/; s/$/.bench.test/' >"$dir/hosts.txt"
echo "hello-from-origin" >"$dir/www/index.html"
if [ ! -s "$dir/www/big.bin" ] || [ "$(stat -c %s "$dir/www/big.bin")" -ne 67108864 ]; then
    head -c 67108864 /dev/urandom >"$dir/www/big.bin"
fi

# descriptors: what this shell may raise to (nginx fails to set more than the hard limit)
nofile=$(ulimit -Hn)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then
    nofile=65536
fi
{
    cat <<EOF
# generated by bench/make-origin.sh $n $port: h1..h$n.bench.test on 127.0.0.1:$port
daemon off;
worker_processes $workers;
worker_rlimit_nofile $nofile;
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
events { worker_connections $((nofile / 2)); }
http {
  access_log off;
  client_body_temp_path $dir/tmp;
  proxy_temp_path $dir/tmp;
  fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp;
  scgi_temp_path $dir/tmp;
  server_names_hash_max_size $((n * 2 + 512));
  server_names_hash_bucket_size 64;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:bench:20m;
  ssl_session_timeout 1h;
  keepalive_timeout 300s;
  client_header_timeout 300s;
  sendfile on;
  root $dir/www;
EOF
    for k in $(seq 1 "$n"); do
        if [ "$k" -eq 1 ]; then
            echo "  server { listen 127.0.0.1:$port ssl http2 default_server;" \
                "server_name h1.bench.test;"
        else
            echo "  server { listen 127.0.0.1:$port ssl http2; server_name h$k.bench.test;"
        fi
        echo "    ssl_certificate $dir/certs/h$k.pem; ssl_certificate_key $dir/certs/h$k.key; }"
    done
    echo "}"
} >"$dir/nginx.conf"
chmod -R a+rX "$dir/www" "$dir/tmp" "$dir/logs"
chmod a+rx "$dir"

echo "origin in $dir: $n hosts (h1..h$n.bench.test) on 127.0.0.1:$port"
echo "  start:   nginx -c $dir/nginx.conf -e $dir/logs/error.log"
echo "  trust:   $dir/root.pem   names: $dir/hosts.txt   bulk: /big.bin (64 MiB)"
