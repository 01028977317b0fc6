#!/bin/bash
# SPDX-License-Identifier: MIT
# test_export.sh - decrypted traffic export, read back by real readers: tshark follows every
# intercepted connection in the rolled pcap files and the bytes come back identical to what the
# client sent and got (HTTP/1.1, h2, a 20 MiB body, no TCP sequence errors); ndpiReader and
# ngrep read the same files; two PCAP-over-IP readers get valid streams at once while a reader
# that stops reading is dropped without slowing the proxy; rotation by size and age with
# pcap_keep; a bypassed connection is never exported, nor an intercepted one whose rule says
# export = no (traffic to two host names, one of them excluded: no reader finds anything of it,
# the access log and a counter say so); an unwritable directory and a full disk are logged
# once and interception goes on; a mirror interface (veth in a namespace) carries the same
# conversations live. Each conversation closes from the side that ended first (FIN, or RST
# for a client that reset); an IPv6 origin gives an IPv6 conversation whose checksums verify;
# max_bytes_per_conn keeps only the first bytes; on a slow disk (a loop device throttled by a
# blkio cgroup) a 1 MiB queue fills, the loops drop and count records for every sink instead of
# waiting, the two sinks account for the same records and the file holds part of the answer.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib2.sh"
XC="python3 $(dirname "$0")/xclient.py"
# ngrep_hits PCAP REGEX: how many packets match (ngrep's own header repeats the pattern)
ngrep_hits() { ngrep -q -I "$1" "$2" 2>/dev/null | grep -c '^T '; }
for t in tshark ndpiReader ngrep; do
    command -v $t >/dev/null || { echo "SKIP: $t is not installed"; exit 77; }
done

make_pki "$WORK/pki"
S="$WORK/state"
"$TLSMINT" init --dir "$S" >/dev/null || { echo "init failed"; exit 1; }
OPORT=$(free_port) PPORT=$(free_port) XPORT=$(free_port)
start_nginx "$WORK/origin" "$OPORT" "$WORK/pki/origin.pem" "$WORK/pki/origin.key"
head -c $((20 << 20)) /dev/urandom >"$WORK/origin/www/big20.bin"
C="$S/tlsmint.conf"
set_conf "$C" listen explicit "127.0.0.1:$PPORT"
set_conf "$C" listen transparent ""
set_conf "$C" upstream ca_file "$WORK/pki/root.pem"
MPORT1=$(free_port)
set_conf "$C" admin metrics "127.0.0.1:$MPORT1"
set_conf "$C" policy bypass "127.0.0.1"
# a second name of the same origin (in its certificate), intercepted but never exported
printf "\n[rule.private]\nhosts = bypass.localhost\naction = inspect\nexport = no\n" >>"$C"
mkdir -p "$WORK/pcap"
set_conf "$C" export pcap "$WORK/pcap/dec-%Y%m%d-%H%M%S.pcap"
set_conf "$C" export pcap_listen "127.0.0.1:$XPORT"
start_tlsmint "$C" "$WORK/tlsmint.log" || exit 1
CA="$S/ca/forward-trust.pem"
PROXY="http://127.0.0.1:$PPORT"
check_contains "start-up says the export holds secrets" "reads every intercepted secret" \
    "$(cat "$WORK/tlsmint.log")"
# the writer makes and touches the queue's memory (queue_mb, 64 MiB) at start, so that no loop
# takes a page fault for it: the process holds that much before any traffic
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$TLSMINT_PID/status"; }
wait_for 50 eval '[ "$(rss_kb)" -ge $((64 << 10)) ]'
check_num "the export's 64 MiB queue is in memory before any traffic (VmRSS kB)" "$(rss_kb)" \
    -ge $((64 << 10))

echo "== PCAP-over-IP: two readers, and one that never reads"
$XC reader 127.0.0.1 "$XPORT" "$WORK/r1.pcap" 120 &
R1=$!
$XC reader 127.0.0.1 "$XPORT" "$WORK/r2.pcap" 120 &
R2=$!
$XC stalled 127.0.0.1 "$XPORT" "$WORK/stalled.go" >"$WORK/stalled.out" &
R3=$!
for _ in $(seq 1 50); do
    "$TLSMINT" -c "$C" ctl status | grep -q 'listening, 3 readers' && break
    sleep 0.1
done
check_contains "ctl status shows three readers" "listening, 3 readers" \
    "$("$TLSMINT" -c "$C" ctl status | grep '^export')"

