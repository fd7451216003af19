"""Faults from the layers and from outside: a full upper, a lower that
returns EIO/EACCES (tests/faultfs), the daemon killed or terminated.

Every fault must turn into an errno at the caller (or a clean unmount),
never a crash: the daemon stays up, the mount keeps answering, and no
partial copy-up is left in the upper."""

import errno
import os
import signal
import stat
import subprocess
import threading
import time

import pytest

from conftest import (IS_ROOT, D, F, L, Overlay, daemon_pids, build, run, ovlfs, is_mounted, mounts_under,
                      snapshot, assert_same_tree, upper_listing, wait_for)

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (tmpfs, FUSE mounts)")

HERE = os.path.dirname(os.path.abspath(__file__))
FAULTFS_SRC = os.path.join(HERE, "faultfs", "faultfs.c")
MiB = 1 << 20


def j(*p):
    return os.path.join(*p)


def errname(e):
    return errno.errorcode.get(e, e)


def expect_errno(expected, fn, *args, **kw):
    """FN(*ARGS) must fail with one of EXPECTED (an errno or a tuple)."""
    exp = expected if isinstance(expected, tuple) else (expected,)
    try:
        v = fn(*args, **kw)
    except OSError as e:
        assert e.errno in exp, "%s%r: got %s, expected %s" % (
            getattr(fn, "__name__", fn), args, errname(e.errno),
            "/".join(map(errname, exp)))
        return e.errno
    raise AssertionError("%s%r succeeded (%s), expected %s" % (
        getattr(fn, "__name__", fn), args, repr(v)[:80], "/".join(map(errname, exp))))


def tmp_debris(upper):
    return [k for k in upper_listing(upper) if b".wh..wh.tmp." in k]


def stat_fails(path):
    try:
        os.stat(path)
    except OSError:
        return True
    return False


def gone(pid):
    """Exited (maybe a zombie: nothing reaps here). The leader of a
    threaded process shows Z while its other threads still exit, each
    closing its own /dev/fuse fd: wait for those too."""
    try:
        with open("/proc/%d/status" % pid) as f:
            st = dict(l.split(":", 1) for l in f if ":" in l)
        return "Z" in st.get("State", "") and int(st.get("Threads", "1")) <= 1
    except FileNotFoundError:
        return True


def write_file(path, data, fsync=True, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view[:MiB])
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# a full upper
# --------------------------------------------------------------------------

@pytest.fixture
def small_upper(work):
    """An upper directory on its own 4 MiB tmpfs."""
    fsdir = j(work, "smallfs")
    os.mkdir(fsdir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "ovlfs-test-small",
                    fsdir], check=True)
    try:
        yield j(fsdir, "upper")
    finally:
        for _ in range(3):
            if not is_mounted(fsdir):
                break
            # an ovlfs mount using it is unmounted by the autouse fixture
            # first; if it is still busy, detach lazily
            if subprocess.run(["umount", fsdir]).returncode != 0:
                subprocess.run(["umount", "-l", fsdir])


def test_enospc_write_new_file(work, small_upper):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"keep": "keep\n"})
    o = Overlay(lower, upper=small_upper, mp=j(work, "mnt"))
    o.mount()
    big = os.urandom(6 * MiB)
    e = expect_errno(errno.ENOSPC, write_file, j(o.mp, "big"), big)
    assert e == errno.ENOSPC
    # the mount still answers; the partial file can be removed, then a
    # write that fits succeeds
    assert open(j(o.mp, "keep")).read() == "keep\n"
    if os.path.lexists(j(o.mp, "big")):
        os.unlink(j(o.mp, "big"))
    write_file(j(o.mp, "small"), b"s" * MiB)
    assert open(j(o.mp, "small"), "rb").read() == b"s" * MiB
    assert not tmp_debris(small_upper)
    o.umount()
    o.mount()
    assert open(j(o.mp, "small"), "rb").read() == b"s" * MiB


