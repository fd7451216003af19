"""Symlinks (never followed by ovlfs itself), hard links, special files,
unlinked-but-open files and odd open modes."""

import errno
import os
import stat

import pytest

from conftest import (F, D, L, Fifo, Dev, HL, needs_root, snapshot, utimensat,
                      UTIME_OMIT, assert_same_tree, IS_ROOT)


def j(*p):
    return os.path.join(*p)


def etc_state():
    """Top-level metadata of /etc plus a few contents: must never change."""
    out = {}
    st = os.lstat("/etc")
    out["/etc"] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns)
    for n in sorted(os.listdir("/etc")):
        p = j("/etc", n)
        st = os.lstat(p)
        out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns)
    for n in ("hostname", "passwd"):
        p = j("/etc", n)
        if os.path.isfile(p):
            out[p + ":data"] = open(p, "rb").read()
    try:
        out["/etc:xattrs"] = sorted(os.listxattr("/etc"))
    except OSError:
        pass
    return out


@pytest.fixture
def canary(work):
    """A host directory outside every layer; absolute symlinks point at it."""
    c = j(work, "canary")
    os.mkdir(c)
    open(j(c, "file"), "w").write("canary\n")
    os.utime(c, ns=(10**9, 10**9))
    os.utime(j(c, "file"), ns=(10**9, 10**9))
    return c


def canary_state(c):
    return snapshot(c, mtime=True, ctime=True, atime=False, root_attrs=True)


def test_dangling_symlink(scenario):
    sc = scenario({"dang": L("does/not/exist"), "dang_abs": L("/nonexistent/zzz")})
    sc.both(lambda r: os.readlink(j(r, "dang")))
    sc.both(lambda r: os.stat(j(r, "dang")))
    sc.both(lambda r: os.path.lexists(j(r, "dang")))
    sc.both(lambda r: os.chown(j(r, "dang"), 5, 6, follow_symlinks=False))
    sc.both(lambda r: os.rename(j(r, "dang"), j(r, "dang2")))
    sc.both(lambda r: os.unlink(j(r, "dang_abs")))
    sc.check()
    sc.remount()
    sc.check()


def test_absolute_symlink_to_etc_never_followed(scenario):
    before = etc_state()
    sc = scenario({"etc": L("/etc"), "d": {"etcl": L("/etc/hostname")}})
    sc.both(lambda r: os.readlink(j(r, "etc")))
    sc.both(lambda r: os.chown(j(r, "etc"), 1234, 5678, follow_symlinks=False))
    sc.both(lambda r: os.chown(j(r, "d/etcl"), 4321, 8765, follow_symlinks=False))
    sc.both(lambda r: os.utime(j(r, "etc"), ns=(10**9, 2 * 10**9), follow_symlinks=False))
    sc.both(lambda r: utimensat(j(r, "d/etcl"), UTIME_OMIT, (3, 0), follow=False))
    sc.both(lambda r: os.setxattr(j(r, "etc"), "user.x", b"1", follow_symlinks=False))
    if IS_ROOT:
        sc.both(lambda r: os.setxattr(j(r, "d/etcl"), "trusted.x", b"1",
                                      follow_symlinks=False))
        sc.both(lambda r: os.removexattr(j(r, "d/etcl"), "trusted.x",
                                         follow_symlinks=False))
    sc.both(lambda r: os.rename(j(r, "etc"), j(r, "etc2")))
    sc.both(lambda r: os.link(j(r, "etc2"), j(r, "etc3"), follow_symlinks=False))
    assert os.path.islink(sc.u("etc2")) and os.readlink(sc.u("etc2")) == "/etc"
    st = os.lstat(sc.m("etc2"))
    assert stat.S_ISLNK(st.st_mode) and st.st_uid == 1234
    sc.both(lambda r: os.unlink(j(r, "etc3")))
    sc.both(lambda r: os.lstat(j(r, "etc2")).st_mtime_ns)
    sc.both(lambda r: os.lstat(j(r, "d/etcl")).st_mtime_ns)
    sc.both(lambda r: os.unlink(j(r, "d/etcl")))
    sc.check()
    sc.remount()
    sc.check()
    sc.both(lambda r: os.lstat(j(r, "etc2")).st_mtime_ns)
    assert etc_state() == before, "/etc changed!"


