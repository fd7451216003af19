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
                      mountinfo, Overlay, wait_for, sweep_steps)
from test_redirect import Redirect, lower_snap, strip_dir_mtimes
from test_redirect_commit import CHANGING, killed_at, killed_twice_at
from test_kill_more import markers, check

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="no strace")

FORMATS = ["oci", "kernel"]


# Known bugs (see the minimal reproductions below); strict, so that the
# fix turns them into failures to remove the marks for.


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

    def __init__(self, work, fmt, spec=SPEC, ops=changes):
        self.work = work
        r = Redirect(work, spec, fmt)
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


# What a commit writes: besides CHANGING, file data and metadata in place
# (a kill between a lower directory's mode and its times, say).
COMMIT_CALLS = CHANGING + (",write,pwrite64,copy_file_range,utimensat,fchownat,"
                           "fchown,lchown,chown,fchmod,fchmodat,chmod,"
                           "ftruncate,fallocate")


def steps_of(cmd, restore, calls=CHANGING):
    """test_redirect_commit.steps_of with a choice of CALLS: recorded on
    the state each trial starts from, after a first run."""
    restore()
    run(cmd, timeout=60)
    restore()
    return strace_steps(cmd, calls)


def sweep(steps, stride=1, offset=0):
    """The step numbers a sweep tries (conftest.sweep_steps)."""
    return sweep_steps(len(steps), stride, offset)


def killed_then_retried(cmd, steps, n, what):
    """CMD killed before step N (or run whole), and if it was, run again to
    its end: True if it was killed."""
    if not killed_at(cmd, steps, n):
        return False
    res = run(cmd, timeout=60)
    assert res.returncode == 0, "%s: retry: %s" % (what, res.err)
    return True


def where(steps, n):
    return "killed before step %d %s" % (n, steps[n] if n < len(steps) else "(none)")


def each_step(steps, stride, trial, offset=0):
    """TRIAL(n, what) for the steps of sweep(STEPS, STRIDE, OFFSET), each
    one run even after another failed: the failure names every bad step
    (what a bug report needs), not just the first."""
    bad, ns = [], sweep(steps, stride, offset)
    for n in ns:
        what = where(steps, n)
        try:
            trial(n, what)
        except (AssertionError, OSError) as e:
            bad.append("%s: %s" % (what, " | ".join(
                str(e).splitlines()[:3])[:400] or repr(e)))
    assert not bad, "%d of %d trials failed:\n  %s" % (len(bad), len(ns),
                                                       "\n  ".join(bad))
    return ns


# ---- commit, plain and atomic ----

@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_commit_every_step(work, fmt):
    """A plain commit killed before each changing call (every 4th time its
    retry too, before an earlier one), then run again: the model's lower."""
    p = Pair(work, fmt)
    cmd = [OVLFS, "commit", "--quiet", "--upper", p.upper, p.lower]
    want = snapshot(p.oracle)
    steps = steps_of(cmd, p.restore, COMMIT_CALLS)

    def trial(n, what):
        p.restore()
        killed_twice_at(cmd, steps, n, lambda: os.path.exists(p.upper))
        # killed while the finished upper went: its trash (the upper
        # renamed away), which the retry removes
        if os.path.exists(p.upper) or debris(work, ".upper.removed-"):
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "%s: retry: %s" % (what, res.err)
        assert not os.path.exists(p.upper), what
        assert not debris(work, ".upper.removed-"), what
        assert_same_tree(snapshot(p.lower), want, "lower (%s)" % what, "model")
    each_step(steps, 1, trial)
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
    steps = steps_of(cmd, p.restore, COMMIT_CALLS)
    seen = set()

    def trial(n, what):
        p.restore()
        killed = killed_at(cmd, steps, n)
        rec = ovlfs("recover", "--upper", p.upper, p.lower)
        assert rec.returncode == 0, "%s: recover: %s" % (what, rec.err)
        assert not os.path.exists(j(p.lower, ".wh..wh.ovlfs-commit")), what
        if not killed or not os.path.exists(p.upper):
            assert_same_tree(snapshot(p.lower), want, "lower (%s)" % what, "model")
            seen.add("new")
            return
        seen.add("old")
        assert_same_tree(strip_dir_mtimes(lower_snap(p.lower)), old,
                         "lower (%s)" % what, "old lower")
        assert_same_tree(snapshot(p.upper), upper0, "upper (%s)" % what,
                         "upper before")
        res = run(cmd, timeout=60)
        assert res.returncode == 0, "%s: commit after recover: %s" % (what, res.err)
        assert_same_tree(snapshot(p.lower), want, "lower (%s, committed)" % what,
                         "model")
    # the two formats' sweeps take every other step, together every one
    each_step(steps, 2, trial, offset=FORMATS.index(fmt))
    assert seen == {"old", "new"} and len(steps) > 40, (seen, len(steps))
    print("atomic commit %s: %d steps" % (fmt, len(steps)))


