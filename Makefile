# Thin wrapper around meson/ninja. The real build is meson.build.
#
#   make            build into build/ (the tool is build/ovlfs)
#   make deps       install the Debian packages that are missing
#   make demo       deps + build + scripts/demo.sh
#   make check      deps + build + C unit tests + pytest suite
#   make check-asan the pytest suite against an ASan/UBSan build (build-asan/)
#   make clean
#
# WERROR=1 turns on --werror for build/ (not build-asan:
# sanitizer instrumentation makes gcc warn spuriously).

BUILD      ?= build
ASAN_BUILD ?= build-asan
PYTHON     ?= /usr/bin/python3
PYTEST_ARGS ?=

DEB_PACKAGES = build-essential meson ninja-build pkg-config libfuse3-dev \
	       fuse3 python3-pytest attr fuse-overlayfs

MESON_FLAGS = $(if $(filter 1,$(WERROR)),--werror,)
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)

# Where sanitizer reports of background (daemonized) processes land.
ASAN_LOGDIR = $(abspath $(ASAN_BUILD))/sanitizer-logs
ASAN_ENV = \
	ASAN_OPTIONS=halt_on_error=1:abort_on_error=0:detect_leaks=1:print_stacktrace=1:log_path=$(ASAN_LOGDIR)/asan \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(ASAN_LOGDIR)/ubsan \
	LSAN_OPTIONS=print_suppressions=0

.PHONY: all build deps demo check check-asan clean

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
	OVLFS_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q $(PYTEST_ARGS) tests

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
		$(PYTHON) -m pytest -q $(PYTEST_ARGS) tests || status=1; \
	exe="$(abspath $(ASAN_BUILD))/ovlfs"; \
	for i in $$(seq 1 150); do \
		busy=""; \
		for p in /proc/[0-9]*; do \
			[ "$$(readlink $$p/exe 2>/dev/null)" = "$$exe" ] && \
				busy="$$busy $${p#/proc/}"; \
		done; \
		[ -z "$$busy" ] && break; \
		sleep 0.2; \
	done; \
	if [ -n "$$busy" ]; then \
		echo "warning: $$exe still running (pids$$busy)"; \
	fi; \
	if [ -n "$$(ls -A $(ASAN_LOGDIR))" ]; then \
		echo "sanitizer reports found in $(ASAN_LOGDIR):"; \
		for f in $(ASAN_LOGDIR)/*; do \
			echo "==== $$f"; cat "$$f"; \
		done; \
		status=1; \
	else \
		echo "no sanitizer reports"; \
	fi; \
	exit $$status

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
