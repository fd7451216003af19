#!/usr/bin/env bash
# A narrated tour of ovlfs: mount a small lower tree, change it through the
# mount point, and show where every change landed.
#
#   make demo          (installs packages and builds first)
#   scripts/demo.sh    (after `make build`; OVLFS=path/to/ovlfs to override)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ovlfs="${OVLFS:-$here/build/ovlfs}"

if [ ! -x "$ovlfs" ]; then
	echo "demo: $ovlfs not found; run 'make build' first" >&2
	exit 1
fi
if [ ! -e /dev/fuse ]; then
	echo "demo: /dev/fuse is missing; FUSE is needed to mount" >&2
	exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/ovlfs-demo.XXXXXX")"
lower="$work/rootfs"
upper="$work/rootfs.upper"
mnt="$work/rootfs.mountpoint"
mounted=0

cleanup() {
	if [ "$mounted" = 1 ]; then
		"$ovlfs" umount "$mnt" 2>/dev/null ||
			fusermount3 -u -z "$mnt" 2>/dev/null ||
			umount -l "$mnt" 2>/dev/null || true
	fi
	cd /
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
# Show a shell command, then run it (in $work, so paths read short).
run() {
	local shown="${1//\"\$ovlfs\"/ovlfs}"
	printf '$ %s\n' "$shown"
	eval "$1"
}
# Print every entry under a directory with its type and, for files, content.
show_tree() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | while read -r p; do
		p="${p#./}"
		if [ -L "$p" ]; then
			printf '  %-24s symlink -> %s\n' "$p" "$(readlink "$p")"
		elif [ -d "$p" ]; then
			printf '  %-24s directory\n' "$p/"
		elif [ -f "$p" ] && [ ! -s "$p" ]; then
			printf '  %-24s empty file\n' "$p"
		elif [ -f "$p" ]; then
			printf '  %-24s "%s"\n' "$p" "$(head -c 60 "$p" | tr '\n' ' ' | sed 's/ $//')"
		else
			printf '  %-24s %s\n' "$p" "$(stat -c %F "$p")"
		fi
	done)
}

echo "ovlfs demo, working in $work; 'ovlfs' below is $ovlfs"
cd "$work"

step "A small lower tree (read-only from now on) in $lower"
mkdir -p "$lower/etc" "$lower/docs"
echo "hostname=demo" >"$lower/etc/config"
echo "welcome to the lower layer" >"$lower/motd"
echo "this file will be deleted" >"$lower/docs/old-notes.txt"
echo "a manual" >"$lower/docs/manual.txt"
ln -s etc/config "$lower/config-link"
show_tree "$lower"

step "Mount it: upper and mount point default to LOWER.upper and LOWER.mountpoint"
run '"$ovlfs" mount rootfs'
mounted=1
echo "mounted at $mnt, changes go to $upper"

step "The merged view looks exactly like the lower"
show_tree "$mnt"

step "Change things through the mount point"
run 'echo hostname=changed > rootfs.mountpoint/etc/config'
run 'rm rootfs.mountpoint/docs/old-notes.txt'
run 'echo "created in the overlay" > rootfs.mountpoint/new-file.txt'
run 'mkdir rootfs.mountpoint/cache'
run 'echo data > rootfs.mountpoint/cache/item'

step "The merged view (mount point) shows every change"
show_tree "$mnt"
echo "reading through the symlink:"
run 'cat rootfs.mountpoint/config-link'

step "The lower is untouched"
show_tree "$lower"

step "The upper holds only the changes"
echo "(etc/config was copied up on its first write; docs/.wh.old-notes.txt"
echo " is the whiteout that hides the deleted lower file)"
show_tree "$upper"

step "Unmount"
run '"$ovlfs" umount rootfs.mountpoint'
mounted=0
echo "after unmounting, the mount point is an empty directory again:"
run 'ls -A rootfs.mountpoint'
echo "remount the same lower and upper to get the same merged view back."

step "What the upper would change in the lower"
run '"$ovlfs" diff rootfs'

step "Commit the changes into the lower (crash-safe with --atomic)"
run '"$ovlfs" commit --atomic rootfs'
echo "the lower now holds the changes; the upper and the mount point are gone:"
show_tree rootfs
run 'ls -d rootfs.upper rootfs.mountpoint 2>&1 || true'

step "Done; removing $work"
