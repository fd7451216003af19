"""A 10,000-entry directory: listing and stat through the mount."""

import os
import resource
import stat

import pytest

from conftest import Overlay, daemon_pids

N = 10000


def j(*p):
    return os.path.join(*p)


def make_big_lower(work):
    lower = j(work, "lower")
    big = j(lower, "big")
    os.makedirs(big)
    for i in range(N):
        if i % 1000 == 0:
            os.mkdir(j(big, "sub%05d" % i))
        else:
            with open(j(big, "file%05d" % i), "wb") as f:
                f.write(b"%d" % i)
    return lower


@pytest.mark.parametrize("mode", ["virtual", "persistent"])
def test_big_lower_dir(work, mode):
    lower = make_big_lower(work)
    o = Overlay(lower, inode_mode=mode)
    o.mount()
    big = j(o.mp, "big")
    names = os.listdir(big)
    assert len(names) == N
    assert sorted(names) == sorted(os.listdir(j(lower, "big")))
    inos = set()
    with os.scandir(big) as it:
        for e in it:
            st = os.lstat(e.path)
            assert e.inode() == st.st_ino, e.name
            inos.add(st.st_ino)
            if e.name.startswith("sub"):
                assert stat.S_ISDIR(st.st_mode)
            else:
                assert st.st_size == len(e.name[4:].lstrip("0") or "0")
    assert len(inos) == N


def test_big_dir_after_changes(work):
    lower = make_big_lower(work)
    o = Overlay(lower)
    o.mount()
    big = j(o.mp, "big")
    expect = set(os.listdir(j(lower, "big")))
    for i in range(1, 3000, 7):                      # delete lower files
        n = "file%05d" % i
        if n in expect:
            os.unlink(j(big, n))
            expect.discard(n)
    for i in range(2000):                            # add upper files
        n = "new%05d" % i
        open(j(big, n), "w").close()
        expect.add(n)
    for i in range(3001, 3500, 5):                   # rename some within the dir
        a, b = "file%05d" % i, "ren%05d" % i
        if a in expect:
            os.rename(j(big, a), j(big, b))
            expect.discard(a)
            expect.add(b)
    os.rmdir(j(big, "sub05000"))
    expect.discard("sub05000")
    got = os.listdir(big)
    assert len(got) == len(set(got)), "duplicate names in readdir"
    assert set(got) == expect
    for n in got:
        os.lstat(j(big, n))
    o.remount()
    got = os.listdir(big)
    assert len(got) == len(set(got))
    assert set(got) == expect


def test_readdir_while_creating(work):
    """Listing a big dir while another thread adds files: no duplicates, no
    entry that existed throughout goes missing."""
    import threading
    lower = make_big_lower(work)
    o = Overlay(lower)
    o.mount()
    big = j(o.mp, "big")
    base = set(os.listdir(j(lower, "big")))
    stop = threading.Event()
    errors = []

    def creator():
        try:
            i = 0
            while not stop.is_set() and i < 3000:
                open(j(big, "c%05d" % i), "w").close()
                i += 1
        except Exception as e:                        # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=creator)
    t.start()
    try:
        for _ in range(5):
            got = os.listdir(big)
            assert len(got) == len(set(got)), "duplicate names in readdir"
            missing = base - set(got)
            assert not missing, "entries vanished during listing: %r" % sorted(missing)[:5]
    finally:
        stop.set()
        t.join()
    assert not errors


def test_more_cached_files_than_fds(work):
    """Every file the kernel holds is a node, but not an fd: a tree far
    bigger than the daemon's fd limit stats, reads, copies up and deletes
    while all of it stays cached (86400 s timeouts keep the inodes)."""
    lower = j(work, "lower")
    ndirs, per = 40, 100
    for d in range(ndirs):
        os.makedirs(j(lower, "d%02d" % d))
        for i in range(per):
            with open(j(lower, "d%02d" % d, "f%03d" % i), "wb") as f:
                f.write(b"%d/%d" % (d, i))
    limit = 256

    def low_fds():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    o = Overlay(lower)
    o.mount(preexec_fn=low_fds)
    pid, = daemon_pids(lower)
    held = []
    for d in range(ndirs):
        for i in range(per):
            p = j(o.mp, "d%02d" % d, "f%03d" % i)
            assert os.lstat(p).st_size == len(b"%d/%d" % (d, i))
            with open(p, "rb") as f:
                assert f.read() == b"%d/%d" % (d, i)
    # a few files stay open across the rest: each holds one fd
    for i in range(20):
        held.append(open(j(o.mp, "d00", "f%03d" % i), "rb"))
    nfd = len(os.listdir("/proc/%d/fd" % pid))
    assert nfd < limit // 2, "daemon holds %d fds for %d cached files" % (
        nfd, ndirs * per)
    # writes copy up, deletes whiteout, with everything still cached
    for d in range(ndirs):
        with open(j(o.mp, "d%02d" % d, "f000"), "ab") as f:
            f.write(b"+")
        os.unlink(j(o.mp, "d%02d" % d, "f001"))
    # an open file whose name went away keeps working (pinned)
    os.unlink(j(o.mp, "d00", "f005"))
    assert os.fstat(held[5].fileno()).st_size == len(b"0/5")
    assert held[5].read() == b"0/5"
    for f in held:
        f.close()
    assert len(os.listdir(j(o.mp, "d07"))) == per - 1
    with open(j(o.mp, "d07", "f000"), "rb") as f:
        assert f.read() == b"7/0+"
    o.umount()
    assert sorted(os.listdir(j(o.upper, "d07"))) == [".wh.f001", "f000"]
