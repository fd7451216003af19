"""The mount's daemon killed before each of its layer-changing calls.

A copy-up or a namespace change through a live mount is a row of calls on
the upper (a temporary file, its data, metadata and xattrs, a link or
rename into place, whiteouts, redirects). The daemon may die before any
of them; the next mount must show the merged view as it was before the
operation or as it is after it, never a mix, never a broken file, and the
operation must then be possible again.

strace cannot number the daemon's calls: it counts `when=` per system call
and per thread, and the daemon serves requests on any of its threads.
tests/killshim (an LD_PRELOAD library) keeps one counter for the whole
process: a recording run lists the operation's calls (KILLSHIM_LOG), then a
trial per call kills the daemon just before it (KILLSHIM_AT). Counting
starts when the test creates KILLSHIM_ARM_FILE, once the mount is live.

Each trial: the saved upper back, a mount with the shim, the operation
(it fails once the daemon is gone: ENOTCONN), the dead mount detached, a
plain mount: its view is one of the two models, the lower untouched (bytes,
inodes, times), and from the old view the operation runs again to the new.
"""

import os
import shutil
import sys

import pytest

from conftest import (BUILD, F, D, L, HL, Overlay, snapshot, diff_snapshots,
                      assert_same_tree, build, cp_a, run, daemon_pids,
                      wait_for, IS_ROOT)

SHIM = os.path.join(BUILD, "tests", "killshim", "killshim.so")

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root (chown, mounts)"),
    # ASan must come first in the link order and intercepts the same libc
    # functions; the order of ovlfs's steps is the same without it.
    pytest.mark.skipif(bool(os.environ.get("ASAN_OPTIONS") or
                            os.environ.get("TSAN_OPTIONS")),
                       reason="an LD_PRELOAD shim under a sanitizer runtime "
                              "(link order, interceptors): the steps are "
                              "swept in the plain build"),
    pytest.mark.skipif(not os.path.exists(SHIM),
                       reason="tests/killshim not built (%s)" % SHIM),
]


def j(*p):
    return os.path.join(*p)


