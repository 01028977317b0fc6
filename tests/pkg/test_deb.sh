#!/bin/bash
# SPDX-License-Identifier: MIT
# test_deb.sh DEB - the Debian package on this machine, as README's set-up section describes
# it: install, `tlsmint init --dir /var/lib/tlsmint`, `tlsmint run` with the packaged config
# (it drops to the tlsmint user), one intercepted curl request, then `dpkg --purge`, which must
# leave nothing behind but the tlsmint system user (Debian policy keeps system users; this
# test removes it too when it made it, so the machine ends as it started).
# The proxy, its origin and curl run in a network namespace of their own, so the packaged
# ports (3128, 8443, 9120) never collide with anything else on the machine.
# Run by `make deb-test` (installs into the running system: needs root, not part of make test).
DEB=${1:?usage: test_deb.sh tlsmint_VERSION_ARCH.deb}
DEB=$(readlink -f "$DEB")
export TLSMINT_BIN=/usr/bin/tlsmint
. "$(dirname "$0")/../e2e/lib.sh"
. "$(dirname "$0")/../e2e/lib2.sh"

[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (dpkg -i)"; exit 77; }
if dpkg -s tlsmint >/dev/null 2>&1; then
    echo "tlsmint is installed already: refusing to replace it"; exit 1
fi
had_user=no
getent passwd tlsmint >/dev/null && had_user=yes
NS="tlsmint-deb-$$"
cleanup_deb() {
    cleanup
    ip netns del "$NS" 2>/dev/null
    dpkg -s tlsmint >/dev/null 2>&1 && dpkg --purge tlsmint >/dev/null 2>&1
    [ "$had_user" = no ] && getent passwd tlsmint >/dev/null && deluser --system tlsmint >/dev/null 2>&1
    [ "$had_user" = no ] && getent group tlsmint >/dev/null && delgroup --system tlsmint >/dev/null 2>&1
}
trap cleanup_deb EXIT

echo "== install $(basename "$DEB")"
out=$(dpkg -i "$DEB" 2>&1)
check_eq "dpkg -i" "0" "$?"
check_eq "user tlsmint exists (system user)" "yes" "$(getent passwd tlsmint >/dev/null && echo yes)"
check_eq "/var/lib/tlsmint belongs to tlsmint, 0750" "tlsmint:tlsmint 750" "$(stat -c '%U:%G %a' /var/lib/tlsmint)"
check_eq "/etc/tlsmint/tlsmint.conf: root:tlsmint 0640" "root:tlsmint 640" "$(stat -c '%U:%G %a' /etc/tlsmint/tlsmint.conf)"
for f in /usr/bin/tlsmint /usr/bin/tlsmint-bench /lib/systemd/system/tlsmint.service \
    /usr/share/man/man8/tlsmint.8.gz /usr/share/man/man5/tlsmint.conf.5.gz \
    /usr/share/man/man1/tlsmint-bench.1.gz /usr/share/doc/tlsmint/examples/tlsmint-alerts.yml; do
    check "installed: $f" test -e "$f"
done
out=$(systemd-analyze verify /lib/systemd/system/tlsmint.service 2>&1)
check_eq "systemd-analyze verify on the installed unit (man pages found too)" "0:" "$?:$out"
check_contains "man tlsmint.conf documents [run] user" "user = NAME" "$(man -P cat tlsmint.conf 2>/dev/null)"

echo "== tlsmint init --dir /var/lib/tlsmint"
out=$(tlsmint init --dir /var/lib/tlsmint 2>&1)
check_eq "init: exit 0" "0" "$?"
check_contains "init creates the state as tlsmint" "/var/lib/tlsmint belongs to tlsmint" "$out"
check_eq "nothing in the state belongs to root" "" "$(find /var/lib/tlsmint ! -user tlsmint)"
check_eq "the PIN is 0600" "600" "$(stat -c %a /var/lib/tlsmint/hsm/pin)"

echo "== tlsmint run with the packaged config (namespace $NS)"
ip netns add "$NS" || { echo "SKIP: cannot create a network namespace"; exit 77; }
IN() { ip netns exec "$NS" "$@"; }
IN ip link set lo up
make_pki "$WORK/pki"
OPORT=9443
write_nginx "$WORK/origin" "127.0.0.1:$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
IN bash -c "echo \$\$ >$WORK/nginx.pid; exec nginx -c $WORK/origin/nginx.conf -e $WORK/origin/logs/error.log" &
sleep 0.3
PIDS+=($(cat "$WORK/nginx.pid"))
IN bash -c "echo \$\$ >$WORK/tlsmint.pid; exec tlsmint -c /etc/tlsmint/tlsmint.conf run" \
    >"$WORK/access.log" 2>"$WORK/tlsmint.log" &
WAITER=$!
sleep 0.3
TLSMINT_PID=$(cat "$WORK/tlsmint.pid")
PIDS+=($TLSMINT_PID)
for _ in $(seq 1 200); do
    grep -q "tlsmint running" "$WORK/tlsmint.log" && break
    kill -0 "$TLSMINT_PID" 2>/dev/null || break
    sleep 0.05
done
check_contains "started" "tlsmint running: explicit port 3128, transparent port 8443, 1/1 HSM members up" "$(cat "$WORK/tlsmint.log")"
TUID=$(id -u tlsmint)
check_eq "runs as tlsmint" "$TUID" "$(awk '/^Uid:/ {print $2}' /proc/"$TLSMINT_PID"/status)"
check_eq "with no capability" "0000000000000000" "$(awk '/^CapEff:/ {print $2}' /proc/"$TLSMINT_PID"/status)"
sp=$(pgrep -P "$TLSMINT_PID" -f __signer | head -n 1)
check_eq "its signer runs as tlsmint" "$TUID" "$(awk '/^Uid:/ {print $2}' /proc/"$sp"/status 2>/dev/null)"
# the packaged config verifies upstreams against the system store, which does not know this
# test's origin: tlsmint intercepts with a forward-untrust leaf (the client sees the error)
v=$(IN curl -sS -v --max-time 10 --cacert /var/lib/tlsmint/ca/forward-untrust.pem \
    -x http://127.0.0.1:3128 "https://localhost:$OPORT/index.html" 2>&1)
check_contains "curl through the proxy gets the origin's body" "hello-from-origin" "$v"
check_contains "with a leaf tlsmint minted" "issuer: O=tlsmint; CN=tlsmint forward-untrust CA" "$v"
sleep 0.3
check_contains "access log line (stdout)" '"outcome":"ok"' "$(cat "$WORK/access.log")"
st=$(IN tlsmint -c /etc/tlsmint/tlsmint.conf ctl status 2>&1)
check_contains "ctl status over /run/tlsmint/tlsmint.sock" "1/1 members up" "$st"
kill -TERM "$TLSMINT_PID"
wait "$WAITER"
check_eq "SIGTERM: exit 0" "0" "$?"

echo "== started as tlsmint directly (what the unit's User=tlsmint does)"
IN bash -c "echo \$\$ >$WORK/tlsmint2.pid; exec setpriv --reuid=tlsmint --regid=tlsmint \
    --init-groups tlsmint -c /etc/tlsmint/tlsmint.conf run" >/dev/null 2>"$WORK/tlsmint2.log" &
WAITER=$!
sleep 0.3
P2=$(cat "$WORK/tlsmint2.pid")
[ -n "$P2" ] || { echo "the second start left no pid"; exit 1; }
PIDS+=($P2)
for _ in $(seq 1 200); do
    grep -q "tlsmint running" "$WORK/tlsmint2.log" && break
    kill -0 "$P2" 2>/dev/null || break
    sleep 0.05
done
check_contains "starts" "tlsmint running" "$(cat "$WORK/tlsmint2.log")"
check_eq "as tlsmint" "$TUID" "$(awk '/^Uid:/ {print $2}' /proc/"$P2"/status)"
v=$(IN curl -sS --max-time 10 --cacert /var/lib/tlsmint/ca/forward-untrust.pem \
    -x http://127.0.0.1:3128 "https://localhost:$OPORT/index.html" 2>&1)
check_eq "and intercepts" "hello-from-origin" "$v"
check_contains "ctl status (as root)" "1/1 members up" "$(IN tlsmint -c /etc/tlsmint/tlsmint.conf ctl status 2>&1)"
kill -TERM "$P2"
wait "$WAITER"
check_eq "SIGTERM: exit 0" "0" "$?"
kill "$(cat "$WORK/nginx.pid")" 2>/dev/null
ip netns del "$NS"

echo "== dpkg --purge tlsmint"
out=$(dpkg --purge tlsmint 2>&1)
check_eq "purge: exit 0" "0" "$?"
for f in /usr/bin/tlsmint /usr/bin/tlsmint-bench /etc/tlsmint /var/lib/tlsmint /run/tlsmint \
    /lib/systemd/system/tlsmint.service /usr/share/doc/tlsmint /usr/share/man/man8/tlsmint.8.gz; do
    check "gone: $f" test ! -e "$f"
done
check_eq "no tlsmint process left" "" "$(pgrep -u tlsmint 2>/dev/null)"
check_eq "no unit enabled any more" "" "$(ls /etc/systemd/system/*/tlsmint.service 2>/dev/null)"
check_eq "dpkg knows nothing of it" "" "$(dpkg -l tlsmint 2>/dev/null | grep '^[a-z][a-z] ')"
check_eq "the system user stays (Debian policy)" "yes" "$(getent passwd tlsmint >/dev/null && echo yes)"
finish
