# tlsmint - the two set-up commands are `make run` and `make test` (see README.md).
# Both install what is missing (Debian 12, apt-get, non-interactive), configure and build.

DEPS := gcc g++ make pkg-config meson ninja-build libssl-dev openssl libinih-dev liburing-dev \
        libp11-dev libp11-kit-dev p11-kit softhsm2 check libbenchmark-dev opensc ca-certificates \
        valgrind procps libhttp-parser-dev libpcap-dev tshark libndpi-bin ngrep nginx-light curl iptables nftables iproute2 python3 util-linux psmisc \
        scdoc libsystemd-dev systemd prometheus libhiredis-dev redis-server redis-tools
# the libFuzzer targets (tests/fuzz/, make fuzz; make test runs them too)
DEPS += clang libclang-rt-14-dev
DEPS += libc-ares-dev
BENCH_DEPS := sslsplit gnuplot-nox
DEB_DEPS := dpkg-dev debhelper lintian adduser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TEST_DIR := build/test
REL_DIR := build/release
FUZZ_DIR := build/fuzz
FUZZ_S ?= 60
FUZZ_JOBS ?= 2
VAR ?= var

.PHONY: all deps build test run bench fuzz soak clean format deb deb-test

all: build

deps:
	@missing=""; for p in $(DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(REL_DIR)/build.ninja:
	meson setup $(REL_DIR) --buildtype=release -Dtests=false

$(TEST_DIR)/build.ninja:
	meson setup $(TEST_DIR) --buildtype=debug -Dwerror=true -Db_sanitize=address,undefined \
	  -Db_lundef=false -Dhsm_tests=true

# libFuzzer targets (tests/fuzz/): a clang build of every module with ASan+UBSan.
$(FUZZ_DIR)/build.ninja:
	CC=clang CXX=clang++ meson setup $(FUZZ_DIR) --buildtype=debugoptimized -Dfuzz=true \
	  -Dtests=false -Db_sanitize=address,undefined -Db_lundef=false

build: deps $(REL_DIR)/build.ninja
	ninja -C $(REL_DIR)

# make test: the ASan+UBSan build runs every suite; the e2e scripts run a second time against
# the release binary (suite 'release', tests/e2e/release.sh), and the CLI once under valgrind.
# Then every fuzz target runs 30 s from its corpus, two at a time (a crash fails the run).
test: deps $(TEST_DIR)/build.ninja $(REL_DIR)/build.ninja $(FUZZ_DIR)/build.ninja
	ninja -C $(REL_DIR)
	ninja -C $(TEST_DIR)
	ninja -C $(FUZZ_DIR)
	@set +e; TLSMINT_RELEASE_BIN=$(CURDIR)/$(REL_DIR)/cli/tlsmint \
	  meson test -C $(TEST_DIR) --print-errorlogs --num-processes 2; rc=$$?; \
	  tools/test-summary.sh $(TEST_DIR)/meson-logs/testlog.txt; \
	  tools/fuzz-run.sh $(FUZZ_DIR) 30 2 || rc=1; exit $$rc

# make fuzz [FUZZ_S=N] [FUZZ_JOBS=J]: each target N seconds (default 60) from its corpus.
fuzz: deps $(FUZZ_DIR)/build.ninja
	ninja -C $(FUZZ_DIR)
	tools/fuzz-run.sh $(FUZZ_DIR) $(FUZZ_S) $(FUZZ_JOBS)

run: build
	@if [ ! -f $(VAR)/tlsmint.conf ]; then $(REL_DIR)/cli/tlsmint init --dir $(VAR) || exit 1; fi
	@echo ""
	@echo "tlsmint: starting with $(VAR)/tlsmint.conf (Ctrl-C stops it)"
	@echo "  clients must trust: $(VAR)/ca/forward-trust.pem"
	@echo "  HSM view:           $(REL_DIR)/cli/tlsmint -c $(VAR)/tlsmint.conf hsm-status"
	@echo "  try:                curl --cacert $(VAR)/ca/forward-trust.pem -x http://127.0.0.1:3128 https://HOST/"
	@echo "  (explicit proxy 127.0.0.1:3128, transparent 127.0.0.1:8443; see README 'Transparent mode')"
	@echo ""
	exec $(REL_DIR)/cli/tlsmint -c $(VAR)/tlsmint.conf run

# make bench [BENCH_ARGS=--quick]: tlsmint vs direct vs sslsplit (bench/results/REPORT.md),
# the HSM signing path (hsm.md) and certcache (certcache.md). Needs root (namespaces, iptables).
bench: build
	@missing=""; for p in $(BENCH_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; fi
	meson configure $(REL_DIR) -Dbench=true && ninja -C $(REL_DIR)
	bench/run-bench.sh $(BENCH_ARGS) $(REL_DIR)
	bench/run-hsm-bench.sh $(REL_DIR)
	bench/run-cc-bench.sh $(REL_DIR)

# make soak [SOAK_S=N]: bench/soak.sh, N seconds (default 600) of mixed load through the release
# build with reloads, signer kills and HSM restarts; bench/results/soak.{csv,png,md}. Not in make
# test. Needs gnuplot (installed when missing).
SOAK_S ?= 600
soak: build
	@missing=""; for p in gnuplot-nox; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; fi
	SOAK_S=$(SOAK_S) bench/soak.sh

# make deb: build/deb/tlsmint_<version>_<arch>.deb with dpkg-buildpackage (debian/: debhelper +
# meson) from a copy of the tracked files, then lintian (no errors allowed).
# make deb-test: installs that package on this machine, runs init, run and one intercepted
# request, purges it (tests/pkg/test_deb.sh; root; not in make test, as it changes the system).
deb: deps
	@missing=""; for p in $(DEB_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; fi
	rm -rf build/deb && mkdir -p build/deb/src
	git ls-files -z | xargs -0 cp -a --parents -t build/deb/src
	cd build/deb/src && dpkg-buildpackage -us -uc -b
	lintian --fail-on error --tag-display-limit 0 build/deb/tlsmint_*.changes
	@ls -l build/deb/*.deb

deb-test: deb
	tests/pkg/test_deb.sh build/deb/tlsmint_*_$$(dpkg --print-architecture).deb

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cc')

clean:
	rm -rf build