def test_absolute_symlink_to_canary_never_followed(scenario, canary):
    before = canary_state(canary)
    sc = scenario({"cl": L(canary), "d": {"fl": L(j(canary, "file"))}, "f": "f"})
    sc.both(lambda r: os.chown(j(r, "cl"), 1234, 5678, follow_symlinks=False))
    sc.both(lambda r: os.chown(j(r, "d/fl"), 1234, 5678, follow_symlinks=False))
    sc.both(lambda r: os.utime(j(r, "d/fl"), ns=(5, 5), follow_symlinks=False))
    if IS_ROOT:
        sc.both(lambda r: os.setxattr(j(r, "cl"), "trusted.t", b"v",
                                      follow_symlinks=False))
    sc.both(lambda r: sorted(os.listxattr(j(r, "cl"), follow_symlinks=False)))
    sc.both(lambda r: os.rename(j(r, "d/fl"), j(r, "fl")))
    sc.both(lambda r: os.rename(j(r, "f"), j(r, "cl")))        # replace the symlink
    sc.both(lambda r: open(j(r, "cl")).read())
    sc.both(lambda r: os.lstat(j(r, "fl")).st_mtime_ns)
    sc.check()
    sc.remount()
    sc.check()
    sc.both(lambda r: os.lstat(j(r, "fl")).st_mtime_ns)
    assert_same_tree(canary_state(canary), before, "canary now", "canary before")


def test_write_through_relative_dir_symlink(scenario):
    before = etc_state()
    sc = scenario({"real": {"a": "a"}, "rl": L("real"), "abs": L("/etc")})
    sc.both(lambda r: open(j(r, "rl/new"), "w").write("via link"))
    sc.both(lambda r: open(j(r, "rl/a"), "a").write("+"))
    sc.both(lambda r: os.mkdir(j(r, "rl/sub")))
    sc.both(lambda r: sorted(os.listdir(j(r, "real"))))
    assert os.path.isfile(sc.u("real/new"))
    sc.check()
    assert etc_state() == before


def test_symlink_to_dir(scenario):
    sc = scenario({"dir": {"x": "x", "s": {"y": "y"}}, "dl": L("dir"), "dl2": L("dl")})
    sc.both(lambda r: sorted(os.listdir(j(r, "dl"))))
    sc.both(lambda r: sorted(os.listdir(j(r, "dl2/s"))))
    sc.both(lambda r: stat.S_IFMT(os.stat(j(r, "dl2")).st_mode))
    sc.both(lambda r: os.rmdir(j(r, "dl")))
    sc.both(lambda r: os.unlink(j(r, "dl")))
    sc.both(lambda r: os.listdir(j(r, "dl2")))
    sc.check()


def test_hardlink_lower_file(scenario):
    sc = scenario({"f": F("data\n", mode=0o640, xattrs={"user.h": "1"}), "d": {}})
    sc.both(lambda r: os.link(j(r, "f"), j(r, "d/g")))
    sc.both(lambda r: (os.stat(j(r, "f")).st_nlink, os.stat(j(r, "d/g")).st_nlink))
    m1, m2 = os.stat(sc.m("f")), os.stat(sc.m("d/g"))
    assert m1.st_ino == m2.st_ino
    assert open(sc.m("d/g")).read() == "data\n"
    sc.both(lambda r: open(j(r, "d/g"), "a").write("via g\n"))
    sc.both(lambda r: open(j(r, "f")).read())
    sc.both(lambda r: os.chmod(j(r, "f"), 0o600))
    sc.both(lambda r: oct(os.stat(j(r, "d/g")).st_mode))
    sc.check(nlink=True)
    sc.remount()
    sc.check(nlink=True)
    sc.both(lambda r: os.unlink(j(r, "f")))
    sc.both(lambda r: os.stat(j(r, "d/g")).st_nlink)
    sc.both(lambda r: open(j(r, "d/g")).read())
    sc.check(nlink=True)


def test_hardlink_upper_file(scenario):
    sc = scenario({})
    sc.both(lambda r: open(j(r, "a"), "w").write("a"))
    sc.both(lambda r: os.link(j(r, "a"), j(r, "b")))
    sc.both(lambda r: os.link(j(r, "b"), j(r, "c")))
    sc.both(lambda r: [os.stat(j(r, n)).st_nlink for n in "abc"])
    sc.both(lambda r: open(j(r, "c"), "a").write("c"))
    sc.both(lambda r: open(j(r, "a")).read())
    sc.both(lambda r: os.unlink(j(r, "b")))
    sc.check(nlink=True)
    sc.remount()
    sc.check(nlink=True)


def test_fifo_keeps_type_after_chmod(scenario):
    sc = scenario({"fifo": Fifo(mode=0o644, uid=12, gid=13), "d": {"f2": Fifo()}})
    sc.both(lambda r: os.chmod(j(r, "fifo"), 0o600))
    sc.both(lambda r: os.chown(j(r, "d/f2"), 1, 1))
    assert stat.S_ISFIFO(os.lstat(sc.u("fifo")).st_mode)
    sc.both(lambda r: oct(os.stat(j(r, "fifo")).st_mode))
    sc.check()
    sc.remount()
    sc.check()


