"""FUSE passthrough: the kernel reads and writes files open on their upper
copy directly (docs/passthrough.md). What is checked here is that it engages
(the daemon no longer moves the data) and that the kernel's one-io-mode-per-
inode rule never turns into an EIO for the user, whatever the mix of opens:
lower readers, writers that copy up, mmap, hard links, unlinked open files."""

import mmap
import os

import pytest

from conftest import Overlay, daemon_pids, run_threads

MIB = 1 << 20


def j(*p):
    return os.path.join(*p)


def io_bytes(lower):
    """Bytes the daemon has read and written (rchar + wchar, all threads)."""
    pid, = daemon_pids(lower)
    with open("/proc/%d/io" % pid) as f:
        d = dict(l.split(": ") for l in f.read().splitlines())
    return int(d["rchar"]) + int(d["wchar"])


def passthrough_possible():
    return os.geteuid() == 0 and tuple(
        int(x) for x in os.uname().release.split(".")[:2]) >= (6, 9)


needs_pt = pytest.mark.skipif(not passthrough_possible(),
                              reason="passthrough needs root and Linux 6.9+")


def write_and_read(path, size=8 * MIB):
    chunk = b"p" * 4096
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // len(chunk)):
            os.write(fd, chunk)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        while f.read(MIB):
            pass


def make_lower(work):
    lower = j(work, "lower")
    os.makedirs(j(lower, "d"))
    with open(j(lower, "d", "data"), "wb") as f:
        f.write(b"L" * 100000)
    return lower


@needs_pt
def test_upper_file_io_bypasses_daemon(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    before = io_bytes(lower)
    write_and_read(j(o.mp, "new"))
    moved = io_bytes(lower) - before
    assert moved < 2 * MIB, "daemon moved %d bytes of a 16 MiB write+read" % moved
    with open(j(o.upper, "new"), "rb") as f:
        assert f.read() == b"p" * 8 * MIB


def test_no_passthrough_option(work):
    lower = make_lower(work)
    o = Overlay(lower, extra_args=["--no-passthrough"])
    o.mount()
    before = io_bytes(lower)
    write_and_read(j(o.mp, "new"))
    moved = io_bytes(lower) - before
    assert moved >= 16 * MIB, "daemon moved only %d bytes" % moved
    with open(j(o.upper, "new"), "rb") as f:
        assert f.read() == b"p" * 8 * MIB


def test_lower_reader_then_writer(work):
    """A reader opened on the lower keeps the node on the daemon path, so
    the writer's open (which copies up) must not be passthrough: both opens
    work, the reader follows the copy-up, the lower is untouched."""
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    p = j(o.mp, "d", "data")
    r = open(p, "rb", buffering=0)
    assert r.read(10) == b"L" * 10
    with open(p, "r+b") as w:
        w.seek(10)
        w.write(b"W" * 10)
        w.flush()
        r.seek(0)
        assert r.read(30) == b"L" * 10 + b"W" * 10 + b"L" * 10
    r.close()
    # all closed: the next opens are passthrough, and agree with each other
    a = open(p, "r+b", buffering=0)
    b = open(p, "rb", buffering=0)
    a.write(b"A" * 5)
    assert b.read(5) == b"A" * 5
    a.close()
    b.close()
    with open(j(lower, "d", "data"), "rb") as f:
        assert f.read() == b"L" * 100000
    with open(j(o.upper, "d", "data"), "rb") as f:
        assert f.read(20) == b"A" * 5 + b"L" * 5 + b"W" * 10


def test_mmap_writes_upper_never_lower(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    p = j(o.mp, "d", "data")
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        m[0:4] = b"MMAP"
        m.flush()
        m.close()
    with open(p, "rb") as f:                  # a lower-path open of nothing
        assert f.read(4) == b"MMAP"
    with open(j(o.upper, "d", "data"), "rb") as f:
        assert f.read(4) == b"MMAP"
    with open(j(lower, "d", "data"), "rb") as f:
        assert f.read(4) == b"LLLL"
    # a read-only mapping of a lower-only file reads the lower
    with open(j(lower, "ro"), "wb") as f:
        f.write(b"R" * 8192)
    o.remount()
    with open(j(o.mp, "ro"), "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        assert m[:4] == b"RRRR"
        m.close()


def test_file_ops_on_passthrough_handles(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    p = j(o.mp, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.pwrite(fd, b"x" * 10000, 0)
        os.ftruncate(fd, 5000)
        assert os.fstat(fd).st_size == 5000
        os.posix_fallocate(fd, 0, 20000)
        assert os.fstat(fd).st_size == 20000
        os.pwrite(fd, b"y", 1 << 20)
        assert os.lseek(fd, 0, os.SEEK_END) == (1 << 20) + 1
        assert os.lseek(fd, 100000, os.SEEK_DATA) == 1 << 20
        os.fsync(fd)
        assert os.pread(fd, 3, 4998) == b"xx\0"
    finally:
        os.close(fd)
    assert os.stat(j(o.upper, "f")).st_size == (1 << 20) + 1


def test_hard_links_share_data(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    with open(j(o.mp, "a"), "wb") as f:
        f.write(b"1" * 100)
    os.link(j(o.mp, "a"), j(o.mp, "b"))
    with open(j(o.mp, "a"), "r+b", buffering=0) as fa, \
            open(j(o.mp, "b"), "rb", buffering=0) as fb:
        fa.write(b"2" * 10)
        assert fb.read(10) == b"2" * 10


def test_unlinked_open_file_keeps_working(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    p = j(o.mp, "gone")
    with open(p, "w+b") as f:
        f.write(b"abc")
        f.flush()
        os.unlink(p)
        f.write(b"def")
        f.flush()
        f.seek(0)
        assert f.read() == b"abcdef"
        assert os.fstat(f.fileno()).st_size == 6
    assert not os.path.exists(p)


def test_open_close_storm_never_eio(work):
    """Threads opening one file every which way (lower-only readers, writers
    that copy up, readers of the upper) while others close: the kernel's
    io-mode rule must never show up as an error."""
    lower = make_lower(work)
    for i in range(4):
        with open(j(lower, "d", "s%d" % i), "wb") as f:
            f.write(b"%d" % i * 4096)
    o = Overlay(lower)
    o.mount()
    def worker(k):
        for it in range(150):
            p = j(o.mp, "d", "s%d" % ((k + it) % 4))
            mode = (k * 7 + it) % 3
            if mode == 0:
                with open(p, "rb") as f:
                    f.read(100)
            elif mode == 1:
                with open(p, "r+b") as f:
                    f.seek(4096 + k)
                    f.write(b"w")
            else:
                fd = os.open(p, os.O_RDONLY)
                fd2 = os.open(p, os.O_WRONLY | os.O_APPEND)
                os.write(fd2, b"+")
                os.read(fd, 10)
                os.close(fd)
                os.close(fd2)

    errors = run_threads(worker, 6)
    assert not errors, errors[:3]
    for i in range(4):
        with open(j(lower, "d", "s%d" % i), "rb") as f:
            assert f.read() == b"%d" % i * 4096
        assert os.path.getsize(j(o.mp, "d", "s%d" % i)) == \
            os.path.getsize(j(o.upper, "d", "s%d" % i))
