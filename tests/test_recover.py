"""After an interrupted `commit --atomic`: recovery, and what the other
commands do meanwhile.

The interruption is made deterministic with strace's fault injection: the
commit is killed (SIGKILL) at its Nth renameat(2); the first is the rename
of journal.tmp to journal (the commit point), the next ones apply the
journal. Journals that are damaged or crafted must stop recovery with
nothing changed, inside or outside the lower."""

import os
import shutil
import subprocess
import tarfile

import pytest

from conftest import (IS_ROOT, OVLFS, Overlay, build, cp_a, ovlfs, run, snapshot,
                      assert_same_tree, diff_snapshots, mounts_under, HL)

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root")

WORKDIR = ".wh..wh.ovlfs-commit"


def j(*p):
    return os.path.join(*p)


def link_groups(root):
    groups = {}
    for dirpath, dirs, files in os.walk(root):
        for n in files:
            p = j(dirpath, n)
            st = os.lstat(p)
            if st.st_nlink > 1:
                groups.setdefault(st.st_ino, []).append(os.path.relpath(p, root))
    return sorted(sorted(g) for g in groups.values())


def debris(root):
    return [j(d, n) for d, ds, fs in os.walk(root) for n in ds + fs
            if n.startswith(".wh..wh.")]


LOWER = {"d": {"f": "f\n", "old": "old\n"}, "g": "g\n", "h": "h\n",
         "z": {"deep": {"x": "x\n"}}}


def change(mp):
    with open(j(mp, "g"), "w") as f:
        f.write("new g\n")
    os.unlink(j(mp, "h"))
    os.unlink(j(mp, "d/old"))
    with open(j(mp, "a"), "w") as f:
        f.write("linked\n")
    os.link(j(mp, "a"), j(mp, "d/a2"))     # a hard link inside the upper
    os.makedirs(j(mp, "nd/sub"))
    with open(j(mp, "nd/sub/n"), "w") as f:
        f.write("n\n")
    shutil.rmtree(j(mp, "z"))


class Interrupted:
    """LOWER and its default upper with changes, and EXPECTED: the lower a
    complete atomic commit of the same pair gives."""

    def __init__(self, work):
        self.work = work
        self.lower = j(work, "lower")
        os.mkdir(self.lower)
        build(self.lower, LOWER)
        o = Overlay(self.lower)
        o.mount()
        change(o.mp)
        o.umount()
        os.rmdir(o.mp)
        self.upper = o.upper
        ref = j(work, "ref")
        os.mkdir(ref)
        cp_a(self.lower, j(ref, "lower"))
        cp_a(self.upper, j(ref, "lower.upper"))
        r = ovlfs("commit", "--atomic", "--quiet", j(ref, "lower"))
        assert r.returncode == 0, r.err
        self.expected = snapshot(j(ref, "lower"), hide_private=True)
        self.expected_links = link_groups(j(ref, "lower"))

    def kill_at(self, n):
        """Run commit --atomic, killed at its Nth renameat."""
        if not shutil.which("strace"):
            pytest.skip("needs strace")
        r = run(["strace", "-f", "-o", "/dev/null", "-e", "trace=renameat,renameat2",
                 "-e", "inject=renameat,renameat2:signal=KILL:when=%d" % n,
                 OVLFS, "commit", "--atomic", "--quiet", self.lower], timeout=60)
        assert r.returncode != 0, "the commit was not interrupted: %s" % r.err
        assert os.path.isdir(j(self.lower, WORKDIR))
        assert os.path.exists(j(self.lower, WORKDIR, "journal"))
        assert os.path.isdir(self.upper)

    def state(self):
        return (snapshot(self.lower, mtime=True, ctime=True, ino=True),
                snapshot(self.upper, mtime=True, ctime=True, ino=True))

    def check_committed(self):
        assert not os.path.lexists(self.upper), "the committed upper is left"
        assert not debris(self.lower), debris(self.lower)
        assert_same_tree(snapshot(self.lower, hide_private=True), self.expected,
                         "lower", "committed lower")
        assert link_groups(self.lower) == self.expected_links


