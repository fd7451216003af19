"""Directory rename by redirect (issue 15 item 1).

Renaming a lower or merged directory records where its lower part is (the
kernel's overlay.redirect in the kernel format, ovlfs's private
*.ovlfs.redirect in the OCI one) instead of copying its subtree up. Each
scenario runs the same operations on the mount and on a plain copy of the
lower (the model) and compares; in the kernel format the upper is also
mounted by the kernel's overlayfs (redirect_dir=on), which must show the
same tree; and an upper the kernel wrote with redirect_dir=on is read by
ovlfs as the kernel shows it.
"""

import os
import random
import shutil
import time

import pytest

from conftest import (OVLFS, Overlay, HL, build, cp_a, snapshot,
                      assert_same_tree, run, ovlfs, kill_after, renameat2,
                      RENAME_EXCHANGE, IS_ROOT)


def j(*p):
    return os.path.join(*p)


TREE = {
    "d": {"x": "x\n", "w": "w\n",
          "y": {"deep": "deep\n", "deeper": {"z": "z\n"}},
          "gone": "gone\n", "sub": {"s": "s\n"},
          "h1": "linked\n", "h2": HL("d/h1")},
    "e": {"e1": "e1\n", "ed": {"q": "q\n"}},
    "f": "f\n",
    "other": {"o": "o\n"},
}

FORMATS = ["oci", "kernel"]


class Redirect:
    """A mount of FMT over a lower built from SPEC, and the model beside it."""

    def __init__(self, work, spec, fmt, inode_mode=None):
        self.work = work
        self.fmt = fmt
        self.lower = j(work, "lower")
        os.mkdir(self.lower)
        build(self.lower, spec)
        self.oracle = j(work, "oracle")
        cp_a(self.lower, self.oracle)
        self.upper = j(work, "upper")
        extra = ["--format", "kernel"] if fmt == "kernel" else []
        self.ovl = Overlay(self.lower, upper=self.upper, inode_mode=inode_mode,
                           extra_args=extra)
        self.ovl.mount()
        self.mnt = self.ovl.mp

    def m(self, *p):
        return j(self.mnt, *p)

    def both(self, fn):
        def outcome(root):
            try:
                return ("ok", fn(root))
            except OSError as e:
                return ("err", e.errno)
        exp, got = outcome(self.oracle), outcome(self.mnt)
        assert got == exp, "mount gave %r, plain directory gave %r" % (got, exp)
        return got[1]

    def check(self):
        assert_same_tree(snapshot(self.mnt), snapshot(self.oracle))

    def check_all(self):
        """The mount, the remounted mount and (kernel format) the kernel."""
        self.check()
        self.ovl.umount()
        if self.fmt == "kernel":
            with KernelOverlay(self.work, self.lower, self.upper) as k:
                assert_same_tree(snapshot(k.mnt, hide_private=True),
                                 snapshot(self.oracle), "kernel overlay", "model")
        self.ovl.mount()
        self.check()


class KernelOverlay:
    def __init__(self, work, lower, upper):
        self.mnt = j(work, "kmnt")
        os.makedirs(self.mnt, exist_ok=True)
        kwork = j(work, "kwork")
        os.makedirs(kwork, exist_ok=True)
        # metacopy=on: ovlfs writes metacopy files (not in userxattr
        # mode, where the kernel refuses them).
        opts = ("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,"
                "index=off,metacopy=%s" % (lower, upper, kwork,
                                           "on" if IS_ROOT else "off"))
        if not IS_ROOT:
            opts += ",userxattr"
        r = run(["mount", "-t", "overlay", "overlay", "-o", opts, self.mnt])
        if r.returncode != 0:
            pytest.skip("kernel overlayfs mount failed: " + r.err.strip())

    def __enter__(self):
        return self

    def __exit__(self, *a):
        if os.path.ismount(self.mnt):
            run(["umount", self.mnt], check=True)


def upper_entries(upper):
    n = 0
    for _, dirs, files in os.walk(upper):
        n += len(dirs) + len(files)
    return n


@pytest.fixture(params=FORMATS)
def rd(request, work):
    made = []

    def make(spec=TREE, **kw):
        r = Redirect(work, spec, request.param, **kw)
        made.append(r)
        return r
    return make


