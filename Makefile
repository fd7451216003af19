# Thin wrapper around meson/ninja. The real build is meson.build.
#
#   make            build into build/ (the tool is build/ovlfs)
#   make deps       install the Debian packages that are missing
#   make demo       deps + build + scripts/demo.sh
#   make check      deps + build + C unit tests + pytest suite
#   make check-asan the pytest suite against an ASan/UBSan build (build-asan/)
#   make check-uring   the pytest suite again with every mount on the
#                   FUSE-over-io_uring transport (scripts/with-uring.sh turns
#                   the fuse module's enable_uring on for the run, then back);
#                   URING=on does the same for check, check-asan, check-tsan
#   make check-tsan the concurrency-heavy tests against a ThreadSanitizer
#                   build (build-tsan/); suppressions in tsan.supp
#   make check-valgrind  quickstart (on the static library) and the C unit
#                   tests under memcheck
#   make lint       clang-tidy (.clang-tidy) and cppcheck over lib/ and tools/,
#                   and scripts/deps.py --check (the layers' arrows)
#   make install    build/ installed under PREFIX (default /usr/local), into
#                   DESTDIR if set: tool, libovlfs.so.0, header, ovlfs.pc,
#                   man pages, bash completion
#   make clean
#
# WERROR=1 turns on --werror for build/ (not build-asan:
# sanitizer instrumentation makes gcc warn spuriously).

BUILD      ?= build
# URING=on: the pytest runs go through scripts/with-uring.sh
URING      ?=
WITH_URING  = $(if $(filter on,$(URING)),scripts/with-uring.sh,)
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
LINT_BUILD ?= build-lint
PYTHON     ?= /usr/bin/python3
PYTEST_ARGS ?=
PREFIX     ?= /usr/local
DESTDIR    ?=

DEB_PACKAGES = build-essential meson ninja-build pkg-config libfuse3-dev \
	       fuse3 python3-pytest attr fuse-overlayfs \
	       clang clang-tidy libclang-rt-14-dev cppcheck valgrind \
	       bash-completion libarchive-dev nettle-dev liburing-dev groff-base man-db strace e2fsprogs \
	       $(CONTAINER_PACKAGES)

# tests/test_podman.py and bench/containers.py: podman with ovlfs as
# containers/storage's mount_program (runc: crun fails on some CI machines'
# rlimits and cgroup mode; busybox-static is the test image; uidmap for
# rootless podman).
CONTAINER_PACKAGES = podman buildah runc busybox-static uidmap

MESON_FLAGS = $(if $(filter 1,$(WERROR)),--werror,)
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)

# Where sanitizer reports of background (daemonized) processes land.
ASAN_LOGDIR = $(abspath $(ASAN_BUILD))/sanitizer-logs
ASAN_ENV = \
	ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1:print_stacktrace=1:log_path=$(ASAN_LOGDIR)/asan \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(ASAN_LOGDIR)/ubsan \
	LSAN_OPTIONS=print_suppressions=0

# ThreadSanitizer: gcc's libtsan works with the uninstrumented libfuse here.
# The tests run mounts as daemons with stderr on /dev/null, hence log_path;
# any file in the log dir fails the target.
TSAN_LOGDIR = $(abspath $(TSAN_BUILD))/sanitizer-logs
TSAN_ENV = \
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(abspath tsan.supp):log_path=$(TSAN_LOGDIR)/tsan
# The concurrency-heavy tests; test_concurrency.py only if it exists.
TSAN_TESTS = $(wildcard tests/test_threads.py tests/test_concurrency.py \
		tests/test_bigdir.py tests/test_passthrough.py tests/test_faults.py)

# timeout: a hang fails instead of waiting forever.
VALGRIND = timeout 300 valgrind --tool=memcheck --leak-check=full \
	--errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
	--track-fds=yes --quiet
# Only for quickstart: its main thread blocks in syscalls (stat, open) that
# its own FUSE threads answer, and without the hint valgrind keeps its big
# lock across them and deadlocks. (Valgrind 3.19 asserts with the hint on
# readlink, so the unit tests run without it.)
VALGRIND_FUSE = $(VALGRIND) --sim-hints=fuse-compatible