def fresh_lower(home, lower, saved):
    """LOWER as SAVED again, and no temporary upper of apply --commit
    (.lower.apply-*) left in HOME."""
    for n in debris(home, ".lower.apply-"):
        shutil.rmtree(j(home, n))
    if os.path.lexists(lower):
        shutil.rmtree(lower)
    cp_a(saved, lower)


def debris(work, prefix):
    return sorted(n for n in os.listdir(work) if n.startswith(prefix))


def fuse_under(root):
    root = os.fsencode(root)
    return [m["mp"] for m in mountinfo() if m["mp"].startswith(root + b"/")
            and m["fstype"].startswith("fuse")]


# ---- flatten ----

# What flatten writes: besides CHANGING, the file data and the metadata.
FLATTEN_CALLS = CHANGING + ",copy_file_range,utimensat,fchownat,fchown,fchmod"


@pytest.mark.parametrize("fmt", FORMATS)
def test_flatten_every_step(work, fmt):
    """flatten killed before each call that writes DEST: DEST is there only
    when whole (it is written as DEST.partial-XXXXXX, renamed at the end),
    no mount is left, and a retry writes the merged view. What the killed
    run left beside DEST (DEST.partial-*, the mount point DEST.flatten-*)
    the retry removes (it stayed, a half copy maybe large, for good)."""
    p = Pair(work, fmt)
    dest = j(work, "flat")
    cmd = [OVLFS, "flatten", "--upper", p.upper, p.lower, dest]

    def clean():
        for n in debris(work, "flat"):
            shutil.rmtree(j(work, n))
    clean()
    res = run(cmd, timeout=60)
    assert res.returncode == 0, res.err
    assert_same_tree(snapshot(dest, mtime=True), p.view, "flattened", "view")
    clean()
    steps = strace_steps(cmd, FLATTEN_CALLS)

    def trial(n, what):
        clean()
        killed = killed_at(cmd, steps, n)
        # the child serving the view dies with flatten (PR_SET_PDEATHSIG)
        assert wait_for(lambda: not fuse_under(work), 10), \
            "%s: %s" % (what, fuse_under(work))
        left = debris(work, "flat.")
        # man/ovlfs.1: at most DEST.partial-XXXXXX and an empty
        # DEST.flatten-XXXXXX to delete
        assert all(x.startswith(("flat.partial-", "flat.flatten-")) and
                   len(x) == len("flat.partial-XXXXXX") for x in left) and \
            len(left) <= 2, (what, left)
        assert all(not os.listdir(j(work, x)) for x in left
                   if x.startswith("flat.flatten-")), (what, left)
        if os.path.lexists(dest):
            # renamed into place: whole
            assert_same_tree(snapshot(dest, mtime=True), p.view,
                             "DEST (%s)" % what, "view")
            assert debris(work, "flat.") == left, what
        else:
            assert killed, what
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "%s: retry: %s" % (what, res.err)
            # the retry removes what the dead run left (it was kept)
            assert debris(work, "flat.") == [], (what, left)
        assert_same_tree(snapshot(dest, mtime=True), p.view,
                         "DEST (%s, retried)" % what, "view")
        assert not fuse_under(work), what
    each_step(steps, 2, trial)
    assert len(steps) > 40, len(steps)
    print("flatten %s: %d steps" % (fmt, len(steps)))


# ---- apply, into the upper and --commit ----

# What apply writes: besides CHANGING, file data and metadata.
APPLY_CALLS = CHANGING + ",write,utimensat,fchownat,fchown,fchmod,ftruncate"