def test_rename_lower_dir_copies_nothing(rd):
    r = rd()
    r.both(lambda p: os.rename(j(p, "d"), j(p, "d2")))
    # The directory itself and the old name's whiteout, no child.
    names = set()
    for d, dirs, files in os.walk(r.upper):
        names |= {os.path.relpath(j(d, n), r.upper) for n in dirs + files}
    assert not any(n.startswith("d2/") for n in names), names
    r.check_all()


def test_nested_renames(rd):
    r = rd()
    r.both(lambda p: os.rename(j(p, "d"), j(p, "d2")))
    r.both(lambda p: os.rename(j(p, "d2/y"), j(p, "d2/y2")))          # inside
    r.both(lambda p: os.rename(j(p, "d2/y2/deeper"), j(p, "e/deeper")))  # out
    r.both(lambda p: os.rename(j(p, "e"), j(p, "d2/y2/e")))           # into
    r.both(lambda p: os.rename(j(p, "d2/y2"), j(p, "top")))
    r.both(lambda p: open(j(p, "top/e/deeper/z"), "a").write("more\n"))
    r.both(lambda p: os.mkdir(j(p, "top/new")))
    r.both(lambda p: os.rename(j(p, "top/e/ed"), j(p, "top/new/ed")))
    r.check_all()
    r.both(lambda p: os.rename(j(p, "top/new/ed"), j(p, "ed3")))
    r.both(lambda p: sorted(os.listdir(j(p, "ed3"))))
    r.check_all()


def test_rename_back_and_forth(rd):
    r = rd()
    r.both(lambda p: os.rename(j(p, "d"), j(p, "d2")))
    r.both(lambda p: os.rename(j(p, "d2"), j(p, "d")))               # back
    r.check_all()
    r.both(lambda p: os.rename(j(p, "d"), j(p, "other/d")))
    r.both(lambda p: os.rename(j(p, "other/d"), j(p, "d")))          # back again
    r.both(lambda p: os.rename(j(p, "e"), j(p, "d3")))
    r.both(lambda p: os.mkdir(j(p, "e")))                            # old name reused
    r.both(lambda p: open(j(p, "e/n"), "w").write("n"))
    r.check_all()


def test_rename_over_lower_entries(rd):
    r = rd()
    r.both(lambda p: os.unlink(j(p, "f")))
    r.both(lambda p: os.rename(j(p, "d"), j(p, "f")))                # over a whiteout
    r.both(lambda p: [os.unlink(j(p, "other", n)) for n in os.listdir(j(p, "other"))])
    r.both(lambda p: os.rename(j(p, "e"), j(p, "other")))            # over an empty dir
    r.check_all()


def test_exchange_dirs(rd):
    r = rd()
    r.both(lambda p: renameat2(j(p, "d"), j(p, "e"), RENAME_EXCHANGE))
    r.both(lambda p: renameat2(j(p, "d/ed"), j(p, "other"), RENAME_EXCHANGE))
    r.check_all()


def test_renamed_dir_holding_whiteouts_and_opaque(rd):
    r = rd()
    r.both(lambda p: os.unlink(j(p, "d/gone")))
    r.both(lambda p: os.unlink(j(p, "d/sub/s")))
    r.both(lambda p: os.rmdir(j(p, "d/sub")))
    r.both(lambda p: os.mkdir(j(p, "d/sub")))                        # opaque child
    r.both(lambda p: open(j(p, "d/sub/t"), "w").write("t"))
    r.both(lambda p: open(j(p, "d/x"), "a").write("changed\n"))
    r.both(lambda p: os.rename(j(p, "d"), j(p, "e/d")))
    r.both(lambda p: sorted(os.listdir(j(p, "e/d"))))
    r.both(lambda p: sorted(os.listdir(j(p, "e/d/sub"))))
    r.check_all()
    r.both(lambda p: os.unlink(j(p, "e/d/w")))                       # after the move
    r.both(lambda p: os.rename(j(p, "e/d/y/deep"), j(p, "e/d/deep")))
    r.check_all()


def test_renamed_dir_holding_hard_links(rd):
    r = rd()
    r.both(lambda p: os.rename(j(p, "d"), j(p, "d2")))
    r.both(lambda p: open(j(p, "d2/h1"), "a").write("through h1\n"))
    r.both(lambda p: open(j(p, "d2/h2")).read())
    r.both(lambda p: os.stat(j(p, "d2/h2")).st_nlink)
    r.check_all()


