# timed: build, test and try out the masternode mesh daemon.
#
#   make            release build (target/release/timed)
#   make test       install missing test tools, then cargo fmt --check, clippy, cargo test
#   make demo       four masternodes on 127.0.0.2-127.0.0.5; exits 0 only if they mesh
#   make run        one node in the foreground on 127.0.0.1:24100 (Ctrl-C stops it)
#   make sim        the deterministic simulator: SEEDS=N (1000), SEED=S (replay one),
#                   NODES=K (5), FAULTS=0 (fault-free), TRACE=1 (with SEED: every decision)
#   make fuzz       cargo-fuzz on every target for FUZZ_SECONDS (60) each, at once
#                   (FUZZ_TARGETS to pick; scripts/fuzz.sh installs cargo-fuzz when missing)
#   make clean      remove build output

CARGO ?= cargo
RUN_ARGS ?= --listen=127.0.0.1:24100

.PHONY: all build test test-deps demo run sim fuzz clean

all: build

build:
	$(CARGO) build --release

test: test-deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test
	$(MAKE) deb-check

test-deps:
	bash scripts/test-deps.sh

demo:
	bash scripts/demo.sh

# The built-in defaults are those of conf/timed.conf; the configuration file is that one,
# so an installed /etc/timed/timed.conf does not change what `make run` does.
run:
	$(CARGO) run --release --bin timed -- --conf conf/timed.conf $(RUN_ARGS)

SEEDS ?= 1000
NODES ?= 5
FAULTS ?= 1
SIM_ARGS = --seeds $(SEEDS) --nodes $(NODES) --faults $(FAULTS) $(if $(SEED),--seed $(SEED))

sim:
	TRACE=$(TRACE) $(CARGO) run --release --quiet --example sim -- $(SIM_ARGS)

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= frame_decoder handshake

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_TARGETS="$(FUZZ_TARGETS)" bash scripts/fuzz.sh

clean:
	$(CARGO) clean

# Packaging and installation:
#   make deb        target/debian/timed_<version>_<arch>.deb (cargo-deb; installed when missing)
#   make deb-check  build the .deb and check it: lintian, systemd-analyze, and as root an
#                   install/upgrade/purge test on this machine (scripts/deb-check.sh)
#   make install    GNU layout: PREFIX (/usr/local), DESTDIR, BINDIR, SYSCONFDIR, MANDIR,
#                   SYSTEMDUNITDIR; never overwrites an existing timed.conf
#   make uninstall  remove what install put there (an edited timed.conf stays)
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= $(PREFIX)/etc
DATAROOTDIR ?= $(PREFIX)/share
MANDIR ?= $(DATAROOTDIR)/man
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
CARGO_DEB_VERSION ?= 3.8.0
INSTALL_VARS = DESTDIR="$(DESTDIR)" BINDIR="$(BINDIR)" SYSCONFDIR="$(SYSCONFDIR)" \
	MANDIR="$(MANDIR)" SYSTEMDUNITDIR="$(SYSTEMDUNITDIR)"

.PHONY: deb deb-check install uninstall

deb:
	$(CARGO) deb --version >/dev/null 2>&1 || \
		$(CARGO) install cargo-deb --locked --version $(CARGO_DEB_VERSION)
	$(CARGO) deb --locked

deb-check:
	bash scripts/deb-check.sh

install: build
	$(INSTALL_VARS) bash scripts/install.sh install

uninstall:
	$(INSTALL_VARS) bash scripts/install.sh uninstall

# make bench: mesh formation (N = 4, 16, 64), a 16-node mesh idle for 60 s, memory at 0 to
# 1,000 peers, handshake and ping latency, binary sizes. As root it runs in a private network
# namespace. Prints a table (figure, goal, ratio) and writes target/bench/results.json,
# results.md and bench.svg; it reports missed goals, it does not fail on them.
# BENCH_ARGS: --reps N (3), --idle SECS (60), --peers N (1000), --handshakes N (400).
.PHONY: bench

bench:
	$(CARGO) build --release --bins
	$(CARGO) run --release --quiet --example bench -- $(BENCH_ARGS)
