"""Renamed directories (redirects) committed as renames in the lower.

`ovlfs commit` and `commit --atomic` apply a directory renamed through the
mount as one rename in the lower, not as a copy of its tree: the lower
files of a renamed directory keep their inode numbers (the proof that
nothing was copied). Each scenario runs on the mount and on a plain copy of
the lower (the model); after the commit the lower must equal the model.
A plain commit killed at any instant converges on a retry; an atomic one
killed at any instant leaves the lower wholly old or wholly new after
`ovlfs recover`.
"""

import os
import random
import shutil
import subprocess
import time

import pytest

from conftest import (OVLFS, snapshot, assert_same_tree, run, ovlfs,
                      kill_after, renameat2, RENAME_EXCHANGE, cp_a,
                      traced_env, strace_steps, killed_at_step,
                      sweep_steps)
from test_redirect import (Redirect, TREE, renames, lower_snap,
                           strip_dir_mtimes)


def j(*p):
    return os.path.join(*p)


FORMATS = ["oci", "kernel"]
MODES = ["plain", "atomic"]


def inodes(root):
    """Regular file -> inode number, by path."""
    out = {}
    for d, _, files in os.walk(root):
        for n in files:
            st = os.lstat(j(d, n))
            out[os.path.relpath(j(d, n), root)] = st.st_ino
    return out


def commit(r, mode, check=True):
    args = ["commit"] + (["--atomic"] if mode == "atomic" else []) + [
        "--upper", r.upper, r.lower]
    res = ovlfs(*args)
    if check:
        assert res.returncode == 0, res.err
        assert not os.path.exists(r.upper)
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-rename"))
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-commit"))
    return res


@pytest.fixture(params=FORMATS)
def fmt(request):
    return request.param


def nested(p):
    os.rename(j(p, "d"), j(p, "d2"))
    os.rename(j(p, "d2/y"), j(p, "d2/y2"))                 # inside
    os.rename(j(p, "d2/y2/deeper"), j(p, "e/deeper"))      # out of
    os.rename(j(p, "e"), j(p, "d2/y2/e"))                  # into
    os.rename(j(p, "d2/y2"), j(p, "top"))
    open(j(p, "top/e/deeper/z"), "a").write("more\n")


def back_and_forth(p):
    os.rename(j(p, "d"), j(p, "d2"))
    os.rename(j(p, "d2"), j(p, "d"))
    os.rename(j(p, "e"), j(p, "other/e"))
    os.rename(j(p, "other/e"), j(p, "e"))


def over_lower_entries(p):
    os.unlink(j(p, "f"))
    os.rename(j(p, "d"), j(p, "f"))                        # over a whiteout
    for n in os.listdir(j(p, "other")):
        os.unlink(j(p, "other", n))
    os.rename(j(p, "e"), j(p, "other"))                    # over an empty dir


def swap(p):
    renameat2(j(p, "d"), j(p, "e"), RENAME_EXCHANGE)
    renameat2(j(p, "d/ed"), j(p, "other"), RENAME_EXCHANGE)


def chain(p):
    os.rename(j(p, "other"), j(p, "o2"))
    os.rename(j(p, "e"), j(p, "other"))
    os.rename(j(p, "d"), j(p, "e"))


def whiteouts_opaque(p):
    os.unlink(j(p, "d/gone"))
    os.unlink(j(p, "d/sub/s"))
    os.rmdir(j(p, "d/sub"))
    os.mkdir(j(p, "d/sub"))                                # opaque child
    open(j(p, "d/sub/t"), "w").write("t")
    open(j(p, "d/x"), "a").write("changed\n")
    os.rename(j(p, "d"), j(p, "e/d"))
    os.unlink(j(p, "e/d/w"))
    os.rename(j(p, "e/d/y/deep"), j(p, "e/d/deep"))


def hard_links(p):
    os.rename(j(p, "d"), j(p, "d2"))
    open(j(p, "d2/h1"), "a").write("through h1\n")


def old_name_reused(p):
    os.rename(j(p, "e"), j(p, "d3"))
    os.mkdir(j(p, "e"))
    open(j(p, "e/n"), "w").write("n")
    os.rename(j(p, "d"), j(p, "e/d"))                      # into an opaque dir


def into_new_dir(p):
    os.mkdir(j(p, "n"))
    os.rename(j(p, "d"), j(p, "n/d"))


SCENARIOS = {
    "renames": renames, "nested": nested, "back_and_forth": back_and_forth,
    "over_lower_entries": over_lower_entries, "swap": swap, "chain": chain,
    "whiteouts_opaque": whiteouts_opaque, "hard_links": hard_links,
    "old_name_reused": old_name_reused, "into_new_dir": into_new_dir,
}

