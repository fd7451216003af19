"""What the kernel keeps between requests (issue 14, the rows behind
fuse-overlayfs): directory listings in its readdir cache, and what that asks
of readdir offsets when a directory changes under a reader.

Requests are counted in the daemon's -d trace (--log FILE); listings are
read with getdents64 and a small buffer, so a reader can be stopped in the
middle of one.
"""

import ctypes
import os
import struct
import time

import pytest

from conftest import Overlay, build, churn_names

SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61, "riscv64": 61}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)


def j(*p):
    return os.path.join(*p)


def getdents(fd, size):
    """One getdents64 call on FD with a SIZE-byte buffer: [(name, d_off)]."""
    buf = ctypes.create_string_buffer(size)
    n = _libc.syscall(SYS_GETDENTS64, fd, buf, size)
    if n < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    out, pos, raw = [], 0, buf.raw[:n]
    while pos < n:
        _, off, reclen = struct.unpack_from("<QqH", raw, pos)
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0].decode()
        out.append((name, off))
        pos += reclen
    return out


def names(entries):
    return [n for n, _ in entries if n not in (".", "..")]


class Trace:
    """An ovlfs mount with -d traces in a log file; counts opcodes."""

    def __init__(self, work, spec):
        self.lower = j(work, "lower")
        os.mkdir(self.lower)
        build(self.lower, spec)
        self.log = j(work, "trace.log")
        self.o = Overlay(self.lower, upper=j(work, "upper"), mp=j(work, "mnt"),
                         extra_args=["-d", "--log", self.log])
        self.o.mount()
        self.mp = self.o.mp

    def count(self, *ops):
        """How many requests of the opcodes OPS the daemon has logged."""
        # the log is written as requests arrive; let the last ones land
        time.sleep(0.2)
        with open(self.log, errors="replace") as f:
            text = f.read()
        return sum(text.count("opcode: %s (" % op) for op in ops)


@pytest.fixture
def traced_mount(work):
    made = []

    def make(spec):
        t = Trace(work, spec)
        made.append(t)
        return t
    yield make
    for t in made:
        t.o.umount()


SPEC = {"d": {"f%03d-%s" % (i, "x" * 40): "%d\n" % i for i in range(60)}}


def test_warm_listing_is_served_by_the_kernel(traced_mount):
    """A second listing of a directory nothing changed in sends no READDIR
    (FOPEN_CACHE_DIR + keep_cache, as fuse-overlayfs); a change through
    the mount makes the next listing ask again, and it shows the change."""
    t = traced_mount(SPEC)
    d = j(t.mp, "d")
    first = sorted(os.listdir(d))
    assert len(first) == 60
    n0 = t.count("READDIR", "READDIRPLUS")
    assert n0 > 0
    for _ in range(3):
        assert sorted(os.listdir(d)) == first
    n1 = t.count("READDIR", "READDIRPLUS")
    assert n1 == n0, "%d READDIR(PLUS) for 3 listings of an unchanged directory" % (
        n1 - n0)
    # changes through the mount are seen at the next listing
    with open(j(d, "new"), "w") as f:
        f.write("n\n")
    assert sorted(os.listdir(d)) == sorted(first + ["new"])
    os.unlink(j(d, first[0]))
    assert sorted(os.listdir(d)) == sorted(first[1:] + ["new"])
    os.rename(j(d, "new"), j(t.mp, "moved"))
    assert sorted(os.listdir(d)) == first[1:]
    assert "moved" in os.listdir(t.mp)
    os.mkdir(j(d, "sub"))
    assert "sub" in os.listdir(d)
    os.rmdir(j(d, "sub"))
    assert "sub" not in os.listdir(d)


