# ProgressEngine: the two commands of the README are `make demo` and `make test`.
# Every target that builds first installs what the machine is missing (scripts/setup.sh).

PREFIX ?= /usr/local
PYTHON ?= python3
SWIFT_BUILD = swift build -c release
LIB = .build/release/libProgressEngine.so

.PHONY: all setup build install wheel server dist demo test test-swift test-python tsan asan bench bench-c bench-python bench-eta \
	bench-redis bench-fanout bench-preview fuzz fuzz-smoke clean

all: build

setup:
	@scripts/setup.sh

build:
	$(SWIFT_BUILD)

$(LIB): build

# Installs the library, the header and a pkg-config file so C users build with
# `pkg-config --cflags --libs progress-engine`.
install: build
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 $(LIB) $(DESTDIR)$(PREFIX)/lib/libProgressEngine.so
	install -m 644 include/progress.h $(DESTDIR)$(PREFIX)/include/progress.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e "s|@VERSION@|$$(scripts/version.sh)|g" progress-engine.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/progress-engine.pc

# The Python wheel with the engine and every library it needs inside (scripts/wheel.sh, docs/PACKAGING.md):
# dist/progress_engine-<version>-py3-none-manylinux_*.whl, rebuilt only when its inputs changed.
wheel: setup
	scripts/wheel.sh

# progress-server as one file with the Swift runtime linked in statically (docs/PACKAGING.md lists the C
# libraries it still loads). A build folder of its own: --static-swift-stdlib changes every object.
SERVER_DIST = .build-dist/release/progress-server
server: setup
	swift build -c release --static-swift-stdlib --product progress-server --scratch-path .build-dist

# dist/progress-engine-<version>-linux-x86_64.tar.gz: the wheel, the server, the C library with its bundled
# libraries, the header and a pkg-config file, with SHA256SUMS.
dist: wheel server
	scripts/dist.sh

demo: setup build
	$(PYTHON) examples/demo.py

test: setup build test-swift fuzz-smoke test-python tsan asan

test-swift:
	swift test

test-python:
	$(PYTHON) -m pytest -q tests bindings/python/tests

# ThreadSanitizer / AddressSanitizer: one command each, each fails on any sanitizer report or failed check
# (see tests/c/README.md and docs/RELIABILITY.md "Sanitizers"). Both build the library with the sanitizer and run
# tests/c/stress.c (runner threads on one engine), tests/c/close_stress.c (close while the engine's threads still
# change tasks) and tests/c/fleet_stress.c (listener + Redis write-through + runners + WebSocket clients joining,
# leaving and reading slowly + REST + close with clients connected, against a redis-server the script starts on a
# free loopback port and stops); asan also runs the C examples, with LeakSanitizer on. About 1 minute each on 2
# cores; FLEET_ARGS="runners tasks steps sessions pace_us" changes fleet_stress's scale (default 4 60 256 10 1000 under
# tsan, 4 120 256 10 1000 under asan).
tsan: setup
	tests/c/tsan.sh

asan: setup
	tests/c/asan.sh

# libFuzzer targets for every parser of outside input (see fuzz/README.md). `make fuzz` runs each for
# FUZZ_SECONDS (default 60); `make fuzz-smoke` (part of `make test`) runs each briefly with a fixed seed.
FUZZ_SECONDS ?= 60
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh $(FUZZ_TARGETS)

fuzz-smoke: setup
	fuzz/run.sh --smoke

bench: setup build bench-c bench-python bench-eta

bench-c:
	$(MAKE) -C benchmarks/c run

bench-python:
	$(PYTHON) benchmarks/python/bench_update.py
	$(PYTHON) benchmarks/python/bench_tqdm.py
	$(PYTHON) benchmarks/python/bench_track.py

# ETA accuracy against three baselines on generated traces (see benchmarks/eta/README.md).
bench-eta:
	$(PYTHON) benchmarks/eta/bench_eta.py

# Redis write-through cost to a runner (starts its own redis-server); not part of `make bench` (needs Redis).
bench-redis: setup build
	$(MAKE) -C benchmarks/redis run

# WebSocket fan-out: the listener vs a Python `websockets` server vs redis-server (about 3 minutes).
bench-fanout: setup build
	$(MAKE) -C benchmarks/fanout run PYTHON=$(PYTHON)

# Previews: 1024x1024 RGB -> 512 px PNG vs Pillow, and the runner-thread cost of a preview call vs memcpy.
bench-preview: setup build
	$(PYTHON) benchmarks/preview/bench_preview.py

clean:
	rm -rf .build .build-tsan .build-asan .build-fuzz .build-dist dist bindings/python/build