@pytest.fixture
def interrupted(work):
    it = Interrupted(work)
    it.kill_at(3)      # the journal is in, one operation applied
    return it


# --------------------------------------------------- commands in between

def _tar_args(work):
    tar = j(work, "layer.tar")
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("fromtar")
        t.addfile(info)
    return ["apply", "--tar", tar]


@pytest.mark.parametrize("cmd", [
    ["diff"], ["diff", "--json"], ["export", "--tar", "OUT"], ["discard"],
    ["convert", "--to", "kernel"], "apply", ["flatten", "LOWER", "DEST"]])
def test_refused_while_a_commit_is_interrupted(interrupted, work, cmd):
    """Read-only and upper-only commands would see a half-applied lower (diff
    would report wrong changes) or write an upper recovery deletes: they
    refuse, say why and what to run, and change nothing."""
    it = interrupted
    if cmd == "apply":
        cmd = _tar_args(work)
    sub = {"OUT": j(work, "out.tar"), "LOWER": it.lower, "DEST": j(work, "flat")}
    cmd = [sub.get(a, a) for a in cmd]
    if it.lower not in cmd:
        cmd.append(it.lower)
    before = it.state()
    r = ovlfs(*cmd)
    assert r.returncode == 1, (r.returncode, r.out, r.err)
    assert r.out == "", r.out
    assert "interrupted atomic commit in %s" % it.lower in r.err, r.err
    assert "ovlfs recover %s" % it.lower in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    after = it.state()
    assert_same_tree(after[0], before[0], "lower after", "lower before")
    assert_same_tree(after[1], before[1], "upper after", "upper before")
    assert not os.path.exists(j(work, "out.tar"))
    assert not os.path.exists(j(work, "flat"))
    # once recovered, they work again, on the committed lower
    r = ovlfs("recover", it.lower)
    assert r.returncode == 0 and r.out.startswith("recovered"), r.out + r.err
    it.check_committed()
    r = ovlfs("diff", it.lower)
    assert r.returncode == 0 and r.out.startswith("0 added, 0 modified, 0 deleted"), \
        r.out + r.err


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_commit_recovers_first_and_drops_the_committed_upper(interrupted, atomic):
    """A commit after an interrupted one recovers first, as mount does; the
    rolled-forward commit's upper is then gone, not committed a second time
    (which left .wh..wh.tmp.* debris and extra hard links)."""
    it = interrupted
    r = ovlfs("commit", *(["--atomic"] if atomic else []), it.lower)
    assert r.returncode == 0, r.err
    assert r.err == "", r.err
    it.check_committed()


def test_apply_commit_recovers_first(interrupted, work):
    it = interrupted
    r = ovlfs(*(_tar_args(work) + ["--commit", it.lower]))
    assert r.returncode == 0, r.err
    assert os.path.exists(j(it.lower, "fromtar"))
    os.unlink(j(it.lower, "fromtar"))
    it.check_committed()


# --------------------------------------------------- recover and the upper

def _done_state(lower, upper):
    """The work directory of a commit killed after `done`, while removing
    the upper (here: after it was removed)."""
    wd = j(lower, WORKDIR)
    for d in ("", "stage", "trash"):
        os.makedirs(j(wd, d), exist_ok=True)
    with open(j(wd, "journal"), "w") as f:
        f.write("ovlfs-journal 1\nupper %s\nend\n" % upper)
    open(j(wd, "done"), "w").close()


def test_recover_named_upper_already_removed(work):
    lower, upper = j(work, "lower"), j(work, "named-upper")
    os.mkdir(lower)
    build(lower, LOWER)
    _done_state(lower, upper)
    r = ovlfs("recover", "-u", upper, lower)
    assert r.returncode == 0, r.err
    assert r.out.startswith("recovered"), r.out
    assert not os.path.lexists(j(lower, WORKDIR))
    assert not os.path.lexists(upper)
    # nothing left: still fine without the upper
    r = ovlfs("recover", "--upper", upper, lower)
    assert r.returncode == 0, r.err
    assert r.out == "nothing to recover\n", r.out