def test_enospc_copyup_leaves_nothing(work, small_upper):
    lower = j(work, "lower")
    os.mkdir(lower)
    data = os.urandom(3 * MiB)
    build(lower, {"d": {"big": data, "other": "o"}})
    lower_before = snapshot(lower, mtime=True, ctime=True, ino=True)
    # A chmod copies data only without metacopy (see the test below).
    o = Overlay(lower, upper=small_upper, mp=j(work, "mnt"),
                extra_args=["--no-metacopy"])
    o.mount()
    # fill the upper so the 3 MiB copy-up cannot fit
    write_file(j(o.mp, "filler"), b"f" * (2 * MiB))
    before = upper_listing(small_upper)

    def append():
        fd = os.open(j(o.mp, "d", "big"), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)

    expect_errno(errno.ENOSPC, append)
    expect_errno(errno.ENOSPC, os.truncate, j(o.mp, "d", "big"), 10)
    expect_errno(errno.ENOSPC, os.chmod, j(o.mp, "d", "big"), 0o600)  # copy-up too
    # nothing partial in the upper: no d/big, no temporary debris
    now = upper_listing(small_upper)
    assert b"d/big" not in now, now
    assert not tmp_debris(small_upper), tmp_debris(small_upper)
    assert set(now) - set(before) <= {b"d"}, set(now) - set(before)
    # the lower version is still what the mount shows, whole
    assert open(j(o.mp, "d", "big"), "rb").read() == data
    st = os.stat(j(o.mp, "d", "big"))
    assert st.st_size == len(data) and stat.S_IMODE(st.st_mode) == 0o644
    assert open(j(o.mp, "d", "other")).read() == "o"
    # free the space: the same write now succeeds
    os.unlink(j(o.mp, "filler"))
    append()
    assert open(j(o.mp, "d", "big"), "rb").read() == data + b"x"
    assert open(j(small_upper, "d", "big"), "rb").read() == data + b"x"
    assert not tmp_debris(small_upper)
    assert_same_tree(snapshot(lower, mtime=True, ctime=True, ino=True), lower_before,
                     "lower now", "lower before")


def test_enospc_metacopy_data_copyup(work, small_upper):
    """With metacopy a chmod needs no room for the data; the write after it
    fails with ENOSPC, leaving the metacopy file as it was (its partial data
    given back, still reading the lower), and succeeds once there is room."""
    lower = j(work, "lower")
    os.mkdir(lower)
    data = os.urandom(3 * MiB)
    build(lower, {"d": {"big": data}})
    o = Overlay(lower, upper=small_upper, mp=j(work, "mnt"))
    o.mount()
    write_file(j(o.mp, "filler"), b"f" * (2 * MiB))
    os.chmod(j(o.mp, "d", "big"), 0o600)
    up = j(small_upper, "d", "big")
    assert "trusted.ovlfs.metacopy" in os.listxattr(up)
    mtime = os.stat(up).st_mtime_ns

    def append():
        with open(j(o.mp, "d", "big"), "ab") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())

    expect_errno(errno.ENOSPC, append)
    st = os.stat(up)
    assert "trusted.ovlfs.metacopy" in os.listxattr(up)
    assert st.st_blocks == 0 and st.st_size == len(data), st
    assert st.st_mtime_ns == mtime
    assert not tmp_debris(small_upper), tmp_debris(small_upper)
    assert open(j(o.mp, "d", "big"), "rb").read() == data
    assert stat.S_IMODE(os.stat(j(o.mp, "d", "big")).st_mode) == 0o600
    os.unlink(j(o.mp, "filler"))
    append()
    assert open(j(o.mp, "d", "big"), "rb").read() == data + b"x"
    assert "trusted.ovlfs.metacopy" not in os.listxattr(up)
    assert stat.S_IMODE(os.stat(up).st_mode) == 0o600