# Lower files that a rename carries (old path, new path): same inode after
# the commit.
KEPT = {
    "renames": [("d/x", "d2/x"), ("d/sub/s", "d2/sub/s")],
    "nested": [("d/x", "d2/x"), ("d/y/deep", "top/deep"),
               ("e/ed/q", "top/e/ed/q")],
    "back_and_forth": [("d/x", "d/x"), ("e/e1", "e/e1")],
    "over_lower_entries": [("d/x", "f/x"), ("e/ed/q", "other/ed/q")],
    "swap": [("d/x", "e/x"), ("e/e1", "d/e1"), ("e/ed/q", "other/q"),
             ("other/o", "d/ed/o")],
    "chain": [("other/o", "o2/o"), ("e/e1", "other/e1"), ("d/x", "e/x")],
    "whiteouts_opaque": [("d/y/deeper/z", "e/d/y/deeper/z")],
    "hard_links": [("d/x", "d2/x")],
    "old_name_reused": [("e/e1", "d3/e1"), ("d/x", "e/d/x")],
    "into_new_dir": [("d/x", "n/d/x")],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_commit_renames_in_the_lower(work, fmt, mode, name):
    r = Redirect(work, TREE, fmt)
    r.both(SCENARIOS[name])
    r.check()
    want = snapshot(r.mnt, mtime=True)
    r.ovl.umount()
    before = inodes(r.lower)
    commit(r, mode)
    assert_same_tree(lower_snap(r.lower), want, "lower after commit", "mount")
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")
    after = inodes(r.lower)
    for old, new in KEPT[name]:
        assert after[new] == before[old], \
            "%s (was %s) was copied, not renamed" % (new, old)


@pytest.mark.parametrize("mode", MODES)
def test_commit_of_a_rename_into_a_long_opaque_path(work, fmt, mode):
    """A directory renamed into an opaque one whose path is longer than a
    redirect may be (the fuzzer's seed 86: rm -rf e/d; mkdir e/d; mv e
    M*252; mv d M*252/d/b): a plain commit leaves such a renamed directory
    a redirect naming its own path, which cannot be written. It stopped
    there ("cannot update its redirect: File name too long"), the renames
    made, and every retry did the same; such renames are now copied into
    the upper first (as across a mount), atomic ones stay renames."""
    r = Redirect(work, TREE, fmt)
    long = "M" * 252

    def ops(p):
        shutil.rmtree(j(p, "e/ed"))
        os.mkdir(j(p, "e/ed"))                          # opaque
        os.rename(j(p, "e"), j(p, long))
        os.rename(j(p, "d"), j(p, long, "ed", "d"))
    r.both(ops)
    r.check()
    want = snapshot(r.mnt, mtime=True)
    r.ovl.umount()
    commit(r, mode)
    assert_same_tree(lower_snap(r.lower), want, "lower after commit", "mount")
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")


@pytest.mark.parametrize("mode", MODES)
def test_names_deleted_in_a_dir_renamed_as_a_copy(work, fmt, mode):
    """A directory whose redirect would be too long to write (its old path
    is) is renamed as a copy of its tree (opaque): in the kernel format it
    kept the whiteouts it held, so creating a file, a directory or a link,
    or renaming a directory, at a deleted name failed (EEXIST, ENOTDIR:
    the kernel-format fuzzer's seeds 101, 151, 208)."""
    long = "N" * 255
    r = Redirect(work, {long: {"d": {"x": "x\n", "w": "w\n", "keep": "k\n",
                                     "sub": {"s": "s\n"}, "y": {},
                                     "gone": "g\n"}},
                        "e": {}}, fmt)

    def ops(p):
        d = j(p, long, "d")
        os.unlink(j(d, "x"))
        os.unlink(j(d, "w"))
        shutil.rmtree(j(d, "sub"))
        os.rmdir(j(d, "y"))
        os.rename(j(d, "gone"), j(p, "e/gone"))         # its whiteout stays
        os.rename(d, j(p, "e/d"))                       # "/N...N/d": too long
        open(j(p, "e/d/x"), "w").write("new x\n")
        os.mkdir(j(p, "e/d/sub"))
        os.link(j(p, "e/d/keep"), j(p, "e/d/w"))
        os.mkdir(j(p, "moved"))
        os.rename(j(p, "moved"), j(p, "e/d/y"))
    r.both(ops)
    r.check()
    r.ovl.remount()
    r.check()
    # commit --atomic staged the copied tree with its whiteouts, as 0/0
    # devices (kernel-format fuzzer seed 457)
    want = snapshot(r.mnt, mtime=True)
    r.ovl.umount()
    commit(r, mode)
    assert_same_tree(lower_snap(r.lower), want, "lower after commit", "mount")


@pytest.mark.parametrize("mode", MODES)
def test_commit_of_renamed_big_dir_copies_nothing(work, fmt, mode):
    """10,000 files renamed: the commit renames the directory in the lower
    (same directory inode, same file inodes) and is quick."""
    spec = {"big": {"f%05d" % i: "data %d\n" % i for i in range(10000)},
            "dst": {}}
    r = Redirect(work, spec, fmt)
    r.both(lambda p: os.rename(j(p, "big"), j(p, "dst/big2")))
    r.ovl.umount()
    dino = os.lstat(j(r.lower, "big")).st_ino
    before = inodes(j(r.lower, "big"))
    t = time.monotonic()
    commit(r, mode)
    took = time.monotonic() - t
    assert os.lstat(j(r.lower, "dst/big2")).st_ino == dino
    assert inodes(j(r.lower, "dst/big2")) == before
    assert not os.path.exists(j(r.lower, "big"))
    assert took < 5, "commit took %.2f s" % took


def test_commit_refuses_a_redirect_to_nothing(work, fmt):
    """A redirect naming no lower directory: the commit fails naming the
    directory and the redirect, and changes nothing."""
    r = Redirect(work, TREE, fmt)
    r.both(lambda p: os.rename(j(p, "d"), j(p, "d2")))
    r.ovl.umount()
    shutil.rmtree(j(r.lower, "d"))
    os.mkdir(j(r.lower, "d"))       # keep the whiteout's target a directory
    os.rmdir(j(r.lower, "d"))
    lower0, upper0 = lower_snap(r.lower), snapshot(r.upper, mtime=True)
    for mode in MODES:
        res = commit(r, mode, check=False)
        assert res.returncode == 1, res.err
        assert "d2" in res.err and "\"d\"" in res.err, res.err
        assert lower_snap(r.lower) == lower0
        assert snapshot(r.upper, mtime=True) == upper0


def kill_scenario(p):
    nested(p)
    swap_free = j(p, "other")
    os.rename(swap_free, j(p, "top/other"))
    os.unlink(j(p, "d2/gone"))
    os.mkdir(j(p, "n"))
    os.rename(j(p, "d2"), j(p, "n/d2"))


def test_plain_commit_killed_converges(work, fmt):
    """A plain commit with renames killed at random instants (and its retry
    killed too, sometimes): a retry always ends with the model's lower."""
    r = Redirect(work, TREE, fmt)
    r.both(kill_scenario)
    r.ovl.umount()
    saved_l, saved_u = j(work, "saved-lower"), j(work, "saved-upper")
    cp_a(r.lower, saved_l)
    cp_a(r.upper, saved_u)
    cmd = [OVLFS, "commit", "--quiet", "--upper", r.upper, r.lower]
    t = time.monotonic()
    res = run(cmd, timeout=60)
    assert res.returncode == 0, res.err
    took = time.monotonic() - t
    want = snapshot(r.oracle)
    assert_same_tree(snapshot(r.lower), want, "lower", "model")
    rnd = random.Random(int(os.environ.get("OVLFS_CRASH_SEED", "15")))
    for trial in range(16):
        for p, s in ((r.lower, saved_l), (r.upper, saved_u)):
            if os.path.lexists(p):
                shutil.rmtree(p)
            cp_a(s, p)
        ino = os.lstat(j(r.lower, "d/x")).st_ino
        killed = kill_after(cmd, rnd.uniform(0, took * 1.2))
        if killed and trial % 3 == 0 and os.path.exists(r.upper):
            kill_after(cmd, rnd.uniform(0, took))
        if os.path.exists(r.upper):
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "trial %d: %s" % (trial, res.err)
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-rename"))
        assert_same_tree(snapshot(r.lower), want,
                         "lower after retry (trial %d, killed %s)" % (trial, killed),
                         "model")
        assert os.lstat(j(r.lower, "n/d2/x")).st_ino == ino, "copied"


def test_atomic_commit_killed_is_all_or_nothing(work, fmt):
    """An atomic commit with renames (sources nested, a swap, a target in a
    renamed directory) killed at random instants: after `ovlfs recover` the
    lower is wholly old or wholly new (file inodes included), and a second
    commit then ends with the new one."""
    def ops(p):
        nested(p)
        renameat2(j(p, "top"), j(p, "other"), RENAME_EXCHANGE)
        os.unlink(j(p, "d2/gone"))
        os.chmod(j(p, "d2/x"), 0o600)
    r = Redirect(work, TREE, fmt)
    r.both(ops)
    r.ovl.umount()
    old = strip_dir_mtimes(lower_snap(r.lower))
    old_ino = inodes(r.lower)
    saved_l, saved_u = j(work, "saved-lower"), j(work, "saved-upper")
    cp_a(r.lower, saved_l)
    cp_a(r.upper, saved_u)
    cmd = [OVLFS, "commit", "--atomic", "--quiet", "--upper", r.upper, r.lower]
    t = time.monotonic()
    res = run(cmd, timeout=60)
    assert res.returncode == 0, res.err
    took = time.monotonic() - t
    new = strip_dir_mtimes(lower_snap(r.lower))
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")
    rnd = random.Random(int(os.environ.get("OVLFS_CRASH_SEED", "15")))
    outcomes = set()
    for trial in range(24):
        for p, s in ((r.lower, saved_l), (r.upper, saved_u)):
            if os.path.lexists(p):
                shutil.rmtree(p)
            cp_a(s, p)
        old_ino = inodes(r.lower)
        killed = kill_after(cmd, rnd.uniform(0, took * 1.3))
        rec = ovlfs("recover", "--upper", r.upper, r.lower)
        assert rec.returncode == 0, rec.err
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-commit"))
        now = strip_dir_mtimes(lower_snap(r.lower))
        if now == new:
            outcomes.add("new")
            assert inodes(r.lower)["d2/x"] == old_ino["d/x"], "copied"
            continue
        outcomes.add("old")
        assert_same_tree(now, old, "lower after kill (trial %d, killed %s)"
                         % (trial, killed), "old lower")
        assert inodes(r.lower) == old_ino, "trial %d" % trial
        res = run(cmd, timeout=60)
        assert res.returncode == 0, res.err
        assert_same_tree(strip_dir_mtimes(lower_snap(r.lower)), new,
                         "lower after a second commit", "new tree")


# Calls that change a layer: a kill before each of them, in turn, is a
# crash at every step of a commit (strace delivers the signal on entry;
# conftest.strace_steps numbers them).
CHANGING = ("rename,renameat,renameat2,mkdir,mkdirat,unlink,unlinkat,rmdir,"
            "link,linkat,symlinkat,mknodat,fsync,syncfs,setxattr,fsetxattr,"
            "lsetxattr,removexattr,fremovexattr,lremovexattr")


def steps_of(cmd, restore):
    """CMD's layer-changing calls from the state RESTORE makes, which each
    trial starts from: recorded on a second run, as the first one also
    removes the default mount point's directory, which no later run finds."""
    restore()
    run(cmd, timeout=60)
    restore()
    return strace_steps(cmd, CHANGING)


def killed_at(cmd, steps, n):
    """Run CMD killed before its Nth step (of STEPS, steps_of), or, N past
    them, to its end (it must succeed). True if it was killed."""
    if n == len(steps):
        res = run(cmd, timeout=60)
        assert res.returncode == 0, res.err
        return False
    assert killed_at_step(cmd, steps[n]), "no kill at step %d: %s" % (n, steps[n])
    return True


def killed_twice_at(cmd, steps, n, pending):
    """killed_at, and every 4th time, if PENDING() (the upper is still
    there), its retry killed too, before an earlier step (N // 2). True if
    the first run was killed."""
    killed = killed_at(cmd, steps, n)
    if killed and n % 4 == 0 and pending():
        killed_at_step(cmd, steps[n // 2])
    return killed


def crash_pair(work, fmt, scenario=None):
    def ops(p):
        nested(p)
        renameat2(j(p, "top"), j(p, "other"), RENAME_EXCHANGE)
        os.unlink(j(p, "d2/gone"))
        os.chmod(j(p, "d2/x"), 0o600)
        os.mkdir(j(p, "n"))
        os.rename(j(p, "d2"), j(p, "n/d2"))
    r = Redirect(work, TREE, fmt)
    r.both(scenario or ops)
    r.ovl.umount()
    saved_l, saved_u = j(work, "saved-lower"), j(work, "saved-upper")
    cp_a(r.lower, saved_l)
    cp_a(r.upper, saved_u)

    def restore():
        for p, s in ((r.lower, saved_l), (r.upper, saved_u)):
            if os.path.lexists(p):
                shutil.rmtree(p)
            cp_a(s, p)
    return r, restore


def over_and_into(p):
    over_lower_entries(p)
    os.mkdir(j(p, "n"))
    os.rename(j(p, "f"), j(p, "n/f"))
    open(j(p, "n/f/x"), "a").write("more\n")


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace")
@pytest.mark.parametrize("scenario", [None, over_and_into],
                         ids=["nested-swap", "over-entries"])
def test_atomic_commit_crash_at_every_step(work, fmt, scenario):
    """An atomic commit with renames killed before each of its changing
    calls in turn: after `ovlfs recover` the lower is wholly old (its file
    inodes too) or wholly new, and the new one keeps the renamed files'
    inodes."""
    r, restore = crash_pair(work, fmt, scenario)
    old = strip_dir_mtimes(lower_snap(r.lower))
    old_ino = inodes(r.lower)
    cmd = [OVLFS, "commit", "--atomic", "--quiet", "--upper", r.upper, r.lower]
    kept = ("n/d2/x", "d/x") if scenario is None else ("n/f/w", "d/w")
    steps = steps_of(cmd, restore)
    seen = set()
    # the two formats' sweeps take every other step, together every one
    for n in sweep_steps(len(steps), 2, FORMATS.index(fmt)):
        restore()
        old_ino = inodes(r.lower)
        killed = killed_at(cmd, steps, n)
        rec = ovlfs("recover", "--upper", r.upper, r.lower)
        assert rec.returncode == 0, rec.err
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-commit"))
        now = strip_dir_mtimes(lower_snap(r.lower))
        if not killed or not os.path.exists(r.upper):
            assert_same_tree(snapshot(r.lower), snapshot(r.oracle),
                             "lower (killed at call %d)" % n, "model")
            assert inodes(r.lower)[kept[0]] == old_ino[kept[1]]
            seen.add("new")
        else:
            assert_same_tree(now, old, "lower (killed at call %d)" % n, "old")
            assert inodes(r.lower) == old_ino, "killed at call %d" % n
            seen.add("old")
    assert seen == {"old", "new"} and len(steps) > 50, (seen, len(steps))


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace")
@pytest.mark.parametrize("scenario", [None, over_and_into, kill_scenario],
                         ids=["nested-swap", "over-entries", "kill-scenario"])
def test_plain_commit_crash_at_every_step(work, fmt, scenario):
    """A plain commit with renames killed before each of its changing calls
    in turn, then run again (killed again at an earlier call, sometimes):
    it ends with the model's lower, the renamed files' inodes kept. (Not
    every step was tried before strace_steps: a run killed between the
    unlinks of its work directory, "placing" gone and the plan left, made
    the retry move placed sources again and fail with ENOENT.)"""
    r, restore = crash_pair(work, fmt, scenario)
    cmd = [OVLFS, "commit", "--quiet", "--upper", r.upper, r.lower]
    kept = ("n/f/w", "d/w") if scenario is over_and_into else ("n/d2/x", "d/x")
    steps = steps_of(cmd, restore)
    for n in sweep_steps(len(steps)):
        restore()
        old_ino = inodes(r.lower)
        killed_twice_at(cmd, steps, n, lambda: os.path.exists(r.upper))
        if os.path.exists(r.upper):
            res = run(cmd, timeout=60)
            assert res.returncode == 0, "killed at call %d: %s" % (n, res.err)
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-rename"))
        assert_same_tree(snapshot(r.lower), snapshot(r.oracle),
                         "lower (killed at call %d)" % n, "model")
        assert inodes(r.lower)[kept[0]] == old_ino[kept[1]], n
    assert len(steps) > 40, len(steps)


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace")
@pytest.mark.parametrize("scenario", [None, over_and_into],
                         ids=["nested-swap", "over-entries"])
def test_atomic_commit_failing_rename_rolls_back(work, fmt, scenario):
    """The Nth rename of an atomic commit with renames fails (EIO), for each
    N in turn: the commit fails with the lower wholly old and the upper kept
    (rolled back: the renamed directories go back where they were), or, a
    rename of the cleanup failing, says how to finish."""
    r, restore = crash_pair(work, fmt, scenario)
    old = strip_dir_mtimes(lower_snap(r.lower))
    cmd = [OVLFS, "commit", "--atomic", "--quiet", "--upper", r.upper, r.lower]
    calls = "rename,renameat,renameat2"
    n, rolled = 1, 0
    while True:
        assert n < 1000, "no end after %d injections" % n
        restore()
        old_ino = inodes(r.lower)
        res = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e",
                   "trace=" + calls, "-e",
                   "inject=%s:error=EIO:when=%d" % (calls, n)] + cmd, timeout=60,
                  env=traced_env())
        if res.returncode == 0:
            break
        assert res.returncode == 1, res.err
        if os.path.exists(j(r.lower, ".wh..wh.ovlfs-commit")):
            rec = ovlfs("recover", "--upper", r.upper, r.lower)
            assert rec.returncode == 0, rec.err
        if "rolled back" in res.err or "unchanged" in res.err:
            rolled += 1
            assert_same_tree(strip_dir_mtimes(lower_snap(r.lower)), old,
                             "lower (rename %d failed)" % n, "old")
            assert inodes(r.lower) == old_ino, n
            assert os.path.exists(r.upper)
        else:
            assert_same_tree(snapshot(r.lower), snapshot(r.oracle),
                             "lower (rename %d failed)" % n, "model")
        n += 1
    assert rolled > 5, (rolled, n)


# ---- diff: a renamed directory is one rename ----

def tree_paths(root):
    out = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            if not n.startswith(".wh."):
                out.add("/" + os.path.relpath(j(d, n), root))
    return out


def replay(lower_paths, changes):
    """The lower's paths after CHANGES (diff --json). The renames happen
    at once, as a commit does them (a swap, a chain): each "from" names the
    lower as it was, so every renamed tree is taken out first (the deepest
    first: a source inside another leaves it), then put in place where its
    R comes."""
    cur = {p: p for p in lower_paths}          # current path -> original
    out = {}
    for ch in sorted((c for c in changes if c["change"] == "R"),
                     key=lambda c: -c["from"].count("/")):
        src = ch["from"]
        assert src in cur, "%s renamed from %s, which is gone" % (ch["path"], src)
        out[src] = {c[len(src):]: o for c, o in cur.items()
                    if c == src or c.startswith(src + "/")}
        for c in out[src]:
            del cur[src + c]
    for ch in changes:
        p, kind = ch["path"], ch["change"]
        if kind == "D":
            assert p in cur, "%s deleted but not there" % p
            del cur[p]
        elif kind == "A":
            assert p not in cur, "%s added but there" % p
            cur[p] = None
        elif kind == "M":
            assert p in cur, "%s modified but not there" % p
        elif kind == "R":
            assert p not in cur, "%s renamed over an entry" % p
            for c, o in out.pop(ch["from"]).items():
                cur[p + c] = o
        else:
            raise AssertionError("unknown change %r" % kind)
    return set(cur)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_diff_reports_renames(work, fmt, name):
    """diff --json and text: the changes, replayed on the lower's paths
    (renames as moves of the old path), give the merged view's paths; a
    lower directory's rename is one R change, never its tree added."""
    import json
    r = Redirect(work, TREE, fmt)
    r.both(SCENARIOS[name])
    merged = tree_paths(r.mnt)
    r.ovl.umount()
    lower = tree_paths(r.lower)
    res = ovlfs("diff", "--json", "--upper", r.upper, r.lower)
    assert res.returncode == 0, res.err
    doc = json.loads(res.out)
    changes = doc["changes"]
    assert replay(lower, changes) == merged
    renamed = [c for c in changes if c["change"] == "R"]
    for c in renamed:
        assert c["type"] == "dir" and c["from"] != c["path"]
    assert doc["summary"]["renamed"] == len(renamed)
    for old, new in KEPT[name]:
        if old != new:
            assert not any(c["path"] == "/" + new and c["change"] == "A"
                           for c in changes), "/%s reported added" % new
    text = ovlfs("diff", "--upper", r.upper, r.lower)
    assert text.returncode == 0, text.err
    lines = text.out.splitlines()
    assert len(lines) == len(changes) + 1
    for line, c in zip(lines, changes):
        assert line.startswith("%s %s" % (c["change"], c["path"])), line
        if c["change"] == "R":
            assert line.startswith("R %s (from %s" % (c["path"], c["from"]))


def test_diff_rename_output(work):
    r = Redirect(work, TREE, "oci")
    r.both(renames)
    r.ovl.umount()
    res = ovlfs("diff", "--upper", r.upper, r.lower)
    assert res.returncode == 0, res.err
    assert res.out == (
        "R /d2 (from /d; mtime)\n"
        "D /d2/gone\n"
        "R /deeper (from /d/y/deeper)\n"
        "D /f\n"
        "R /f (from /other)\n"
        "A /n\n"
        "R /n/e (from /e; mtime)\n"
        "R /n/e/y (from /d/y; mtime)\n"
        "M /n/e/y/deep (content, mtime)\n"
        "1 added, 1 modified, 2 deleted, 5 renamed; 10 bytes added or changed\n")


# ---- flatten and convert of nested renames ----

@pytest.mark.parametrize("name", ["nested", "swap", "chain", "old_name_reused"])
def test_flatten_and_convert_nested_renames(work, fmt, name):
    """flatten writes the merged view of nested renames; convert to the
    other format keeps every redirect, and a commit after it renames."""
    r = Redirect(work, TREE, fmt)
    r.both(SCENARIOS[name])
    r.ovl.umount()
    dest = j(work, "flat")
    res = ovlfs("flatten", "--upper", r.upper, r.lower, dest)
    assert res.returncode == 0, res.err
    assert_same_tree(snapshot(dest), snapshot(r.oracle), "flattened", "model")
    to = "oci" if fmt == "kernel" else "kernel"
    res = ovlfs("convert", "--to", to, "--upper", r.upper, r.lower)
    assert res.returncode == 0, res.err
    before = inodes(r.lower)
    res = commit(r, "plain")
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")
    after = inodes(r.lower)
    for old, new in KEPT[name]:
        assert after[new] == before[old], "%s copied" % new


def test_commit_into_one_of_several_lowers(work):
    """Several lowers, commit --into one: a directory renamed within that
    lower is renamed there; one whose lower part is in another lower is
    refused, naming it, with nothing changed (the commit sees one lower: a
    copy or a whiteout there would lose the other lower's tree)."""
    from test_layers import lowers_overlay
    top, bottom = j(work, "top"), j(work, "bottom")
    os.mkdir(top)
    os.mkdir(bottom)
    os.makedirs(j(top, "t/sub"))
    open(j(top, "t/sub/f"), "w").write("f")
    os.makedirs(j(bottom, "b"))
    open(j(bottom, "b/g"), "w").write("g")
    upper = j(work, "upper")
    o = lowers_overlay([top, bottom], upper, j(work, "mnt"))
    o.mount()
    os.rename(j(o.mp, "t"), j(o.mp, "t2"))
    o.umount()
    spec = top + ":" + bottom
    ino = os.lstat(j(top, "t/sub/f")).st_ino
    r = run([OVLFS, "commit", "--lower", spec, "-u", upper, "--into", top])
    assert r.returncode == 0, r.err
    assert os.lstat(j(top, "t2/sub/f")).st_ino == ino
    assert not os.path.exists(j(top, "t"))
    o.mount()
    os.rename(j(o.mp, "b"), j(o.mp, "b2"))
    o.umount()
    before = snapshot(top, mtime=True), snapshot(upper, mtime=True)
    r = run([OVLFS, "commit", "--lower", spec, "-u", upper, "--into", top])
    assert r.returncode == 1, r.err
    assert "b2" in r.err and "\"b\"" in r.err, r.err
    assert (snapshot(top, mtime=True), snapshot(upper, mtime=True)) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_rename_across_a_mount_in_the_lower_is_copied(work):
    """A renamed directory whose lower part is on another filesystem
    mounted inside the lower cannot be renamed (EXDEV): the plain commit
    copies it (the fallback), and the lower ends as the merged view. (An
    atomic commit cannot change anything inside such a mount at all: its
    stage and trash are on the lower's own filesystem.)"""
    mode = "plain"
    r = Redirect(work, {"m": {}, "t": {"x": "x\\n"}}, "oci")
    r.ovl.umount()
    m = j(r.lower, "m")
    run(["mount", "-t", "tmpfs", "-o", "size=16m", "ovlfs-test", m], check=True)
    try:
        os.makedirs(j(m, "dir/sub"))
        open(j(m, "dir/sub/f"), "w").write("f\n")
        shutil.rmtree(r.oracle)
        cp_a(r.lower, r.oracle)
        r.ovl.mount()
        r.both(lambda p: os.rename(j(p, "m/dir"), j(p, "dir2")))
        r.both(lambda p: os.rename(j(p, "t"), j(p, "m/t2")))
        r.check()
        r.ovl.umount()
        commit(r, mode)
        assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")
    finally:
        run(["umount", m], check=True)


@pytest.mark.parametrize("mode", MODES)
def test_rename_over_a_mount_point_is_refused_first(work, mode):
    """A renamed directory replacing what the lower has at its new name,
    where that is a mount point: the commit refuses before anything moves
    (naming the mount), the pair still shows the merged view, and once
    the mount is gone the commit finishes."""
    r = Redirect(work, {"d": {"x": "x\n"}, "t": {}}, "oci")
    r.ovl.umount()
    t = j(r.lower, "t")
    run(["mount", "-t", "tmpfs", "-o", "size=16m", "ovlfs-test", t], check=True)
    try:
        r.ovl.mount()
        r.both(lambda p: os.rename(j(p, "d"), j(p, "t")))
        r.ovl.umount()
        before = snapshot(r.lower)
        res = commit(r, mode, check=False)
        assert res.returncode == 1, res.err
        assert "mount point" in res.err and t in res.err, res.err
        assert "nothing was changed" in res.err, res.err
        assert snapshot(r.lower) == before
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-rename"))
        r.ovl.mount()
        r.check()
        r.ovl.umount()
    finally:
        run(["umount", t], check=True)
    commit(r, mode)
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")


@pytest.mark.parametrize("mode", MODES)
def test_persistent_inode_numbers_survive_the_commit(work, fmt, mode):
    """With persistent inode numbers, a file of a renamed directory has the
    same number through the mount before the rename, after it, and after
    the commit (the lower file was renamed, not copied)."""
    r = Redirect(work, TREE, fmt, inode_mode="persistent")
    before = os.lstat(r.m("d/y/deep")).st_ino
    os.rename(r.m("d"), r.m("e/moved"))
    assert os.lstat(r.m("e/moved/y/deep")).st_ino == before
    r.ovl.umount()
    commit(r, mode)
    r.ovl.mount()
    assert os.lstat(r.m("e/moved/y/deep")).st_ino == before
    r.ovl.umount()


@pytest.mark.skipif(shutil.which("strace") is None, reason="no strace")
def test_killed_renames_refuse_other_commands(work):
    """A plain commit killed with renamed directories on their way (in its
    work directory in the lower): mount, diff, discard and recover refuse,
    saying to run the commit again, and change nothing; the commit run
    again finishes."""
    r, restore = crash_pair(work, "oci")
    cmd = [OVLFS, "commit", "--quiet", "--upper", r.upper, r.lower]
    wd = j(r.lower, ".wh..wh.ovlfs-rename")
    steps = steps_of(cmd, restore)
    for step in steps:
        restore()
        assert killed_at_step(cmd, step), step
        if os.path.isdir(wd) and len(os.listdir(wd)) > 2:
            break
    else:
        pytest.fail("no kill left the renames half done")
    lower0, upper0 = lower_snap(r.lower), snapshot(r.upper, mtime=True)
    for args in (["diff", "--upper", r.upper, r.lower],
                 ["discard", "--upper", r.upper, r.lower],
                 ["recover", "--upper", r.upper, r.lower]):
        res = ovlfs(*args)
        assert res.returncode == 1, (args, res.out, res.err)
        assert "run `ovlfs commit --upper %s %s` again" % (r.upper, r.lower) \
            in res.err, res.err
    res = r.ovl.mount(check=False)
    assert res.returncode != 0 and "ovlfs commit" in res.err, res.err
    assert lower_snap(r.lower) == lower0
    assert snapshot(r.upper, mtime=True) == upper0
    res = run(cmd)
    assert res.returncode == 0, res.err
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")


def test_damaged_rename_plan_is_refused(work):
    """The plan of a killed plain commit comes from the lower: one with a
    path leading out of the lower stops the commit with nothing changed."""
    r = Redirect(work, TREE, "oci")
    r.both(lambda p: os.rename(j(p, "d"), j(p, "d2")))
    r.ovl.umount()
    wd = j(r.lower, ".wh..wh.ovlfs-rename")
    os.mkdir(wd)
    with open(j(wd, "plan"), "w") as f:
        f.write("1 ../../etc d2\nend\n")
    before = lower_snap(r.lower), snapshot(r.upper, mtime=True)
    res = commit(r, "plain", check=False)
    assert res.returncode == 1 and "plan is damaged" in res.err, res.err
    assert (lower_snap(r.lower), snapshot(r.upper, mtime=True)) == before


def test_planless_rename_workdir_keeps_what_it_holds(work):
    """A rename work directory with no plan but a directory in it (damaged
    by hand: a run never leaves one so) is not removed: the commit stops
    naming it, and what it holds is kept."""
    r = Redirect(work, TREE, "oci")
    r.both(lambda p: os.rename(j(p, "d"), j(p, "d2")))
    r.ovl.umount()
    wd = j(r.lower, ".wh..wh.ovlfs-rename")
    os.makedirs(j(wd, "1"))
    open(j(wd, "1", "kept"), "w").write("data")
    res = commit(r, "plain", check=False)
    assert res.returncode == 1, res.err
    assert "has no plan but holds 1" in res.err and wd in res.err, res.err
    assert open(j(wd, "1", "kept")).read() == "data"
    assert os.path.isdir(r.upper)


# ---- failing midway: a full lower, a read-only lower, an immutable source ----

def after_failure(r, mode, res, lower0):
    """What a failed commit (RES) of renames must leave: atomic, the lower
    wholly old (after `ovlfs recover` where the commit says to run it),
    the upper kept; plain, the lower partly committed with the rest of the
    plan pending, which mount refuses naming the command to rerun."""
    print(res.err)
    if mode == "atomic":
        if os.path.exists(j(r.lower, ".wh..wh.ovlfs-commit")):
            assert "ovlfs recover" in res.err, res.err
            rec = ovlfs("recover", "--upper", r.upper, r.lower)
            assert rec.returncode == 0, rec.err
        assert_same_tree(strip_dir_mtimes(lower_snap(r.lower)),
                         strip_dir_mtimes(lower0), "lower", "old")
        assert os.path.isdir(r.upper)
    elif os.path.exists(j(r.lower, ".wh..wh.ovlfs-rename")):
        m = ovlfs("mount", "--upper", r.upper, r.lower, r.mnt)
        assert m.returncode == 1 and "ovlfs commit" in m.err, m.err


def retry_converges(r, mode):
    """Once the cause is gone: a retry commits the model (for an atomic
    commit the pair first shows it again)."""
    if mode == "atomic":
        r.ovl.mount()
        r.check()
        r.ovl.umount()
    commit(r, mode)
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("full", ["blocks", "inodes"])
@pytest.mark.parametrize("spare", [0, 1, 2, 3])
def test_commit_on_a_full_lower_then_retried(work, mode, full, spare):
    """The lower's filesystem full but for SPARE blocks (pages) or inodes
    when the commit of renamed directories with changes inside runs: it
    commits, or fails naming where and why with nothing of the merged view
    lost (a plain commit may have done part of it and left the rest
    pending, an atomic one did none of it); with room again a retry gives
    the model, renamed files keeping their inodes."""
    fs = j(work, "fs")
    os.mkdir(fs)
    run(["mount", "-t", "tmpfs", "-o", "size=8m", "ovlfs-test-full", fs],
        check=True)
    filler = j(fs, "filler")
    try:
        r = Redirect(fs, TREE, "oci")
        r.both(renames)
        r.check()
        r.ovl.umount()
        before = inodes(r.lower)
        lower0 = lower_snap(r.lower)
        if full == "blocks":
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
                except OSError:
                    pass
            os.truncate(filler, max(0, os.path.getsize(filler) - 4096 * spare))
        else:
            sv = os.statvfs(fs)
            n = sv.f_files - sv.f_ffree + spare
            # the fewest inodes tmpfs takes: full
            while run(["mount", "-o", "remount,nr_inodes=%d" % n, fs]).returncode:
                n += 1
                assert n < 1000
        res = commit(r, mode, check=False)
        if res.returncode != 0:
            assert res.returncode == 1, res.err
            assert "No space left on device" in res.err and r.lower in res.err, \
                res.err
            after_failure(r, mode, res, lower0)
            if full == "blocks":
                os.unlink(filler)
            else:
                run(["mount", "-o", "remount,nr_inodes=100000", fs], check=True)
            retry_converges(r, mode)
        assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")
        after = inodes(r.lower)
        for old, new in KEPT["renames"]:
            assert after[new] == before[old], "%s was copied" % new
    finally:
        run(["umount", "-l", fs])


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts")
@pytest.mark.parametrize("mode", MODES)
def test_commit_on_a_read_only_lower_changes_nothing(work, mode):
    """The lower mounted read-only: the commit fails naming the lower and
    the reason, the lower and the upper stay as they were; made writable,
    a retry commits."""
    r = Redirect(work, TREE, "oci")
    r.both(renames)
    r.ovl.umount()
    lower0, upper0 = lower_snap(r.lower), snapshot(r.upper, mtime=True)
    run(["mount", "--bind", r.lower, r.lower], check=True)
    try:
        run(["mount", "-o", "remount,bind,ro", r.lower], check=True)
        res = commit(r, mode, check=False)
        assert res.returncode == 1, res.err
        assert "Read-only file system" in res.err and r.lower in res.err, res.err
        assert lower_snap(r.lower) == lower0
        assert snapshot(r.upper, mtime=True) == upper0
    finally:
        run(["umount", r.lower], check=True)
    retry_converges(r, mode)


@pytest.mark.skipif(shutil.which("chattr") is None, reason="no chattr")
@pytest.mark.parametrize("mode", MODES)
def test_commit_with_an_immutable_renamed_dir(work, mode):
    """The lower directory a rename moves is immutable (rename(2) fails
    EPERM): the commit fails naming it; a plain one is retried once it is
    mutable again, an atomic one left the lower wholly old."""
    r = Redirect(work, TREE, "oci")
    r.both(renames)
    r.ovl.umount()
    lower0 = lower_snap(r.lower)
    stuck = j(r.lower, "e")         # moved to n/e by the rename
    subprocess.run(["chattr", "+i", stuck], check=True)
    try:
        res = commit(r, mode, check=False)
        assert res.returncode == 1, res.err
        assert "Operation not permitted" in res.err and "e" in res.err, res.err
        after_failure(r, mode, res, lower0)
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    retry_converges(r, mode)