def test_recover_named_upper_after_kill_during_upper_removal(work):
    """Killed while removing a named upper (its last entry gone, the upper
    itself not yet): `recover -u UPPER` finishes."""
    it = Interrupted(work)
    up = j(work, "named")
    os.rename(it.upper, up)
    if not shutil.which("strace"):
        pytest.skip("needs strace")
    r = run(["strace", "-f", "-o", "/dev/null", "-e", "trace=rmdir,unlinkat",
             "-e", "inject=unlinkat:signal=KILL:when=1",
             OVLFS, "commit", "--atomic", "-q", "-u", up, it.lower], timeout=60)
    assert r.returncode != 0
    assert os.path.exists(j(it.lower, WORKDIR, "done")), "killed too early"
    # the finished upper is renamed away first (.named.removed-NNNNNN),
    # then deleted: killed there, the named upper is gone, its trash left
    trash = [n for n in os.listdir(work) if n.startswith(".named.removed-")]
    assert not os.path.lexists(up) and len(trash) == 1, os.listdir(work)
    r = ovlfs("recover", "-u", up, it.lower)
    assert r.returncode == 0, r.err
    it.upper = up
    it.check_committed()
    assert not os.path.lexists(j(it.lower, WORKDIR))


# --------------------------------------------------- bad journals

def _journal_state(work, text, rollback=False, stage=()):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a\n", "sub": {"b": "b\n"}})
    os.symlink("../outside", j(lower, "link"))
    outside = j(work, "outside")
    os.mkdir(outside)
    build(outside, {"f": "secret\n", "x": {"y": "y\n"}})
    wd = j(lower, WORKDIR)
    for d in ("", "stage", "trash"):
        os.makedirs(j(wd, d), exist_ok=True)
    for n in stage:
        with open(j(wd, "stage", n), "w") as f:
            f.write("staged\n")
    with open(j(wd, "journal"), "wb") as f:
        f.write(text)
    if rollback:
        open(j(wd, "rollback"), "w").close()
    return lower, outside


HEAD = b"ovlfs-journal 1\nupper /nonexistent/upper\n"

BAD_JOURNALS = {
    "garbage": (b"garbage", 1),
    "no-magic": (b"ovlfs-journal 2\nend\n", 1),
    "truncated": (HEAD + b"R 1 a\n", 4),
    "no-newline": (HEAD + b"R 1 a\nend", 4),
    "dotdot": (HEAD + b"R 1 ../outside/f\nend\n", 3),
    "absolute": (HEAD + b"D 1 /etc/passwd\nend\n", 3),
    "escaped-dotdot": (HEAD + b"D 1 sub/%2E%2E/%2e%2e/outside\nend\n", 3),
    "escaped-slash": (HEAD + b"D 1 sub%2F%2F..%2Foutside\nend\n", 3),
    "bad-escape": (HEAD + b"M 1 a%+1\nend\n", 3),
    "nul-escape": (HEAD + b"M 1 a%00\nend\n", 3),
    "nul-byte": (HEAD + b"M 1 a\0b\nend\n", 3),
    "op-number": (HEAD + b"R ../../../outside/f a\nend\n", 3),
    "unknown-op": (HEAD + b"X 1 a\nend\n", 3),
    "open-up-dotdot": (HEAD + b"W 1 sub/../../outside\nend\n", 3),
    "open-up-workdir": (HEAD + b"W 1 " + WORKDIR.encode() + b"\nend\n", 3),
    "workdir": (HEAD + b"D 1 " + WORKDIR.encode() + b"/journal\nend\n", 3),
    "after-end": (HEAD + b"end\nD 1 a\n", 4),
    "second-upper": (HEAD + b"upper /x\nend\n", 3),
}


