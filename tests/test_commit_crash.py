"""commit-atomic survives kill -9 at any instant.

A lower of a few hundred files (on the session tmpfs) and an upper with a mix
of changes made through a mount are saved once.  The expected NEW lower is
the merged view of the pair (checked against an oracle copy with the same
changes).  Each trial restores the saved pair, starts
`ovlfs commit --atomic --quiet LOWER`, SIGKILLs it after a random delay
(spread over the command's measured duration, plus 0 and after-exit), runs
`ovlfs recover LOWER`, and checks that the lower is exactly OLD or exactly NEW,
that with OLD the upper is still there and unchanged, and that no work
directory remains.

OVLFS_CRASH_TRIALS (default 30) sets the number of trials per upper
placement; OVLFS_CRASH_SEED fixes the seed (printed on failure).
"""

import os
import random
import shutil
import stat
import subprocess
import time

import pytest

from conftest import (OVLFS, Overlay, F, D, L, Fifo, HL, build, cp_a, snapshot,
                      diff_snapshots, assert_same_tree, ovlfs, run, _outcome,
                      kill_after)

WORKDIR = b".wh..wh.ovlfs-commit"
TRIALS = int(os.environ.get("OVLFS_CRASH_TRIALS", "30"))
T1 = 1_650_000_000_123_456_789


def j(*p):
    return os.path.join(*p)


def lower_spec():
    spec = {}
    for d in range(12):
        files = {}
        for i in range(25):
            files["f%02d" % i] = F(("d%d f%d " % (d, i)) * (1 + (i * 37) % 200),
                                   mode=0o644 if i % 5 else 0o755)
        files["sub"] = {"a": "a%d" % d, "b": {"c": "c%d" % d}}
        files["link"] = L("f00")
        spec["dir%02d" % d] = files
    spec["big"] = F(b"B" * (2 << 20))
    spec["hl1"] = "hard linked"
    spec["hl2"] = HL("hl1")
    spec["x"] = F("x", xattrs={"user.k": "v"})
    spec["ro"] = D({"r": "r"}, mode=0o555)
    spec["opq"] = {"o1": "1", "o2": {"o3": "3"}}
    spec["t_file"] = "becomes a dir"
    spec["t_dir"] = {"inner": "becomes a file"}
    spec["fifo"] = Fifo()
    return spec


