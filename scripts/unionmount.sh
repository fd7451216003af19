#!/bin/bash
# Runs unionmount-testsuite (https://github.com/amir73il/unionmount-testsuite)
# against ovlfs through mount(8), `mount -t fuse.ovlfs`, twice:
#
#   ./run --ov    --fuse=ovlfs --samefs --verify TEST     (every test)
#   ./run --ov=10 --fuse=ovlfs --samefs --verify TEST     (layer rotation)
#
# one test per ./run (the suite stops at its first failure), and prints per
# run "N of M passed" and the names of the failed tests. Exit status: 0 all
# passed, 1 a test failed, 77 skipped (no suite, not root, no unshare).
#
#   scripts/unionmount.sh [SUITE] [TEST...]
#
# SUITE: a checkout or a bare git repository of the suite; default
# $UNIONMOUNT_TESTSUITE, else /work/.mirror/amir73il+unionmount-testsuite/repo.
# Nothing is fetched and nothing lands in this repository: the suite is
# copied into a temporary directory. OVLFS: the binary (default build/ovlfs
# of this checkout, else the ovlfs in PATH). UNIONMOUNT_RUNS: which runs
# ("ov ov10", the default). UNIONMOUNT_LOGDIR: keep every test's output
# there. UNIONMOUNT_TIMEOUT: seconds per test (300). UNIONMOUNT_MNTOPTIONS:
# extra mount options (the suite's variable) for both runs; unset, the
# rotation run gets inode=persistent and the other none.
#
# The suite drops the page, dentry and inode caches of the whole machine at
# every remount (echo 3 > /proc/sys/vm/drop_caches): do not run it beside
# `make check`, whose tests of the kernel's caches then fail.
#
# mount(8) drops PATH before it runs mount.fuse3, whose shell finds `ovlfs`
# only in the default directories (/usr/local/sbin first; docs/compat.md).
# So everything runs in a private mount namespace (unshare --mount) where a
# directory holding a link to the binary is bind-mounted over
# /usr/local/sbin and the suite's layers live on a tmpfs of its own; nothing
# is installed, and every mount is undone before the namespace ends (a FUSE
# daemon left running would keep the namespace, and its mounts, alive).

set -u

here=$(cd "$(dirname "$0")/.." && pwd)
default_suite=/work/.mirror/amir73il+unionmount-testsuite/repo

skip() { echo "unionmount: skipped: $*"; exit 77; }

if [ "${1:-}" = "--inner" ]; then
    inner=1
    shift
else
    inner=0
fi

# ---------------------------------------------------------------- inner part
# In the private namespace: $1 = temp dir, the rest = tests to run (or none).
if [ "$inner" = 1 ]; then
    tmp=$1
    shift
    base=$tmp/base
    # shellcheck disable=SC2317  # (run by the trap)
    cleanup_mounts() {
        # deepest first: the union mounts, then the tmpfs, then the bin dir
        awk -v t="$tmp" '$2 == t || index($2, t "/") == 1 { print $2 }' \
            /proc/self/mounts | sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m"
        done
        if mountpoint -q /usr/local/sbin &&
           grep -q " /usr/local/sbin " /proc/self/mounts; then
            umount /usr/local/sbin 2>/dev/null || umount -l /usr/local/sbin
        fi
    }
    trap cleanup_mounts EXIT
    trap 'exit 130' INT TERM
    mkdir -p /usr/local/sbin
    mount --bind "$tmp/bin" /usr/local/sbin || exit 1
    mount -t tmpfs uts_base "$base" || exit 1
    export UNIONMOUNT_BASEDIR=$base UNIONMOUNT_MNTPOINT=$base/m

    if [ $# -gt 0 ]; then
        tests="$*"
    else
        # The suite's own list (the directory rename tests are in it: with
        # --fuse the suite assumes redirect_dir=on unless --xdev is given).
        tests=$(python3 - "$tmp/suite/run" <<'EOF'
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
names = []
for node in tree.body:
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.List)
            and any(getattr(t, "id", None) == "tests" for t in node.targets)):
        names = [e.value for e in node.value.elts]
    elif isinstance(node, ast.If) and "redirect_dir" in ast.unparse(node.test):
        for sub in node.orelse:
            if isinstance(sub, ast.AugAssign) and isinstance(sub.value, ast.List):
                names += [e.value for e in sub.value.elts]