def layer_ops(p):
    """The layer applied: over what the target upper did (changes) too."""
    os.unlink(j(p, "d/keep"))                       # a whiteout
    shutil.rmtree(j(p, "d/sub"))                    # the upper deleted it:
    os.mkdir(j(p, "d/sub"))                         # back, opaque
    with open(j(p, "d/sub/n"), "w") as f:
        f.write("n\n")
    with open(j(p, "repl/fromtar"), "w") as f:      # merges with the
        f.write("fromtar\n")                        # upper's opaque repl
    shutil.rmtree(j(p, "f")) if os.path.isdir(j(p, "f")) else os.unlink(j(p, "f"))
    os.chmod(j(p, "meta"), 0o640)                   # metacopy in the source
    os.setxattr(j(p, "xa"), "user.t", b"t")
    os.mkdir(j(p, "new"))                           # merges with the upper's
    with open(j(p, "new/t"), "w") as f:
        f.write("t\n" * 50)
    os.link(j(p, "new/t"), j(p, "new/t2"))
    os.symlink("t", j(p, "new/tl"))
    os.mkfifo(j(p, "new/tp"))
    with open(j(p, "new/a"), "w") as f:             # replaces the upper's
        f.write("from the tar\n")
    os.mkdir(j(p, "tdir"))
    with open(j(p, "tdir/q"), "w") as f:
        f.write("q\n")
    os.chmod(j(p, "tdir"), 0o555)
    os.unlink(j(p, "fifo"))
    os.mkdir(j(p, "fifo"))                          # a dir over a symlink


def make_layer(work, lower):
    """LAYER_OPS through a mount of LOWER, exported: the tarball."""
    mp = j(work, "src-mp")
    os.mkdir(mp)
    src = Overlay(lower, upper=j(work, "src-upper"), mp=mp)
    src.mount()
    layer_ops(mp)
    src.umount()
    tar = j(work, "layer.tar")
    res = ovlfs("export", "--tar", tar, "--upper", src.upper, lower)
    assert res.returncode == 0, res.err
    shutil.rmtree(src.upper)
    return tar


def merged(p, fmt=None):
    """The merged view of P's lower and upper (in FMT)."""
    o = Overlay(p.lower, upper=p.upper, mp=p.mp,
                extra_args=["--format", fmt or p.fmt])
    o.mount()
    try:
        return snapshot(p.mp, mtime=True, hide_private=True, root_attrs=True)
    finally:
        o.umount()


@pytest.mark.parametrize("fmt", FORMATS)
def test_apply_into_upper_every_step(work, fmt):
    """apply --tar into the upper killed before each changing call, then
    run again: the merged view of one run."""
    p = Pair(work, fmt)
    tar = make_layer(work, p.lower)
    cmd = [OVLFS, "apply", "--tar", tar, "--upper", p.upper, p.lower]
    p.restore()
    res = run(cmd, timeout=60)
    assert res.returncode == 0, res.err
    want = merged(p)
    assert want[b"d"]["names"] == [b"h1", b"h2", b"lnk", b"sub", b"x2"], want[b"d"]
    assert want[b"d/sub"]["names"] == [b"n"], want[b"d/sub"]
    steps = steps_of(cmd, p.restore, APPLY_CALLS)

    def trial(n, what):
        p.restore()
        killed = killed_at(cmd, steps, n)
        if killed:
            merged(p)           # a valid upper between kill and retry
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "%s: retry: %s" % (what, res.err)
        check(merged(p), want, "view (%s)" % what, root_mtime=False)
    each_step(steps, 2, trial)
    assert len(steps) > 40, len(steps)
    print("apply %s: %d steps" % (fmt, len(steps)))


