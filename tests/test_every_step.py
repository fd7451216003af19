"""A kill before every step of each command that deletes, moves or replaces
data.

strace numbers a command's changing calls from one whole run
(conftest.strace_steps); each trial restores the saved layers, SIGKILLs the
command just before step N (strace_steps/killed_at_step: `when=` counts per
system call, so a `when=N` over a set of calls skips most steps), and
finishes as a user would: the same command again (or `ovlfs recover` after
an atomic commit). The end state must be that of one uninterrupted run:

* commit (plain): the lower equals the plain-directory model;
* commit --atomic: after `recover` the lower is wholly old (the upper as
  it was) or wholly new; from old, a commit gives the new one;
* flatten: DEST exists only when whole, and a retry gives the merged view;
* apply --tar into the upper, and --commit into the lower: the merged view
  (the lower) of one run, less the documented caveat (docs/tar.md: the
  times of directories the tar changes but does not list, the root);
* convert: the view unchanged, markers of the target format only;
* export over an existing FILE: FILE is its old bytes or the whole new
  tarball, never part of it; a retry writes the new one;
* discard: the upper gone, the lower untouched.

The layers hold one of each kind of thing a command may trip over: regular
files, hard links, symlinks, a fifo, xattrs, whiteouts, opaque and replaced
directories, a metadata-only (metacopy) copy-up, a mode 0555 directory; in
both upper formats where the command takes one.
"""

import os
import shutil
import stat

import pytest

from conftest import (OVLFS, HL, L, F, D, Fifo, snapshot, assert_same_tree,
                      run, ovlfs, cp_a, strace_steps, killed_at_step,
                      diff_snapshots, mountinfo, Overlay)
from test_redirect import Redirect, lower_snap, strip_dir_mtimes
from test_redirect_commit import CHANGING, steps_of, killed_at
from test_kill_more import markers

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="no strace")

FORMATS = ["oci", "kernel"]

# Under a sanitizer every run is slower: every 3rd step there.
SAN = 3 if os.environ.get("ASAN_OPTIONS") else 1


def j(*p):
    return os.path.join(*p)


SPEC = {
    "d": {"x": "x\n", "h1": "linked\n", "h2": HL("d/h1"), "gone": "gone\n",
          "sub": {"s": "s\n", "t": "t\n"}, "lnk": L("x"), "keep": "keep\n"},
    "repl": {"old": "old\n", "olddir": {"o": "o\n"}},
    "meta": F("metadata only\n", mode=0o644),
    "xa": F("xattrs\n", xattrs={"user.a": "1", "user.c": "3"}),
    "ro": D({"r": "r\n"}, mode=0o555),
    "fifo": Fifo(),
    "f": "f\n",
}


def changes(p):
    """What the upper holds: one of each kind of change."""
    os.unlink(j(p, "d/gone"))                                   # whiteout
    with open(j(p, "d/h1"), "a") as f:                          # a linked
        f.write("more\n")                                       # copy-up
    os.rename(j(p, "d/x"), j(p, "d/x2"))
    shutil.rmtree(j(p, "d/sub"))                                # dir gone
    os.chmod(j(p, "meta"), 0o600)                               # metacopy
    os.setxattr(j(p, "xa"), "user.b", b"2")
    os.removexattr(j(p, "xa"), "user.a")
    shutil.rmtree(j(p, "repl"))                                 # replaced
    os.mkdir(j(p, "repl"))                                      # (opaque)
    with open(j(p, "repl/new"), "w") as f:
        f.write("new\n")
    os.unlink(j(p, "f"))                                        # file ->
    os.mkdir(j(p, "f"))                                         # directory
    with open(j(p, "f/inside"), "w") as f:
        f.write("inside\n")
    with open(j(p, "ro/w"), "w") as f:                          # in 0555
        f.write("w\n")
    os.unlink(j(p, "fifo"))
    os.symlink("d/keep", j(p, "fifo"))
    os.mkdir(j(p, "new"))
    with open(j(p, "new/a"), "w") as f:
        f.write("a\n" * 100)
    os.link(j(p, "new/a"), j(p, "new/b"))
    os.symlink("a", j(p, "new/ln"))
    os.mkfifo(j(p, "new/p"))
    os.setxattr(j(p, "new/a"), "user.n", b"n")
    os.mkdir(j(p, "new/ro2"))
    with open(j(p, "new/ro2/z"), "w") as f:
        f.write("z\n")
    os.chmod(j(p, "new/ro2"), 0o555)