def changes(r):
    def w(p, data, mode=None):
        with open(j(r, p), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(j(r, p), mode)
    for d in range(0, 12, 2):
        w("dir%02d/f03" % d, "changed %d" % d)
        os.unlink(j(r, "dir%02d/f04" % d))
        w("dir%02d/new" % d, "new in %d" % d)
        os.chmod(j(r, "dir%02d/f05" % d), 0o600)
        os.utime(j(r, "dir%02d/f06" % d), ns=(T1, T1))
    shutil.rmtree(j(r, "dir11"))
    shutil.rmtree(j(r, "dir09/sub"))
    os.makedirs(j(r, "newdir/a/b"))
    for i in range(40):
        w("newdir/a/b/n%02d" % i, "n%d" % i * 50)
    w("newdir/bigger", b"N" * (3 << 20))
    with open(j(r, "big"), "r+b") as f:
        f.seek(1 << 20)
        f.write(b"changed in the middle")
    with open(j(r, "hl1"), "ab") as f:
        f.write(b" and changed")
    os.setxattr(j(r, "x"), "user.k", b"changed")
    w("ro/new", "in ro")
    shutil.rmtree(j(r, "opq"))
    os.mkdir(j(r, "opq"))
    w("opq/only", "only")
    os.unlink(j(r, "t_file"))
    os.mkdir(j(r, "t_file"))
    w("t_file/in", "in")
    shutil.rmtree(j(r, "t_dir"))
    w("t_dir", "now a file")
    os.unlink(j(r, "dir00/link"))
    os.symlink("/nonexistent/abs", j(r, "dir00/link"))
    os.rename(j(r, "dir01/f07"), j(r, "dir01/f07.renamed"))
    os.link(j(r, "newdir/a/b/n00"), j(r, "newdir/n00.link"))


def strip_dir_mtimes(snap):
    return {k: ({kk: vv for kk, vv in v.items() if kk != "mtime"}
                if v["type"] == "dir" else v) for k, v in snap.items()}


def link_groups(root):
    root = os.fsencode(root)
    groups = {}
    for dirpath, dirs, files in os.walk(root):
        for n in files + dirs:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(os.path.relpath(p, root))
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


class Crash:
    """The saved pair, OLD and NEW, and trial machinery."""

    def __init__(self, work, upper_dir, spec=lower_spec, change=changes, extra_args=()):
        self.work = work
        self.lower = j(work, "lower")
        os.mkdir(self.lower)
        build(self.lower, spec())
        oracle = j(work, "oracle")
        cp_a(self.lower, oracle)
        upper = j(upper_dir, "upper") if upper_dir else None
        self.ovl = Overlay(self.lower, upper=upper, extra_args=extra_args)
        self.upper = self.ovl.upper
        self.leftover_uppers = 0
        self.ovl.mount()
        exp = _outcome(change, oracle)
        got = _outcome(change, self.ovl.mp)
        assert got == exp == ("ok", None), (got, exp)
        assert_same_tree(snapshot(self.ovl.mp), snapshot(oracle))
        self.new_full = snapshot(self.ovl.mp, mtime=True, hide_private=True)
        self.new = strip_dir_mtimes(self.new_full)
        self.new_links = link_groups(oracle)
        self.ovl.umount()
        self.old = snapshot(self.lower, mtime=True)
        self.old_links = link_groups(self.lower)
        self.upper_snap = snapshot(self.upper, mtime=True, hide_private=True,
                                   root_attrs=True)
        save = upper_dir or work
        self.saved_lower = j(work, "saved-lower")
        self.saved_upper = j(save, "saved-upper")
        cp_a(self.lower, self.saved_lower)
        cp_a(self.upper, self.saved_upper)
        shutil.rmtree(oracle)

    def upper_args(self):
        return ["--upper", self.upper] if self.ovl.given_upper else []

    def restore(self):
        for p in (self.lower, self.upper):
            if os.path.lexists(p):
                subprocess.run(["rm", "-rf", "--", p], check=True)
        cp_a(self.saved_lower, self.lower)
        cp_a(self.saved_upper, self.upper)

    def cmd(self):
        return [OVLFS, "commit", "--atomic", "--quiet"] + self.upper_args() + [self.lower]

    def measure(self, n=3):
        ts = []
        for _ in range(n):
            self.restore()
            t = time.monotonic()
            r = run(self.cmd(), timeout=120)
            ts.append(time.monotonic() - t)
            assert r.returncode == 0, "uninterrupted commit failed: %s" % r.err
            self.check_state("uninterrupted", expect="new")
        return sorted(ts)[n // 2]

    def kill_after(self, delay):
        """Start a commit and SIGKILL it after DELAY; True if it was killed."""
        return kill_after(self.cmd(), delay)

    def lower_now(self):
        return snapshot(self.lower, mtime=True)

    def check_state(self, what, expect=None):
        """Lower is OLD or NEW; returns 'old' or 'new'."""
        assert not os.path.lexists(j(os.fsencode(self.lower), WORKDIR)), \
            "%s: work directory left in the lower" % what
        now = self.lower_now()
        d_old = diff_snapshots(now, self.old, "lower", "OLD")
        d_new = diff_snapshots(strip_dir_mtimes(now), self.new, "lower", "NEW")
        if not d_old:
            state = "old"
            assert link_groups(self.lower) == self.old_links
            assert os.path.isdir(self.upper), "%s: lower is OLD but the upper is gone" % what
            assert_same_tree(snapshot(self.upper, mtime=True, hide_private=True,
                                      root_attrs=True),
                             self.upper_snap, "upper now", "saved upper")
        elif not d_new:
            state = "new"
            assert link_groups(self.lower) == self.new_links, "%s: hard links" % what
            if os.path.lexists(self.upper) and self.ovl.given_upper:
                # `ovlfs recover LOWER` has no --upper and does not trust the
                # journal's upper path, so it cannot delete a non-default
                # upper (known limitation, see the report); the leftover is
                # already applied.  Remove it as a user would.
                self.leftover_uppers += 1
                subprocess.run(["rm", "-rf", "--", self.upper], check=True)
            elif os.path.lexists(self.upper):
                # the upper goes only after the new lower is durable; a kill
                # during clean-up may leave (part of) it: recover finishes it
                raise AssertionError("%s: lower is NEW but the upper %s still exists "
                                     "after recover" % (what, self.upper))
        else:
            raise AssertionError("%s: lower is neither OLD nor NEW:\n  vs OLD:\n    %s\n"
                                 "  vs NEW:\n    %s" % (what, "\n    ".join(d_old[:15]),
                                                       "\n    ".join(d_new[:15])))
        if expect:
            assert state == expect, "%s: expected %s, got %s" % (what, expect, state)
        return state


@pytest.fixture(params=["same-fs", "split-fs"])
def crash(request, work, alt_work):
    return Crash(work, alt_work if request.param == "split-fs" else None)


@pytest.mark.timeout(900)
def test_kill9_trials(crash):
    seed = int(os.environ.get("OVLFS_CRASH_SEED", str(random.SystemRandom().randrange(1 << 32))))
    rng = random.Random(seed)
    dur = crash.measure()
    delays = [0.0, dur * 1.5 + 0.05]
    while len(delays) < max(TRIALS, 2):
        delays.append(rng.uniform(0, dur * 1.1))
    seen = {"old": 0, "new": 0}
    for i, delay in enumerate(delays):
        what = "trial %d (seed %d, delay %.4fs of %.4fs)" % (i, seed, delay, dur)
        try:
            crash.restore()
            crash.kill_after(delay)
            r = run([OVLFS, "recover", crash.lower], timeout=120)
            assert r.returncode == 0, "%s: recover failed: %s" % (what, r.err)
            state = crash.check_state(what)
            seen[state] += 1
            # a second recover is a no-op
            before = snapshot(crash.lower, mtime=True, ctime=True, ino=True)
            up_before = os.path.isdir(crash.upper)
            r = run([OVLFS, "recover", crash.lower], timeout=120)
            assert r.returncode == 0, "%s: second recover failed: %s" % (what, r.err)
            assert "nothing to recover" in r.out + r.err, \
                "%s: second recover did something: %r" % (what, r.out + r.err)
            assert_same_tree(snapshot(crash.lower, mtime=True, ctime=True, ino=True),
                             before, "after 2nd recover", "before")
            assert os.path.isdir(crash.upper) == up_before
        except AssertionError as e:
            raise AssertionError("%s\nreproduce with OVLFS_CRASH_SEED=%d" % (e, seed))
    print("seed %d, duration %.4fs, outcomes %r, non-default uppers left by "
          "recover: %d" % (seed, dur, seen, crash.leftover_uppers))
    assert seen["new"] >= 1


def test_mount_after_kill_recovers(crash):
    """A mount of the pair after an interrupted commit recovers by itself;
    the merged view is NEW either way (rolled back: OLD lower + upper;
    rolled forward: NEW lower + no upper)."""
    seed = int(os.environ.get("OVLFS_CRASH_SEED", str(random.SystemRandom().randrange(1 << 32))))
    rng = random.Random(seed)
    dur = crash.measure(1)
    for i, delay in enumerate([0.0, dur * 0.3, dur * 0.6, dur * 0.9] +
                              [rng.uniform(0, dur) for _ in range(4)]):
        what = "trial %d (seed %d, delay %.4fs of %.4fs)" % (i, seed, delay, dur)
        crash.restore()
        crash.kill_after(delay)
        crash.ovl.mount()
        try:
            got = strip_dir_mtimes(snapshot(crash.ovl.mp, mtime=True, hide_private=True))
            d = diff_snapshots(got, crash.new, "merged view", "NEW")
            assert not d, "%s: merged view after auto-recovery is not NEW:\n  %s" % (
                what, "\n  ".join(d))
        finally:
            crash.ovl.umount()
        assert not os.path.lexists(j(os.fsencode(crash.lower), WORKDIR)), \
            "%s: mount left the work directory" % what
        r = run([OVLFS, "recover", crash.lower], timeout=60)
        assert r.returncode == 0 and "nothing to recover" in r.out + r.err, (what, r.out, r.err)


def test_commit_after_kill_recovers_first(crash):
    """A new commit after an interrupted one recovers first, then commits
    whatever upper is left: the result is NEW."""
    dur = crash.measure(1)
    for delay in (dur * 0.25, dur * 0.5, dur * 0.75):
        crash.restore()
        crash.kill_after(delay)
        if os.path.isdir(crash.upper):
            r = run(crash.cmd(), timeout=120)
            assert r.returncode == 0, r.err
        else:
            r = run([OVLFS, "recover", crash.lower], timeout=60)
            assert r.returncode == 0, r.err
        crash.check_state("commit after kill at %.4fs" % delay, expect="new")
