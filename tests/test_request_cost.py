"""What serving one FUSE request costs the daemon, in syscalls on its side:
the container job of bench/containers.py (untar, cp -a, rm -rf) is tens of
thousands of requests, so a syscall more per request shows in its time.
strace is attached to the daemon of the test's own mount (found through
its command line, which names the test's lower).
"""

import os

from conftest import Overlay, build, daemon_pids, traced

WORKLOAD = r'''
import os, sys
mp = sys.argv[1]
for i in range(5):
    d = os.path.join(mp, "d%d" % i)
    os.mkdir(d)
    for k in range(10):
        with open(os.path.join(d, "f%d" % k), "w") as f:
            f.write("x" * 100)
    os.mknod(os.path.join(d, "fifo"), 0o600 | 0o010000)
    os.symlink("f0", os.path.join(d, "ln"))
'''



def _mounted(work):
    """A small lower (one file) mounted with its upper, both in WORK."""
    lower = os.path.join(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "lower\n"})
    o = Overlay(lower, upper=os.path.join(work, "upper"),
                mp=os.path.join(work, "mnt"))
    o.mount()
    return lower, o


def test_creates_do_not_read_the_callers_groups(work):
    """CREATE, MKDIR, MKNOD and SYMLINK do not read the caller's
    supplementary groups from /proc/PID/task/TID/status (libfuse's
    fuse_req_getgroups: open, read, close and a procfs rendering per
    request): nothing but ACCESS uses them."""
    lower, o = _mounted(work)
    pids = daemon_pids(lower)
    assert len(pids) == 1, pids
    lines = traced(pids[0], WORKLOAD, o.mp, "openat,open")
    procs = [l for l in lines if "/proc/" in l and "/status" in l]
    assert procs == [], procs[:5]
    # and the work was done (so the trace saw the creates)
    assert sorted(os.listdir(os.path.join(o.upper, "d4"))) == \
        ["f%d" % k for k in range(10)] + ["fifo", "ln"]
    o.umount()


SETATTR_WORKLOAD = r'''
import os, sys
mp = sys.argv[1]
for i in range(10):
    p = os.path.join(mp, "d", "f%d" % i)
    os.chown(p, 1000 + i, 2000 + i)
    os.chmod(p, 0o600 + i)
    os.utime(p, ns=(10**18 + i, 2 * 10**18 + i))
os.chown(os.path.join(mp, "d", "ln"), 3000, 3000, follow_symlinks=False)
os.chmod(os.path.join(mp, "d"), 0o750)
'''


def test_setattr_opens_nothing(work):
    """chmod, chown and utimes of a file the daemon keeps no descriptor
    for (files are not pinned) do not open it (O_PATH open + close per
    SETATTR): they act on its name in the pinned parent, symlinks not
    followed. And they land on the right objects."""
    lower, o = _mounted(work)
    d = os.path.join(o.mp, "d")
    os.mkdir(d)
    for i in range(10):
        with open(os.path.join(d, "f%d" % i), "w") as f:
            f.write("x")
    os.symlink("f0", os.path.join(d, "ln"))
    pids = daemon_pids(lower)
    assert len(pids) == 1, pids
    lines = traced(pids[0], SETATTR_WORKLOAD, o.mp, "openat,open,close")
    # (the symlink's lchown also asks for its security.capability, which
    # is read through an O_PATH fd: that GETXATTR is not a SETATTR)
    opens = [l for l in lines if "open" in l and '"ln"' not in l]
    assert opens == [], opens[:5]
    ud = os.path.join(o.upper, "d")
    for i in range(10):
        for st in (os.stat(os.path.join(ud, "f%d" % i)),
                   os.stat(os.path.join(d, "f%d" % i))):
            assert (st.st_uid, st.st_gid) == (1000 + i, 2000 + i)
            assert st.st_mode & 0o7777 == 0o600 + i
            assert (st.st_atime_ns, st.st_mtime_ns) == \
                (10**18 + i, 2 * 10**18 + i)
    for p in (os.path.join(ud, "ln"), os.path.join(d, "ln")):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (3000, 3000)
    assert os.stat(os.path.join(ud, "f0")).st_uid == 1000   # not followed
    assert os.stat(ud).st_mode & 0o7777 == 0o750
    o.umount()


def _logged(work, nfiles=0):
    """A mount whose every FUSE request is logged (-d --log): (overlay,
    log path); the lower has a file f and a directory big of NFILES."""
    lower = os.path.join(work, "lower")
    os.makedirs(os.path.join(lower, "big"))
    build(lower, {"f": "lower\n"})
    for i in range(nfiles):
        open(os.path.join(lower, "big", "entry-%05d" % i), "w").close()
    log = os.path.join(work, "requests.log")
    o = Overlay(lower, upper=os.path.join(work, "upper"),
                mp=os.path.join(work, "mnt"), extra_args=["-d", "--log", log])
    o.mount()
    return o, log


def _count(log, opcode, since=0):
    with open(log, errors="replace") as f:
        f.seek(since)
        return sum(1 for l in f if ", opcode: %s (" % opcode in l)


def test_no_flush_at_close(work):
    """Opens answer FOPEN_NOFLUSH: close sends no FLUSH, not even the
    mount's first (ovlfs has no flush to do: files are written through)."""
    o, log = _logged(work)
    for name, flags in (("f", os.O_RDONLY), ("f", os.O_WRONLY),
                        ("new", os.O_WRONLY | os.O_CREAT)):
        fd = os.open(os.path.join(o.mp, name), flags, 0o644)
        os.close(fd)
    assert os.path.exists(os.path.join(o.upper, "new"))
    o.umount()
    assert _count(log, "OPEN") == 2 and _count(log, "CREATE") == 1
    assert _count(log, "FLUSH") == 0


def test_directory_blksize(work):
    """Directories say st_blksize 1 MiB (glibc then reads them with 1 MiB
    getdents, and FUSE asks for as much per READDIR); files keep the
    layer's, their I/O size hint."""
    o, log = _logged(work, 10000)
    assert os.stat(o.mp).st_blksize == 1 << 20
    assert os.stat(os.path.join(o.mp, "big")).st_blksize == 1 << 20
    assert os.lstat(os.path.join(o.mp, "big")).st_blksize == 1 << 20
    f = os.path.join(o.mp, "f")
    assert os.stat(f).st_blksize == os.stat(os.path.join(o.lower, "f")).st_blksize
    os.chmod(f, 0o600)      # copied up: the upper's
    assert os.stat(f).st_blksize == os.stat(os.path.join(o.upper, "f")).st_blksize
    since = os.path.getsize(log)
    names = os.listdir(os.path.join(o.mp, "big"))
    assert len(names) == 10000
    o.umount()
    n = _count(log, "READDIR", since) + _count(log, "READDIRPLUS", since)
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 16):
        # 10,000 entries of ~40 bytes: 400 KB, one 1 MiB buffer (and the
        # empty one that ends the listing); 32 KiB buffers took 16
        assert n <= 3, n
