"""Every filesystem operation, checked against a plain-directory oracle.

Each test builds a lower tree, copies it (cp -a) to an oracle directory,
mounts ovlfs on the lower, applies the same operations to the mount and the
oracle (outcomes, including errno, must agree), then compares the whole
merged view with the oracle and checks the lower is unchanged.
"""

import errno
import os
import stat
import time

import pytest

from conftest import (F, L, D, Fifo, Dev, needs_root, snapshot, utimensat,
                      UTIME_NOW, UTIME_OMIT, assert_same_tree, Overlay,
                      daemon_pids)

MiB = 1 << 20

BASE = {
    "file": "hello\n",
    "big": F(bytes(range(256)) * 4096),
    "ro": F("readonly\n", mode=0o444),
    "exe": F("#!/bin/sh\necho hi\n", mode=0o755),
    "owned": F("owned\n", uid=1234, gid=5678, mode=0o640),
    "dir": D({"a": "A\n", "b": "B\n", "sub": {"c": "C\n"}}, mode=0o750,
             mtime=1_500_000_000),
    "empty": {},
    "link": L("file"),
    "dangling": L("nowhere"),
    "dirlink": L("dir"),
    "sparse": F(chunks={1 * MiB: b"x" * 4096}, size=4 * MiB),
    "xa": F("x\n", xattrs={"user.foo": "bar", "user.empty": ""}),
}


def j(*p):
    return os.path.join(*p)


# ---------------------------------------------------------------- lookup/getattr

def test_lookup_getattr(scenario):
    sc = scenario(BASE)
    for name in ["file", "big", "ro", "exe", "owned", "dir", "dir/sub/c", "empty",
                 "link", "dangling", "dirlink", "sparse", "xa", "nope", "dir/nope",
                 "file/x", "dirlink/a"]:
        sc.both(lambda r: tuple((s.st_mode, s.st_uid, s.st_gid, s.st_size
                                 if not stat.S_ISDIR(s.st_mode) else 0,
                                 s.st_mtime_ns if not stat.S_ISDIR(s.st_mode) else 0)
                                for s in [os.lstat(j(r, name))]))
        sc.both(lambda r: stat.S_IFMT(os.stat(j(r, name)).st_mode))
    sc.check(mtime=True)
    # reading does not copy anything up
    assert sorted(os.listdir(sc.upper)) == [] or all(
        n.startswith(".wh..wh.") for n in os.listdir(sc.upper)), os.listdir(sc.upper)


def test_readdir_types(scenario):
    sc = scenario(BASE)

    def listing(r, d=""):
        with os.scandir(j(r, d) if d else r) as it:
            return sorted((e.name, e.is_dir(follow_symlinks=False),
                           e.is_file(follow_symlinks=False), e.is_symlink())
                          for e in it)
    sc.both(listing)
    sc.both(lambda r: listing(r, "dir"))
    sc.both(lambda r: listing(r, "dirlink"))
    sc.both(lambda r: listing(r, "empty"))


# ---------------------------------------------------------------- setattr

def test_chmod(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.chmod(j(r, "file"), 0o600))
    sc.both(lambda r: os.chmod(j(r, "dir"), 0o1777))
    sc.both(lambda r: os.chmod(j(r, "dir/sub/c"), 0o4711))
    sc.both(lambda r: os.chmod(j(r, "link"), 0o640))        # follows to file
    sc.both(lambda r: os.chmod(j(r, "nope"), 0o640))
    sc.check()
    sc.remount()
    sc.check()


def test_chown(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.chown(j(r, "file"), 1234, 5678))
    sc.both(lambda r: os.chown(j(r, "dir"), 42, -1))
    sc.both(lambda r: os.chown(j(r, "dir/b"), -1, 43))
    sc.both(lambda r: os.chown(j(r, "dangling"), 7, 8, follow_symlinks=False))
    sc.both(lambda r: os.chown(j(r, "owned"), 0, 0))
    sc.check()
    sc.remount()
    sc.check()


def test_chown_clears_suid(scenario):
    sc = scenario({"s": F("x", mode=0o6755)})
    sc.both(lambda r: os.chown(j(r, "s"), 1000, 1000))
    sc.both(lambda r: oct(os.stat(j(r, "s")).st_mode))
    sc.check()


