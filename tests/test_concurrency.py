"""Concurrency: many threads on the same files and names at once.

Each test runs its threads under a deadline; a thread still running past it
means a deadlock: the test aborts its own FUSE connection (so the stuck
threads get ENOTCONN and end) and fails instead of hanging.
"""

import errno
import os
import random
import threading
import time

import pytest

from conftest import F, RENAME_EXCHANGE, churn_names, RENAME_NOREPLACE, renameat2, snapshot, \
    assert_same_tree, upper_listing

KiB = 1 << 10
MiB = 1 << 20


def j(*p):
    return os.path.join(*p)


def run_threads(ovl, targets, timeout=30.0):
    """Run the callables TARGETS in threads; errors are collected and raised.
    On deadline: abort the FUSE connection of OVL and fail."""
    errors = []

    def wrap(fn, k):
        def w():
            try:
                fn(k)
            except BaseException as e:          # report, never hang
                errors.append("%s[%d]: %r" % (getattr(fn, "__name__", fn), k, e))
        return w

    ts = [threading.Thread(target=wrap(fn, k), daemon=True) for k, fn in enumerate(targets)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(0.0, timeout - (time.monotonic() - t0)))
    alive = [t for t in ts if t.is_alive()]
    if alive:
        aborted = ovl.abort()
        for t in alive:
            t.join(10)
        pytest.fail("deadlock? %d of %d threads still running after %.0fs; FUSE "
                    "connection %s" % (len(alive), len(ts), timeout,
                                       "aborted" if aborted else "could not be aborted"))
    assert not errors, "\n".join(errors[:20])


def no_debris(upper):
    bad = [k for k in upper_listing(upper) if b".wh..wh.tmp." in k]
    assert not bad, "temporary copy-up/rename debris left in the upper: %r" % bad[:10]


# ---------------------------------------------------------------------------
# readers and writers on the same file
# ---------------------------------------------------------------------------

BLK = 4 * KiB
NBLK = 64


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["lower", "upper"])
def test_pwrite_disjoint_and_overlapping(overlay, where):
    """Writers pwrite whole 4 KiB blocks: in the disjoint file each thread owns
    its blocks (none may be lost); in the shared file all threads write the
    same blocks (each block must end up as one writer's block, never a mix).
    Readers meanwhile see only bytes that were ever written there."""
    spec = {"disjoint": F(b"." * (BLK * NBLK)), "shared": F(b"." * (BLK * NBLK))} \
        if where == "lower" else {}
    o = overlay(spec)
    mp = o.mp
    if where == "upper":
        for n in ("disjoint", "shared"):
            with open(j(mp, n), "wb") as f:
                f.write(b"." * (BLK * NBLK))
    W = 6
    legal = set(b".") | {ord("A") + k for k in range(W)}
    stop = threading.Event()

    def writer(k):
        tag = bytes([ord("A") + k]) * BLK
        fd_d = os.open(j(mp, "disjoint"), os.O_WRONLY)
        fd_s = os.open(j(mp, "shared"), os.O_RDWR)
        try:
            for rnd in range(4):
                for b in range(k, NBLK, W):
                    os.pwrite(fd_d, tag, b * BLK)
                for b in range(NBLK):
                    os.pwrite(fd_s, tag, ((b * 7 + k + rnd) % NBLK) * BLK)
        finally:
            os.close(fd_d)
            os.close(fd_s)

    def reader(k):
        while not stop.is_set():
            for n in ("disjoint", "shared"):
                with open(j(mp, n), "rb") as f:
                    d = f.read()
                assert len(d) == BLK * NBLK, (n, len(d))
                assert set(d) <= legal, (n, set(d) - legal)

    readers = [threading.Thread(target=lambda: _catch(reader, 0, errs)) for _ in range(2)]
    errs = []
    for t in readers:
        t.start()
    try:
        run_threads(o, [writer] * W)
    finally:
        stop.set()
        for t in readers:
            t.join(20)
    assert not errs, errs
    for n in ("disjoint", "shared"):
        with open(j(mp, n), "rb") as f:
            d = f.read()
        assert len(d) == BLK * NBLK
        for b in range(NBLK):
            blk = d[b * BLK:(b + 1) * BLK]
            if n == "disjoint":
                exp = bytes([ord("A") + b % W]) * BLK
                assert blk == exp, "disjoint block %d lost its write: %r..." % (b, blk[:8])
            else:
                assert len(set(blk)) == 1 and blk[0] in legal - {ord(".")}, \
                    "shared block %d is not one writer's block: %r" % (b, sorted(set(blk)))
    o.remount()
    with open(j(mp, "disjoint"), "rb") as f:
        assert f.read() == b"".join(bytes([ord("A") + b % W]) * BLK for b in range(NBLK))
    if where == "lower":
        with open(j(o.lower, "disjoint"), "rb") as f:
            assert f.read() == b"." * (BLK * NBLK), "the lower was modified"