@needs_root
def test_chardev_keeps_type_after_chmod(scenario):
    sc = scenario({"null": Dev(1, 3, mode=0o666), "blk": Dev(7, 0, kind="b", mode=0o660)})
    sc.both(lambda r: os.chmod(j(r, "null"), 0o600))
    sc.both(lambda r: os.chmod(j(r, "blk"), 0o600))
    st = os.lstat(sc.u("null"))
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    sc.both(lambda r: (oct(os.lstat(j(r, "null")).st_mode), os.lstat(j(r, "null")).st_rdev))
    sc.check()
    sc.remount()
    sc.check()


def test_unlinked_while_open_lower_file(scenario):
    sc = scenario({"f": "lower data\n", "g": "g\n"})

    def fn(r):
        fd = os.open(j(r, "f"), os.O_RDWR)
        try:
            os.unlink(j(r, "f"))
            os.pwrite(fd, b"NEW", 0)
            os.write(fd, b"appended")
            os.fsync(fd)
            os.ftruncate(fd, 20)
            st = os.fstat(fd)
            return os.pread(fd, 100, 0), st.st_size, st.st_nlink, os.path.lexists(j(r, "f"))
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()
    sc.remount()
    sc.check()


def test_unlinked_while_open_upper_file(scenario):
    sc = scenario({})

    def fn(r):
        fd = os.open(j(r, "tmp"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            os.write(fd, b"x" * 5000)
            os.unlink(j(r, "tmp"))
            open(j(r, "tmp"), "w").write("other")      # new file, same name
            os.pwrite(fd, b"Y", 0)
            st = os.fstat(fd)
            return os.pread(fd, 3, 0), st.st_size, open(j(r, "tmp")).read()
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()


def test_unlinked_while_open_rdonly_then_new_file(scenario):
    sc = scenario({"f": "old\n"})

    def fn(r):
        fd = os.open(j(r, "f"), os.O_RDONLY)
        try:
            os.unlink(j(r, "f"))
            open(j(r, "f"), "w").write("replacement\n")
            return os.pread(fd, 100, 0), open(j(r, "f")).read()
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()


def test_create_0444_still_writable_through_creating_fd(scenario):
    sc = scenario({"d": {}})

    def fn(r):
        fd = os.open(j(r, "d/ro"), os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o444)
        try:
            n = os.write(fd, b"written through the creating fd")
            os.fsync(fd)
        finally:
            os.close(fd)
        return n, oct(os.stat(j(r, "d/ro")).st_mode), open(j(r, "d/ro"), "rb").read()
    sc.both(fn)

    def fn_rdwr(r):
        fd = os.open(j(r, "ro2"), os.O_CREAT | os.O_RDWR, 0o400)
        try:
            os.write(fd, b"abc")
            return os.pread(fd, 3, 0)
        finally:
            os.close(fd)
    sc.both(fn_rdwr)
    sc.check()
    sc.remount()
    sc.check()


def test_create_0444_as_other_user(scenario, work):
    """As a non-root user (so no capability can hide a bug): the creating fd
    of a 0444 file is writable."""
    if not IS_ROOT:
        pytest.skip("needs root to switch users")
    sc = scenario({"d": D({}, mode=0o777)}, opts="allow_other")
    import subprocess
    import sys
    code = ("import os,sys\n"
            "os.setgid(4242); os.setuid(4242)\n"
            "fd = os.open(sys.argv[1], os.O_CREAT|os.O_WRONLY|os.O_EXCL, 0o444)\n"
            "os.write(fd, b'ok'); os.close(fd)\n"
            "try:\n"
            "    os.open(sys.argv[1], os.O_WRONLY)\n"
            "    print('reopen-ok')\n"
            "except PermissionError:\n"
            "    print('reopen-eacces')\n")
    out = {}
    for name, root in (("oracle", sc.oracle), ("mount", sc.mnt)):
        r = subprocess.run([sys.executable, "-c", code, j(root, "d/ro")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        out[name] = (r.returncode, r.stdout.decode().strip(),
                     r.stderr.decode().strip().splitlines()[-1:] if r.returncode else "")
    assert out["mount"] == out["oracle"], out
    sc.check()


def test_hardlinked_fifo_is_one_inode(overlay):
    """Every name of one upper file is one kernel inode: a fifo linked
    under two names is one pipe (a reader on one name, a writer on the
    other), even after a failed mkdir forced a fresh lookup of the name."""
    o = overlay({})
    p, q = os.path.join(o.mp, "p"), os.path.join(o.mp, "q")
    os.mkfifo(p)
    os.link(p, q)
    with pytest.raises(FileExistsError):
        os.mkdir(q)
    r = os.open(q, os.O_RDWR)
    try:
        w = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b"hi")
        os.close(w)
        assert os.read(r, 2) == b"hi"
    finally:
        os.close(r)
    assert os.stat(p).st_ino == os.stat(q).st_ino


def _nlinks(r, *names):
    out = []
    for n in names:
        try:
            out.append(os.stat(j(r, n)).st_nlink)
        except FileNotFoundError:
            out.append(None)
    return out


def test_lower_hardlink_counts_after_unlink(scenario):
    """Deleting names of a lower hard-linked file through the mount: the
    names left count as a plain directory counts them (the kernel's
    overlayfs needs index=on for that), also after a remount."""
    sc = scenario({"a": "shared\n", "b": HL("a"), "d": {"c": HL("a")},
                   "e": "other\n"})
    sc.both(lambda r: _nlinks(r, "a", "b", "d/c"))
    sc.both(lambda r: os.unlink(j(r, "a")))
    sc.both(lambda r: _nlinks(r, "a", "b", "d/c"))
    sc.check(nlink=True)
    sc.remount()
    sc.both(lambda r: _nlinks(r, "b", "d/c"))
    sc.both(lambda r: os.unlink(j(r, "d/c")))
    sc.both(lambda r: _nlinks(r, "b", "d/c"))
    sc.both(lambda r: open(j(r, "b")).read())
    sc.check(nlink=True)
    sc.remount()
    sc.check(nlink=True)


def test_lower_hardlink_counts_after_rename_over(scenario):
    """Replacing one name of a lower hard link by a rename drops the
    other's count; renaming a lower link onto a new name keeps it."""
    sc = scenario({"p": "p\n", "q": HL("p"), "z": "z\n", "m": "m\n",
                   "n": HL("m")})
    sc.both(lambda r: os.rename(j(r, "z"), j(r, "q")))
    sc.both(lambda r: _nlinks(r, "p", "q"))
    sc.both(lambda r: os.rename(j(r, "m"), j(r, "m2")))
    sc.both(lambda r: _nlinks(r, "m2", "n"))
    sc.check(nlink=True)
    sc.remount()
    sc.check(nlink=True)


def test_lower_hardlink_counts_after_link(scenario):
    """link() of a lower file brings its visible names along: every name
    counts them all, hidden ones excepted."""
    sc = scenario({"x": "x\n", "y": HL("x"), "s": "s\n", "t": HL("s"),
                   "d": {}})
    sc.both(lambda r: os.link(j(r, "x"), j(r, "d/x2")))
    sc.both(lambda r: _nlinks(r, "x", "y", "d/x2"))
    sc.both(lambda r: os.unlink(j(r, "t")))
    sc.both(lambda r: os.link(j(r, "s"), j(r, "s2")))
    sc.both(lambda r: _nlinks(r, "s", "t", "s2"))
    sc.check(nlink=True)
    sc.remount()
    sc.check(nlink=True)


def test_open_deleted_lower_file_counts_zero(scenario):
    """fstat of a lower file opened read-only and then deleted says 0
    links, as for a file in the upper; one whose other name is still
    there says 1, and stays one file with that name."""
    sc = scenario({"f": "f\n", "x": "x\n", "y": HL("x")})

    def fn(r):
        fd = os.open(j(r, "f"), os.O_RDONLY)
        try:
            os.unlink(j(r, "f"))
            return os.fstat(fd).st_nlink, os.pread(fd, 10, 0)
        finally:
            os.close(fd)
    sc.both(fn)

    def fn2(r):
        fd = os.open(j(r, "y"), os.O_RDONLY)
        try:
            os.unlink(j(r, "y"))
            n = os.fstat(fd).st_nlink, os.stat(j(r, "x")).st_nlink
            open(j(r, "x"), "a").write("more\n")
            return n, os.pread(fd, 10, 0)
        finally:
            os.close(fd)
    sc.both(fn2)
    sc.check(nlink=True)


def test_rename_onto_another_link_of_the_file(scenario):
    """rename(2) of a name onto another name of the same file does nothing
    (both stay), but the kernel moves its dentry all the same: moved on,
    the file must stay reachable after its first name is unlinked (it gave
    ENOENT: the node kept the old name, and its unlink marked it deleted;
    the fuzzer's seed 2115)."""
    sc = scenario({"f": "f\n", "x": {"u": HL("f")}, "b": HL("f"), "a": {}})
    for root in (sc.mnt, sc.oracle):
        os.rename(j(root, "x/u"), j(root, "b"))
        assert sorted(os.listdir(j(root, "x"))) == ["u"]
        os.rename(j(root, "b"), j(root, "a/b"))
        os.unlink(j(root, "x/u"))
        with open(j(root, "a/b")) as fh:
            assert fh.read() == "f\n"
        assert os.lstat(j(root, "a/b")).st_nlink == 2
    sc.check()
    sc.remount()
    sc.check()
