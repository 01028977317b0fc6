# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# bench/lib.sh - what the bench scripts share, as the tests share tests/e2e/lib.sh: free ports
# and waiting for a listener, config overrides, tests/faultp11 built for a run, and the
# boilerplate of their argument parsing (help from the script's own header, unknown options).
# Sourced at the top of a script; it starts nothing, traps nothing and sets no shell option.
# BENCH_NAME (default: the script's name without .sh) starts every line it prints.

BENCH_NAME=${BENCH_NAME:-$(basename "$0" .sh)}
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# bench_help FIRST LAST: lines FIRST..LAST of the script (its header comment), without '# '
bench_help() {
    sed -n "$1,$2p" "$0" | sed 's/^# \{0,1\}//'
}

# bench_bad_option OPT: "NAME: unknown option OPT" on stderr, exit 2
bench_bad_option() {
    echo "$BENCH_NAME: unknown option $1" >&2
    exit 2
}

# free_port: a TCP port on 127.0.0.1 for a listener, as the tests choose theirs
# (tests/e2e/freeport.py: below the ephemeral range, reserved against other runs)
free_port() {
    python3 "$(dirname "${BASH_SOURCE[0]}")/../tests/e2e/freeport.py"
}

# wait_port PORT [TRIES]: waits until 127.0.0.1:PORT accepts a connection, trying every 50 ms
# TRIES times (default 200: 10 s). When it never does: the script's own die (and its exit
# status) if it has one, else a line on stderr and 1.
wait_port() {
    for _ in $(seq 1 "${2:-200}"); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    if declare -F die >/dev/null; then
        die "port $1 never opened"
    fi
    echo "$BENCH_NAME: port $1 never opened" >&2
    return 1
}

# set_conf FILE SECTION KEY VALUE: appends an override to a tlsmint config (later keys win)
set_conf() {
    printf "\n[%s]\n%s = %s\n" "$2" "$3" "$4" >>"$1"
}

# build_faultp11 OUT: tests/faultp11 (latency, hangs and errors in front of a PKCS#11 module)
# compiled at OUT, the shared object a run's [hsm] module points at
build_faultp11() {
    cc -shared -fPIC -O2 -I/usr/include/p11-kit-1 "$BENCH_ROOT/tests/faultp11/faultp11.c" \
        -o "$1" -ldl -lpthread
}
