"""Multithreading smoke: writers, a big copy-up, and readers at once."""

import hashlib
import os
import threading
import time

import pytest

from conftest import F, Overlay, build, run_threads

MiB = 1 << 20
BIG = 64 * MiB


def j(*p):
    return os.path.join(*p)


def big_data():
    block = hashlib.sha256(b"seed").digest() * (MiB // 32)
    return block


def make(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"d%d" % k: {"f%03d" % i: "lower %d %d\n" % (k, i) for i in range(100)}
                  for k in range(4)})
    blk = big_data()
    with open(j(lower, "big"), "wb") as f:
        for i in range(BIG // MiB):
            f.write(bytes([i]) + blk[1:])
    return lower


@pytest.mark.timeout(240)
def test_concurrent_writers_copyup_and_readers(work):
    lower = make(work)
    o = Overlay(lower)
    o.mount()
    mp = o.mp
    errors = []
    done = threading.Event()

    def guard(fn):
        def w(*a):
            try:
                fn(*a)
            except BaseException as e:      # report, don't hang the test
                errors.append((fn.__name__, a, repr(e)))
        return w

    @guard
    def writer(k):
        d = j(mp, "d%d" % k)
        for i in range(100):
            with open(j(d, "new%03d" % i), "wb") as f:
                f.write(b"thread %d file %d\n" % (k, i) * 50)
            with open(j(d, "f%03d" % i), "ab") as f:        # copy-up of lower files
                f.write(b"appended by %d\n" % k)
            if i % 10 == 0:
                os.rename(j(d, "new%03d" % i), j(d, "ren%03d" % i))

    @guard
    def copier():
        with open(j(mp, "big"), "r+b") as f:                 # copy-up of 64 MiB
            f.seek(BIG - 3)
            f.write(b"END")
            f.seek(0)
            f.write(b"BEGIN")

    @guard
    def reader():
        while not done.is_set():
            for k in range(4):
                d = j(mp, "d%d" % k)
                for n in os.listdir(d):
                    try:
                        os.lstat(j(d, n))
                    except FileNotFoundError:
                        pass                                  # renamed meanwhile
            os.stat(j(mp, "big"))
            os.listdir(mp)

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    workers.append(threading.Thread(target=copier))
    readers = [threading.Thread(target=reader) for _ in range(3)]
    t0 = time.monotonic()
    for t in workers + readers:
        t.start()
    for t in workers:
        t.join(200)
    done.set()
    for t in readers:
        t.join(30)
    alive = [t.name for t in workers + readers if t.is_alive()]
    assert not alive, "threads still running after %.0fs: %r" % (time.monotonic() - t0, alive)
    assert not errors, errors

    # contents
    for k in range(4):
        d = j(mp, "d%d" % k)
        names = set(os.listdir(d))
        for i in range(100):
            new = ("ren%03d" if i % 10 == 0 else "new%03d") % i
            assert new in names
            assert open(j(d, new), "rb").read() == b"thread %d file %d\n" % (k, i) * 50
            assert open(j(d, "f%03d" % i), "rb").read() == \
                b"lower %d %d\nappended by %d\n" % (k, i, k)
        assert len(names) == 200
    blk = big_data()
    h_exp = hashlib.sha256()
    for i in range(BIG // MiB):
        h_exp.update(bytes([i]) + blk[1:])
    with open(j(mp, "big"), "rb") as f:
        data = f.read()
    assert len(data) == BIG
    assert data[:5] == b"BEGIN" and data[-3:] == b"END"
    exp = bytearray(b"".join(bytes([i]) + blk[1:] for i in range(BIG // MiB)))
    exp[:5] = b"BEGIN"
    exp[-3:] = b"END"
    assert hashlib.sha256(data).digest() == hashlib.sha256(bytes(exp)).digest()
    # the lower is untouched
    with open(j(lower, "big"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == h_exp.digest()
    o.remount()
    with open(j(mp, "big"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(bytes(exp)).digest()


@pytest.mark.timeout(120)
def test_concurrent_copyup_same_file(work):
    """Many threads appending to the same lower file at once: one copy-up,
    every append lands."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"shared": F(b"L" * (4 * MiB))})
    o = Overlay(lower)
    o.mount()
    def app(k):
        fd = os.open(j(o.mp, "shared"), os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(50):
                os.write(fd, b"%02d" % k)
        finally:
            os.close(fd)

    errors = run_threads(app, 8)
    assert not errors, errors
    data = open(j(o.mp, "shared"), "rb").read()
    assert data[:4 * MiB] == b"L" * (4 * MiB)
    tail = data[4 * MiB:]
    assert len(tail) == 8 * 50 * 2
    for k in range(8):
        assert tail.count(b"%02d" % k) >= 50