LINT_SRC = $(wildcard lib/*/*.c tools/*.c)
# cppcheck sees no system headers: the macros the build defines, and
# readdirCalled off (readdir_r is deprecated; readdir on a DIR of our own
# is thread-safe in glibc).
CPPCHECK = cppcheck --enable=warning,performance,portability \
	--error-exitcode=1 --inline-suppr --quiet --std=c11 -j2 \
	-I include -I lib -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -D__linux__ \
	-D__x86_64__ -DFUSE_USE_VERSION=312 --suppress=readdirCalled

.PHONY: all build deps demo check check-uring check-asan check-tsan check-valgrind lint \
	install clean

all: build

# Prerequisites run in the order listed (deps before build).
.NOTPARALLEL:

build:
	@if [ ! -f $(BUILD)/build.ninja ]; then \
		echo "meson setup $(BUILD) $(MESON_FLAGS)"; \
		meson setup $(BUILD) $(MESON_FLAGS); \
	elif [ "$(WERROR)" = 1 ]; then \
		echo "meson configure $(BUILD) -Dwerror=true"; \
		meson configure $(BUILD) -Dwerror=true; \
	fi
	ninja -C $(BUILD)

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y \
			--no-install-recommends $$missing; \
	else \
		echo "all Debian packages present"; \
	fi

demo: deps build
	bash scripts/demo.sh

check: deps build
	meson test -C $(BUILD) --print-errorlogs
	OVLFS_BUILD=$(abspath $(BUILD)) $(WITH_URING) $(PYTHON) -m pytest -q $(PYTEST_ARGS) tests

check-uring: deps build
	OVLFS_BUILD=$(abspath $(BUILD)) scripts/with-uring.sh $(PYTHON) -m pytest -q $(PYTEST_ARGS) tests

check-asan: deps
	@if [ ! -f $(ASAN_BUILD)/build.ninja ]; then \
		echo "meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined -Db_lundef=false"; \
		meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined \
			-Db_lundef=false; \
	fi
	ninja -C $(ASAN_BUILD)
	rm -rf $(ASAN_LOGDIR)
	mkdir -p $(ASAN_LOGDIR)
	@# The sanitizer logs are checked even when a test step failed, and
	@# printed, since a report is usually the reason for the failure.
	@status=0; \
	echo "meson test -C $(ASAN_BUILD) --print-errorlogs"; \
	$(ASAN_ENV) meson test -C $(ASAN_BUILD) --print-errorlogs || status=1; \
	echo "OVLFS_BUILD=$(abspath $(ASAN_BUILD)) $(PYTHON) -m pytest -q $(PYTEST_ARGS) tests"; \
	$(ASAN_ENV) OVLFS_BUILD=$(abspath $(ASAN_BUILD)) \
		$(WITH_URING) $(PYTHON) -m pytest -q $(PYTEST_ARGS) tests || status=1; \
	scripts/sanitizer-logs.sh "$(abspath $(ASAN_BUILD))/ovlfs" $(ASAN_LOGDIR) sanitizer || status=1; \
	exit $$status

check-tsan: deps
	@if [ ! -f $(TSAN_BUILD)/build.ninja ]; then \
		echo "meson setup $(TSAN_BUILD) -Db_sanitize=thread -Db_lundef=false"; \
		meson setup $(TSAN_BUILD) -Db_sanitize=thread -Db_lundef=false; \
	fi
	ninja -C $(TSAN_BUILD)
	rm -rf $(TSAN_LOGDIR)
	mkdir -p $(TSAN_LOGDIR)
	@status=0; \
	echo "OVLFS_BUILD=$(abspath $(TSAN_BUILD)) $(PYTHON) -m pytest -q $(PYTEST_ARGS) $(TSAN_TESTS)"; \
	$(TSAN_ENV) OVLFS_BUILD=$(abspath $(TSAN_BUILD)) \
		$(WITH_URING) $(PYTHON) -m pytest -q $(PYTEST_ARGS) $(TSAN_TESTS) || status=1; \
	scripts/sanitizer-logs.sh "$(abspath $(TSAN_BUILD))/ovlfs" $(TSAN_LOGDIR) ThreadSanitizer || status=1; \
	exit $$status

# quickstart mounts, writes, reads back and unmounts in-process, so one
# valgrind run sees the whole library lifecycle (FUSE threads included).
check-valgrind: deps build
	@status=0; \
	tmp=$$(mktemp -d); \
	mkdir -p "$$tmp/lower/dir"; \
	echo hello > "$$tmp/lower/dir/file"; \
	echo "$(VALGRIND_FUSE) $(BUILD)/quickstart-static $$tmp/lower"; \
	$(VALGRIND_FUSE) $(BUILD)/quickstart-static "$$tmp/lower" || status=1; \
	if mountpoint -q "$$tmp/lower.mountpoint" 2>/dev/null; then \
		umount -l "$$tmp/lower.mountpoint"; status=1; \
	fi; \
	rm -rf "$$tmp"; \
	for t in $(BUILD)/tests/unit/test_*; do \
		[ -f "$$t" ] && [ -x "$$t" ] || continue; \
		echo "$(VALGRIND) $$t"; \
		$(VALGRIND) "$$t" >/dev/null || status=1; \
	done; \
	exit $$status

# clang-tidy needs a compile_commands.json; build-lint/ is configured with
# clang (so the flags are clang's) and never built.
lint:
	@if [ ! -f $(LINT_BUILD)/compile_commands.json ]; then \
		echo "CC=clang meson setup $(LINT_BUILD)"; \
		CC=clang meson setup $(LINT_BUILD) >/dev/null; \
	fi
	@echo "clang-tidy -p $(LINT_BUILD) $(LINT_SRC)"
	@printf '%s\n' $(LINT_SRC) | \
		xargs -P $$(nproc) -n 1 clang-tidy -p $(LINT_BUILD) --quiet
	$(CPPCHECK) $(LINT_SRC)
	python3 scripts/deps.py --check

# The prefix is a setting of the build directory, so it is (re)configured
# first; meson install rebuilds what that changes. ldconfig only for a real
# install: a staged one (DESTDIR) is someone else's to register.
install:
	@if [ ! -f $(BUILD)/build.ninja ]; then \
		echo "meson setup $(BUILD) $(MESON_FLAGS) --prefix=$(abspath $(PREFIX))"; \
		meson setup $(BUILD) $(MESON_FLAGS) --prefix=$(abspath $(PREFIX)); \
	else \
		echo "meson configure $(BUILD) --prefix=$(abspath $(PREFIX))"; \
		meson configure $(BUILD) --prefix=$(abspath $(PREFIX)); \
	fi
	meson install -C $(BUILD) $(if $(DESTDIR),--destdir $(abspath $(DESTDIR)))
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
		echo ldconfig; ldconfig; \
	fi

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(LINT_BUILD)

# bench/overlay.py: every workload on a plain directory, the kernel overlayfs,
# fuse-overlayfs and ovlfs (root: loop device and mounts); writes
# bench/results/latest.{csv,md}; bench/copyup.py: directory rename and
# chmod/chown -R of large lower files (copyup.md); bench/containers.py: a
# container job on podman's native overlay, fuse-overlayfs and ovlfs
# (containers.md).
# bench-quick: smaller dataset, a few minutes. bench-requests: FUSE requests
# per operation (bench/requests.py), bench/results/requests.{md,json}.
.PHONY: bench bench-quick bench-requests
bench:
	$(SUDO) $(PYTHON) bench/overlay.py --build $(abspath $(BUILD))
	$(SUDO) $(PYTHON) bench/memory.py --build $(abspath $(BUILD))
	$(SUDO) $(PYTHON) bench/copyup.py --build $(abspath $(BUILD))
	$(SUDO) $(PYTHON) bench/containers.py --build $(abspath $(BUILD))

bench-quick:
	$(SUDO) $(PYTHON) bench/overlay.py --quick --build $(abspath $(BUILD))

bench-requests:
	$(SUDO) $(PYTHON) bench/requests.py --reps 3 --build $(abspath $(BUILD))

# unionmount-testsuite (not in Debian, never committed) against build/ovlfs
# through mount -t fuse.ovlfs: --ov and --ov=10, --samefs --verify.
# UNIONMOUNT_TESTSUITE=DIR names the suite; without one it is skipped (77).
.PHONY: unionmount
unionmount: build
	$(SUDO) scripts/unionmount.sh