def _catch(fn, k, errs):
    try:
        fn(k)
    except BaseException as e:
        errs.append(repr(e))


# ---------------------------------------------------------------------------
# one copy-up, many triggers
# ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_copyup_race(overlay):
    """Many threads trigger the copy-up of the same lower file at the same
    instant (writes, truncate-free metadata changes, appends): one upper
    file results, with the lower content plus every write."""
    size = 8 * MiB
    lower_data = bytes(range(256)) * (size // 256)
    spec = {"f%d" % r: F(lower_data) for r in range(3)}
    o = overlay(spec)
    mp = o.mp
    T = 10
    for r in range(3):
        path = j(mp, "f%d" % r)
        barrier = threading.Barrier(T)

        def trig(k):
            barrier.wait(10)
            if k % 5 == 3:
                os.setxattr(path, "user.t%d" % k, b"v%d" % k)
            elif k % 5 == 4:
                os.utime(path, ns=(10 ** 9, (1000 + k) * 10 ** 9))
            else:
                fd = os.open(path, os.O_RDWR)
                try:
                    os.pwrite(fd, b"<%02d>" % k, k * 512 * KiB + 100)
                    st = os.fstat(fd)
                    assert st.st_size == size, st.st_size
                    d = os.pread(fd, size + 1, 0)
                    assert len(d) == size
                    assert d[k * 512 * KiB + 100:k * 512 * KiB + 104] == b"<%02d>" % k
                finally:
                    os.close(fd)
            # every trigger sees the whole file
            with open(path, "rb") as f:
                d = f.read()
            assert len(d) == size

        run_threads(o, [trig] * T)
        exp = bytearray(lower_data)
        for k in range(T):
            if k % 5 < 3:
                exp[k * 512 * KiB + 100:k * 512 * KiB + 104] = b"<%02d>" % k
        for p in (path, j(o.upper, "f%d" % r)):
            with open(p, "rb") as f:
                assert f.read() == bytes(exp), "%s: content is not lower + writes" % p
        for k in range(T):
            if k % 5 == 3:
                assert os.getxattr(path, "user.t%d" % k) == b"v%d" % k
    ups = upper_listing(o.upper)
    assert sorted(k for k in ups if k) == [b"f0", b"f1", b"f2"], ups
    with open(j(o.lower, "f0"), "rb") as f:
        assert f.read() == lower_data


# ---------------------------------------------------------------------------
# rename storm
# ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_rename_storm(overlay):
    """Threads rename files among a few names and directories (NOREPLACE and
    EXCHANGE, which never lose a file): no crash, no deadlock, and at the end
    every file exists exactly once (recognised by its content)."""
    names = ["n%d" % i for i in range(5)]
    dirs = ["d0", "d1", "d2"]
    spec = {d: {n: "lower %s/%s\n" % (d, n) for n in names[:3]} for d in dirs}
    spec["d2"]["sub"] = {"n0": "lower d2/sub/n0\n"}
    o = overlay(spec)
    mp = o.mp
    # some upper-only files too
    for d in dirs[:2]:
        with open(j(mp, d, "n4"), "w") as f:
            f.write("upper %s/n4\n" % d)
    all_dirs = dirs + ["d2/sub"]
    tags = sorted(_tags(mp))
    assert len(tags) == 12

    def storm(k):
        rng = random.Random(k)
        end = time.monotonic() + 4
        while time.monotonic() < end:
            a = j(mp, rng.choice(all_dirs), rng.choice(names))
            b = j(mp, rng.choice(all_dirs), rng.choice(names))
            try:
                renameat2(a, b, rng.choice([RENAME_NOREPLACE, RENAME_EXCHANGE]))
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EEXIST, errno.EINVAL):
                    raise
            if rng.random() < 0.1:
                os.listdir(j(mp, rng.choice(all_dirs)))

    run_threads(o, [storm] * 6, timeout=40)
    assert sorted(_tags(mp)) == tags, "files lost or duplicated by concurrent renames"
    no_debris(o.upper)
    before = snapshot(mp)
    o.remount()
    assert sorted(_tags(mp)) == tags
    assert_same_tree(snapshot(mp), before, "after remount", "before remount")