@pytest.mark.parametrize("rollback", [False, True], ids=["forward", "rollback"])
@pytest.mark.parametrize("case", sorted(BAD_JOURNALS))
def test_bad_journal_changes_nothing(work, case, rollback):
    """A journal that cannot be parsed is not "recovered": exit 1, the
    message names the journal, the line and what is wrong, and nothing
    changes in the lower (work directory included) or outside it."""
    text, line = BAD_JOURNALS[case]
    lower, outside = _journal_state(work, text, rollback, stage=("1",))
    before = snapshot(work, mtime=True, ctime=True, ino=True)
    for args in (["recover", lower], ["commit", lower], ["mount", lower]):
        r = ovlfs(*args)
        assert r.returncode == 1, (args, r.returncode, r.out, r.err)
        assert "%s/%s/journal, line %d:" % (lower, WORKDIR, line) in r.err, r.err
        assert "nothing was changed" in r.err, r.err
        assert not mounts_under(work)
        after = snapshot(work, mtime=True, ctime=True, ino=True)
        d = diff_snapshots(after, before, "after %s" % args[0], "before")
        assert not d, "\n".join(d)


def test_journal_through_a_symlink_stays_inside(work):
    """A well-formed journal naming a path through a symlink of the lower:
    nothing outside the lower is touched, whatever recovery then does."""
    lower, outside = _journal_state(work, HEAD + b"W 3 link\nW 4 link/x\n"
                                    b"R 1 link/f\nD 2 link/x\nend\n",
                                    stage=("1", "3", "4"))
    before = snapshot(outside, mtime=True, ctime=True, ino=True)
    ovlfs("recover", lower)
    assert_same_tree(snapshot(outside, mtime=True, ctime=True, ino=True), before,
                     "outside after", "outside before")
    assert os.path.islink(j(lower, "link"))


# --------------------------------------------------- commit --atomic failing

def test_atomic_staging_out_of_space(work, alt_work):
    """No space for staging in the lower's filesystem: the work directory
    goes, the message names the path and the reason and says the lower is
    unchanged."""
    small = j(work, "small")
    os.mkdir(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small],
                   check=True)
    try:
        lower = j(small, "lower")
        os.mkdir(lower)
        build(lower, {"a": "a\n"})
        upper = j(alt_work, "up")
        os.mkdir(upper)
        with open(j(upper, "big"), "wb") as f:
            f.write(b"\0" * (3 << 20))
        before = snapshot(lower, mtime=True)
        r = ovlfs("commit", "--atomic", "-q", "-u", upper, lower)
        assert r.returncode == 1, r.err
        assert "No space left on device" in r.err and lower in r.err, r.err
        assert "%s is unchanged" % lower in r.err, r.err
        assert not os.path.lexists(j(lower, WORKDIR))
        assert_same_tree(snapshot(lower, mtime=True), before, "lower", "before")
        assert os.path.exists(j(upper, "big"))
    finally:
        subprocess.run(["umount", small])


def test_atomic_upper_cannot_be_removed(work):
    """Everything applied, but the upper cannot be removed (an immutable
    file): the message says the new lower is in place and to run `ovlfs
    recover`, which finishes once the cause is gone."""
    it = Interrupted(work)
    locked = j(it.upper, "nd/sub/n")
    subprocess.run(["chattr", "+i", locked], check=True)
    try:
        r = ovlfs("commit", "--atomic", "-q", it.lower)
        assert r.returncode == 1, r.err
        assert it.upper in r.err and "Operation not permitted" in r.err, r.err
        assert "ovlfs recover %s" % it.lower in r.err, r.err
    finally:
        subprocess.run(["chattr", "-i", locked], check=True)
    r = ovlfs("recover", it.lower)
    assert r.returncode == 0 and r.out.startswith("recovered"), r.out + r.err
    it.check_committed()