def test_rmdir_of_renamed_dir(rd):
    r = rd()
    r.both(lambda p: os.rename(j(p, "e/ed"), j(p, "ed")))
    r.both(lambda p: os.unlink(j(p, "ed/q")))
    r.both(lambda p: os.rmdir(j(p, "ed")))
    r.both(lambda p: os.mkdir(j(p, "ed")))
    r.check_all()


def test_persistent_inode_numbers_survive_rename(rd):
    r = rd(inode_mode="persistent")
    before = {n: os.lstat(r.m("d", n)).st_ino for n in ("x", "y", "y/deep", "sub")}
    dino = os.lstat(r.m("d")).st_ino
    os.rename(r.m("d"), r.m("e/moved"))
    os.rename(r.m("e/moved/y"), r.m("y2"))
    assert os.lstat(r.m("e/moved")).st_ino == dino
    after = {"x": os.lstat(r.m("e/moved/x")).st_ino,
             "y": os.lstat(r.m("y2")).st_ino,
             "y/deep": os.lstat(r.m("y2/deep")).st_ino,
             "sub": os.lstat(r.m("e/moved/sub")).st_ino}
    assert after == before
    r.ovl.remount()
    assert os.lstat(r.m("e/moved")).st_ino == dino
    assert os.lstat(r.m("y2/deep")).st_ino == before["y/deep"]
    assert os.lstat(r.m("y2")).st_ino == before["y"]
    # readdir agrees with stat
    ents = {e.name: e.inode() for e in os.scandir(r.m("e/moved"))}
    assert ents["x"] == before["x"]


def test_rename_of_big_lower_dir_is_cheap(rd, work):
    spec = {"big": {"f%05d" % i: "" for i in range(10000)}, "dst": {}}
    r = rd(spec)
    os.listdir(r.m("big"))
    t = time.monotonic()
    os.rename(r.m("big"), r.m("dst/big2"))
    took = time.monotonic() - t
    assert upper_entries(r.upper) <= 4, sorted(os.listdir(r.upper))
    used = sum(os.lstat(j(d, n)).st_size for d, _, fs in os.walk(r.upper) for n in fs)
    assert used == 0
    assert took < 0.5, "rename took %.3f s" % took
    assert len(os.listdir(r.m("dst/big2"))) == 10000
    assert not os.path.exists(r.m("big"))


def test_kernel_written_redirects_read_by_ovlfs(work):
    """An upper the kernel's overlayfs wrote with redirect_dir=on."""
    lower, upper, oracle = j(work, "lower"), j(work, "upper"), j(work, "oracle")
    os.mkdir(lower)
    build(lower, TREE)
    cp_a(lower, oracle)
    os.mkdir(upper)

    def ops(p):
        os.rename(j(p, "d"), j(p, "d2"))
        os.rename(j(p, "d2/y"), j(p, "e/y"))
        os.mkdir(j(p, "n"))
        os.rename(j(p, "e"), j(p, "n/e"))
        os.unlink(j(p, "n/e/e1"))
        open(j(p, "n/e/y/deep"), "a").write("k\n")
        os.rename(j(p, "n/e/y/deeper"), j(p, "n/deeper"))
    ops(oracle)
    with KernelOverlay(work, lower, upper) as k:
        ops(k.mnt)
    o = Overlay(lower, upper=upper, extra_args=["--format", "kernel"])
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(oracle))
    finally:
        o.umount()
    # Unstamped, it is recognised as kernel-format (not refused).
    os.removexattr(upper, "user.ovlfs.format")
    o = Overlay(lower, upper=upper)
    r = o.mount(check=False)
    try:
        assert r.returncode == 0, r.err
        assert_same_tree(snapshot(o.mp), snapshot(oracle))
    finally:
        if o.mounted:
            o.umount()