def _tags(mp):
    out = []
    for dp, ds, fs in os.walk(mp):
        for n in fs:
            with open(j(dp, n)) as f:
                out.append(f.read())
    return out


# ---------------------------------------------------------------------------
# readdir during churn
# ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_readdir_during_churn(overlay):
    """Entries present during a whole listing are listed exactly once while
    other entries are created and removed in the same directory (lower and
    upper entries, whiteouts made and replaced)."""
    stable_lower = ["stable-lower-%03d-%s" % (i, "x" * 60) for i in range(150)]
    churn_lower = ["churn-lower-%03d" % i for i in range(40)]
    spec = {"d": {n: "s\n" for n in stable_lower + churn_lower}}
    o = overlay(spec)
    d = j(o.mp, "d")
    stable_upper = ["stable-upper-%03d-%s" % (i, "y" * 60) for i in range(150)]
    for n in stable_upper:
        with open(j(d, n), "w") as f:
            f.write("u\n")
    stable = set(stable_lower + stable_upper)
    churn = set(churn_lower) | {"churn-new-%03d" % i for i in range(40)}
    stop = threading.Event()

    def churner(k):
        churn_names(d, churn, stop, k)

    listings = [0]

    def lister(k):
        end = time.monotonic() + 4
        while time.monotonic() < end:
            got = os.listdir(d)
            seen = set()
            for n in got:
                assert n in stable or n in churn, "unknown name %r listed" % n
                assert not (n in stable and n in seen), "%r listed twice" % n
                seen.add(n)
            missing = stable - seen
            assert not missing, "stable entries missing from a listing: %r" % (
                sorted(missing)[:5],)
            listings[0] += 1
        stop.set()

    run_threads(o, [churner] * 3 + [lister] * 2, timeout=40)
    assert listings[0] > 10
    stop.set()
    no_debris(o.upper)
    final = set(os.listdir(d))
    assert stable <= final
    for n in final:
        os.lstat(j(d, n))


# ---------------------------------------------------------------------------
# mkdir/rmdir of the same names
# ---------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_mkdir_rmdir_same_names(overlay):
    """Threads mkdir and rmdir the same few names (some exist in the lower,
    with children) and create/remove files inside: no unexpected errno, and
    afterwards the view is self-consistent and survives a remount."""
    spec = {"x0": {"child": "c\n"}, "x1": {}, "x2": "file\n"}
    o = overlay(spec)
    mp = o.mp
    names = ["x0", "x1", "x2", "x3", "x4"]

    def worker(k):
        rng = random.Random(100 + k)
        end = time.monotonic() + 4
        ok = (errno.EEXIST, errno.ENOENT, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)
        while time.monotonic() < end:
            n = j(mp, rng.choice(names))
            r = rng.random()
            try:
                if r < 0.35:
                    os.mkdir(n)
                elif r < 0.65:
                    os.rmdir(n)
                elif r < 0.8:
                    with open(j(n, "f%d" % k), "w") as f:
                        f.write("k")
                elif r < 0.9:
                    os.unlink(j(n, "f%d" % k))
                elif r < 0.95:
                    os.unlink(j(n, "child"))
                else:
                    os.listdir(n)
            except OSError as e:
                if e.errno not in ok:
                    raise

    run_threads(o, [worker] * 6, timeout=40)
    no_debris(o.upper)
    listed = set(os.listdir(mp))
    for n in names:
        exists = os.path.lexists(j(mp, n))
        assert exists == (n in listed), "%s: lstat says %s, readdir says %s" % (
            n, exists, n in listed)
        if os.path.isdir(j(mp, n)):
            for c in os.listdir(j(mp, n)):
                os.lstat(j(mp, n, c))
    before = snapshot(mp)
    o.remount()
    assert_same_tree(snapshot(mp), before, "after remount", "before remount")
