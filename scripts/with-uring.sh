#!/usr/bin/env bash
# Run a command with FUSE-over-io_uring: the fuse module's enable_uring
# parameter switched on for the run and set back to what it was after
# (ovlfs itself never changes it), and OVLFS_IO_URING=on so that every
# ovlfs mount the command makes uses the rings or fails.
#
#   scripts/with-uring.sh COMMAND [ARG...]
#
# Needs root and a kernel with CONFIG_FUSE_IO_URING (Linux 6.14+).
set -u

param=/sys/module/fuse/parameters/enable_uring
if [ $# -eq 0 ]; then
	echo "usage: scripts/with-uring.sh COMMAND [ARG...]" >&2
	exit 2
fi
if [ ! -e "$param" ]; then
	echo "with-uring: $param is missing: this kernel has no FUSE-over-io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)" >&2
	exit 1
fi
old=$(cat "$param") || exit 1
if ! echo Y > "$param"; then
	echo "with-uring: cannot write $param (run as root)" >&2
	exit 1
fi
restore() {
	echo "$old" > "$param" || echo "with-uring: could not set $param back to $old" >&2
}
trap 'restore; exit 130' INT TERM
OVLFS_IO_URING=on "$@"
status=$?
restore
exit $status
