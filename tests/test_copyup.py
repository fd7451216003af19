"""Copy-up: data, metadata and parents land in the upper as they were."""

import errno
import os
import stat

import pytest

from conftest import (F, D, L, Fifo, snapshot, assert_same_tree, upper_listing,
                      needs_root, is_private_xattr)

MiB = 1 << 20


def j(*p):
    return os.path.join(*p)


XA = {"user.a": "alpha", "user.b": b"\x00\x01binary\xff", "user.c": ""}

META = dict(mode=0o640, uid=1234, gid=5678, mtime=1_234_567_890.5,
            atime=1_111_111_111.25, xattrs=XA)

TREE = {
    "f": F("content\n", **META),
    "pub": D({"mid": D({"g": F("g\n", mode=0o600, uid=77, gid=88)},
                       mode=0o750, uid=42, gid=43, mtime=1_300_000_000,
                       xattrs={"user.mid": "m"})},
             mode=0o1777, uid=1234, gid=5678, mtime=1_200_000_000,
             xattrs={"user.pub": "p"}),
    "sl": L("f", uid=1234, gid=5678),
    "empty": F(""),
}


def meta_of(path, times=True):
    st = os.lstat(path)
    r = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
    if times:
        r["mtime"] = st.st_mtime_ns
    xa = {}
    for n in os.listxattr(path, follow_symlinks=False):
        if not is_private_xattr(n):
            xa[n] = os.getxattr(path, n, follow_symlinks=False)
    r["xattrs"] = xa
    return r


def test_read_only_use_copies_nothing(scenario):
    sc = scenario(TREE)
    snapshot(sc.mnt)                          # reads every file, lists every dir
    os.access(sc.m("f"), os.W_OK)
    os.readlink(sc.m("sl"))
    with open(sc.m("f"), "rb") as fh:
        fh.read()
    fd = os.open(sc.m("pub/mid/g"), os.O_RDONLY)
    os.close(fd)
    left = [k for k in upper_listing(sc.upper) if k and not
            os.path.basename(k).startswith(b".wh..wh.")]
    assert left == [], "read-only use created %r in the upper" % left
    sc.check()


def test_copyup_on_write_keeps_metadata(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: open(j(r, "f"), "ab").write(b"more\n"))
    assert os.path.isfile(sc.u("f"))
    um = meta_of(sc.u("f"), times=False)
    assert um == meta_of(sc.o("f"), times=False)
    assert um["uid"] == 1234 and um["gid"] == 5678 and um["mode"] == oct(0o100640)
    sc.check()
    sc.remount()
    sc.check()


def test_copyup_on_chmod_keeps_times(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.chmod(j(r, "f"), 0o604))
    # chmod changes neither mtime nor atime
    m = os.stat(sc.m("f"))
    o = os.stat(sc.o("f"))
    assert (m.st_mtime_ns, m.st_atime_ns) == (o.st_mtime_ns, o.st_atime_ns)
    u = os.stat(sc.u("f"))
    assert u.st_mtime_ns == o.st_mtime_ns
    assert meta_of(sc.u("f")) == meta_of(sc.o("f"))
    sc.check(mtime=True)


def test_copyup_on_setxattr_keeps_rest(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.setxattr(j(r, "f"), "user.new", b"n"))
    assert meta_of(sc.u("f")) == meta_of(sc.o("f"))
    sc.check(mtime=True)
    sc.remount()
    sc.check(mtime=True)


def test_copyup_on_chown_keeps_times_and_xattrs(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.chown(j(r, "f"), 1, 2))
    sc.check(mtime=True)


def test_parents_copied_up_with_their_metadata(scenario):
    sc = scenario(TREE)
    lower_pub = meta_of(j(sc.lower, "pub"))
    lower_mid = meta_of(j(sc.lower, "pub/mid"))
    sc.both(lambda r: open(j(r, "pub/mid/g"), "ab").write(b"changed\n"))
    # in the upper: same mode (incl. sticky), owner, xattrs, times as in the lower
    assert meta_of(sc.u("pub")) == lower_pub
    assert meta_of(sc.u("pub/mid")) == lower_mid
    assert stat.S_IMODE(os.stat(sc.u("pub")).st_mode) == 0o1777
    # through the mount: the same, parents' mtimes untouched by the copy-up
    assert meta_of(sc.m("pub")) == lower_pub
    assert meta_of(sc.m("pub/mid")) == lower_mid
    sc.check()
    sc.remount()
    assert meta_of(sc.m("pub")) == lower_pub
    assert meta_of(sc.m("pub/mid")) == lower_mid
    sc.check()


def test_new_file_in_lower_dir_keeps_dir_mode(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: open(j(r, "pub/new"), "w").write("n"))
    assert stat.S_IMODE(os.stat(sc.m("pub")).st_mode) == 0o1777
    assert os.stat(sc.m("pub")).st_uid == 1234
    sc.check()


def test_copyup_symlink_keeps_target_and_owner(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.utime(j(r, "sl"), ns=(5, 6), follow_symlinks=False))
    assert os.path.islink(sc.u("sl"))
    assert os.readlink(sc.u("sl")) == "f"
    st = os.lstat(sc.u("sl"))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    sc.check(mtime=True)


def test_copyup_dir_keeps_lower_children_visible(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.chmod(j(r, "pub/mid"), 0o700))
    sc.both(lambda r: sorted(os.listdir(j(r, "pub/mid"))))
    sc.both(lambda r: open(j(r, "pub/mid/g")).read())
    sc.check()
    sc.remount()
    sc.check()


def test_copyup_empty_file(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: open(j(r, "empty"), "ab").close())
    sc.both(lambda r: os.truncate(j(r, "empty"), 0))
    sc.both(lambda r: os.chmod(j(r, "empty"), 0o600))
    sc.check()