@pytest.mark.parametrize("fmt", FORMATS)
def test_redirects_in_a_lower_layer(work, fmt):
    """An upper with renamed directories stacked as a lower (lowerdir=
    upper:lower, unionmount-testsuite's layer rotation): the renamed
    directories show their lower parts, followed through the redirects of
    the middle layer; and renamed again on top."""
    r = Redirect(work, TREE, fmt)
    r.both(lambda p: os.rename(j(p, "d"), j(p, "e/d2")))          # absolute
    r.both(lambda p: os.rename(j(p, "other"), j(p, "other2")))    # relative
    r.both(lambda p: os.rename(j(p, "e/d2/y"), j(p, "y2")))       # absolute, nested
    r.both(lambda p: open(j(p, "e/d2/x"), "a").write("mid\n"))
    r.check()
    r.ovl.umount()
    if fmt == "kernel":
        kup = j(work, "kupper")
        os.mkdir(kup)
        with KernelOverlay(work, "%s:%s" % (r.upper, r.lower), kup) as k:
            assert_same_tree(snapshot(k.mnt, hide_private=True),
                             snapshot(r.oracle), "kernel overlay", "model")
    extra = ["--format", "kernel"] if fmt == "kernel" else []
    upper2, mp2 = j(work, "upper2"), j(work, "mnt2")
    o = Overlay(r.upper, upper=upper2, mp=mp2, extra_args=extra + [
        "--lower", "%s:%s" % (r.upper, r.lower)])
    plain = o.mount_args
    o.mount_args = lambda foreground=False: [
        a for a in plain(foreground) if a != o.lower]
    o.mount()
    try:
        assert_same_tree(snapshot(mp2), snapshot(r.oracle))
        for p in (mp2, r.oracle):
            os.rename(j(p, "e/d2"), j(p, "d3"))
            os.rename(j(p, "y2/deeper"), j(p, "other2/deeper"))
            open(j(p, "d3/w"), "a").write("top\n")
        assert_same_tree(snapshot(mp2), snapshot(r.oracle))
        o.umount()
        o.mount()
        assert_same_tree(snapshot(mp2), snapshot(r.oracle))
    finally:
        if o.mounted:
            o.umount()


# ---- offline operations on an upper holding redirects ----

def renames(p):
    """Renames of lower directories, nested, with changes inside."""
    os.rename(j(p, "d"), j(p, "d2"))
    os.unlink(j(p, "d2/gone"))
    os.rename(j(p, "d2/y"), j(p, "e/y"))
    open(j(p, "e/y/deep"), "a").write("more\n")
    os.mkdir(j(p, "n"))
    os.rename(j(p, "e"), j(p, "n/e"))
    os.rename(j(p, "n/e/y/deeper"), j(p, "deeper"))
    os.unlink(j(p, "f"))
    os.rename(j(p, "other"), j(p, "f"))


def lower_snap(root):
    return snapshot(root, mtime=True)


def strip_dir_mtimes(snap):
    return {k: ({kk: vv for kk, vv in v.items() if kk != "mtime"}
                if v["type"] == "dir" else v) for k, v in snap.items()}


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_commit_renamed_dirs(rd, atomic):
    r = rd()
    r.both(renames)
    r.check()
    want = snapshot(r.mnt, mtime=True)
    r.ovl.umount()
    args = ["commit"] + (["--atomic"] if atomic else []) + [
        "--upper", r.upper, r.lower]
    res = ovlfs(*args)
    assert res.returncode == 0, res.err
    assert not os.path.exists(r.upper)
    assert_same_tree(lower_snap(r.lower), want, "lower after commit", "mount")
    assert_same_tree(snapshot(r.lower), snapshot(r.oracle), "lower", "model")


def test_commit_atomic_killed_with_redirects(rd, work):
    r = rd()
    r.both(renames)
    new = strip_dir_mtimes(snapshot(r.mnt, mtime=True))
    r.ovl.umount()
    old = strip_dir_mtimes(lower_snap(r.lower))
    saved_l, saved_u = j(work, "saved-lower"), j(work, "saved-upper")
    cp_a(r.lower, saved_l)
    cp_a(r.upper, saved_u)
    cmd = [OVLFS, "commit", "--atomic", "--quiet", "--upper", r.upper, r.lower]
    t = time.monotonic()
    res = run(cmd, timeout=60)
    assert res.returncode == 0, res.err
    took = time.monotonic() - t
    rnd = random.Random(int(os.environ.get("OVLFS_CRASH_SEED", "15")))
    for trial in range(12):
        for p, s in ((r.lower, saved_l), (r.upper, saved_u)):
            if os.path.lexists(p):
                shutil.rmtree(p)
            cp_a(s, p)
        killed = kill_after(cmd, rnd.uniform(0, took * 1.5) if trial else 0)
        rec = ovlfs("recover", "--upper", r.upper, r.lower)
        assert rec.returncode == 0, rec.err
        now = strip_dir_mtimes(lower_snap(r.lower))
        assert not os.path.exists(j(r.lower, ".wh..wh.ovlfs-commit"))
        if now == new:
            continue
        assert_same_tree(now, old, "lower after kill (trial %d, killed %s)"
                         % (trial, killed), "old lower")
        # Old lower: the upper still shows the new tree, and commits.
        r.ovl.mount()
        assert_same_tree(strip_dir_mtimes(snapshot(r.mnt, mtime=True)), new,
                         "mount after kill", "new tree")
        r.ovl.umount()
        res = run(cmd, timeout=60)
        assert res.returncode == 0, res.err
        assert_same_tree(strip_dir_mtimes(lower_snap(r.lower)), new,
                         "lower after a second commit", "new tree")


