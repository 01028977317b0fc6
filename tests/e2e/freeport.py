#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""freeport.py: one TCP port for a test's listener, printed on stdout.

Chosen below the kernel's ephemeral range (net.ipv4.ip_local_port_range), so that no
connection made meanwhile by a test running beside this one can take it as its local port
before the listener binds it: "bind to port 0, close, use the number" raced exactly so
(release_exclusions: "[admin] cannot listen on 127.0.0.1:55371: Address already in use").
Two tests choosing the same number are kept apart by a reservation: mkdir of
/tmp/tlsmint-test-ports/PORT, which only one can make. Reservations older than 30 minutes are
taken to be stale (a test run is shorter) and removed when met. A port that cannot be bound
now on 127.0.0.1 (or on ::1, where there is IPv6) is skipped. Exit 1 after 1,000 tries.
"""
import errno
import os
import random
import socket
import sys
import time

DIR = "/tmp/tlsmint-test-ports"
STALE_S = 1800


def bindable(port):
    for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        try:
            s.bind((addr, port))
        except OSError as e:
            if fam == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:  # no ::1
                continue
            return False
        finally:
            s.close()
    return True


def main():
    try:
        lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    first = 10000 if lo > 12000 else 1024
    last = max(first + 1000, min(lo - 1, 32767))
    os.makedirs(DIR, mode=0o1777, exist_ok=True)
    now = time.time()
    for _ in range(1000):
        port = random.randint(first, last)
        path = os.path.join(DIR, str(port))
        try:
            os.mkdir(path)
        except FileExistsError:
            try:
                if now - os.stat(path).st_mtime > STALE_S:
                    os.rmdir(path)
            except OSError:
                pass
            continue
        except OSError as e:
            sys.exit("freeport: cannot reserve in %s: %s" % (DIR, e))
        if bindable(port):
            print(port)
            return
    sys.exit("freeport: no free port in %d-%d after 1000 tries" % (first, last))


if __name__ == "__main__":
    main()
