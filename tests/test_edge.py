"""Edge cases where an overlay most easily stops looking like a private copy."""

import errno
import mmap
import os
import stat
import time

import pytest

from conftest import (F, D, L, HL, Fifo, Sock, Overlay, build, snapshot, assert_same_tree,
                      ovlfs, wait_for, upper_listing, IS_ROOT)

GiB = 1 << 30
MiB = 1 << 20


def j(*p):
    return os.path.join(*p)


def assert_enoent(path):
    with pytest.raises(FileNotFoundError):
        os.lstat(path)


def test_ro_fd_opened_before_copyup_sees_new_data(scenario):
    """A private copy has one file: a read-only fd opened before another fd
    changes it reads the new data (the kernel's overlayfs does this too)."""
    sc = scenario({"f": "old content\n"})

    def fn(r):
        ro = os.open(j(r, "f"), os.O_RDONLY)
        try:
            first = os.pread(ro, 100, 0)
            with open(j(r, "f"), "r+b") as w:
                w.write(b"NEW")
            return first, os.pread(ro, 100, 0), os.fstat(ro).st_size
        finally:
            os.close(ro)
    sc.both(fn)
    sc.check()


def test_fstat_of_old_fd_after_truncate_elsewhere(scenario):
    sc = scenario({"f": F(b"x" * 10000)})

    def fn(r):
        ro = os.open(j(r, "f"), os.O_RDONLY)
        try:
            os.truncate(j(r, "f"), 10)
            return os.fstat(ro).st_size, len(os.pread(ro, 20000, 0))
        finally:
            os.close(ro)
    sc.both(fn)
    sc.check()


def test_mmap_shared_write(scenario):
    sc = scenario({"f": F(b"a" * 8192)})

    def fn(r):
        fd = os.open(j(r, "f"), os.O_RDWR)
        try:
            m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            m[100:105] = b"MMAP!"
            m.flush()
            m.close()
        finally:
            os.close(fd)
        return open(j(r, "f"), "rb").read()[95:110]
    sc.both(fn)
    sc.check()
    sc.remount()
    sc.check()