def test_enospc_dir_rename_leaves_nothing(work, small_upper):
    """Renaming a lower directory holding more data than the upper has
    room for: ENOSPC, the merged view as before, and the space the partial
    copy-up took given back (only directories may stay, empty and not
    opaque); once it fits, the same rename works."""
    lower = j(work, "lower")
    os.mkdir(lower)
    files = {"f%d" % i: os.urandom(700 * 1024) for i in range(4)}
    sub = {"g%d" % i: os.urandom(700 * 1024) for i in range(4)}
    sub["deeper"] = {"h": "h"}
    build(lower, {"tree": dict(files, sub=sub, ln=L("f0"), small="s"),
                  "keep": "keep"})
    # the copying rename (a redirect copies nothing: see test_redirect.py)
    o = Overlay(lower, upper=small_upper, mp=j(work, "mnt"),
                extra_args=["--no-redirect-dir"])
    o.mount()
    fs = os.path.dirname(small_upper)

    def free():
        s = os.statvfs(fs)
        return s.f_bfree * s.f_frsize

    view = snapshot(o.mp, mtime=True)
    before = free()
    expect_errno(errno.ENOSPC, os.rename, j(o.mp, "tree"), j(o.mp, "tree2"))
    assert before - free() <= 16 * 1024, (before, free())
    assert_same_tree(snapshot(o.mp, mtime=True), view)
    assert not tmp_debris(small_upper), tmp_debris(small_upper)
    left = {k: v for k, v in upper_listing(small_upper).items()
            if v not in ("dir", "lnk")}
    assert not left, left
    # room for what is left once some of it goes: the rename works
    for n in ("f1", "f2", "f3"):
        os.unlink(j(o.mp, "tree", n))
    os.unlink(j(o.mp, "tree", "sub", "g3"))
    os.rename(j(o.mp, "tree"), j(o.mp, "tree2"))
    assert sorted(os.listdir(j(o.mp, "tree2", "sub"))) == ["deeper", "g0", "g1", "g2"]
    assert open(j(o.mp, "tree2", "f0"), "rb").read() == files["f0"]
    assert open(j(o.mp, "tree2", "sub", "g2"), "rb").read() == sub["g2"]
    assert not os.path.lexists(j(o.mp, "tree"))
    assert not tmp_debris(small_upper)
    o.umount()
    o.mount()
    assert sorted(os.listdir(j(o.mp, "tree2"))) == ["f0", "ln", "small", "sub"]


def test_enospc_deep_parents_copyup(work):
    """Copy-up of a file deep down a lower path in an upper that runs out
    of inodes midway: ENOSPC, the merged view as before, no debris, and
    the parents that did go up are whole (owner, mode, times)."""
    lower = j(work, "lower")
    os.mkdir(lower)
    spec = {"f": F("deep\n", mode=0o640)}
    for i in range(8):
        spec = {"d%d" % i: D(spec, mode=0o750 - i, uid=100 + i, gid=200 + i)}
    build(lower, spec)
    fsdir = j(work, "inodes")
    os.mkdir(fsdir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nr_inodes=6,mode=0755", "ovlfs-test-ino",
                    fsdir], check=True)
    try:
        upper = j(fsdir, "upper")
        o = Overlay(lower, upper=upper, mp=j(work, "mnt"))
        o.mount()
        path = "/".join("d%d" % i for i in reversed(range(8))) + "/f"
        view = snapshot(o.mp, mtime=True)
        expect_errno(errno.ENOSPC, os.chmod, j(o.mp, path), 0o600)
        assert_same_tree(snapshot(o.mp, mtime=True), view)
        assert not tmp_debris(upper), tmp_debris(upper)
        made = snapshot(upper, mtime=True, hide_private=True)
        low = snapshot(lower, mtime=True)
        assert len(made) > 1 and path.encode() not in made, sorted(made)
        for rel, rec in made.items():
            if rel:
                want = dict(low[rel], names=rec["names"])
                assert rec == want, (rel, rec, want)
        o.umount()
    finally:
        subprocess.run(["umount", fsdir])