def test_export_writes_renamed_trees_in_full(rd, work):
    r = rd()
    r.both(renames)
    r.ovl.umount()
    tar = j(work, "layer.tar")
    res = ovlfs("export", "--tar", tar, "--upper", r.upper, r.lower)
    assert res.returncode == 0, res.err
    import tarfile
    with tarfile.open(tar) as t:
        names = {m.name.rstrip("/") for m in t}
    # The renamed tree is in the layer whole, over an opaque marker.
    assert {"d2/x", "d2/w", "d2/sub/s", "d2/.wh..wh..opq", ".wh.d"} <= names, names
    assert "d2/.wh.gone" not in names
    # Applied to a copy of the lower it gives the merged view.
    base = j(work, "base")
    cp_a(r.lower, base)
    res = ovlfs("apply", "--tar", tar, "--commit", base)
    assert res.returncode == 0, res.err
    assert_same_tree(snapshot(base), snapshot(r.oracle), "lower + layer", "model")


def test_convert_keeps_redirects(rd):
    r = rd()
    r.both(renames)
    r.ovl.umount()
    to = "oci" if r.fmt == "kernel" else "kernel"
    res = ovlfs("convert", "--to", to, "--upper", r.upper, r.lower)
    assert res.returncode == 0, res.err
    o = Overlay(r.lower, upper=r.upper,
                extra_args=["--format", "kernel"] if to == "kernel" else [])
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(r.oracle))
    finally:
        o.umount()
    if to == "kernel":
        with KernelOverlay(r.work, r.lower, r.upper) as k:
            assert_same_tree(snapshot(k.mnt, hide_private=True),
                             snapshot(r.oracle), "kernel overlay", "model")


def test_redirect_too_long_copies_the_tree(rd):
    """An absolute redirect over 256 bytes (the kernel's redirect_max) is not
    written: the rename copies the tree up, as before (and does not hang)."""
    spec = {"B" * 200: {"A" * 200: {"f": "f\n", "s": {"g": "g\n"}}}, "t": {}}
    r = rd(spec)
    r.both(lambda p: os.rename(j(p, "B" * 200, "A" * 200), j(p, "t", "A" * 200)))
    r.both(lambda p: os.rename(j(p, "B" * 200), j(p, "t", "C")))     # short one
    assert os.path.exists(j(r.upper, "t", "A" * 200, "s", "g"))
    r.check_all()


def tree_paths(root):
    """Every path under ROOT, "/a/b" style, without ovlfs's markers."""
    out = set()
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            if n.startswith(".wh."):
                continue
            out.add("/" + os.path.relpath(j(d, n), root))
    return out


def test_diff_shows_renamed_trees(rd):
    """`ovlfs diff` of an upper with renamed directories: a renamed
    directory is one "R" change (its old path in "from"), not its tree
    added and the old one deleted; what the merged view shows that the lower
    lacks is added or under a renamed directory, what the lower has that
    the view lacks is deleted or under a renamed directory's old path.
    (tests/test_redirect_commit.py replays the changes exactly.)"""
    import json
    r = rd()
    r.both(renames)
    r.check()
    merged = tree_paths(r.mnt)
    r.ovl.umount()
    lower = tree_paths(r.lower)
    res = ovlfs("diff", "--json", "--upper", r.upper, r.lower)
    assert res.returncode == 0, res.err
    changes = json.loads(res.out)["changes"]
    got = {}
    for ch in changes:
        got.setdefault(ch["path"], set()).add(ch["change"])
    moved = {ch["path"]: ch["from"] for ch in changes if ch["change"] == "R"}
    assert moved == {"/d2": "/d", "/deeper": "/d/y/deeper", "/f": "/other",
                     "/n/e": "/e", "/n/e/y": "/d/y"}, moved

    def under(p, roots):
        return any(p == q or p.startswith(q + "/") for q in roots)
    for p in merged - lower:
        assert "A" in got.get(p, ()) or under(p, moved), \
            "%s shows but is not reported added" % p
    for p in lower - merged:
        assert "D" in got.get(p, ()) or under(p, moved.values()), \
            "%s is gone but not reported deleted" % p
    for p, kinds in got.items():
        if "A" in kinds:
            assert p in merged and not under(p, moved), \
                "%s reported added" % p