print(" ".join(names))
EOF
        ) || exit 1
    fi
    [ -n "$tests" ] || { echo "unionmount: no test list in $tmp/suite/run"; exit 1; }

    status=0
    for runname in ${UNIONMOUNT_RUNS:-ov ov10}; do
        # The rotation run remounts after every operation and --verify then
        # wants each st_ino unchanged: that is inode=persistent (the default,
        # virtual, numbers are stable while mounted; docs/compat.md).
        case $runname in
            ov) sel=--ov; opts=${UNIONMOUNT_MNTOPTIONS-} ;;
            ov10) sel=--ov=10; opts=${UNIONMOUNT_MNTOPTIONS-inode=persistent} ;;
            *) echo "unionmount: unknown run $runname (ov, ov10)"; exit 2 ;;
        esac
        if [ -n "$opts" ]; then
            export UNIONMOUNT_MNTOPTIONS=$opts
        else
            unset UNIONMOUNT_MNTOPTIONS
        fi
        args=("$sel" --fuse=ovlfs --samefs --verify)
        passed=0
        total=0
        failed=""
        for t in $tests; do
            total=$((total + 1))
            log=$tmp/logs/$runname-$t.log
            (cd "$tmp/suite" && timeout "${UNIONMOUNT_TIMEOUT:-300}" \
                python3 ./run "${args[@]}" "$t") >"$log" 2>&1
            rc=$?
            if [ $rc = 0 ]; then
                passed=$((passed + 1))
            else
                failed="$failed $t"
                echo "--- $runname $t failed (exit $rc), last lines:"
                tail -n 8 "$log" | sed 's/^/    /'
            fi
        done
        # ./run leaves the union mounted "for further playing": undo it
        (cd "$tmp/suite" && python3 ./run -c) >/dev/null 2>&1
        echo "unionmount: ./run ${args[*]}${opts:+ (UNIONMOUNT_MNTOPTIONS=$opts)}: $passed of $total passed${failed:+; failed:$failed}"
        [ -z "$failed" ] || status=1
    done
    exit $status
fi

# ---------------------------------------------------------------- outer part
[ "$(id -u)" = 0 ] || skip "needs root (mount, unshare)"
command -v unshare >/dev/null || skip "needs unshare(1)"
command -v mount.fuse3 >/dev/null || [ -x /sbin/mount.fuse3 ] ||
    skip "needs mount.fuse3 (Debian package fuse3)"

suite=${1:-${UNIONMOUNT_TESTSUITE:-$default_suite}}
[ $# -gt 0 ] && shift
[ -e "$suite" ] || skip "no unionmount-testsuite at $suite (give its path or set UNIONMOUNT_TESTSUITE)"

ovlfs_bin=${OVLFS:-}
if [ -z "$ovlfs_bin" ]; then
    if [ -x "$here/build/ovlfs" ]; then
        ovlfs_bin=$here/build/ovlfs
    else
        ovlfs_bin=$(command -v ovlfs) || skip "no build/ovlfs and no ovlfs in PATH (run make)"
    fi
fi
ovlfs_bin=$(readlink -f "$ovlfs_bin")

tmp=$(mktemp -d /tmp/unionmount.XXXXXX) || exit 1
# the suite opens files as user bin too (impermissible): it must reach them
chmod 0755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/suite" "$tmp/bin" "$tmp/base" "$tmp/logs"
if [ -f "$suite/run" ]; then
    cp -a "$suite/." "$tmp/suite/"
elif git --git-dir="$suite" rev-parse --verify -q HEAD >/dev/null 2>&1; then
    git --git-dir="$suite" archive HEAD | tar -x -C "$tmp/suite" || exit 1
else
    skip "$suite is neither a checkout nor a git repository of unionmount-testsuite"
fi
[ -f "$tmp/suite/run" ] || skip "$suite has no ./run"
ln -s "$ovlfs_bin" "$tmp/bin/ovlfs"

rev=$(git --git-dir="$suite" rev-parse --short HEAD 2>/dev/null ||
      git -C "$suite" rev-parse --short HEAD 2>/dev/null || echo "?")
echo "unionmount: suite $suite ($rev), ovlfs $ovlfs_bin ($("$ovlfs_bin" --version 2>/dev/null | head -n 1))"

unshare --mount --propagation private "$0" --inner "$tmp" "$@"
status=$?
if [ -n "${UNIONMOUNT_LOGDIR:-}" ]; then
    mkdir -p "$UNIONMOUNT_LOGDIR" && cp "$tmp"/logs/*.log "$UNIONMOUNT_LOGDIR"/ 2>/dev/null
fi
exit $status