def test_truncate(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.truncate(j(r, "file"), 3))
    sc.both(lambda r: os.truncate(j(r, "dir/a"), 100000))
    sc.both(lambda r: os.truncate(j(r, "big"), 0))
    sc.both(lambda r: os.truncate(j(r, "dir"), 0))

    def ftrunc(r):
        fd = os.open(j(r, "exe"), os.O_RDWR)
        try:
            os.ftruncate(fd, 5)
            os.ftruncate(fd, 9)
            return os.pread(fd, 100, 0)
        finally:
            os.close(fd)
    sc.both(ftrunc)
    sc.check()
    sc.remount()
    sc.check()


def test_ftruncate_on_readonly_mode_file_opened_rw(scenario):
    sc = scenario(BASE)

    def fn(r):
        fd = os.open(j(r, "ro"), os.O_RDWR)      # root may open 0444 rw
        try:
            os.ftruncate(fd, 2)
            os.write(fd, b"zz")
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()


def test_utimes_explicit(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.utime(j(r, "dir/a"), ns=(1_000_000_001, 2_000_000_002)))
    sc.both(lambda r: os.utime(j(r, "dir/sub"), ns=(3_000_000_003, 4_000_000_004)))
    sc.both(lambda r: os.utime(j(r, "empty"), ns=(5, 6)))
    # a symlink itself (lutimes), the target stays untouched
    sc.both(lambda r: os.utime(j(r, "link"), ns=(7_000_000_000, 8_000_000_000),
                               follow_symlinks=False))
    for p in ["dir/a", "dir/sub", "empty", "link", "file"]:
        sc.both(lambda r: (os.lstat(j(r, p)).st_atime_ns, os.lstat(j(r, p)).st_mtime_ns))
    # parents of what was copied up keep their times too
    sc.check(mtime=True)
    sc.remount()
    sc.check(mtime=True)


def test_utimes_now(scenario):
    sc = scenario(BASE)
    t0 = time.time() - 2
    os.utime(sc.m("dir/b"))
    st = os.stat(sc.m("dir/b"))
    assert st.st_mtime >= t0 and st.st_atime >= t0, st
    assert st.st_mtime <= time.time() + 2
    utimensat(sc.m("file"), UTIME_NOW, UTIME_NOW)
    st = os.stat(sc.m("file"))
    assert st.st_mtime >= t0 and st.st_atime >= t0
    sc.check_lower()


def test_utimes_omit(scenario):
    sc = scenario({"f": F("x", mtime=1_400_000_000, atime=1_300_000_000),
                   "g": F("y", mtime=1_400_000_000, atime=1_300_000_000),
                   "h": F("z", mtime=1_400_000_000, atime=1_300_000_000)})

    def fn(r):
        utimensat(j(r, "f"), UTIME_OMIT, (1000, 5))
        utimensat(j(r, "g"), (2000, 7), UTIME_OMIT)
        utimensat(j(r, "h"), UTIME_OMIT, UTIME_OMIT)
        out = []
        for n in "fgh":
            st = os.stat(j(r, n))
            out.append((st.st_atime_ns, st.st_mtime_ns))
        return out
    got = sc.both(fn)
    assert got[0] == (1_300_000_000 * 10**9, 1000 * 10**9 + 5)
    assert got[1] == (2000 * 10**9 + 7, 1_400_000_000 * 10**9)
    assert got[2] == (1_300_000_000 * 10**9, 1_400_000_000 * 10**9)
    sc.check(mtime=True)


def test_utime_omit_mtime_now_atime(scenario):
    sc = scenario({"f": F("x", mtime=1_400_000_000, atime=1_300_000_000)})
    t0 = time.time() - 2
    utimensat(sc.m("f"), UTIME_NOW, UTIME_OMIT)
    st = os.stat(sc.m("f"))
    assert st.st_atime >= t0
    assert st.st_mtime_ns == 1_400_000_000 * 10**9
    sc.check_lower()


# ---------------------------------------------------------------- readlink

def test_readlink(scenario):
    sc = scenario(BASE)
    for n in ["link", "dangling", "dirlink", "file", "nope"]:
        sc.both(lambda r: os.readlink(j(r, n)))
    sc.both(lambda r: os.listdir(j(r, "dirlink")))
    sc.both(lambda r: open(j(r, "dangling")).read())
    sc.check()


# ---------------------------------------------------------------- mknod / mkdir

