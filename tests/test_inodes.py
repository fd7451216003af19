"""Inode numbers in both modes: stat agrees with readdir, numbers are unique,
stable while mounted, and (persistent mode) across remount, copy-up, rename."""

import os
import stat

import pytest

from conftest import F, D, L, Overlay, build

MODES = ["virtual", "persistent"]


def j(*p):
    return os.path.join(*p)


TREE = {
    "f": "f\n",
    "g": "g\n",
    "h": "h\n",
    "d": {"x": "x\n", "s": {"y": "y\n", "z": "z\n"}, "w": {}},
    "l": L("f"),
    "e": {},
    "many": {"m%03d" % i: str(i) for i in range(200)},
}


def make(work, alt_work, mode, split):
    """Mount TREE; SPLIT puts the upper on a different tmpfs than the lower,
    so raw inode numbers of the two layers collide."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    upper = j(alt_work, "upper") if split else None
    o = Overlay(lower, upper=upper, inode_mode=mode)
    o.mount()
    return o


def mutate(mp):
    open(j(mp, "f"), "a").write("copied up\n")          # copy-up
    os.chmod(j(mp, "d/s"), 0o700)                       # dir copy-up
    os.rename(j(mp, "g"), j(mp, "d/g2"))                # lower file renamed
    os.rename(j(mp, "d/w"), j(mp, "w2"))                # lower dir renamed
    os.unlink(j(mp, "h"))
    open(j(mp, "h"), "w").write("new h")                 # new file, old name
    for i in range(100):
        open(j(mp, "new%03d" % i), "w").write(str(i))
    os.mkdir(j(mp, "nd"))
    os.symlink("f", j(mp, "nd/sl"))
    for i in range(0, 200, 3):
        open(j(mp, "many/m%03d" % i), "a").write("+")


def walk(mp):
    """rel path -> (lstat ino, readdir ino, type) for everything under MP."""
    out = {"": (os.lstat(mp).st_ino, None, "dir")}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(j(mp, rel) if rel else mp) as it:
            for e in it:
                r = j(rel, e.name) if rel else e.name
                st = os.lstat(e.path)
                out[r] = (st.st_ino, e.inode(), stat.S_IFMT(st.st_mode))
                if stat.S_ISDIR(st.st_mode):
                    stack.append(r)
    return out


def check_readdir_matches_stat(inos):
    bad = {k: v for k, v in inos.items() if k and v[0] != v[1]}
    assert not bad, "stat st_ino != readdir d_ino: %r" % dict(list(bad.items())[:10])


def check_unique(inos):
    seen = {}
    for k, v in inos.items():
        seen.setdefault(v[0], []).append(k)
    dup = {i: ps for i, ps in seen.items() if len(ps) > 1}
    assert not dup, "distinct files share an inode number: %r" % dict(list(dup.items())[:10])


@pytest.mark.parametrize("split", [False, True], ids=["same-fs", "split-fs"])
@pytest.mark.parametrize("mode", MODES)
def test_readdir_ino_matches_stat_and_unique(work, alt_work, mode, split):
    o = make(work, alt_work, mode, split)
    inos = walk(o.mp)
    check_readdir_matches_stat(inos)
    check_unique(inos)
    mutate(o.mp)
    inos = walk(o.mp)
    check_readdir_matches_stat(inos)
    check_unique(inos)
    o.remount()
    inos = walk(o.mp)
    check_readdir_matches_stat(inos)
    check_unique(inos)


def test_virtual_root_is_1(work, alt_work):
    o = make(work, alt_work, "virtual", False)
    assert os.stat(o.mp).st_ino == 1


@pytest.mark.parametrize("mode", MODES)
def test_stable_while_mounted(work, alt_work, mode):
    o = make(work, alt_work, mode, True)
    mp = o.mp
    before = {p: os.lstat(j(mp, p)).st_ino for p in ("f", "g", "d", "d/s", "d/w", "d/x", "l")}
    open(j(mp, "f"), "a").write("x")
    os.chmod(j(mp, "d/s"), 0o700)
    os.setxattr(j(mp, "d/x"), "user.a", b"1")
    os.chown(j(mp, "l"), 1, 1, follow_symlinks=False)
    os.rename(j(mp, "g"), j(mp, "d/g2"))
    os.rename(j(mp, "d/w"), j(mp, "w2"))
    after = {p: os.lstat(j(mp, q)).st_ino for p, q in
             (("f", "f"), ("g", "d/g2"), ("d", "d"), ("d/s", "d/s"), ("d/w", "w2"),
              ("d/x", "d/x"), ("l", "l"))}
    assert after == before
    # a file created in the mount keeps its number when renamed
    open(j(mp, "n"), "w").close()
    n = os.stat(j(mp, "n")).st_ino
    os.rename(j(mp, "n"), j(mp, "d/s/n"))
    assert os.stat(j(mp, "d/s/n")).st_ino == n
    # fstat agrees with stat
    fd = os.open(j(mp, "f"), os.O_RDONLY)
    try:
        assert os.fstat(fd).st_ino == before["f"]
    finally:
        os.close(fd)


@pytest.mark.parametrize("split", [False, True], ids=["same-fs", "split-fs"])
def test_persistent_across_remount_copyup_rename(work, alt_work, split):
    o = make(work, alt_work, "persistent", split)
    mp = o.mp
    first = walk(o.mp)
    o.remount()
    assert walk(o.mp) == first, "numbers changed across a plain remount"
    ino = {p: first[p][0] for p in ("f", "g", "d", "d/s", "d/w", "d/x", "l", "many/m010")}
    # copy-up keeps the number
    open(j(mp, "f"), "a").write("x")
    open(j(mp, "many/m010"), "a").write("x")
    os.chmod(j(mp, "d/s"), 0o700)
    assert os.stat(j(mp, "f")).st_ino == ino["f"]
    assert os.stat(j(mp, "many/m010")).st_ino == ino["many/m010"]
    assert os.stat(j(mp, "d/s")).st_ino == ino["d/s"]
    # rename keeps the number
    os.rename(j(mp, "g"), j(mp, "d/g2"))
    os.rename(j(mp, "d/w"), j(mp, "w2"))
    os.rename(j(mp, "f"), j(mp, "f2"))
    assert os.stat(j(mp, "d/g2")).st_ino == ino["g"]
    assert os.stat(j(mp, "w2")).st_ino == ino["d/w"]
    assert os.stat(j(mp, "f2")).st_ino == ino["f"]
    open(j(mp, "created"), "w").close()
    created = os.stat(j(mp, "created")).st_ino
    mid = walk(mp)
    check_unique(mid)
    o.remount()
    again = walk(mp)
    assert again == mid, "numbers changed across remount after changes: %r" % {
        k: (mid.get(k), again.get(k)) for k in set(mid) | set(again)
        if mid.get(k) != again.get(k)}
    assert again["d/g2"][0] == ino["g"]
    assert again["w2"][0] == ino["d/w"]
    assert again["f2"][0] == ino["f"]
    assert again["d/s"][0] == ino["d/s"]
    assert again["created"][0] == created


@pytest.mark.parametrize("mode", MODES)
def test_hardlinks_share_number(work, alt_work, mode):
    o = make(work, alt_work, mode, True)
    mp = o.mp
    os.link(j(mp, "f"), j(mp, "d/f_link"))
    open(j(mp, "u"), "w").close()
    os.link(j(mp, "u"), j(mp, "u2"))
    assert os.stat(j(mp, "f")).st_ino == os.stat(j(mp, "d/f_link")).st_ino
    assert os.stat(j(mp, "u")).st_ino == os.stat(j(mp, "u2")).st_ino
    inos = walk(mp)
    check_readdir_matches_stat(inos)
    assert inos["f"][0] != inos["u"][0]


@pytest.mark.parametrize("mode", MODES)
def test_nested_mount_in_lower(work, alt_work, mode):
    """A filesystem mounted inside the lower: its files are shown, and their
    (colliding) inode numbers don't clash with the lower's own."""
    import subprocess
    from conftest import IS_ROOT, is_mounted, run
    if not IS_ROOT:
        pytest.skip("needs root to mount a tmpfs")
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"top%d" % i: str(i) for i in range(50)})
    nested = j(lower, "nested")
    os.mkdir(nested)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "ovlfs-test-nested", nested],
                   check=True)
    o = None
    try:
        build(nested, {"n%d" % i: "nested %d" % i for i in range(50)})
        os.mkdir(j(nested, "sub"))
        o = Overlay(lower, upper=j(alt_work, "upper"), inode_mode=mode)
        o.mount()
        inos = walk(o.mp)
        assert sorted(os.listdir(j(o.mp, "nested"))) == sorted(os.listdir(nested))
        check_readdir_matches_stat(inos)
        check_unique(inos)
        before = os.stat(j(o.mp, "nested/n7")).st_ino
        open(j(o.mp, "nested/n7"), "a").write("+")          # copy-up from the nested fs
        open(j(o.mp, "nested/sub/new"), "w").write("new")
        assert os.stat(j(o.mp, "nested/n7")).st_ino == before
        assert open(j(o.mp, "nested/n7")).read() == "nested 7+"
        assert open(j(nested, "n7")).read() == "nested 7"
        inos = walk(o.mp)
        check_readdir_matches_stat(inos)
        check_unique(inos)
        if mode == "persistent":
            o.remount()
            assert walk(o.mp) == inos
    finally:
        if o is not None:
            o.cleanup()
        if is_mounted(nested):
            if run(["umount", nested]).returncode != 0:
                run(["umount", "-l", nested])