@pytest.mark.skipif(SYS_GETDENTS64 is None, reason="getdents64 number unknown here")
@pytest.mark.parametrize("change", ["create", "unlink", "create-and-unlink"])
def test_reader_in_the_middle_of_a_changed_listing(traced_mount, change):
    """A reader stopped in the middle of a listing, an entry created or
    removed, the listing read again from the start by someone else (the
    kernel drops its cached listing and fills it from a new snapshot), and
    the reader goes on: it sees no name twice and misses none that was
    there all along. With offsets that are positions in a snapshot, the
    reader's place in the new listing would be off by the change."""
    t = traced_mount(SPEC)
    d = j(t.mp, "d")
    # some upper entries too (they list first)
    for i in range(5):
        with open(j(d, "u%d" % i), "w") as f:
            f.write("u\n")
    before = set(os.listdir(d))
    os.listdir(d)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = getdents(fd, 600)
        seen = names(got)
        assert 3 <= len(seen) < 30, seen
        gone = set()
        if change in ("create", "create-and-unlink"):
            with open(j(d, "a-new-one"), "w") as f:
                f.write("n\n")
        if change in ("unlink", "create-and-unlink"):
            # one the reader has seen (a lower one: a whiteout) and one
            # it has not
            victims = [seen[-1], sorted(before - set(seen))[-1]]
            for v in victims:
                os.unlink(j(d, v))
            gone = set(victims)
        now = set(os.listdir(d))        # refills the kernel's listing
        while True:
            more = getdents(fd, 600)
            if not more:
                break
            seen += names(more)
    finally:
        os.close(fd)
    dups = sorted(n for n in set(seen) if seen.count(n) > 1)
    assert not dups, "listed twice by one reader: %r" % dups
    missing = sorted((before - gone) - set(seen))
    assert not missing, "never listed to the reader, though there all along: %r" % missing
    assert set(seen) <= before | now
    assert now == (before - gone) | ({"a-new-one"} if "create" in change else set())


def names_from(d, off):
    """The names a new open of D lists from offset OFF (seekdir) on."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.lseek(fd, off, os.SEEK_SET)
        rest = []
        while True:
            more = getdents(fd, 4096)
            if not more:
                return rest
            rest += names(more)
    finally:
        os.close(fd)


@pytest.mark.skipif(SYS_GETDENTS64 is None, reason="getdents64 number unknown here")
def test_offsets_stay_valid_across_changes(traced_mount):
    """telldir/seekdir: an offset handed out before a change still resumes
    after the same entry on another open of the directory."""
    t = traced_mount(SPEC)
    d = j(t.mp, "d")
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = getdents(fd, 600)
    finally:
        os.close(fd)
    name, off = got[-1]
    rest_before = names_from(d, off)
    # an entry before the reader's place goes
    os.unlink(j(d, names(got)[0]))
    rest = names_from(d, off)
    assert name not in rest
    assert rest == rest_before


@pytest.mark.skipif(SYS_GETDENTS64 is None, reason="getdents64 number unknown here")
@pytest.mark.timeout(60)
def test_small_buffer_listings_during_churn(traced_mount):
    """Listers reading a few entries per getdents64 call while others create
    and unlink names in the same directory: the kernel's cached listing is
    dropped and refilled under them over and over. Every name that is there
    all along is listed exactly once to every lister."""
    import threading
    t = traced_mount(SPEC)
    d = j(t.mp, "d")
    for i in range(20):
        with open(j(d, "u%02d" % i), "w") as f:
            f.write("u\n")
    stable = set(os.listdir(d))
    churn = ["c%02d" % i for i in range(20)]
    stop = threading.Event()
    errors = []

    def churner(k):
        churn_names(d, churn, stop, k)

    def lister(k):
        end = time.monotonic() + 3
        try:
            while time.monotonic() < end:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    seen = []
                    while True:
                        more = getdents(fd, 400 + 100 * k)
                        if not more:
                            break
                        seen += names(more)
                finally:
                    os.close(fd)
                dups = sorted(n for n in stable if seen.count(n) > 1)
                missing = sorted(stable - set(seen))
                unknown = sorted(set(seen) - stable - set(churn))
                if dups or missing or unknown:
                    errors.append("twice %r, missing %r, unknown %r" % (
                        dups[:3], missing[:3], unknown[:3]))
                    return
        except Exception as e:          # report, never hang
            errors.append(repr(e))

    ts = [threading.Thread(target=churner, args=(k,), daemon=True) for k in range(2)]
    ls = [threading.Thread(target=lister, args=(k,), daemon=True) for k in range(2)]
    for x in ts + ls:
        x.start()
    for x in ls:
        x.join(30)
    stop.set()
    for x in ts:
        x.join(30)
    assert not any(x.is_alive() for x in ts + ls), "threads still running"
    assert not errors, errors[:3]