class Pair:
    """LOWER and an upper of FMT made by CHANGES through a mount, the
    model (a plain copy of the lower with the same changes), the merged
    view's snapshot, and the saved layers each trial starts from."""

    def __init__(self, work, fmt, ops=changes):
        self.work = work
        r = Redirect(work, SPEC, fmt)
        r.both(ops)
        r.check()
        self.view = snapshot(r.mnt, mtime=True, hide_private=True)
        r.ovl.umount()
        self.r = r
        self.fmt = fmt
        self.lower, self.upper, self.oracle = r.lower, r.upper, r.oracle
        self.mp = r.mnt
        self.saved_l, self.saved_u = j(work, "saved-lower"), j(work, "saved-upper")
        cp_a(self.lower, self.saved_l)
        cp_a(self.upper, self.saved_u)

    def restore(self):
        for p, s in ((self.lower, self.saved_l), (self.upper, self.saved_u)):
            if os.path.lexists(p):
                shutil.rmtree(p)
            cp_a(s, p)


def sweep(steps, stride=1):
    """The step numbers a sweep tries: all (or every STRIDE-th, the first
    and the last always), and len(steps): the run that is not killed."""
    stride *= SAN
    ns = list(range(0, len(steps), stride))
    if ns[-1] != len(steps) - 1:
        ns.append(len(steps) - 1)
    return ns + [len(steps)]


def where(steps, n):
    return "killed before step %d %s" % (n, steps[n] if n < len(steps) else "(none)")


# ---- commit, plain and atomic ----

@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_commit_every_step(work, fmt):
    """A plain commit killed before each changing call (every 4th time its
    retry too, before an earlier one), then run again: the model's lower."""
    p = Pair(work, fmt)
    cmd = [OVLFS, "commit", "--quiet", "--upper", p.upper, p.lower]
    want = snapshot(p.oracle)
    steps = steps_of(cmd, p.restore)
    for n in sweep(steps):
        p.restore()
        killed = killed_at(cmd, steps, n)
        if killed and n % 4 == 0 and os.path.exists(p.upper):
            killed_at_step(cmd, steps[n // 2])
        if os.path.exists(p.upper):
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "%s: retry: %s" % (where(steps, n), res.err)
        assert not os.path.exists(p.upper), where(steps, n)
        assert_same_tree(snapshot(p.lower), want, "lower (%s)" % where(steps, n),
                         "model")
    assert len(steps) > 40, len(steps)
    print("plain commit %s: %d steps" % (fmt, len(steps)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_atomic_commit_every_step(work, fmt):
    """An atomic commit killed before each changing call, then `ovlfs
    recover`: the lower wholly old with the upper as it was (and a commit
    then gives the new lower), or wholly new with the upper gone."""
    p = Pair(work, fmt)
    old = strip_dir_mtimes(lower_snap(p.lower))
    upper0 = snapshot(p.upper)
    want = snapshot(p.oracle)
    cmd = [OVLFS, "commit", "--atomic", "--quiet", "--upper", p.upper, p.lower]
    steps = steps_of(cmd, p.restore)
    seen = set()
    for n in sweep(steps):
        what = where(steps, n)
        p.restore()
        killed = killed_at(cmd, steps, n)
        rec = ovlfs("recover", "--upper", p.upper, p.lower)
        assert rec.returncode == 0, "%s: recover: %s" % (what, rec.err)
        assert not os.path.exists(j(p.lower, ".wh..wh.ovlfs-commit")), what
        if not killed or not os.path.exists(p.upper):
            assert_same_tree(snapshot(p.lower), want, "lower (%s)" % what, "model")
            seen.add("new")
            continue
        seen.add("old")
        assert_same_tree(strip_dir_mtimes(lower_snap(p.lower)), old,
                         "lower (%s)" % what, "old lower")
        assert_same_tree(snapshot(p.upper), upper0, "upper (%s)" % what,
                         "upper before")
        res = run(cmd, timeout=60)
        assert res.returncode == 0, "%s: commit after recover: %s" % (what, res.err)
        assert_same_tree(snapshot(p.lower), want, "lower (%s, committed)" % what,
                         "model")
    assert seen == {"old", "new"} and len(steps) > 40, (seen, len(steps))
    print("atomic commit %s: %d steps" % (fmt, len(steps)))