def test_copyup_mode_0000_file(scenario):
    sc = scenario({"locked": F("secret", mode=0o000)})
    if os.geteuid() != 0:
        pytest.skip("needs root to open a 0000 file")
    sc.both(lambda r: open(j(r, "locked"), "ab").write(b"!"))
    sc.check()


def test_sparse_copyup_keeps_holes(scenario):
    size = 64 * MiB
    sc = scenario({"sparse": F(chunks={0: b"head" * 1024, 32 * MiB: b"mid" * 1000},
                               size=size)})
    assert os.stat(j(sc.lower, "sparse")).st_blocks * 512 < MiB   # tmpfs keeps holes
    sc.both(lambda r: open(j(r, "sparse"), "ab").write(b"appended"))
    u = os.stat(sc.u("sparse"))
    assert u.st_size == size + 8
    assert u.st_blocks * 512 < 4 * MiB, \
        "copied-up sparse file uses %d bytes (holes filled)" % (u.st_blocks * 512)
    m = os.stat(sc.m("sparse"))
    assert m.st_blocks * 512 < 4 * MiB
    sc.check()


def test_partial_overwrite_of_big_file(scenario):
    data = bytes((i * 7) & 0xFF for i in range(256)) * (8 * 4096)   # 8 MiB
    sc = scenario({"big": F(data)})

    def fn(r):
        fd = os.open(j(r, "big"), os.O_WRONLY)
        try:
            os.pwrite(fd, b"X" * 10, 4 * MiB - 5)
            os.pwrite(fd, b"Y", 8 * MiB - 1)
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()


def test_copyup_then_read_through_old_ro_handle(scenario):
    """A file opened read-only and then copied up via another handle: data
    read afterwards through a *new* handle is the new data."""
    sc = scenario(TREE)

    def fn(r):
        ro = os.open(j(r, "f"), os.O_RDONLY)
        try:
            with open(j(r, "f"), "r+b") as w:
                w.write(b"CHANGED")
            with open(j(r, "f"), "rb") as again:
                return again.read()
        finally:
            os.close(ro)
    sc.both(fn)
    sc.check()


def test_private_xattr_never_shows(scenario):
    sc = scenario(dict(TREE, ff=Fifo(), dd={"c": "c"}))
    for p in ("f", "pub/mid/g", "sl", "ff", "dd", "empty"):
        sc.both(lambda r: os.chown(j(r, p), 3, 4, follow_symlinks=False))
    sc.both(lambda r: open(j(r, "created"), "w").write("c"))
    sc.both(lambda r: os.mkdir(j(r, "newdir")))
    for p in ("f", "pub", "pub/mid", "pub/mid/g", "sl", "ff", "dd", "empty", "created",
              "newdir", ""):
        path = sc.m(p) if p else sc.mnt
        names = os.listxattr(path, follow_symlinks=False)
        assert not [n for n in names if "ovlfs" in n], (p, names)
        for n in ("trusted.ovlfs.origin", "user.ovlfs.origin", "user.ovlfs.format"):
            with pytest.raises(OSError) as ei:
                os.getxattr(path, n, follow_symlinks=False)
            assert ei.value.errno == errno.ENODATA, (p, n, ei.value)
    sc.check()
    sc.remount()
    sc.check()


def _acl(entries):
    """system.posix_acl_access value: [(tag, perm, id)]."""
    import struct
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i)
                                           for t, p, i in entries)


ACL = _acl([(0x01, 6, 0xFFFFFFFF), (0x02, 6, 4242), (0x04, 4, 0xFFFFFFFF),
            (0x10, 6, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)])


def test_posix_acl_copied_up(scenario, work):
    probe = os.path.join(work, "aclprobe")
    open(probe, "w").close()
    try:
        os.setxattr(probe, "system.posix_acl_access", ACL)
    except OSError as e:
        pytest.skip("no POSIX ACLs on tmpfs here: %s" % e)
    sc = scenario({"f": F("acl", xattrs={"system.posix_acl_access": ACL}),
                   "d": D({"g": "g"}, xattrs={"system.posix_acl_default": ACL})})
    sc.both(lambda r: os.getxattr(j(r, "f"), "system.posix_acl_access"))
    sc.both(lambda r: os.chmod(j(r, "f"), 0o640))        # rewrites the ACL mask
    sc.both(lambda r: os.getxattr(j(r, "f"), "system.posix_acl_access"))
    sc.both(lambda r: oct(os.stat(j(r, "f")).st_mode))
    sc.both(lambda r: open(j(r, "d/new"), "w").close())   # inherits default ACL
    sc.both(lambda r: os.getxattr(j(r, "d/new"), "system.posix_acl_access"))
    sc.both(lambda r: open(j(r, "d/g"), "a").write("+"))
    sc.check()
    sc.remount()
    sc.check()


def test_copyup_keeps_ancestor_attrs_coherent(scenario):
    """After a write deep down, what stat says about the ancestors right away
    is what it says a little later (nothing changes behind the kernel's
    attribute cache; `tar` run right after a write depends on it)."""
    import time
    sc = scenario(TREE)

    def attrs():
        return [(os.stat(p).st_ctime_ns, os.stat(p).st_mtime_ns, os.stat(p).st_mode)
                for p in (sc.mnt, sc.m("pub"), sc.m("pub/mid"))]
    attrs()
    open(sc.m("pub/mid/g"), "a").write("x")
    now = attrs()
    time.sleep(1.5)
    later = attrs()
    assert now == later, "ancestor attributes changed after the fact: %r -> %r" % (now, later)