def test_enospc_many_small_creates(work, small_upper):
    """Filling the upper with many files and dirs: each failing create or
    write says ENOSPC, the daemon survives, and removing the files frees
    the space again."""
    lower = j(work, "lower")
    os.mkdir(lower)
    o = Overlay(lower, upper=small_upper, mp=j(work, "mnt"))
    o.mount()
    made = []
    hit = None
    for i in range(200):
        p = j(o.mp, "f%03d" % i)
        try:
            write_file(p, b"z" * (64 * 1024))
            made.append(p)
        except OSError as e:
            hit = e.errno
            if os.path.lexists(p):
                made.append(p)
            break
    assert hit == errno.ENOSPC, "expected ENOSPC, got %s" % errname(hit)
    # still answering
    assert len(os.listdir(o.mp)) == len(made)
    for p in made:
        os.unlink(p)
    assert os.listdir(o.mp) == []
    write_file(j(o.mp, "after"), b"a" * MiB)
    assert os.path.getsize(j(o.mp, "after")) == MiB


# --------------------------------------------------------------------------
# a lower that returns errors
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faultfs_bin(tmp_path_factory):
    d = tmp_path_factory.mktemp("faultfs")
    out = str(d / "faultfs")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"],
                           stdout=subprocess.PIPE, check=True).stdout.decode().split()
    r = subprocess.run(["gcc", "-O1", "-Wall", "-o", out, FAULTFS_SRC] + flags,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout.decode()
    return out


class FaultFS:
    def __init__(self, binary, src, mp):
        self.src, self.mp = src, mp
        self.proc = subprocess.Popen([binary, src, mp, "-f", "-o", "ro,fsname=faultfs"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ok = wait_for(lambda: is_mounted(mp) or self.proc.poll() is not None, 20)
        if not ok or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("faultfs did not mount: %r" % (self.proc.communicate(),))

    def stop(self):
        if is_mounted(self.mp):
            subprocess.run(["fusermount3", "-u", "-z", self.mp])
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


FAULT_TREE = {
    "ok": "fine\n",
    "data_eio": "eio data\n",
    "data_eacces": "eacces data\n",
    "x_staterr": "hidden\n",
    "big_rderr": b"R" * (256 * 1024),
    "dir_eio": {"inner": "i\n"},
    "dir_eacces": {"inner": "i\n"},
    "okdir": {"f": "f\n", "g_eio": "g\n"},
    "slowdir": {"stall_x": "s\n"},
    "link_eio": None,     # symlink, made below
}


@pytest.fixture
def faulty(work, faultfs_bin):
    """An ovlfs mount whose lower is a faultfs mount of SRC."""
    src = j(work, "src")
    os.mkdir(src)
    tree = dict(FAULT_TREE)
    del tree["link_eio"]
    build(src, tree)
    os.symlink("ok", j(src, "link_eio"))
    os.setxattr(j(src, "data_eio"), "user.k", b"v")
    os.setxattr(j(src, "ok"), "user.k", b"v")
    src_before = snapshot(src, mtime=True, ctime=True)
    lower = j(work, "lower")
    os.mkdir(lower)
    ffs = FaultFS(faultfs_bin, src, lower)
    o = None
    try:
        o = Overlay(lower, upper=j(work, "upper"), mp=j(work, "mnt"))
        o.mount()
        yield o
    finally:
        if o is not None:
            o.cleanup()
        ffs.stop()
        assert_same_tree(snapshot(src, mtime=True, ctime=True), src_before,
                         "faultfs source now", "before")


def alive(o):
    """The daemon still serves the mount: a good file reads, a new file
    can be made and removed."""
    assert o.mounted
    assert open(j(o.mp, "ok")).read() == "fine\n"
    p = j(o.mp, "probe")
    with open(p, "w") as f:
        f.write("p")
    assert open(p).read() == "p"
    os.unlink(p)


@pytest.mark.parametrize("name,err", [("data_eio", errno.EIO),
                                      ("data_eacces", errno.EACCES)])
def test_lower_error_read(faulty, name, err):
    o = faulty
    p = j(o.mp, name)
    st = os.stat(p)                     # attributes still come through
    assert stat.S_ISREG(st.st_mode)
    expect_errno(err, open, p, "rb")
    alive(o)


@pytest.mark.parametrize("name,err", [("data_eio", errno.EIO),
                                      ("data_eacces", errno.EACCES)])
def test_lower_error_copyup(faulty, name, err):
    o = faulty
    p = j(o.mp, name)
    expect_errno(err, open, p, "ab")
    expect_errno(err, os.truncate, p, 0)
    # nothing partial in the upper
    assert not os.path.lexists(j(o.upper, name))
    assert not tmp_debris(o.upper), tmp_debris(o.upper)
    # still the lower file (its stat), and the mount lives on
    assert os.stat(p).st_size == len(FAULT_TREE[name])
    alive(o)


def test_lower_error_xattr(faulty):
    o = faulty
    expect_errno(errno.EIO, os.getxattr, j(o.mp, "data_eio"), "user.k")
    expect_errno(errno.EIO, os.listxattr, j(o.mp, "data_eio"))
    assert os.getxattr(j(o.mp, "ok"), "user.k") == b"v"
    # a metadata change copies up, which copies the xattrs: an errno
    expect_errno(errno.EIO, os.chmod, j(o.mp, "data_eio"), 0o600)
    assert not os.path.lexists(j(o.upper, "data_eio"))
    assert not tmp_debris(o.upper)
    alive(o)


def test_lower_error_readlink(faulty):
    o = faulty
    expect_errno(errno.EIO, os.readlink, j(o.mp, "link_eio"))
    # copy-up of the symlink (lchown) needs its target: an errno
    expect_errno(errno.EIO, os.chown, j(o.mp, "link_eio"), 1, 1, follow_symlinks=False)
    assert not os.path.lexists(j(o.upper, "link_eio"))
    alive(o)


@pytest.mark.parametrize("name,err", [("dir_eio", errno.EIO),
                                      ("dir_eacces", errno.EACCES)])
def test_lower_error_listing(faulty, name, err):
    o = faulty
    d = j(o.mp, name)
    assert stat.S_ISDIR(os.stat(d).st_mode)
    expect_errno(err, os.listdir, d)
    # creating in it (copy-up of the directory needs its xattrs, the
    # listing decides emptiness) gives an errno or works; never a crash
    try:
        open(j(d, "new"), "w").close()
    except OSError as e:
        assert e.errno in (err, errno.EIO), errname(e.errno)
    # it cannot be known to be empty: rmdir must not succeed
    expect_errno((err, errno.EIO, errno.ENOTEMPTY), os.rmdir, d)
    # the root still lists (the faulty dir appears in it)
    assert name in os.listdir(o.mp)
    alive(o)


def test_lower_error_stat(faulty):
    o = faulty
    expect_errno(errno.EIO, os.stat, j(o.mp, "x_staterr"))
    # listing the parent works (names only; ls -l style stat per entry
    # fails for that one name only)
    names = os.listdir(o.mp)
    assert "ok" in names
    for n in names:
        if "staterr" in n:
            continue
        os.lstat(j(o.mp, n))
    # creating over it must not silently replace the unreadable lower file
    try:
        open(j(o.mp, "x_staterr"), "w").close()
    except OSError as e:
        assert e.errno == errno.EIO, errname(e.errno)
    alive(o)


def test_lower_error_midway_copyup(faulty):
    """The lower read fails after 64 KiB: the copy-up fails with EIO and
    leaves no partial file."""
    o = faulty
    p = j(o.mp, "big_rderr")
    expect_errno(errno.EIO, open, p, "ab")
    expect_errno(errno.EIO, os.truncate, p, 100000)
    assert not os.path.lexists(j(o.upper, "big_rderr"))
    assert not tmp_debris(o.upper), tmp_debris(o.upper)
    assert os.stat(p).st_size == 256 * 1024
    alive(o)


def test_lower_error_midway_read(faulty):
    """The lower read fails after 64 KiB: a reader gets EIO there, not a
    short file; the data before the fault still reads."""
    o = faulty
    p = j(o.mp, "big_rderr")

    def read_all():
        with open(p, "rb") as f:
            return len(f.read())

    try:
        n = read_all()
    except OSError as e:
        assert e.errno == errno.EIO, errname(e.errno)
    else:
        raise AssertionError(
            "reading the whole file gave %d bytes and EOF instead of EIO (the "
            "lower fails at 64 KiB; stat now says %d bytes): a lower error "
            "became a silent short read" % (n, os.stat(p).st_size))
    with open(p, "rb") as f:
        assert f.read(65536) == b"R" * 65536
    expect_errno(errno.EIO, open, p, "ab")
    assert not os.path.lexists(j(o.upper, "big_rderr"))
    assert not tmp_debris(o.upper), tmp_debris(o.upper)
    assert os.stat(p).st_size == 256 * 1024
    alive(o)


def test_lower_error_rename_and_unlink(faulty):
    """Operations that need no data of the faulty file work (unlink is a
    whiteout); renaming needs a copy-up and must fail cleanly or work."""
    o = faulty
    os.unlink(j(o.mp, "data_eacces"))
    assert not os.path.lexists(j(o.mp, "data_eacces"))
    try:
        os.rename(j(o.mp, "data_eio"), j(o.mp, "moved"))
        assert not os.path.lexists(j(o.mp, "data_eio"))
    except OSError as e:
        assert e.errno == errno.EIO, errname(e.errno)
        assert os.path.lexists(j(o.mp, "data_eio"))
        assert not os.path.lexists(j(o.mp, "moved"))
    assert not tmp_debris(o.upper)
    # a faulty file inside a good directory: the rest of it is fine
    assert sorted(os.listdir(j(o.mp, "okdir"))) == ["f", "g_eio"]
    with open(j(o.mp, "okdir", "f"), "a") as f:
        f.write("more\n")
    assert open(j(o.upper, "okdir", "f")).read() == "f\nmore\n"
    alive(o)
    o.umount()
    o.mount()
    alive(o)


# --------------------------------------------------------------------------
# the daemon killed or terminated
# --------------------------------------------------------------------------

def mounted_overlay(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "lower f\n", "d": {"g": "g\n"}})
    o = Overlay(lower)
    o.mount()
    pids = daemon_pids(lower)
    assert len(pids) == 1, "daemon of %s: %r" % (lower, pids)
    return o, pids[0]


def test_sigkill_daemon(work):
    o, pid = mounted_overlay(work)
    write_file(j(o.mp, "new"), b"durable\n")
    write_file(j(o.mp, "f"), b"changed\n")
    os.mkdir(j(o.mp, "nd"))
    os.unlink(j(o.mp, "d", "g"))
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: gone(pid), 10), "daemon %d did not die" % pid
    # the mount point is dead, not hanging (ECONNABORTED if a request was
    # already on its way when the last fd closed). Over io_uring the
    # kernel lets go of the connection when the dead process's rings are
    # torn down, which it does in the background: soon, not at once.
    assert wait_for(lambda: stat_fails(o.mp), 10), "the mount still answers"
    expect_errno((errno.ENOTCONN, errno.ECONNABORTED), os.stat, o.mp)
    expect_errno((errno.ENOTCONN, errno.ECONNABORTED), os.listdir, o.mp)
    # ovlfs umount cleans it up
    r = ovlfs("umount", o.mp, timeout=30)
    assert r.returncode == 0, "ovlfs umount of a dead mount: rc=%d %s" % (r.returncode, r.err)
    assert not is_mounted(o.mp)
    # the same upper mounts again, with what was written before the kill
    o.mount()
    assert open(j(o.mp, "new")).read() == "durable\n"
    assert open(j(o.mp, "f")).read() == "changed\n"
    assert os.path.isdir(j(o.mp, "nd"))
    assert os.listdir(j(o.mp, "d")) == []
    assert open(j(o.lower, "f")).read() == "lower f\n"
    assert not tmp_debris(o.upper)


def test_sigkill_daemon_during_copyup(work):
    """Killed while copying up a big file: after remount there is no
    partial file, the lower version shows whole."""
    lower = j(work, "lower")
    os.mkdir(lower)
    data = os.urandom(64 * MiB)
    build(lower, {"big": data})
    o = Overlay(lower)
    o.mount()
    pid = daemon_pids(lower)[0]
    writer = subprocess.Popen(["sh", "-c", "echo x >> %s" % j(o.mp, "big")],
                              stderr=subprocess.PIPE)
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert wait_for(lambda: gone(pid), 10)
    r = ovlfs("umount", o.mp, timeout=30)
    assert r.returncode == 0, r.err
    o.mount()
    got = open(j(o.mp, "big"), "rb").read()
    assert got in (data, data + b"x\n"), "partial file after kill: %d bytes" % len(got)
    assert not [k for k in tmp_debris(o.upper)
                if os.path.lexists(j(o.mp, os.fsdecode(k)))]


def test_sigterm_daemon(work):
    o, pid = mounted_overlay(work)
    write_file(j(o.mp, "new"), b"n\n", fsync=False)
    os.unlink(j(o.mp, "f"))
    upper_before = snapshot(o.upper)
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not is_mounted(o.mp), 10), "still mounted after SIGTERM"
    assert wait_for(lambda: gone(pid), 10), "daemon still running after SIGTERM"
    assert not mounts_under(work)
    assert_same_tree(snapshot(o.upper), upper_before, "upper now", "upper before")
    assert os.listdir(o.mp) == []
    o.mount()
    assert open(j(o.mp, "new")).read() == "n\n"
    assert not os.path.lexists(j(o.mp, "f"))
    assert open(j(o.lower, "f")).read() == "lower f\n"


