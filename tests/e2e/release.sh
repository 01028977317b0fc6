#!/bin/bash
# SPDX-License-Identifier: MIT
# release.sh SCRIPT - runs an end-to-end script against the release binary, the one `make run`
# starts and users run, instead of the ASan build. `make test` builds it and sets
# TLSMINT_RELEASE_BIN; a bare `meson test` without it skips (exit 77).
set -u
rel=${TLSMINT_RELEASE_BIN:-}
if [ -z "$rel" ]; then
    echo "SKIP: TLSMINT_RELEASE_BIN is not set (make test sets it to build/release/cli/tlsmint)"
    exit 77
fi
if [ ! -x "$rel" ]; then
    echo "FAIL: TLSMINT_RELEASE_BIN=$rel is not an executable"
    exit 1
fi
if nm -D "$rel" 2>/dev/null | grep -q __asan_init; then
    echo "FAIL: $rel is built with ASan: not the release binary"
    exit 1
fi
export TLSMINT_BIN=$rel
export FAULTP11_PATH=${FAULTP11_PLAIN_PATH:?FAULTP11_PLAIN_PATH must point at the plain faultp11}
echo "release binary: $rel"
exec bash "$@"