def test_redirect_dir_off_copies_the_tree(work):
    """-o redirect_dir=off (the mount(8) syntax): a renamed lower directory
    is copied up whole and no redirect is written; on/follow are accepted,
    a bad value is refused."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"d": {"a": "a\n", "s": {"b": "b\n"}}})
    for val, whole in (("off", True), ("nofollow", True), ("on", False), ("follow", False)):
        upper, wd, mp = (j(work, "%s-%s" % (n, val)) for n in ("u", "w", "m"))
        for p in (upper, wd, mp):
            os.mkdir(p)
        r = run([OVLFS, "-o", "lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=%s"
                 % (lower, upper, wd, val), mp])
        assert r.returncode == 0, r.err
        try:
            os.rename(j(mp, "d"), j(mp, "d2"))
            assert open(j(mp, "d2", "s", "b")).read() == "b\n"
        finally:
            assert ovlfs("umount", mp).returncode == 0
        copied = os.path.exists(j(upper, "d2", "s", "b"))
        assert copied == whole, (val, sorted(os.listdir(j(upper, "d2"))))
        if whole:
            names = [n for n in os.listxattr(j(upper, "d2")) if "redirect" in n]
            assert names == [], names
    r = run([OVLFS, "-o", "lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=sometimes"
             % (lower, j(work, "u-off"), j(work, "w-off")), j(work, "m-off")])
    assert r.returncode == 2 and "redirect_dir 'sometimes'" in r.err, r.err


@pytest.mark.skipif(not IS_ROOT, reason="needs root (a user namespace, then root's view)")
@pytest.mark.parametrize("finish", ["mount", "commit", "atomic"])
def test_upper_written_without_privilege_read_as_root(work, finish):
    """An OCI upper written in a user namespace (no privilege in the
    initial one: its markers are user.ovlfs.redirect and
    user.ovlfs.metacopy, not trusted.*) read by root: the renamed directory
    shows its lower part and a metadata-only copy-up its lower data, on a
    mount and through a commit (one rename: the file keeps its inode)."""
    lower, upper, mnt = j(work, "lower"), j(work, "upper"), j(work, "mnt")
    os.mkdir(lower)
    build(lower, TREE)
    with open(j(lower, "big"), "wb") as f:
        f.write(os.urandom(200000))
    os.mkdir(mnt)
    oracle = j(work, "oracle")
    cp_a(lower, oracle)
    script = ("%s mount --upper %s %s %s && mv %s/d %s/d2 && chmod 600 %s/big"
              " && umount %s" % (OVLFS, upper, lower, mnt, mnt, mnt, mnt, mnt))
    res = run(["unshare", "-Urm", "sh", "-c", script], timeout=60)
    if res.returncode != 0 and "unshare" in res.err:
        pytest.skip("no user namespaces: %s" % res.err)
    assert res.returncode == 0, res.err
    os.rename(j(oracle, "d"), j(oracle, "d2"))
    os.chmod(j(oracle, "big"), 0o600)
    names = os.listxattr(j(upper, "d2")) + os.listxattr(j(upper, "big"))
    assert "user.ovlfs.redirect" in names and "user.ovlfs.metacopy" in names, names
    assert os.lstat(j(upper, "big")).st_blocks == 0     # no data copied
    ino = os.lstat(j(lower, "d/x")).st_ino
    if finish == "mount":
        o = Overlay(lower, upper=upper, mp=mnt)
        o.mount()
        try:
            assert_same_tree(snapshot(mnt), snapshot(oracle), "mount", "model")
        finally:
            o.umount()
        return
    res = ovlfs("commit", *(["--atomic"] if finish == "atomic" else []),
                "--upper", upper, lower)
    assert res.returncode == 0, res.err
    assert_same_tree(snapshot(lower), snapshot(oracle), "lower", "model")
    assert os.lstat(j(lower, "d2/x")).st_ino == ino, "copied"
