#!/bin/bash
# Prints one summary line for `make test`: suites run and libcheck checks counted from the log.
log="${1:?testlog.txt}"
[ -f "$log" ] || { echo "test summary: no log at $log"; exit 0; }
awk '
  /^[0-9]+%: Checks: [0-9]+/ { split($0, a, /[:,] */); checks += a[3]; fails += a[5]; errs += a[7]; suites++ }
  /^Result: *OK/ || / OK +[0-9.]+s/ { }
  END {
    printf "\n== test summary: %d test programs, %d checks, %d failures, %d errors ==\n", suites, checks, fails, errs
  }' "$log"
grep -E '^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout): ' "$log" | tr '\n' ' ' | sed 's/  */ /g'; echo