# 1 MiB with no run of zeros, so a 4 KiB block of zeros in the middle is a
# change wherever it lands.
BIG = bytes(range(1, 256)) * (1024 * 1024 // 255) + b"\1" * (1024 * 1024 % 255)

SPEC = {
    "f": "hello\n",
    "big": F(BIG),
    "t": "truncate me\n" * 100,
    "m": F("metadata\n", mode=0o644, xattrs={"user.keep": "k"}),
    "dm": D({"in": "in\n"}, mode=0o755),
    "d": {"x": "x\n", "sub": {"s": "s\n", "deep": {"z": "z\n"}},
          "ln": L("x"), "big2": F(b"b" * 70000)},
    "r": "rename me\n",
    "over": "over\n",
    "victim": "victim\n",
    "gone": "gone\n",
    "e": {"e1": "e1\n", "e2": "e2\n"},
    "o": {"o1": "o1\n", "od": {"o2": "o2\n"}},
    "h": "link me\n",
    "pub": D({"p": "p\n"}, mode=0o777),
    "ed": {},
    "hl1": "linked in the lower\n",
    "hl2": HL("hl1"),
}

USER = 4242             # the caller of the "-user" operations


def sh(script):
    return lambda root: ["sh", "-c", script, "sh", root]


def as_user(script):
    return lambda root: ["setpriv", "--reuid", str(USER), "--regid", str(USER),
                         "--clear-groups", "sh", "-c", script, "sh", root]


def emptied(root):
    for n in ("e1", "e2"):
        os.unlink(j(root, "e", n))


def deleted(root):
    shutil.rmtree(j(root, "o"))


def gone(root):
    os.unlink(j(root, "gone"))


def copied(*names):
    """Copy-ups (of data) ahead of the operation."""
    def prep(root):
        for n in names:
            with open(j(root, n), "a") as f:
                f.write("copied\n")
    return prep


EXCHANGE = ("import ctypes, os, sys; c = ctypes.CDLL(None, use_errno=True); "
            "r = c.renameat2(-100, os.fsencode(sys.argv[1]), -100, "
            "os.fsencode(sys.argv[2]), 2); "
            "sys.exit(0 if r == 0 else os.strerror(ctypes.get_errno()))")


def exchange(a, b):
    return lambda root: [sys.executable, "-S", "-c", EXCHANGE, j(root, a), j(root, b)]


def operation(argv, fresh=(), prep=None, mid=None, args=(), loose_nlink=()):
    """ARGV(root): the operation on the tree at root; FRESH: the files
    whose mtime is "now" after it; PREP(root): done first, through a plain
    mount; MID(root): the argv of a state between, for an operation of two
    system calls (a file's creation, then its data: on any filesystem it
    may end between them); ARGS: more options of the mount."""
    return {"argv": argv, "fresh": set(fresh), "loose": set(loose_nlink),
            "prep": prep, "mid": mid,
            "args": list(args)}


def renamed(a, b):
    return lambda root: os.rename(j(root, a), j(root, b))


def linked(a, b):
    return lambda root: os.link(j(root, a), j(root, b))


CREATED = 'printf "" > "$1/%s"'
NOPT = ["--no-passthrough"]     # data writes through the daemon: steps
OPS = {
    "append": operation(sh('echo more >> "$1/f"'), {"f"}),
    "append-nopt": operation(sh('echo more >> "$1/f"'), {"f"}, args=NOPT),
    "write-middle": operation(sh('dd if=/dev/zero of="$1/big" bs=4096 seek=128 '
                          'count=1 conv=notrunc status=none'), {"big"}),
    "write-middle-nopt": operation(sh('dd if=/dev/zero of="$1/big" bs=4096 '
                               'seek=128 count=1 conv=notrunc status=none'),
                            {"big"}, args=NOPT),
    "truncate": operation(sh('truncate -s 5 "$1/t"'), {"t"}),
    "open-trunc": operation(sh(': > "$1/t"'), {"t"}),
    "chmod": operation(sh('chmod 600 "$1/m"')),
    "chown": operation(sh('chown 1234:4321 "$1/m"')),
    "touch-m": operation(sh('touch -m -d @1500000000 "$1/m"')),
    "setxattr": operation(sh('setfattr -n user.x -v 1 "$1/m"')),
    "removexattr": operation(sh('setfattr -x user.keep "$1/m"')),
    "chmod-dir": operation(sh('chmod 700 "$1/dm"')),
    "rename-dir": operation(sh('mv -T "$1/d" "$1/d2"')),
    "rename-renamed-dir": operation(sh('mv -T "$1/d2" "$1/d3"'),
                             prep=renamed("d", "d2")),
    "rename-dir-across": operation(sh('mv -T "$1/d/sub" "$1/dm/sub2"')),
    "rename-dir-over-empty": operation(sh('mv -T "$1/d" "$1/ed"')),
    "rename-file": operation(sh('mv -T "$1/r" "$1/r2"')),
    "rename-copied": operation(sh('mv -T "$1/r" "$1/r2"'), prep=copied("r")),
    "exchange": operation(exchange("r", "h")),
    "rename-over": operation(sh('mv -T "$1/over" "$1/victim"')),
    "unlink": operation(sh('rm "$1/gone"')),
    "unlink-copied": operation(sh('rm "$1/gone"'), prep=copied("gone")),
    "rmdir": operation(sh('rmdir "$1/e"'), prep=emptied),
    "mkdir-opaque": operation(sh('mkdir "$1/o"'), prep=deleted),
    "link": operation(sh('ln "$1/h" "$1/h2"')),
    "link-again": operation(sh('ln "$1/h" "$1/h3"'), prep=linked("h", "h2")),
    "create": operation(sh('printf "new data\\n" > "$1/new"'), {"new"},
                 mid=sh(CREATED % "new")),
    "create-user": operation(as_user('printf "new data\\n" > "$1/pub/new"'),
                      {"pub/new"}, mid=as_user(CREATED % "pub/new")),
    "recreate": operation(sh('printf "again\\n" > "$1/gone"'), {"gone"}, prep=gone,
                   mid=sh(CREATED % "gone")),
    "mkdir-user": operation(as_user('mkdir "$1/pub/nd"')),
    "symlink": operation(sh('ln -s f "$1/sl"'), {"sl"}),
    # onto the name of a deleted lower entry (a whiteout there)
    "rename-dir-onto-deleted": operation(sh('mv -T "$1/d" "$1/o"'), prep=deleted),
    "rename-file-onto-deleted": operation(sh('mv -T "$1/r" "$1/gone"'), prep=gone),
    "symlink-onto-deleted": operation(sh('ln -s f "$1/gone"'), {"gone"}, prep=gone),
    "mkfifo-onto-deleted": operation(sh('mkfifo "$1/gone"'), {"gone"}, prep=gone),
    # (kernel format: linked under a hidden name, then renamed over the
    # whiteout; killed between, that hidden link counts in h's nlink)
    "link-onto-deleted": operation(sh('ln "$1/h" "$1/gone"'), prep=gone,
                                   loose_nlink={"h", "gone"}),
    # a lower file with two names: both copied up at once
    "append-linked": operation(sh('echo more >> "$1/hl1"'), {"hl1", "hl2"}),
    "rename-linked": operation(sh('mv -T "$1/hl1" "$1/hl3"')),
    # the data copy-up of a metadata-only copy
    "append-metacopied": operation(sh('echo more >> "$1/m"'), {"m"},
                                   prep=lambda r: os.chmod(j(r, "m"), 0o600)),
    "truncate-metacopied": operation(sh('truncate -s 3 "$1/m"'), {"m"},
                                     prep=lambda r: os.chmod(j(r, "m"), 0o600)),
    # over an upper directory that hides its lower part's entries
    "rename-dir-over-emptied": operation(sh('mv -T "$1/d" "$1/e"'), prep=emptied),
}

FORMATS = ["oci", "kernel"]

# Known bugs: (op, format) -> reason; strict, so a fix turns them into
# failures to remove the marks for.
WHITEOUT_FIRST = (
    "kernel format: prepare_create (lib/fs/dir.c) unlinks the whiteout "
    "before the new entry exists; killed in between, the deleted lower "
    "entry is back after a remount (%s)")
OWNER_LATE = (
    "the new entry is made under its own name with the daemon's owner and "
    "chowned to the caller after (set_new_owner, lib/fs/dir.c); killed "
    "before the fchownat, it stays root:root in the view (%s)")
# (op, format) -> (reason, the steps that fail: always tried, so that a
# strided sweep still sees them)
SPLIT_LINKS = (
    "a lower file with two names is copied up name by name (hardlink.c: "
    "the copy is linked in at each visible name in turn); killed between "
    "two, one name is the upper copy and the other still the lower file: "
    "no data lost (same bytes), but no longer one file (nlink 1 each, a "
    "later write through one not seen through the other). Only an index of "
    "copied-up lower inodes (the kernel's index=on) can tie them again")
KNOWN = {
    ("append-linked", "oci"): (SPLIT_LINKS, [10]),
    ("append-linked", "kernel"): (SPLIT_LINKS, [10]),
    ("rename-linked", "oci"): (SPLIT_LINKS, [10]),
    ("rename-linked", "kernel"): (SPLIT_LINKS, [10]),
    ("rename-dir-over-emptied", "oci"): (
        "OCI format: a directory renamed over an upper directory that hides "
        "its lower part's entries (here e, emptied) moves that one out of the "
        "way first (its opaque marker is a file inside, so rename(2) cannot "
        "replace it, and no RENAME_EXCHANGE leaves the old name clean); "
        "killed before the rename itself, e shows e1 and e2 of the lower "
        "again. The kernel format exchanges an empty opaque directory in "
        "first and passes", [17]),
}


def cases():
    for name in OPS:
        for fmt in FORMATS:
            marks = ()
            if (name, fmt) in KNOWN:
                marks = pytest.mark.xfail(strict=True,
                                          reason=KNOWN[name, fmt][0])
            yield pytest.param(name, fmt, id="%s-%s" % (name, fmt),
                               marks=marks)


def view(root, fresh, loose=()):
    """The merged view (or the model): everything, with the mtimes of
    files, but not of directories nor of the files FRESH the operation
    stamps with the time it runs, and the link counts but those of LOOSE."""
    s = snapshot(root, mtime=True, nlink=True, hide_private=True)
    fresh = {os.fsencode(f) for f in fresh}
    loose = {os.fsencode(f) for f in loose}
    for rel, r in s.items():
        if r["type"] == "dir" or rel in fresh:
            r.pop("mtime", None)
        if rel in loose:
            r.pop("nlink", None)
    return s


def lower_state(lower):
    return snapshot(lower, mtime=True, ctime=True, ino=True, nlink=True,
                    root_attrs=True)


class Sweep:
    def __init__(self, work, op, fmt):
        self.work = work
        o = OPS[op]
        self.argv, self.fresh, prep, mid = (o["argv"], o["fresh"], o["prep"],
                                            o["mid"])
        self.loose = o["loose"]
        self.lower = j(work, "lower")
        os.mkdir(self.lower)
        build(self.lower, SPEC)
        self.oracle = j(work, "oracle")
        cp_a(self.lower, self.oracle)
        self.upper = j(work, "upper")
        self.saved = j(work, "saved-upper")
        self.arm = j(work, "arm")
        self.log = j(work, "steps.log")
        extra = (["--format", "kernel"] if fmt == "kernel" else []) + o["args"]
        self.ovl = Overlay(self.lower, upper=self.upper, opts="allow_other",
                           extra_args=extra)
        self.lower_before = lower_state(self.lower)
        self.ovl.mount()
        if prep:
            prep(self.ovl.mp)
            prep(self.oracle)
        self.before = view(self.oracle, self.fresh, self.loose)
        assert_same_tree(view(self.ovl.mp, self.fresh, self.loose), self.before,
                         "mount", "model before")
        self.ovl.umount()
        cp_a(self.upper, self.saved)
        self.mid = None
        if mid:
            between = j(work, "oracle-mid")
            cp_a(self.oracle, between)
            r = run(mid(between))
            assert r.returncode == 0, r.err
            self.mid = view(between, self.fresh, self.loose)
        r = run(self.argv(self.oracle))
        assert r.returncode == 0, r.err
        self.after = view(self.oracle, self.fresh, self.loose)

    def restore(self):
        shutil.rmtree(self.upper)
        cp_a(self.saved, self.upper)

    def shim_env(self, log, at=None):
        env = dict(os.environ, LD_PRELOAD=SHIM, KILLSHIM_LOG=log,
                   KILLSHIM_ARM_FILE=self.arm)
        if at is not None:
            env["KILLSHIM_AT"] = str(at)
        return env

    def run_op(self):
        return run(self.argv(self.ovl.mp), timeout=30)

    def steps(self):
        """The operation's counted calls, one uninterrupted run: names."""
        self.restore()
        for p in (self.arm, self.log):
            if os.path.exists(p):
                os.unlink(p)
        self.ovl.mount(env=self.shim_env(self.log))
        open(self.arm, "w").close()
        r = self.run_op()
        assert r.returncode == 0, r.err
        self.ovl.umount()
        with open(self.log) as f:
            lines = f.read().splitlines()
        self.ovl.mount()
        assert_same_tree(view(self.ovl.mp, self.fresh, self.loose), self.after,
                         "mount after an uninterrupted run", "model after")
        self.ovl.umount()
        return lines

    def check_lower(self, what):
        assert_same_tree(lower_state(self.lower), self.lower_before,
                         "lower " + what, "lower before")

    def trial(self, n, want):
        """Kill before step N (WANT: its line in the recording); the
        outcome as "old" or "new"."""
        self.restore()
        log = self.log + ".trial"
        for p in (self.arm, log):
            if os.path.exists(p):
                os.unlink(p)
        self.ovl.mount(env=self.shim_env(log, at=n))
        open(self.arm, "w").close()
        self.run_op()
        died = wait_for(lambda: not daemon_pids(self.lower), timeout=10)
        if not died:
            # Not killed during the operation: a step of the unmount's.
            self.ovl.umount(check=False)
        if self.ovl.mounted:
            run(["umount", "-l", self.ovl.mp], check=True)
        with open(log) as f:
            lines = f.read().splitlines()
        assert len(lines) == n, (
            "step %d (%s): the trial made %d counted calls: %s" % (
                n, want, len(lines), lines[-3:]))
        assert lines[-1].split()[1] == want.split()[1], (
            "step %d: the trial's call is %r, the recording's %r (not "
            "reproducible)" % (n, lines[-1], want))
        self.check_lower("after the kill at step %d (%s)" % (n, want))
        self.ovl.mount()
        try:
            got = view(self.ovl.mp, self.fresh, self.loose)
            if got == self.after:
                outcome = "new"
            elif got == self.before or (self.mid and got == self.mid):
                outcome = "old" if got == self.before else "between"
                r = self.run_op()
                assert r.returncode == 0, (
                    "killed at step %d (%s): the operation again: %s" % (
                        n, want, r.err))
                assert_same_tree(view(self.ovl.mp, self.fresh, self.loose), self.after,
                                 "mount, the operation run again after a "
                                 "kill at step %d (%s)" % (n, want),
                                 "model after")
            else:
                raise AssertionError(
                    "killed at step %d (%s): the view is neither the old "
                    "nor the new one:\n  vs old: %s\n  vs new: %s" % (
                        n, want,
                        "\n    ".join(diff_snapshots(got, self.before,
                                                     "mount", "old")),
                        "\n    ".join(diff_snapshots(got, self.after,
                                                     "mount", "new"))) +
                    ("\n  vs between: " + "\n    ".join(
                        diff_snapshots(got, self.mid, "mount", "between"))
                     if self.mid else ""))
        finally:
            self.ovl.umount()
        self.check_lower("after the trial at step %d (%s)" % (n, want))
        return outcome


# Every step in `make check`; in the io_uring pass (scripts/with-uring.sh)
# every 4th, the first and the last: the steps are the same on both
# transports, as in the offline sweeps' conftest.STEP_STRIDE.
STRIDE = 4 if os.environ.get("OVLFS_IO_URING") == "on" else 1


def picked_steps(n, known=()):
    ns = set(range(1, n + 1, STRIDE)) | {n} | {k for k in known if k <= n}
    return sorted(ns)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("op,fmt", list(cases()))
def test_daemon_killed_at_every_step(work, op, fmt):
    s = Sweep(work, op, fmt)
    steps = s.steps()
    assert steps, "%s made no counted call" % op
    s.check_lower("after the recording")
    seen = {}
    for n in picked_steps(len(steps), KNOWN.get((op, fmt), ("", []))[1]):
        out = s.trial(n, steps[n - 1])
        seen.setdefault(out, []).append(n)
    print("%s %s: %d steps: %s" % (op, fmt, len(steps),
                                  {k: len(v) for k, v in seen.items()}))
    # Killed before its first call, nothing has changed yet.
    assert 1 not in seen.get("new", []), seen