def test_mmap_read_lower(scenario):
    sc = scenario({"f": F(bytes(range(256)) * 64)})

    def fn(r):
        with open(j(r, "f"), "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            try:
                return m[1000:1010], len(m)
            finally:
                m.close()
    sc.both(fn)
    assert not os.path.exists(sc.u("f"))


def test_large_offsets(scenario):
    sc = scenario({"f": F(b"start", size=5 * GiB + 3)})

    def fn(r):
        fd = os.open(j(r, "f"), os.O_RDWR)
        try:
            os.pwrite(fd, b"far", 6 * GiB)
            st = os.fstat(fd)
            return (st.st_size, os.pread(fd, 5, 0), os.pread(fd, 3, 6 * GiB),
                    os.pread(fd, 4, 5 * GiB), os.lseek(fd, 0, os.SEEK_END))
        finally:
            os.close(fd)
    sc.both(fn)
    u = os.stat(sc.u("f"))
    assert u.st_blocks * 512 < 16 * MiB, "holes of a 6 GiB sparse file filled"
    sc.check(content=False)          # hashing 2 x 6 GiB would be slow


def test_truncate_extend_reads_zeros(scenario):
    sc = scenario({"f": F(b"abc" * 1000)})
    sc.both(lambda r: os.truncate(j(r, "f"), 10))
    sc.both(lambda r: os.truncate(j(r, "f"), 20000))
    sc.both(lambda r: open(j(r, "f"), "rb").read())
    sc.check()


def test_rename_onto_own_hardlink_is_noop(scenario):
    """rename(2) between two names of one file does nothing (POSIX)."""
    sc = scenario({"c": "c"})
    sc.both(lambda r: os.link(j(r, "c"), j(r, "c2")))
    sc.both(lambda r: os.rename(j(r, "c"), j(r, "c2")))
    sc.both(lambda r: sorted(os.listdir(r)))
    sc.check()


def test_rename_onto_own_lower_hardlink_is_noop(scenario):
    """The same for two names that are hard links in the lower (ovlfs shows
    them with one inode number, so they are one file to the caller)."""
    sc = scenario({"a": "a", "b": HL("a")})
    sc.both(lambda r: os.stat(j(r, "a")).st_ino == os.stat(j(r, "b")).st_ino)
    sc.both(lambda r: os.rename(j(r, "a"), j(r, "b")))
    sc.both(lambda r: sorted(os.listdir(r)))
    sc.check()


def test_lower_hardlinks_read_view(scenario):
    sc = scenario({"a": "shared\n", "d": {"b": HL("a")}, "c": "other\n"})
    sc.both(lambda r: (os.stat(j(r, "a")).st_nlink, os.stat(j(r, "d/b")).st_nlink))
    m = (os.stat(sc.m("a")).st_ino, os.stat(sc.m("d/b")).st_ino)
    assert m[0] == m[1], "two names of one lower file show different inode numbers"
    assert os.stat(sc.m("c")).st_ino != m[0]
    sc.check(nlink=True)


def test_lower_hardlinks_write_through_one_name(scenario):
    """In a private copy the two names are one file."""
    sc = scenario({"a": "shared\n", "d": {"b": HL("a")}})
    sc.both(lambda r: open(j(r, "a"), "a").write("appended via a\n"))
    sc.both(lambda r: open(j(r, "d/b")).read())
    sc.both(lambda r: os.stat(j(r, "a")).st_ino == os.stat(j(r, "d/b")).st_ino)
    sc.check(nlink=True)


def test_big_xattr_value_and_many_xattrs(scenario):
    sc = scenario({"f": F("x", xattrs={"user.big": b"B" * 60000})})
    sc.both(lambda r: len(os.getxattr(j(r, "f"), "user.big")))
    sc.both(lambda r: [os.setxattr(j(r, "f"), "user.k%03d" % i, b"v%d" % i)
                       for i in range(100)])
    sc.both(lambda r: sorted(os.listxattr(j(r, "f"))))
    sc.both(lambda r: os.setxattr(j(r, "f"), "user.big2", b"C" * 65536))
    sc.both(lambda r: os.setxattr(j(r, "f"), "user.toobig", b"C" * 65537))
    sc.both(lambda r: os.getxattr(j(r, "f"), "user.big2") == b"C" * 65536)
    sc.check()


def test_socket_keeps_type(scenario):
    sc = scenario({"d": {"sock": Sock(mode=0o755)}})
    sc.both(lambda r: stat.S_ISSOCK(os.lstat(j(r, "d/sock")).st_mode))
    sc.both(lambda r: os.chmod(j(r, "d/sock"), 0o700))
    sc.both(lambda r: oct(os.lstat(j(r, "d/sock")).st_mode))
    assert stat.S_ISSOCK(os.lstat(sc.u("d/sock")).st_mode)
    sc.check()
    sc.remount()
    sc.check()


def test_long_symlink_target(scenario):
    t = "/" + "x" * 4000
    sc = scenario({"s": L(t)})
    sc.both(lambda r: os.readlink(j(r, "s")))
    sc.both(lambda r: os.symlink("y" * 4095, j(r, "s2")))
    sc.both(lambda r: os.readlink(j(r, "s2")))
    sc.both(lambda r: os.chown(j(r, "s"), 9, 9, follow_symlinks=False))
    sc.check()


def test_upper_dir_renamed_over_deleted_lower_dir(scenario):
    """mkdir new; rm -r old; mv new old: old's lower children must not show."""
    sc = scenario({"old": {"x": "x", "y": {"z": "z"}}, "other": {"o": "o"}})

    def fn(r):
        os.mkdir(j(r, "new"))
        open(j(r, "new/mine"), "w").write("mine")
        os.unlink(j(r, "old/x"))
        os.unlink(j(r, "old/y/z"))
        os.rmdir(j(r, "old/y"))
        os.rmdir(j(r, "old"))
        os.rename(j(r, "new"), j(r, "old"))
        return sorted(os.listdir(j(r, "old")))
    sc.both(fn)
    sc.both(lambda r: os.lstat(j(r, "old/x")))
    sc.check()
    sc.remount()
    sc.check()


def test_lower_dir_renamed_over_deleted_lower_dir(scenario):
    sc = scenario({"old": {"x": "x"}, "other": {"o": "o", "s": {"t": "t"}}})

    def fn(r):
        os.unlink(j(r, "old/x"))
        os.rmdir(j(r, "old"))
        os.rename(j(r, "other"), j(r, "old"))
        return sorted(os.listdir(j(r, "old")))
    sc.both(fn)
    sc.check()
    sc.remount()
    sc.check()


def test_upper_dir_renamed_over_empty_lower_dir(scenario):
    """rename(new, old) where old is an empty lower dir: replaces it."""
    sc = scenario({"old": {}, "keep": {"k": "k"}})
    sc.both(lambda r: os.mkdir(j(r, "new")))
    sc.both(lambda r: os.rename(j(r, "new"), j(r, "old")))
    sc.check()
    sc.remount()
    sc.check()


def test_dir_moved_away_then_name_reused_by_file(scenario):
    sc = scenario({"d": {"a": "a", "s": {"b": "b"}}})
    sc.both(lambda r: os.rename(j(r, "d"), j(r, "e")))
    sc.both(lambda r: open(j(r, "d"), "w").write("now a file"))
    sc.both(lambda r: os.unlink(j(r, "d")))
    sc.both(lambda r: os.mkdir(j(r, "d")))
    sc.both(lambda r: sorted(os.listdir(j(r, "d"))))
    sc.both(lambda r: os.rename(j(r, "e/s"), j(r, "d/s")))
    sc.check()
    sc.remount()
    sc.check()


def test_deep_copyup_chain(scenario):
    spec = {}
    cur = spec
    for i in range(30):
        cur["l%d" % i] = {}
        cur = cur["l%d" % i]
    cur["leaf"] = "leaf"
    sc = scenario(spec)
    path = "/".join("l%d" % i for i in range(30))
    sc.both(lambda r: open(j(r, path, "leaf"), "a").write("!"))
    sc.both(lambda r: os.rename(j(r, path), j(r, "l0/moved_deep")))
    sc.check()
    sc.remount()
    sc.check()


def test_daemon_exits_after_umount(work):
    lower = j(work, "lowerdaemon")
    os.mkdir(lower)
    o = Overlay(lower)
    o.mount()
    key = os.fsencode(lower)

    def procs():
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
            except OSError:
                continue
            if any(c == key or c == key + b"/" for c in cmd) and \
                    any(c.endswith(b"ovlfs") for c in cmd):
                out.append(int(pid))
        return out
    assert procs(), "no ovlfs process serving the mount?"
    o.umount()
    assert wait_for(lambda: not procs(), 10), "ovlfs daemon still alive after umount: %r" % procs()


def test_umount_with_external_umount(work):
    """umount(8) from outside also ends the daemon; the upper is intact."""
    lower = j(work, "lowerext")
    os.mkdir(lower)
    o = Overlay(lower)
    o.mount()
    open(j(o.mp, "f"), "w").write("kept")
    from conftest import run
    r = run(["umount", o.mp])
    assert r.returncode == 0, r.err
    assert not o.mounted
    assert open(j(o.upper, "f")).read() == "kept"
    o.mount()                                    # the upper lock is free again
    assert open(j(o.mp, "f")).read() == "kept"


def test_statfs_on_subdir_and_file(scenario):
    sc = scenario({"d": {"f": "x"}})
    a = os.statvfs(sc.mnt)
    b = os.statvfs(sc.m("d"))
    assert (a.f_blocks, a.f_bsize, a.f_files) == (b.f_blocks, b.f_bsize, b.f_files)
    fd = os.open(sc.m("d/f"), os.O_RDONLY)
    try:
        c = os.fstatvfs(fd)
    finally:
        os.close(fd)
    assert c.f_blocks == a.f_blocks


def test_dir_fd_survives_rename_of_lower_dir(scenario):
    sc = scenario({"d": {"a": "a"}, "e": {}})

    def fn(r):
        fd = os.open(j(r, "d"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rename(j(r, "d"), j(r, "e/moved"))
            w = os.open("created", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
            os.write(w, b"via dirfd")
            os.close(w)
            a = open(os.open("a", os.O_RDONLY, dir_fd=fd)).read()
            os.unlink("a", dir_fd=fd)
            os.mkdir("sub", dir_fd=fd)
            return a, sorted(os.listdir(fd)), sorted(os.listdir(j(r, "e/moved")))
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()
    sc.remount()
    sc.check()


def test_dir_fd_of_lower_dir_then_create(scenario):
    sc = scenario({"d": {"s": {"x": "x"}}})

    def fn(r):
        fd = os.open(j(r, "d/s"), os.O_RDONLY | os.O_DIRECTORY)   # not copied up
        try:
            w = os.open("new", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd)
            os.close(w)
            os.symlink("x", "sl", dir_fd=fd)
            os.rename("x", "x2", src_dir_fd=fd, dst_dir_fd=fd)
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()


def test_dir_fd_of_removed_dir(scenario):
    sc = scenario({"d": {}})

    def fn(r):
        fd = os.open(j(r, "d"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rmdir(j(r, "d"))
            try:
                os.open("x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
                return "created"
            except OSError as e:
                return errno.errorcode[e.errno], os.listdir(fd)
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()


def test_fd_based_setattr_on_lower_file(scenario):
    sc = scenario({"f": F("data", mode=0o644, xattrs={"user.a": "1"}),
                   "g": F("gdata", mode=0o600)})

    def fn(r):
        fd = os.open(j(r, "f"), os.O_RDONLY)
        try:
            os.fchmod(fd, 0o640)
            os.fchown(fd, 11, 12)
            os.utime(fd, ns=(10**9, 2 * 10**9))
            os.setxattr(fd, "user.b", b"2")
            os.removexattr(fd, "user.a")
            st = os.fstat(fd)
            return (oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                    sorted(os.listxattr(fd)), os.read(fd, 10))
        finally:
            os.close(fd)
    sc.both(fn)

    def fn2(r):
        fd = os.open(j(r, "g"), os.O_WRONLY)
        try:
            os.ftruncate(fd, 2)
            os.fchmod(fd, 0o444)
            os.write(fd, b"ZZ")                 # still writable through the fd
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    sc.both(fn2)
    sc.check()
    sc.remount()
    sc.check()


def test_o_path_and_fstatat_on_symlink(scenario):
    sc = scenario({"s": L("target"), "target": "t"})

    def fn(r):
        fd = os.open(j(r, "s"), os.O_PATH | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            return stat.S_ISLNK(st.st_mode), st.st_size
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()


def test_o_direct_read_and_write(scenario):
    """O_DIRECT works through the mount (the backing fd does not carry it:
    FUSE hands ovlfs unaligned buffers)."""
    import mmap
    sc = scenario({"f": F(b"d" * (1 << 20))})

    def fn(r):
        buf = mmap.mmap(-1, 1 << 16)
        fd = os.open(j(r, "f"), os.O_RDONLY | os.O_DIRECT)
        try:
            n = os.preadv(fd, [buf], 0)
        finally:
            os.close(fd)
        fd = os.open(j(r, "g"), os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644)
        try:
            m = os.pwritev(fd, [buf], 0)
        finally:
            os.close(fd)
        return n, m, bytes(buf[:4])
    sc.both(fn)
    sc.check()


@pytest.mark.parametrize("where", ["lower", "upper"])
def test_truncate_to_the_same_size_changes_the_times_as_the_fs_does(scenario, where):
    """truncate(2) to the size a file has: whether the times change is the
    filesystem's to say (tmpfs: not for 0 to 0, yes for 5 to 5), while
    ftruncate(2) always sets them. ovlfs served a truncate(2) with an
    ftruncate of a reopened fd, so an empty file's mtime became now (the
    fuzzer's seeds 177, 287, 297); it now passes a truncate(2) on."""
    old = 1_000_000_000
    sc = scenario({"f": F("data\n", mtime=old), "e": F("", mtime=old)})
    for root in (sc.mnt, sc.oracle):
        if where == "upper":
            for n in ("f", "e"):
                os.chmod(j(root, n), 0o600)     # copied up, times kept
                os.utime(j(root, n), (old, old))
        os.truncate(j(root, "f"), 5)
        os.truncate(j(root, "e"), 0)
    for n in ("f", "e"):
        assert (os.lstat(j(sc.mnt, n)).st_mtime == old) == \
            (os.lstat(j(sc.oracle, n)).st_mtime == old), n
    assert os.lstat(j(sc.oracle, "e")).st_mtime == old     # tmpfs, 0 to 0
    sc.check()


def test_refused_xattr_create_or_replace_changes_nothing(scenario):
    """setxattr XATTR_REPLACE of an attribute a lower file lacks (ENODATA),
    XATTR_CREATE of one it has (EEXIST): nothing changes, the parent's
    times included. The file was copied up to try, the copy thrown away,
    and its directory's mtime became now (the fuzzer's seed 1164)."""
    old = 1_000_000_000
    # a directory (and an empty file) is copied under a temporary name
    sc = scenario({"d": D({"f": F("", xattrs={"user.a": "1"}),
                           "s": D({}, xattrs={"user.a": "1"})}, mtime=old)})
    for root in (sc.mnt, sc.oracle):
        for n in ("d/f", "d/s"):
            with pytest.raises(OSError) as e:
                os.setxattr(j(root, n), "user.b", b"2", os.XATTR_REPLACE)
            assert e.value.errno == errno.ENODATA
            with pytest.raises(OSError) as e:
                os.setxattr(j(root, n), "user.a", b"2", os.XATTR_CREATE)
            assert e.value.errno == errno.EEXIST
    sc.remount()        # the kernel may hold d's old attributes
    assert os.lstat(j(sc.mnt, "d")).st_mtime == old
    sc.check()