def test_sighup_and_sigint_daemon(work):
    """The daemon runs in its own session; SIGHUP and SIGINT unmount it
    cleanly as SIGTERM does (the -f help says SIGINT/SIGTERM)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        lower = j(work, "lower%d" % sig)
        os.mkdir(lower)
        o = Overlay(lower)
        o.mount()
        pid = daemon_pids(lower)[0]
        open(j(o.mp, "x"), "w").write("x")
        os.kill(pid, sig)
        assert wait_for(lambda: not is_mounted(o.mp), 10), signal.Signals(sig).name
        assert wait_for(lambda: gone(pid), 10)
        o.mount()
        assert open(j(o.mp, "x")).read() == "x"


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "pinned"])
def test_stuck_lower_does_not_stall_the_mount(faulty, pinned):
    """A lookup the lower takes 1.5 s to answer is served on the reader
    thread (lookups are quick, usually): the mount must not wait for it.
    Requests that come meanwhile are answered before it finishes. Also
    with the callers pinned to one CPU, where the reader follows them."""
    o = faulty
    if pinned:
        mask = os.sched_getaffinity(0)
        if len(mask) < 2:
            pytest.skip("needs 2 CPUs")
        # this thread only; the stall thread started below inherits it
        os.sched_setaffinity(0, {min(mask)})
        try:
            _stuck_lookup(o)
        finally:
            os.sched_setaffinity(0, mask)
    else:
        _stuck_lookup(o)


def _stuck_lookup(o):
    os.mkdir(j(o.mp, "updir"))
    p = j(o.mp, "updir", "f")
    with open(p, "w") as f:
        f.write("x")
    os.setxattr(p, "user.k", b"1")
    when = {}

    def stall():
        os.stat(j(o.mp, "slowdir", "stall_x"))
        when["stall"] = time.monotonic()

    t = threading.Thread(target=stall)
    t.start()
    time.sleep(0.3)
    for _ in range(20):           # each getxattr is a request
        assert os.getxattr(p, "user.k") == b"1"
    when["others"] = time.monotonic()
    t.join(30)
    assert "stall" in when
    assert when["others"] < when["stall"], "the mount waited for the stuck lookup"
    alive(o)