def test_mknod_fifo(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.mkfifo(j(r, "fifo"), 0o640))
    sc.both(lambda r: os.mkfifo(j(r, "dir/sub/fifo"), 0o600))
    sc.both(lambda r: os.mkfifo(j(r, "file"), 0o600))
    sc.check()
    sc.remount()
    sc.check()


@needs_root
def test_mknod_chardev(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.mknod(j(r, "null"), stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    sc.both(lambda r: os.mknod(j(r, "dir/zero"), stat.S_IFCHR | 0o600, os.makedev(1, 5)))
    sc.both(lambda r: os.mknod(j(r, "plain"), stat.S_IFREG | 0o600))
    sc.both(lambda r: (os.stat(j(r, "null")).st_rdev, stat.S_IFMT(os.stat(j(r, "null")).st_mode)))
    sc.check()
    sc.remount()
    sc.check()


def test_mkdir(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.mkdir(j(r, "new"), 0o700))
    sc.both(lambda r: os.mkdir(j(r, "new/deeper"), 0o755))
    sc.both(lambda r: os.mkdir(j(r, "dir/sub/inner"), 0o2775))
    sc.both(lambda r: os.mkdir(j(r, "dir")))
    sc.both(lambda r: os.mkdir(j(r, "file")))
    sc.both(lambda r: os.mkdir(j(r, "nope/x")))
    sc.both(lambda r: os.mkdir(j(r, "file/x")))
    sc.check()
    sc.remount()
    sc.check()


# ---------------------------------------------------------------- unlink / rmdir

def test_unlink(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.unlink(j(r, "file")))
    sc.both(lambda r: os.unlink(j(r, "dir/sub/c")))
    sc.both(lambda r: os.unlink(j(r, "link")))
    sc.both(lambda r: os.unlink(j(r, "dangling")))
    sc.both(lambda r: os.unlink(j(r, "dir")))
    sc.both(lambda r: os.unlink(j(r, "nope")))
    sc.both(lambda r: open(j(r, "newfile"), "w").write("n"))
    sc.both(lambda r: os.unlink(j(r, "newfile")))
    sc.both(lambda r: os.unlink(j(r, "file")))
    sc.both(lambda r: os.stat(j(r, "file")))
    sc.check()
    sc.remount()
    sc.check()


def test_rmdir(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.rmdir(j(r, "empty")))
    sc.both(lambda r: os.rmdir(j(r, "dir/sub")))          # ENOTEMPTY, lower child
    sc.both(lambda r: os.rmdir(j(r, "dir")))
    sc.both(lambda r: os.rmdir(j(r, "file")))
    sc.both(lambda r: os.rmdir(j(r, "dirlink")))
    sc.both(lambda r: os.unlink(j(r, "dir/sub/c")))
    sc.both(lambda r: os.rmdir(j(r, "dir/sub")))          # now empty
    sc.both(lambda r: os.rmdir(j(r, "dir")))              # still a, b
    sc.both(lambda r: [os.unlink(j(r, "dir", n)) for n in ("a", "b")])
    sc.both(lambda r: os.rmdir(j(r, "dir")))
    sc.both(lambda r: os.stat(j(r, "dir")))
    sc.check()
    sc.remount()
    sc.check()


def test_rmdir_only_lower_children_enotempty(scenario):
    sc = scenario({"d": {"x": "1", "y": {"z": "2"}}})
    sc.both(lambda r: os.rmdir(j(r, "d")))
    sc.both(lambda r: os.unlink(j(r, "d/x")))
    sc.both(lambda r: os.rmdir(j(r, "d")))               # d/y remains
    sc.both(lambda r: os.rmdir(j(r, "d/y")))             # d/y/z remains
    sc.check()


# ---------------------------------------------------------------- symlink / link

def test_symlink(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.symlink("file", j(r, "s1")))
    sc.both(lambda r: os.symlink("/nonexistent/abs", j(r, "dir/s2")))
    sc.both(lambda r: os.symlink("x" * 1000, j(r, "long")))
    sc.both(lambda r: os.symlink("file", j(r, "dir")))
    sc.both(lambda r: os.readlink(j(r, "long")))
    sc.both(lambda r: open(j(r, "s1")).read())
    sc.check()
    sc.remount()
    sc.check()


def test_link(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: os.link(j(r, "file"), j(r, "hard")))
    sc.both(lambda r: os.link(j(r, "dir/a"), j(r, "dir/sub/a2")))
    sc.both(lambda r: os.link(j(r, "dir"), j(r, "dirhard")))
    sc.both(lambda r: os.link(j(r, "file"), j(r, "exe")))
    sc.both(lambda r: [os.stat(j(r, n)).st_nlink for n in ("file", "hard")])
    sc.both(lambda r: os.stat(j(r, "file")).st_ino == os.stat(j(r, "hard")).st_ino)
    sc.both(lambda r: open(j(r, "hard"), "a").write("more\n"))
    sc.both(lambda r: open(j(r, "file")).read())
    sc.check(nlink=True)
    sc.remount()
    sc.check(nlink=True)


# ---------------------------------------------------------------- open/create/read/write

def test_create_write_read(scenario):
    sc = scenario(BASE)

    def fn(r):
        fd = os.open(j(r, "new"), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o640)
        try:
            os.write(fd, b"abc" * 1000)
            os.pwrite(fd, b"XYZ", 10)
            return os.pread(fd, 20, 0)
        finally:
            os.close(fd)
    sc.both(fn)
    sc.both(lambda r: os.open(j(r, "file"), os.O_CREAT | os.O_EXCL | os.O_RDWR))
    sc.both(lambda r: open(j(r, "dir/a"), "ab").write(b"appended"))
    sc.both(lambda r: open(j(r, "dir/b"), "r+b").write(b"over"))
    sc.both(lambda r: open(j(r, "exe"), "wb").write(b"trunc"))   # O_TRUNC
    sc.both(lambda r: open(j(r, "dir/sub/new"), "xb").write(b"n"))
    sc.both(lambda r: open(j(r, "dir"), "wb"))
    sc.both(lambda r: open(j(r, "nope/x"), "wb"))

    def rw_big(r):
        with open(j(r, "big"), "r+b") as f:
            f.seek(500000)
            f.write(b"Q" * 100)
            f.seek(0, 2)
            f.write(b"tail")
            f.seek(499990)
            return f.read(120)
    sc.both(rw_big)
    sc.check()
    sc.remount()
    sc.check()


def test_write_visible_to_other_fd(scenario):
    sc = scenario(BASE)

    def fn(r):
        a = os.open(j(r, "file"), os.O_RDONLY)
        b = os.open(j(r, "file"), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(b, b"more")
            c = os.open(j(r, "file"), os.O_RDONLY)
            try:
                return os.pread(c, 100, 0)
            finally:
                os.close(c)
        finally:
            os.close(a)
            os.close(b)
    sc.both(fn)
    sc.check()


def test_fsync(scenario):
    sc = scenario(BASE)

    def fn(r):
        fd = os.open(j(r, "dir/a"), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"synced")
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        dfd = os.open(j(r, "dir"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    sc.both(fn)
    sc.check()


# ---------------------------------------------------------------- readdir after changes

def test_readdir_after_changes(scenario):
    sc = scenario(BASE)

    def fn(r):
        os.unlink(j(r, "dir/a"))
        open(j(r, "dir/z"), "w").write("z")
        os.mkdir(j(r, "dir/newdir"))
        os.rename(j(r, "dir/b"), j(r, "dir/bb"))
        os.rmdir(j(r, "empty"))
        os.mkdir(j(r, "empty"))
        return sorted(os.listdir(r)), sorted(os.listdir(j(r, "dir")))
    sc.both(fn)
    # a directory handle opened before changes, rewound, sees the new state
    fd_m = os.open(sc.m("dir"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        before = sorted(os.listdir(fd_m))
        open(sc.m("dir/late"), "w").close()
        open(sc.o("dir/late"), "w").close()
        os.lseek(fd_m, 0, os.SEEK_SET)
        after = sorted(os.listdir(fd_m))
    finally:
        os.close(fd_m)
    assert "late" not in before
    assert "late" in after
    sc.check()
    sc.remount()
    sc.check()


# ---------------------------------------------------------------- xattrs

def test_xattrs(scenario):
    sc = scenario(BASE)
    sc.both(lambda r: sorted(os.listxattr(j(r, "xa"))))
    sc.both(lambda r: os.getxattr(j(r, "xa"), "user.foo"))
    sc.both(lambda r: os.getxattr(j(r, "xa"), "user.empty"))
    sc.both(lambda r: os.getxattr(j(r, "xa"), "user.missing"))
    sc.both(lambda r: os.setxattr(j(r, "file"), "user.new", b"v" * 300))
    sc.both(lambda r: os.setxattr(j(r, "dir"), "user.d", b"dv"))
    sc.both(lambda r: os.setxattr(j(r, "dir/sub/c"), "user.c", b"\0bin\xff"))
    sc.both(lambda r: os.setxattr(j(r, "xa"), "user.foo", b"baz", os.XATTR_REPLACE))
    sc.both(lambda r: os.setxattr(j(r, "xa"), "user.foo", b"q", os.XATTR_CREATE))
    sc.both(lambda r: os.setxattr(j(r, "xa"), "user.none", b"q", os.XATTR_REPLACE))
    sc.both(lambda r: os.removexattr(j(r, "xa"), "user.empty"))
    sc.both(lambda r: os.removexattr(j(r, "xa"), "user.empty"))
    sc.both(lambda r: os.removexattr(j(r, "file"), "user.never"))
    sc.both(lambda r: sorted(os.listxattr(j(r, "xa"))))
    sc.both(lambda r: sorted(os.listxattr(j(r, "dir/sub/c"))))
    sc.both(lambda r: os.getxattr(j(r, "dir/sub/c"), "user.c"))
    sc.both(lambda r: os.setxattr(j(r, "nope"), "user.x", b"1"))
    sc.check()
    sc.remount()
    sc.check()


def test_xattr_remove_on_lower_file(scenario):
    sc = scenario({"f": F("x", xattrs={"user.a": "1", "user.b": "2"})})
    sc.both(lambda r: os.removexattr(j(r, "f"), "user.a"))
    sc.both(lambda r: sorted(os.listxattr(j(r, "f"))))
    sc.check()
    sc.remount()
    sc.check()


@needs_root
def test_trusted_xattrs(scenario):
    sc = scenario({"f": F("x", xattrs={"trusted.t": "1"})})
    sc.both(lambda r: os.getxattr(j(r, "f"), "trusted.t"))
    sc.both(lambda r: os.setxattr(j(r, "f"), "trusted.u", b"2"))
    sc.both(lambda r: sorted(os.listxattr(j(r, "f"))))
    sc.check()


# ---------------------------------------------------------------- access

def test_access(scenario):
    sc = scenario(BASE)
    for n in ["file", "ro", "exe", "owned", "dir", "empty", "link", "dangling", "nope",
              "dir/sub/c"]:
        for mode in (os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK | os.X_OK):
            sc.both(lambda r: os.access(j(r, n), mode))
    sc.check()


# ---------------------------------------------------------------- statfs

def test_statfs_reports_upper(work, alt_work):
    from conftest import Overlay, build
    lower = os.path.join(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "x"})
    upper = os.path.join(alt_work, "up")
    o = Overlay(lower, upper=upper)
    o.mount()
    open(os.path.join(o.mp, "g"), "w").write("y" * 100000)
    m = os.statvfs(o.mp)
    u = os.statvfs(upper)
    lo = os.statvfs(lower)
    assert (m.f_blocks * m.f_frsize) == (u.f_blocks * u.f_frsize), (m, u)
    assert (m.f_blocks * m.f_frsize) != (lo.f_blocks * lo.f_frsize)
    assert m.f_files == u.f_files
    assert abs(m.f_bfree * m.f_frsize - u.f_bfree * u.f_frsize) < 8 * 1024 * 1024
    assert m.f_namemax == 255


# ---------------------------------------------------------------- fallocate / seek / copy_file_range

def test_fallocate(scenario):
    sc = scenario(BASE)

    def fn(r):
        fd = os.open(j(r, "file"), os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, 1 * MiB)
            st = os.fstat(fd)
            return st.st_size, os.pread(fd, 10, 0)
        finally:
            os.close(fd)
    sc.both(fn)

    def fn2(r):
        fd = os.open(j(r, "newfa"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.posix_fallocate(fd, 4096, 8192)
            st = os.fstat(fd)
            return st.st_size, st.st_blocks >= 16
        finally:
            os.close(fd)
    sc.both(fn2)
    sc.check()


def test_seek_data_hole(scenario):
    sc = scenario(BASE)

    def probe(r):
        fd = os.open(j(r, "sparse"), os.O_RDONLY)
        try:
            res = []
            for whence, off in ((os.SEEK_DATA, 0), (os.SEEK_HOLE, 0),
                                (os.SEEK_HOLE, 1 * MiB), (os.SEEK_DATA, 1 * MiB + 8192),
                                (os.SEEK_END, 0)):
                try:
                    res.append(os.lseek(fd, off, whence))
                except OSError as e:
                    res.append(errno.errorcode[e.errno])
            return res
        finally:
            os.close(fd)
    got = sc.both(probe)
    assert got[0] == 1 * MiB                       # sanity of the oracle
    # after copy-up (append) the holes are still there
    sc.both(lambda r: open(j(r, "sparse"), "ab").write(b"end"))
    sc.both(probe)
    sc.check()


def test_copy_file_range(scenario):
    sc = scenario(BASE)

    def fn(r):
        src = os.open(j(r, "big"), os.O_RDONLY)
        dst = os.open(j(r, "copy"), os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            total = 0
            size = os.fstat(src).st_size
            while total < size:
                n = os.copy_file_range(src, dst, size - total)
                if n == 0:
                    break
                total += n
            n2 = os.copy_file_range(src, dst, 1000, 5, 2 * MiB)
            return total, n2
        finally:
            os.close(src)
            os.close(dst)
    sc.both(fn)

    def fn2(r):      # into a lower file (copy-up), from an upper file
        src = os.open(j(r, "copy"), os.O_RDONLY)
        dst = os.open(j(r, "dir/a"), os.O_WRONLY)
        try:
            return os.copy_file_range(src, dst, 4096, 0, 1)
        finally:
            os.close(src)
            os.close(dst)
    sc.both(fn2)
    sc.check()


# ---------------------------------------------------------------- a mixed sequence

def test_many_ops_then_remount(scenario):
    sc = scenario(BASE)

    def fn(r):
        os.makedirs(j(r, "x/y/z"))
        for i in range(20):
            open(j(r, "x/y/z", "f%d" % i), "w").write(str(i) * i)
        os.rename(j(r, "x/y/z/f3"), j(r, "dir/sub/f3"))
        os.unlink(j(r, "dir/sub/c"))
        os.symlink("../file", j(r, "dir/up"))
        os.chmod(j(r, "dir/sub"), 0o711)
        os.setxattr(j(r, "x"), "user.k", b"v")
        os.truncate(j(r, "big"), 12345)
        os.link(j(r, "big"), j(r, "x/big2"))
        os.unlink(j(r, "big"))
    sc.both(fn)
    sc.check()
    sc.remount()
    sc.check()


def test_negative_lookups_are_cached_and_stay_right(work):
    """A miss is cached by the kernel (a second probe of the name costs no
    request) and every way a name can come into view through the mount
    still shows it: create, mkdir, symlink, link, rename onto it."""
    lower = os.path.join(work, "lower")
    os.makedirs(os.path.join(lower, "d"))
    with open(os.path.join(lower, "d", "f"), "w") as f:
        f.write("x")
    o = Overlay(lower)
    o.mount()
    d = os.path.join(o.mp, "d")
    names = ["new", "dir", "sym", "lnk", "ren"]
    for n in names:
        assert not os.path.lexists(os.path.join(d, n))
    pid, = daemon_pids(lower)

    def syscr():
        with open("/proc/%d/io" % pid) as f:
            return int(dict(l.split(": ") for l in f.read().splitlines())["syscr"])
    before = syscr()
    for _ in range(50):
        for n in names:
            assert not os.path.lexists(os.path.join(d, n))
    assert syscr() - before < 20, "misses were not cached"
    open(os.path.join(d, "new"), "w").close()
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("f", os.path.join(d, "sym"))
    os.link(os.path.join(d, "f"), os.path.join(d, "lnk"))
    os.rename(os.path.join(d, "new"), os.path.join(d, "ren"))
    assert sorted(os.listdir(d)) == ["dir", "f", "lnk", "ren", "sym"]
    for n in ["dir", "f", "lnk", "ren", "sym"]:
        assert os.path.lexists(os.path.join(d, n)), n
    assert not os.path.lexists(os.path.join(d, "new"))
    o.remount()
    assert sorted(os.listdir(os.path.join(o.mp, "d"))) == ["dir", "f", "lnk", "ren", "sym"]
