"""CPU locality of the request loop (lib/fuse/session.c): the thread that
reads requests runs on the CPUs its caller is pinned to, so a pinned
caller's round trips stay on one CPU; callers that may run anywhere, or
callers pinned to different CPUs at once, leave it free. A thread's
affinity is read with sched_getaffinity(tid), which any process may do.
"""

import os
import subprocess
import sys

import pytest

from conftest import Overlay, build, daemon_pids

NFILES = 300

# lstat every file of the list, in a process pinned to argv[2] ("-": not pinned)
CALLER = r'''
import os, sys
mp, cpu = sys.argv[1], sys.argv[2]
if cpu != "-":
    os.sched_setaffinity(0, {int(cpu)})
for i in range(int(sys.argv[3])):
    os.lstat(os.path.join(mp, "d", "f%d" % i))
'''

# two threads pinned to argv[2] and argv[3] lstat names in strict turns
TAKING_TURNS = r'''
import os, sys, threading
mp = sys.argv[1]
turn = [threading.Semaphore(1), threading.Semaphore(0)]
def caller(k):
    os.sched_setaffinity(0, {int(sys.argv[2 + k])})
    for i in range(210 + k, 300, 2):
        turn[k].acquire()
        os.lstat(os.path.join(mp, "d", "f%d" % i))
        turn[1 - k].release()
ts = [threading.Thread(target=caller, args=(k,)) for k in (0, 1)]
for t in ts:
    t.start()
for t in ts:
    t.join()
'''


def _cpus():
    """The CPUs this test (and the daemon it starts) may use."""
    return sorted(os.sched_getaffinity(0))


pytestmark = pytest.mark.skipif(len(_cpus()) < 2, reason="needs 2 CPUs")


def _mounted(work):
    lower = os.path.join(work, "lower")
    os.mkdir(lower)
    build(lower, {"d": {"f%d" % i: "x" for i in range(NFILES)}})
    # the classic transport's loop: over io_uring (make check-uring) each
    # ring's thread is pinned to its CPU by design (tests/test_io_uring.py)
    o = Overlay(lower, upper=os.path.join(work, "upper"),
                mp=os.path.join(work, "mnt"), extra_args=["--io-uring", "off"])
    o.mount()
    pids = daemon_pids(lower)
    assert len(pids) == 1, pids
    return o, pids[0]


def _call(o, cpu, first=0, n=NFILES):
    """A caller process pinned to CPU does lstats of names not seen yet
    (each one a LOOKUP the reader serves)."""
    code = CALLER.replace("range(int(sys.argv[3]))",
                          "range(%d, %d)" % (first, first + n))
    subprocess.run([sys.executable, "-c", code, o.mp, str(cpu), "0"], check=True,
                   timeout=60)


def _affinities(pid):
    """{tid: set of CPUs} of the daemon's threads."""
    res = {}
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            res[int(t)] = os.sched_getaffinity(int(t))
        except OSError:
            pass
    return res


def test_reader_runs_on_the_cpu_of_a_pinned_caller(work):
    o, pid = _mounted(work)
    try:
        everywhere = os.sched_getaffinity(pid)
        for k, cpu in enumerate(_cpus()[:2]):
            _call(o, cpu, first=k * 100, n=100)
            pinned = [t for t, cpus in _affinities(pid).items() if cpus == {cpu}]
            assert pinned, "no daemon thread runs on CPU %d only after a caller " \
                "pinned there: %r" % (cpu, _affinities(pid))
        # the daemon itself is not pinned: only its reader moves
        assert os.sched_getaffinity(pid) == everywhere or \
            len(os.sched_getaffinity(pid)) == 1
    finally:
        o.umount()


def test_unpinned_or_mixed_callers_leave_the_reader_free(work):
    o, pid = _mounted(work)
    try:
        everywhere = set(_cpus())
        cpu = _cpus()[0]
        _call(o, cpu, first=0, n=100)
        reader = [t for t, cpus in _affinities(pid).items() if cpus == {cpu}]
        assert len(reader) == 1, _affinities(pid)
        # a caller that may run anywhere: the reader may too
        _call(o, "-", first=100, n=100)
        assert os.sched_getaffinity(reader[0]) == everywhere
        # a pinned caller after it: followed at once
        _call(o, cpu, first=200, n=10)
        assert os.sched_getaffinity(reader[0]) == {cpu}
        # two callers pinned to two CPUs taking turns: moving to each in
        # turn costs more than it saves, so the reader stays free
        subprocess.run([sys.executable, "-c", TAKING_TURNS, o.mp,
                        str(_cpus()[0]), str(_cpus()[1])], check=True, timeout=60)
        assert os.sched_getaffinity(reader[0]) == everywhere
    finally:
        o.umount()