def test_apply_commit_every_step(work):
    """apply --tar --commit killed before each changing call, then run
    again: the lower of one run. (A killed run leaves its temporary upper,
    .lower.apply-XXXXXX, to be removed by hand, docs/tar.md; a retry
    leaves none.)"""
    p = Pair(work, "oci")
    tar = make_layer(work, p.lower)
    shutil.rmtree(p.upper)
    shutil.rmtree(p.saved_u)
    cmd = [OVLFS, "apply", "--tar", tar, "--commit", p.lower]

    def restore():
        fresh_lower(work, p.lower, p.saved_l)
    restore()
    res = run(cmd, timeout=60)
    assert res.returncode == 0, res.err
    want = snapshot(p.lower, mtime=True, root_attrs=True)
    assert want[b"d/sub"]["names"] == [b"n"], want[b"d/sub"]
    steps = steps_of(cmd, restore)

    def trial(n, what):
        restore()
        killed = killed_at(cmd, steps, n)
        left = debris(work, ".lower.apply-")
        if killed:
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "%s: retry: %s" % (what, res.err)
        check(snapshot(p.lower, mtime=True, root_attrs=True), want,
              "lower (%s)" % what, root_mtime=False)
        assert debris(work, ".lower.apply-") == left, what
    each_step(steps, 1, trial)
    assert len(steps) > 40, len(steps)
    print("apply --commit: %d steps" % len(steps))


# ---- convert ----

@pytest.mark.parametrize("to", FORMATS)
def test_convert_every_step(work, to):
    """convert killed before each changing call, then run again: the view
    as before, markers of the target format only."""
    convert_sweep(Pair(work, "oci" if to == "kernel" else "kernel"), to, 2)


def convert_sweep(p, to, stride):
    """convert P's upper to TO, killed before every STRIDE-th step, then
    run again: the view as before, only markers of TO."""
    before = merged(p)
    cmd = [OVLFS, "convert", "--to", to, "--upper", p.upper, p.lower]
    steps = steps_of(cmd, p.restore)

    def trial(n, what):
        p.restore()
        killed_then_retried(cmd, steps, n, what)
        oci, kern = markers(p.upper)
        assert not (kern if to == "oci" else oci), (what, oci, kern)
        assert os.getxattr(p.upper, "user.ovlfs.format") == \
            (b"1 kernel" if to == "kernel" else b"1"), what
        check(merged(p, to), before, "view (%s)" % what, root_mtime=True)
    each_step(steps, stride, trial)
    assert len(steps) > 10, len(steps)
    print("convert to %s: %d steps" % (to, len(steps)))


# ---- export over an existing file ----

EXPORT_CALLS = CHANGING + ",openat,write,fchmod,fchown,ftruncate"


def test_export_over_a_file_every_step(work):
    """export --tar FILE, FILE there already, killed before each call of
    it that opens or writes: FILE is its old bytes or the whole new
    tarball, never part of one; a retry writes the new one. A killed run
    leaves debris (.FILE.export-PID.N) only when killed between naming its
    finished unnamed file and the rename over FILE (before, it left a named
    temporary file at every kill while writing: 64 of 100 steps); a retry
    leaves none of its own."""
    p = Pair(work, "oci")
    out = j(work, "out.tar")
    old = b"the old tarball\n" * 100
    cmd = [OVLFS, "export", "--tar", out, "--upper", p.upper, p.lower]

    def restore():
        for n in debris(work, ".out.tar.export-"):
            os.unlink(j(work, n))
        with open(out, "wb") as f:
            f.write(old)
        os.chmod(out, 0o640)
    restore()
    res = run(cmd, timeout=60)
    assert res.returncode == 0, res.err
    with open(out, "rb") as f:
        new = f.read()
    assert new != old and len(new) > 10240, len(new)
    assert stat.S_IMODE(os.lstat(out).st_mode) == 0o640
    restore()
    steps = strace_steps(cmd, EXPORT_CALLS)
    seen = set()

    def trial(n, what):
        restore()
        killed = killed_at(cmd, steps, n)
        with open(out, "rb") as f:
            got = f.read()
        assert got in (old, new), "%s: FILE is %d bytes, neither old nor new" % (
            what, len(got))
        seen.add("old" if got == old else "new")
        left = debris(work, ".out.tar.export-")
        # written to an unnamed file (O_TMPFILE), named only just before
        # the rename over FILE: killed there, and only there, it stays
        named = killed and steps[n][0] in ("rename", "renameat")
        assert len(left) == (1 if named else 0), (what, left)
        if killed:
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "%s: retry: %s" % (what, res.err)
        with open(out, "rb") as f:
            assert f.read() == new, what
        assert stat.S_IMODE(os.lstat(out).st_mode) == 0o640, what
        assert debris(work, ".out.tar.export-") == left, what
    each_step(steps, 2, trial)
    assert seen == {"old", "new"}, seen
    assert len(steps) > 20, len(steps)
    print("export: %d steps" % len(steps))