echo "== traffic"
P1=$($XC exact "$PPORT" localhost "$OPORT" "$CA" /index.html "$WORK" exact1)
P2=$($XC exact "$PPORT" localhost "$OPORT" "$CA" "/index.html?q=TLSMINTMARKER42" "$WORK" exact2)
P3=$($XC exact "$PPORT" localhost "$OPORT" "$CA" /big.bin "$WORK" exact3)
RP=$($XC reset "$PPORT" localhost "$OPORT" "$CA" /big.bin)
check "exact client 1 got a response" grep -q "hello-from-origin" "$WORK/exact1.got"
for i in 1 2 3; do
    curl -sS --http1.1 --max-time 10 --cacert "$CA" -x "$PROXY" -o /dev/null \
        "https://localhost:$OPORT/index.html?curl=$i"
done
h2=$(curl -sS --http2 --max-time 10 --cacert "$CA" -x "$PROXY" -w '%{http_version}' -o /dev/null \
    "https://localhost:$OPORT/index.html?h2=TLSMINTH2PATH")
check_eq "curl got h2 through the proxy" "2" "$h2"
t0=$(date +%s.%N)
big=$(curl -sS --http1.1 --max-time 60 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/big20.bin" \
    -w '%{local_port}' -o "$WORK/big20.got")
t1=$(date +%s.%N)
check_eq "20 MiB body through the proxy" "$(sha256sum <"$WORK/origin/www/big20.bin")" \
    "$(sha256sum <"$WORK/big20.got")"
echo "     20 MiB in $(python3 -c "print(round($t1-$t0,2))") s with a stalled reader attached"
# CONNECT localhost:PORT with SNI bypass.localhost: the rule decides on the SNI
excl=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" \
    --connect-to "bypass.localhost:$OPORT:localhost:$OPORT" \
    "https://bypass.localhost:$OPORT/index.html?TLSMINTEXCLUDED" -w ' %{local_port}')
check_contains "the excluded host is intercepted and works" "hello-from-origin" "$excl"
excl_port=${excl##* }
bypass=$(curl -sS --max-time 10 --cacert "$WORK/pki/root.pem" -x "$PROXY" \
    "https://127.0.0.1:$OPORT/index.html?TLSMINTBYPASSED" -w ' %{local_port}')
check_contains "a bypassed connection works" "hello-from-origin" "$bypass"
touch "$WORK/stalled.go" # the 20 MiB went past it: now it may look
t0=$(date +%s.%N)
wait "$R3"
t1=$(date +%s.%N)
echo "     the stalled reader saw the end $(python3 -c "print(round($t1-$t0,2))") s after it began to read"
check_eq "the reader that never read was dropped, with a reset" "dropped" "$(cat "$WORK/stalled.out")"
check_contains "and the log says why" "behind: dropped" "$(cat "$WORK/tlsmint.log")"
metrics_off=$("$TLSMINT" -c "$C" ctl status)
check_contains "ctl status: the file sink" "export        file: writing $WORK/pcap/dec-" \
    "$(echo "$metrics_off" | grep '^export')"
check_contains "ctl status: one connection excluded by its rule" \
    "excluded by rule (export = no): 1 connections" "$(echo "$metrics_off" | grep '^export')"
check_contains "metric: the exclusion is counted" "tlsmint_export_excluded_total 1" \
    "$(curl -s "http://127.0.0.1:$MPORT1/metrics")"
metric() { curl -s "http://127.0.0.1:$MPORT1/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
# the 20 MiB alone are over 14,000 segments; the writer counts what it has written
wait_for 50 eval '[ "$(metric "tlsmint_export_packets_total{sink=\"file\"}")" -gt 15000 ]'
for sink in file pcap_over_ip; do
    check_num "metric: packets_total{sink=\"$sink\"}" \
        "$(metric "tlsmint_export_packets_total{sink=\"$sink\"}")" -gt 15000
    check_num "metric: bytes_total{sink=\"$sink\"} (the 20 MiB and their headers)" \
        "$(metric "tlsmint_export_bytes_total{sink=\"$sink\"}")" -gt $((20 << 20))
done
check_eq "metric: the two readers that read are still connected" "2" "$(metric tlsmint_export_readers)"
check_eq "metric: the file sink dropped nothing" "0" "$(metric "tlsmint_export_dropped_total{sink=\"file\"}")"
fline=$(echo "$metrics_off" | grep '^export        file')
echo "     file sink: $(echo "$fline" | grep -o '(direct I/O)' || echo 'buffered writes')"
if [[ $fline == *"(direct I/O)"* ]]; then
    # the loops' chunks start where their records fall in the file's block: the writer writes
    # them as they are (a chunk that does not, like the first after the file header, is copied)
    inplace=$(echo "$fline" | sed -n 's/.*; \([0-9]*\) of [0-9]* chunks written in place.*/\1/p')
    check_num "direct I/O: chunks written straight from the loops' memory" "${inplace:-0}" -gt 10
fi

kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"
check_eq "clean exit" "0" "$?"
wait "$R1" "$R2"
xline=$(grep '"sni":"bypass.localhost"' "$WORK/tlsmint.log" | head -1)
check_eq "access log: the excluded connection was intercepted (rule private)" "private inspect ok" \
    "$(jf rule "${xline:-x}") $(jf action "${xline:-x}") $(jf outcome "${xline:-x}")"
check_eq "access log: export excluded" "excluded" "$(jf export "${xline:-x}")"
check_eq "access log: every other intercepted connection exported (the reset one too)" "9" \
    "$(grep -c '"export":"yes"' "$WORK/tlsmint.log")"
check_eq "access log: the bypassed one not" "no" \
    "$(jf export "$(grep '"rule":"bypass"' "$WORK/tlsmint.log" | head -1)")"

FILES=("$WORK"/pcap/dec-*.pcap*)
F=${FILES[0]}
check_eq "one file (no rotation at these sizes)" "1" "${#FILES[@]}"
check_eq "the file is 0600" "600" "$(stat -c %a "$F")"

echo "== tshark follows each conversation, byte for byte"
# one pass over the capture (the 20 MiB are most of it) for every frame's fields, checksums
# verified; the checks below read the table (a pass per check took minutes under load)
tshark -r "$F" -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE -T fields \
    -e tcp.stream -e tcp.srcport -e tcp.dstport -e ip.dst -e tcp.flags.syn -e tcp.flags.ack \
    -e tcp.flags.fin -e tcp.len -e tcp.checksum.status -e ip.checksum.status \
    -e http.request.uri -e http.host -e tcp.payload -e tcp.flags.reset >"$WORK/frames.tsv" 2>/dev/null
T="$WORK/frames.tsv"
for n in 1 2 3; do
    port_var=P$n
    read -r c2s s2c <<<"$($XC streams "$T" "${!port_var}")"
    check_eq "exact$n: client -> server bytes identical" "$(xxd -p "$WORK/exact$n.sent" | tr -d '\n')" "$c2s"
    check_eq "exact$n: server -> client bytes identical" \
        "$(sha256sum <"$WORK/exact$n.got")" "$(echo -n "$s2c" | xxd -r -p | sha256sum)"
done
read -r c2s s2c <<<"$($XC streams "$T" "$big" sha $((20 << 20)))"
check_eq "20 MiB: reassembled whole from the capture" "$(sha256sum <"$WORK/big20.got" | cut -d' ' -f1)" \
    "$s2c"
errs=$(tshark -r "$F" -Y 'tcp.analysis.flags && !tcp.analysis.window_update' -T fields \
    -e tcp.stream -e _ws.expert.message 2>/dev/null | sort | uniq -c | head -5)
check_eq "tshark: no TCP analysis warnings (sequence, lost segments, window)" "" "$errs"
check_eq "conversations: 3 exact + 1 reset + 3 curl + h2 + 20 MiB" "9" "$(cut -f1 "$T" | sort -u | wc -l)"
check_eq "each opens with a SYN" "9" "$(awk -F'\t' '$5 == 1 && $6 == 0' "$T" | wc -l)"
check_eq "and closes with FINs, one each way (all but the reset one)" "16" \
    "$(awk -F'\t' '$7 == 1' "$T" | wc -l)"
# the side that ended first closes the conversation, as in the real connection: the origin
# for the exact clients (Connection: close), curl for its keep-alive download
first_fin() { awk -F'\t' -v p="$1" '($2 == p || $3 == p) && $7 == 1 { print $2; exit }' "$T"; }
for n in 1 2 3; do
    port_var=P$n
    check_eq "exact$n (Connection: close): the origin's FIN comes first" "$OPORT" "$(first_fin "${!port_var}")"
done
check_eq "the 20 MiB download: curl's FIN comes first" "$big" "$(first_fin "$big")"
check_eq "the client that reset: one RST, from the client" "$RP" \
    "$(awk -F'\t' -v p="$RP" '($2 == p || $3 == p) && $14 == 1 { print $2 }' "$T")"
check_eq "and no FIN in that conversation" "" "$(first_fin "$RP")"
check_eq "the destination is the origin's real address and port" "9" \
    "$(awk -F'\t' -v p="$OPORT" '$5 == 1 && $6 == 0 && $4 == "127.0.0.1" && $3 == p' "$T" | wc -l)"
check_eq "no segment carries more than 1460 bytes" "0" "$(awk -F'\t' '$8 > 1460' "$T" | wc -l)"
check_num "frames in the capture" "$(wc -l <"$T")" -gt 15000
check_eq "every IPv4 and TCP checksum verifies" "0" \
    "$(awk -F'\t' '!($9 == 1 && $10 == 1)' "$T" | wc -l)"
check_contains "HTTP/1.1 requests decode (curl)" "/index.html?curl=3" "$(cut -f11 "$T")"
h2p=$(tshark -r "$F" -d "tcp.port==$OPORT,http2" -Y http2.headers.path -T fields \
    -e http2.headers.path 2>/dev/null)
check_contains "the h2 connection decodes as HTTP/2" "/index.html?h2=TLSMINTH2PATH" "$h2p"
check_eq "no packet of the bypassed connection" "0" \
    "$(awk -F'\t' -v p="${bypass##* }" '$2 == p || $3 == p' "$T" | wc -l)"
check_eq "no packet of the connection whose rule says export = no" "0" \
    "$(awk -F'\t' -v p="$excl_port" '$2 == p || $3 == p' "$T" | wc -l)"
for m in TLSMINTBYPASSED TLSMINTEXCLUDED bypass.localhost; do
    check_eq "no payload holds $m" "0" "$(cut -f13 "$T" | grep -c "$(echo -n "$m" | xxd -p)")"
done
check_eq "tshark: the HTTP requests all name the other host" "localhost:$OPORT" \
    "$(cut -f12 "$T" | grep . | sort -u | paste -sd,)"

echo "== a DPI engine and ngrep read it"
nd=$(ndpiReader -i "$F" -v 2 2>&1)
check_contains "ndpiReader: HTTP flows" "HTTP" "$nd"
check_contains "ndpiReader: with the host name" "localhost" "$nd"
check_eq "ngrep finds the marker in a decrypted URI (one packet)" "1" \
    "$(ngrep_hits "$F" TLSMINTMARKER42)"
check_not_contains "ndpiReader: nothing of the excluded host" "bypass.localhost" "$nd"
check_eq "ngrep: not the excluded marker" "0" "$(ngrep_hits "$F" TLSMINTEXCLUDED)"
check_eq "ngrep: nor its host name" "0" "$(ngrep_hits "$F" 'bypass\.localhost')"

echo "== the PCAP-over-IP streams"
for r in r1 r2; do
    check_eq "$r: a pcap stream (file header first)" "d4c3b2a1" "$(head -c 4 "$WORK/$r.pcap" | xxd -p)"
    check_eq "$r: the same packets as the file, byte for byte (so every check above holds)" \
        "$($XC records "$F")" "$($XC records "$WORK/$r.pcap")"
done
check_eq "r1: tshark reads it: the same conversations" "9" \
    "$(tshark -r "$WORK/r1.pcap" -T fields -e tcp.stream 2>/dev/null | sort -u | wc -l)"
check_eq "r1: not the excluded marker" "0" "$(ngrep_hits "$WORK/r1.pcap" TLSMINTEXCLUDED)"
echo "     what a PCAP-over-IP reader got, read by tshark (the README shows it):"
tshark -r "$WORK/r1.pcap" -Y http.request 2>/dev/null | head -4 | sed 's/^/       /'

echo "== rotation by size and age, pcap_keep"
rm -rf "$WORK/pcap"
mkdir -p "$WORK/pcap"
set_conf "$C" export pcap_rotate_mb 1
set_conf "$C" export pcap_rotate_s 2
set_conf "$C" export pcap_keep 3
set_conf "$C" export pcap_listen ""
start_tlsmint "$C" "$WORK/tlsmint2.log" || exit 1
curl -sS --max-time 60 --cacert "$CA" -x "$PROXY" -o /dev/null "https://localhost:$OPORT/big.bin"
wait_for 50 eval '[ "$(ls "$WORK"/pcap/ | wc -l)" -ge 2 ]' # the writer thread is behind the relay
wait_for 30 eval '[ "$(ls "$WORK"/pcap/ | wc -l)" -le 3 ]' # pcap_keep: the pruner thread deletes
n_size=$(ls "$WORK"/pcap/ | wc -l)
check "3 MB at 1 MB per file: rotated by size, at most pcap_keep=3 kept ($n_size)" \
    test "$n_size" -ge 2 -a "$n_size" -le 3
first=$(ls "$WORK"/pcap/ | sort | head -1) # by name: creation order (mtimes of files rotated in one
# clock tick can be equal, and ls -t then sorts by name the other way round)
sleep 3.2
# the file is complete while it is written: direct writes take whole 4 KiB blocks, the partial
# last one goes through the buffered descriptor within 200 ms. This request, smaller than a
# block and (rotation by age) alone in its file, must be readable while tlsmint runs.
curl -sS --http1.1 --max-time 10 --cacert "$CA" -x "$PROXY" -o /dev/null \
    "https://localhost:$OPORT/index.html?live=TLSMINTLIVETAIL"
wait_for 30 test ! -e "$WORK/pcap/$first"
check "rotated by age: the oldest file ($first) is gone" test ! -e "$WORK/pcap/$first"
check "still at most 3 files" test "$(ls "$WORK"/pcap/ | wc -l)" -le 3
live=""
for _ in $(seq 1 5); do
    live=$(for f in "$WORK"/pcap/*; do # files rotate every 2 s: any of them
        tshark -r "$f" -Y 'frame contains "TLSMINTLIVETAIL"' -T fields \
            -e frame.number 2>/dev/null
    done)
    [ -n "$live" ] && break
    sleep 0.1
done
check "the live file holds the last request (its partial block is written)" test -n "$live"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"

echo "== an unwritable directory: logged once, interception goes on"
set_conf "$C" export pcap "$WORK/no/such/dir/x-%s.pcap"
set_conf "$C" export pcap_rotate_s 3600
set_conf "$C" admin metrics "127.0.0.1:$(free_port)"
MPORT=$(grep -o 'metrics = 127.0.0.1:[0-9]*' "$C" | tail -1 | cut -d: -f2)
start_tlsmint "$C" "$WORK/tlsmint3.log" || exit 1
for i in 1 2 3; do
    out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html")
done
check_eq "intercepted anyway" "hello-from-origin" "$out"
check_eq "one error line" "1" "$(grep -c 'cannot create the pcap file' "$WORK/tlsmint3.log")"
m=$(curl -s "http://127.0.0.1:$MPORT/metrics")
drops=$(echo "$m" | awk '/^tlsmint_export_dropped_total\{sink="file"\}/ {print $2}')
check "the drops are counted ($drops)" test "${drops:-0}" -gt 0
if command -v promtool >/dev/null; then
    lint=$(echo "$m" | promtool check metrics 2>&1)
    check_eq "promtool check metrics: the export families are clean" "" \
        "$(echo "$lint" | grep -i export)"
fi
check_contains "ctl status shows the error" "file: error: cannot create" \
    "$("$TLSMINT" -c "$C" ctl status | grep '^export')"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"

echo "== a full disk"
mkdir -p "$WORK/tiny"
if mount -t tmpfs -o size=256k tmpfs "$WORK/tiny" 2>/dev/null; then
    set_conf "$C" export pcap "$WORK/tiny/full-%Y%m%d-%H%M%S.pcap"
    start_tlsmint "$C" "$WORK/tlsmint4.log" || exit 1
    curl -sS --max-time 30 --cacert "$CA" -x "$PROXY" -o "$WORK/full.got" "https://localhost:$OPORT/big.bin"
    check_eq "3 MB through the proxy while the export disk is full" \
        "$(sha256sum <"$WORK/origin/www/big.bin")" "$(sha256sum <"$WORK/full.got")"
    sleep 0.5
    out=$(curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" "https://localhost:$OPORT/index.html")
    check_eq "and after it" "hello-from-origin" "$out"
    check_eq "write failure logged once" "1" "$(grep -c 'write failed' "$WORK/tlsmint4.log")"
    # past the 10 s retry: a new file is made, its first write fails too, and nothing more is
    # logged for a disk that stays full
    sleep 10.5
    curl -sS --max-time 30 --cacert "$CA" -x "$PROXY" -o "$WORK/full2.got" "https://localhost:$OPORT/big.bin"
    check_eq "3 MB again after the retry" "$(sha256sum <"$WORK/origin/www/big.bin")" \
        "$(sha256sum <"$WORK/full2.got")"
    sleep 0.5
    check "the retry made a new file" test "$(ls "$WORK/tiny" | wc -l)" -ge 2
    check_eq "still logged once after the retry" "1" "$(grep -c 'write failed' "$WORK/tlsmint4.log")"
    check_eq "and not written again" "0" "$(grep -c 'writing again' "$WORK/tlsmint4.log")"
    kill -TERM "$TLSMINT_PID"
    wait "$TLSMINT_PID"
    check_eq "clean exit with a full disk" "0" "$?"
    umount "$WORK/tiny"
else
    echo "     (no tmpfs mount here: full-disk case skipped)"
fi

echo "== the mirror: a veth pair, tshark on the far end"
NS="tmexp-$$"
if ip netns add "$NS" 2>/dev/null; then
    trap 'ip netns del "$NS" 2>/dev/null; ip link del "tmx$$" 2>/dev/null; cleanup' EXIT
    ip link add "tmx$$" type veth peer name "tmy$$"
    ip link set "tmy$$" netns "$NS"
    ip link set "tmx$$" up
    ip netns exec "$NS" ip link set "tmy$$" up
    set_conf "$C" export pcap ""
    set_conf "$C" export mirror_if "tmx$$"
    ip netns exec "$NS" timeout 12 tshark -q -i "tmy$$" -w "$WORK/mirror.pcap" \
        >"$WORK/mirror.tshark" 2>&1 &
    TS=$!
    wait_for 100 grep -q "Capture started" "$WORK/mirror.tshark" # tshark is slow to start
    start_tlsmint "$C" "$WORK/tlsmint5.log" || exit 1
    PM=$($XC exact "$PPORT" localhost "$OPORT" "$CA" "/index.html?mirror=1" "$WORK" mirror1)
    curl -sS --max-time 10 --cacert "$CA" -x "$PROXY" -o /dev/null \
        --connect-to "bypass.localhost:$OPORT:localhost:$OPORT" \
        "https://bypass.localhost:$OPORT/index.html?TLSMINTEXCLUDED"
    sleep 1
    kill -TERM "$TLSMINT_PID"
    wait "$TLSMINT_PID"
    kill -INT "$TS" 2>/dev/null
    wait "$TS"
    read -r c2s s2c <<<"$($XC streams "$WORK/mirror.pcap" "$PM")"
    check_eq "mirror: the conversation arrives live, identical" \
        "$(xxd -p "$WORK/mirror1.sent" | tr -d '\n')" "$c2s"
    check_eq "mirror: the response too" "$(sha256sum <"$WORK/mirror1.got")" \
        "$(echo -n "$s2c" | xxd -r -p | sha256sum)"
    check_eq "mirror: the marker of the other host is there" "1" \
        "$(ngrep_hits "$WORK/mirror.pcap" 'mirror=1')"
    check_eq "mirror: not the excluded marker" "0" "$(ngrep_hits "$WORK/mirror.pcap" TLSMINTEXCLUDED)"
    echo "     the mirror, as tshark on the far end captured it (the README shows it):"
    tshark -r "$WORK/mirror.pcap" -Y "tcp.port == $PM" 2>/dev/null | head -8 | sed 's/^/       /'
else
    echo "     (cannot create a namespace: mirror case skipped)"
fi

echo "== IPv6, and max_bytes_per_conn"
# an origin on [::1] and the client on 127.0.0.1: the conversation is IPv6, the client's
# address v4-mapped; and with max_bytes_per_conn = 1000 only the first 1,000 bytes each way
O6=$(free_port)
start_nginx "$WORK/origin6" "$O6" "$WORK/pki/origin.pem" "$WORK/pki/origin.key" "[::1]"
mkdir -p "$WORK/v6"
set_conf "$C" export mirror_if ""
set_conf "$C" export pcap "$WORK/v6/v6-%Y%m%d-%H%M%S.pcap"
set_conf "$C" export max_bytes_per_conn 1000
start_tlsmint "$C" "$WORK/tlsmint6.log" || exit 1
v6=$(curl -sS --http1.1 --max-time 10 --cacert "$CA" -x "$PROXY" --connect-to "localhost:$O6:[::1]:$O6" \
    "https://localhost:$O6/index.html?v6=TLSMINTV6" -w ' %{local_port}')
check_contains "through the proxy to the IPv6 origin" "hello-from-origin" "$v6"
v6port=${v6##* }
capped=$(curl -sS --http1.1 --max-time 30 --cacert "$CA" -x "$PROXY" -o "$WORK/capped.got" \
    "https://localhost:$OPORT/big.bin" -w '%{local_port}')
check_eq "3 MB relayed whole with max_bytes_per_conn = 1000" "$(sha256sum <"$WORK/origin/www/big.bin")" \
    "$(sha256sum <"$WORK/capped.got")"
kill -TERM "$TLSMINT_PID"
wait "$TLSMINT_PID"
F6=$(ls "$WORK"/v6/v6-*.pcap | head -1)
tshark -r "$F6" -o tcp.check_checksum:TRUE -T fields -e tcp.srcport -e tcp.dstport -e ipv6.src \
    -e ipv6.dst -e ip.src -e tcp.flags.syn -e tcp.flags.ack -e tcp.checksum.status -e tcp.len \
    -e tcp.flags.fin >"$WORK/v6.tsv" 2>/dev/null
check_eq "the IPv6 conversation opens with a SYN from ::ffff:127.0.0.1 to [::1]:$O6" \
    "::ffff:127.0.0.1 ::1" \
    "$(awk -F'\t' -v p="$v6port" '$1 == p && $6 == 1 && $7 == 0 { print $3, $4 }' "$WORK/v6.tsv")"
check_eq "every TCP checksum of it verifies (over the IPv6 pseudo-header)" "0" \
    "$(awk -F'\t' -v p="$v6port" '($1 == p || $2 == p) && $8 != 1' "$WORK/v6.tsv" | wc -l)"
check_num "its frames" "$(awk -F'\t' -v p="$v6port" '$1 == p || $2 == p' "$WORK/v6.tsv" | wc -l)" -ge 8
check_eq "and none of them IPv4" "0" \
    "$(awk -F'\t' -v p="$v6port" '($1 == p || $2 == p) && $5 != ""' "$WORK/v6.tsv" | wc -l)"
read -r c2s s2c <<<"$($XC streams "$F6" "$v6port")"
check_contains "tshark reassembles the request" "GET /index.html?v6=TLSMINTV6" "$(echo -n "$c2s" | xxd -r -p)"
check_contains "and the response" "hello-from-origin" "$(echo -n "$s2c" | xxd -r -p)"
check_eq "the IPv6 conversation closes with FINs both ways" "2" \
    "$(awk -F'\t' -v p="$v6port" '($1 == p || $2 == p) && $10 == 1' "$WORK/v6.tsv" | wc -l)"
check_eq "max_bytes_per_conn: 1000 bytes of the 3 MB answer in the capture" "1000" \
    "$(awk -F'\t' -v p="$capped" -v o="$OPORT" '$1 == o && $2 == p { s += $9 } END { print s + 0 }' "$WORK/v6.tsv")"
read -r c2s s2c <<<"$($XC streams "$F6" "$capped")"
check_contains "and they are its first bytes" "HTTP/1.1 200 OK" "$(echo -n "$s2c" | xxd -r -p | head -c 20)"
check_eq "and the conversation still closes with FINs" "2" \
    "$(awk -F'\t' -v p="$capped" '($1 == p || $2 == p) && $10 == 1' "$WORK/v6.tsv" | wc -l)"

echo "== a slow disk: a small queue fills, drops are counted per sink, relaying goes on"
# The pcap file on its own ext4 (a loop device), and the proxy in a blkio cgroup that lets it
# write 256 KiB/s there: the writer thread waits for the disk, queue_mb = 1 fills, and the
# loops drop records instead of waiting. The 20 MiB would take the disk 80 s.
SLOWCG=/sys/fs/cgroup/blkio/tlsmint-exp-$$
LOOPDEV=""
slow_cleanup() {
    [ -d "$SLOWCG" ] && echo "$MM 0" >"$SLOWCG/blkio.throttle.write_bps_device" 2>/dev/null
    mountpoint -q "$WORK/slow" && umount -l "$WORK/slow"
    [ -n "$LOOPDEV" ] && losetup -d "$LOOPDEV" 2>/dev/null
}
if [ -w /sys/fs/cgroup/blkio ] && truncate -s 96M "$WORK/slow.img" && mkfs.ext4 -q -F "$WORK/slow.img" &&
    LOOPDEV=$(losetup -f --show "$WORK/slow.img" 2>/dev/null) && mkdir -p "$WORK/slow" &&
    mount "$LOOPDEV" "$WORK/slow" && mkdir -p "$SLOWCG"; then
    trap 'slow_cleanup; rmdir "$SLOWCG" 2>/dev/null; ip netns del "$NS" 2>/dev/null; ip link del "tmx$$" 2>/dev/null; cleanup' EXIT
    MM=$(lsblk -dno MAJ:MIN "$LOOPDEV" | tr -d ' ')
    set_conf "$C" export pcap "$WORK/slow/slow-%Y%m%d-%H%M%S.pcap"
    set_conf "$C" export max_bytes_per_conn 0
    set_conf "$C" export queue_mb 1
    set_conf "$C" export pcap_rotate_mb 4096 # one file (the rotation part left it at 1 MB)
    set_conf "$C" export pcap_rotate_s 3600
    set_conf "$C" export pcap_listen "127.0.0.1:$XPORT"
    set_conf "$C" admin metrics "127.0.0.1:$MPORT1"
    start_tlsmint "$C" "$WORK/tlsmint7.log" || exit 1
    echo "$TLSMINT_PID" >"$SLOWCG/cgroup.procs"
    echo "$MM 262144" >"$SLOWCG/blkio.throttle.write_bps_device"
    $XC reader 127.0.0.1 "$XPORT" "$WORK/slow-r.pcap" 60 &
    RS=$!
    wait_for 50 eval '"$TLSMINT" -c "$C" ctl status | grep -q "listening, 1 reader;"'
    check_contains "a PCAP-over-IP reader is attached" "listening, 1 reader;" \
        "$("$TLSMINT" -c "$C" ctl status | grep '^export')"
    t0=$(date +%s.%N)
    bigport=$(curl -sS --http1.1 --max-time 60 --cacert "$CA" -x "$PROXY" -o "$WORK/slow.got" \
        "https://localhost:$OPORT/big20.bin" -w '%{local_port}')
    t1=$(date +%s.%N)
    check_eq "20 MiB relayed whole while the export's disk writes 256 KiB/s" \
        "$(sha256sum <"$WORK/origin/www/big20.bin")" "$(sha256sum <"$WORK/slow.got")"
    secs=$(python3 -c "print(round($t1-$t0,2))")
    echo "     20 MiB in $secs s through a proxy whose export disk would need 80 s for them"
    check_secs "the loops did not wait for the disk" "$secs" 20
    fdrop=$(metric "tlsmint_export_dropped_total{sink=\"file\"}")
    pdrop=$(metric "tlsmint_export_dropped_total{sink=\"pcap_over_ip\"}")
    check_num "dropped_total{sink=\"file\"}: the full queue's records" "${fdrop:-x}" -gt 1000
    check_eq "dropped_total{sink=\"pcap_over_ip\"}: the same records, counted for that sink too" \
        "$fdrop" "$pdrop"
    check_contains "ctl status shows the file sink's drops" "$fdrop dropped" \
        "$("$TLSMINT" -c "$C" ctl status | grep '^export        file')"
    # the disk at full speed again: what the queue holds is written, and a new connection is
    # exported whole
    echo "$MM 0" >"$SLOWCG/blkio.throttle.write_bps_device"
    PS=$($XC exact "$PPORT" localhost "$OPORT" "$CA" "/index.html?after=TLSMINTSLOW" "$WORK" slow1)
    # every record is either written or dropped for each sink: the two sinks add up the same.
    # The four numbers come from one scrape, and count only once two scrapes 0.3 s apart agree:
    # the writer counts a chunk for the reader when it sends it and for the file when its write
    # returns, so a scrape in between (or one number per scrape) sees the reader ahead.
    sink_totals() {
        curl -s "http://127.0.0.1:$MPORT1/metrics" | awk '
            $1 == "tlsmint_export_packets_total{sink=\"file\"}" { fp = $2 }
            $1 == "tlsmint_export_dropped_total{sink=\"file\"}" { fd = $2 }
            $1 == "tlsmint_export_packets_total{sink=\"pcap_over_ip\"}" { pp = $2 }
            $1 == "tlsmint_export_dropped_total{sink=\"pcap_over_ip\"}" { pd = $2 }
            END { print fp, fd, pp, pd }'
    }
    settled() {
        local a b
        a=$(sink_totals)
        sleep 0.3
        b=$(sink_totals)
        read -r fp fd pp pd <<<"$b"
        [ "$a" = "$b" ] && [ -n "$pd" ] && [ "$fp" -gt 0 ] && [ $((fp + fd)) = $((pp + pd)) ]
    }
    wait_for 50 settled
    echo "     file: $fp packets + $fd dropped; reader: $pp packets + $pd dropped"
    check_eq "packets + drops: the file and the reader account for the same records" \
        "$((fp + fd))" "$((pp + pd))"
    check_eq "no drop after the disk caught up" "$fdrop" "$(metric "tlsmint_export_dropped_total{sink=\"file\"}")"
    kill -TERM "$TLSMINT_PID"
    wait "$TLSMINT_PID"
    check_eq "clean exit after a full queue" "0" "$?"
    wait "$RS"
    FS=$(ls "$WORK"/slow/slow-*.pcap | head -1)
    check_eq "one file" "1" "$(ls "$WORK"/slow/slow-*.pcap* | wc -l)"
    got=$(tshark -r "$FS" -Y "tcp.srcport == $OPORT && tcp.dstport == $bigport" -T fields -e tcp.len \
        2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
    check_num "the file holds part of the 20 MiB answer (the rest was dropped, and counted)" \
        "$got" -lt $((20 << 20))
    check_num "and some of it" "$got" -gt 0
    check_eq "tshark finds nothing malformed in it" "0" \
        "$(tshark -r "$FS" -Y _ws.malformed 2>/dev/null | wc -l)"
    check_eq "the reader's stream has the same number of packets as the file" \
        "$(tshark -r "$FS" 2>/dev/null | wc -l)" "$(tshark -r "$WORK/slow-r.pcap" 2>/dev/null | wc -l)"
    read -r c2s s2c <<<"$($XC streams "$FS" "$PS")"
    check_eq "the connection after it is in the file whole" \
        "$(xxd -p "$WORK/slow1.sent" | tr -d '\n')" "$c2s"
    check_eq "its response too" "$(sha256sum <"$WORK/slow1.got")" "$(echo -n "$s2c" | xxd -r -p | sha256sum)"
    slow_cleanup
else
    echo "     (no loop device or blkio cgroup here: slow-disk case skipped)"
fi

echo "== config errors"
printf "[export]\npcap_listen = nowhere\n" >"$WORK/bad.conf"
out=$("$TLSMINT" -c "$WORK/bad.conf" run 2>&1)
check_contains "bad pcap_listen is a FILE:LINE error" "bad.conf:2: [export] pcap_listen" "$out"
printf "[export]\nqueue_mb = 0\n" >"$WORK/bad.conf"
out=$("$TLSMINT" -c "$WORK/bad.conf" run 2>&1)
check_contains "queue_mb out of range" "bad.conf:2: [export] queue_mb" "$out"
check_not_contains "no sanitizer report" "Sanitizer" "$(cat "$WORK"/tlsmint*.log)"
finish