# ---- discard ----

@pytest.mark.parametrize("fmt", FORMATS)
def test_discard_every_step(work, fmt):
    """discard killed before each changing call, then run again: the upper
    is gone, the lower untouched (inode numbers and ctimes too)."""
    p = Pair(work, fmt)
    discard_sweep(p, [OVLFS, "discard", "--quiet", "--upper", p.upper,
                      p.lower], 2)


def discard_sweep(p, cmd, stride, outside=lambda what: None):
    """Discard P's upper with CMD, killed before every STRIDE-th step and
    run again: the upper gone (its trash too, .upper.removed-*), the lower
    untouched (inode numbers and ctimes too); OUTSIDE(what) checks more."""
    lower0 = snapshot(p.lower, mtime=True, ctime=True, ino=True, root_attrs=True)
    home = os.path.dirname(p.upper)

    def restore():
        if os.path.lexists(p.upper):
            shutil.rmtree(p.upper)
        cp_a(p.saved_u, p.upper)
    steps = steps_of(cmd, restore)

    def trial(n, what):
        restore()
        killed_then_retried(cmd, steps, n, what)
        assert not os.path.lexists(p.upper), what
        assert not debris(home, ".upper.removed-"), what
        assert_same_tree(snapshot(p.lower, mtime=True, ctime=True, ino=True,
                                  root_attrs=True), lower0, "lower (%s)" % what,
                         "lower before")
        outside(what)
    each_step(steps, stride, trial)
    assert len(steps) > 20, len(steps)
    print("discard: %d steps" % len(steps))


# ---- minimal reproductions of what the sweeps found ----

@pytest.mark.parametrize("to", FORMATS)
def test_convert_of_a_renamed_metacopy_file_every_step(work, to):
    """One lower file renamed through the mount (in the upper: a metacopy
    file with a redirect to it), converted, killed before each step. Killed
    after the old-format metacopy marker went and before the new-format
    redirect was set (oci -> kernel: before fremovexattr#3, removexattr#2,
    fsetxattr#3 or setxattr#2; the file then holds trusted.overlay.metacopy
    and trusted.ovlfs.redirect only), the retry exited 0 but left the
    file so (convert_dir converted a file's redirect only when
    ovl_convert_metacopy found the old-format marker), and a mount in the
    new format showed the file as EIO (a metacopy file with no redirect,
    looked up by its own name)."""
    frm = "oci" if to == "kernel" else "kernel"
    convert_sweep(Pair(work, frm, {"x": "x\n"},
                       lambda r: os.rename(j(r, "x"), j(r, "x2"))), to, 1)


def test_apply_commit_of_a_hard_link_every_step(work):
    """`apply --commit` of a tar holding d/, d/t and d/t2 (a hard link to
    d/t) into a lower without d, killed before each step. Killed before
    its second renameat (d/.wh..wh.tmp.PID.0, a link to d/t made in the
    lower, to d/t2), it leaves the temporary name in LOWER; the retry
    applied to a fresh temporary upper, whose commit was no retry (no
    user.ovlfs.commit mark on it), so remove_debris did not run and
    LOWER/d kept .wh..wh.tmp.PID.0, a third link of t, for good. The
    temporary upper of apply --commit is now marked so."""
    lower = j(work, "lower")
    os.mkdir(lower)
    src = j(work, "src")
    os.makedirs(j(src, "d"))
    with open(j(src, "d/t"), "w") as f:
        f.write("t\n")
    os.link(j(src, "d/t"), j(src, "d/t2"))
    tar = j(work, "layer.tar")
    run(["tar", "--format=pax", "--no-recursion", "-C", src, "-cf", tar,
         "d", "d/t", "d/t2"], check=True)
    cmd = [OVLFS, "apply", "--tar", tar, "--commit", lower]

    def restore():
        for n in debris(work, ".lower.apply-"):
            shutil.rmtree(j(work, n))
        shutil.rmtree(lower)
        os.mkdir(lower)
    steps = steps_of(cmd, restore)

    def trial(n, what):
        restore()
        killed_then_retried(cmd, steps, n, what)
        assert sorted(os.listdir(j(lower, "d"))) == ["t", "t2"], what
        assert os.lstat(j(lower, "d/t")).st_nlink == 2, what
    each_step(steps, 1, trial)
