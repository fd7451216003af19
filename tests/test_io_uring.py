"""The FUSE-over-io_uring transport (lib/fuse/uring.c, --io-uring).

Each test sets the fuse module's enable_uring parameter for itself and
puts back what it found (ovlfs never changes it). The whole suite also
runs over the rings in CI: `make check-uring` (scripts/with-uring.sh).
"""
import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import (OVLFS, Overlay, build, daemon_pids, F, D, is_mounted,
                      ovlfs, run)

PARAM = "/sys/module/fuse/parameters/enable_uring"
IS_ROOT = os.geteuid() == 0
pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root (the module parameter, FUSE mounts)"),
    pytest.mark.skipif(not os.path.exists(PARAM),
                       reason="kernel without FUSE-over-io_uring (%s missing)" % PARAM),
]


def j(*p):
    return os.path.join(*p)


@pytest.fixture
def uring_param():
    """Set the module parameter: a function; the old value comes back."""
    with open(PARAM) as f:
        old = f.read().strip()

    def set_(on):
        with open(PARAM, "w") as f:
            f.write("Y" if on else "N")
    yield set_
    with open(PARAM, "w") as f:
        f.write(old)


@pytest.fixture
def no_env(monkeypatch):
    """These tests choose the transport themselves."""
    monkeypatch.delenv("OVLFS_IO_URING", raising=False)


def ring_cqes(pid):
    """Completions consumed so far by PID's io_uring rings (CqHead of each:
    one per request a ring delivered, plus eventfd wake-ups)."""
    total, rings = 0, 0
    fddir = "/proc/%d/fd" % pid
    for fd in os.listdir(fddir):
        try:
            if "io_uring" not in os.readlink(j(fddir, fd)):
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as f:
                for line in f:
                    if line.startswith("CqHead:"):
                        total += int(line.split()[1])
                        rings += 1
        except OSError:
            continue
    return rings, total


def log_text(path):
    with open(path) as f:
        return f.read()


def make_lower(work, nfiles=20):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"d": D({"f%03d" % i: F(b"data %d\n" % i) for i in range(nfiles)}),
                  "top": F(b"top\n")})
    return lower


def test_on_refused_when_the_module_says_no(work, uring_param, no_env):
    """--io-uring on without enable_uring: no mount, a message naming the
    parameter, exit 1, and nothing created or changed."""
    uring_param(False)
    lower = make_lower(work)
    before = sorted(os.listdir(work))
    r = ovlfs("mount", "--io-uring", "on", lower)
    assert r.returncode == 1, (r.returncode, r.err)
    assert "enable_uring" in r.err and lower + ".mountpoint" in r.err, r.err
    assert not is_mounted(lower + ".mountpoint")
    assert sorted(os.listdir(work)) == before, "the refused mount left files behind"


def test_auto_falls_back_and_says_so(work, uring_param, no_env):
    uring_param(False)
    lower = make_lower(work)
    log = j(work, "log")
    o = Overlay(lower, extra_args=["--io-uring", "auto", "--log", log])
    o.mount()
    try:
        assert open(j(o.mp, "top")).read() == "top\n"
        assert "transport: /dev/fuse" in log_text(log)
        pid = daemon_pids(lower)[0]
        assert ring_cqes(pid) == (0, 0), "rings made although the kernel said no"
    finally:
        o.umount()


def test_on_serves_requests_through_the_rings(work, uring_param, no_env):
    """With the parameter on, --io-uring on mounts over the rings: one queue
    per possible CPU, and requests (fresh lookups here) arrive through
    them, not through /dev/fuse."""
    uring_param(True)
    lower = make_lower(work, nfiles=200)
    log = j(work, "log")
    o = Overlay(lower, extra_args=["--io-uring", "on", "--log", log])
    o.mount()
    try:
        assert "transport: FUSE-over-io_uring" in log_text(log)
        pid = daemon_pids(lower)[0]
        rings, before = ring_cqes(pid)
        with open("/sys/devices/system/cpu/possible") as f:
            spec = f.read().strip()
        ncpu = max(int(part.split("-")[-1]) for part in spec.split(",")) + 1
        assert rings == ncpu, "%d rings for %d possible CPUs" % (rings, ncpu)
        for i in range(200):
            os.stat(j(o.mp, "d", "f%03d" % i))
        _, after = ring_cqes(pid)
        assert after - before >= 200, "only %d requests came through the rings" % (after - before)
        # the parameter going off later does not take the rings away
        uring_param(False)
        assert sorted(os.listdir(j(o.mp, "d")))[:2] == ["f000", "f001"]
        with open(j(o.mp, "new"), "w") as f:
            f.write("after")
        assert open(j(o.upper, "new")).read() == "after"
    finally:
        o.umount()


def test_data_through_the_rings(work, uring_param, no_env):
    """Without passthrough every read and write is a ring request with its
    payload (up to 1 MiB); big xattrs, a big directory and odd sizes too.
    Pinned to each CPU in turn, so every queue serves."""
    uring_param(True)
    lower = j(work, "lower")
    os.mkdir(lower)
    blob = os.urandom(3 * (1 << 20) + 12345)
    build(lower, {"big": F(blob), "many": D({"n%04d" % i: F(b"") for i in range(3000)})})
    o = Overlay(lower, extra_args=["--io-uring", "on", "--no-passthrough"])
    o.mount()
    try:
        for cpu in sorted(os.sched_getaffinity(0)):
            r = run(["taskset", "-c", str(cpu), "sh", "-c",
                     "cat %s/big | sha256sum; dd if=/dev/urandom of=%s/w%d bs=1M count=5 "
                     "status=none; sha256sum %s/w%d; ls %s/many | wc -l"
                     % (o.mp, o.mp, cpu, o.mp, cpu, o.mp)], check=True)
            lines = r.out.split("\n")
            assert lines[0].split()[0] == hashlib.sha256(blob).hexdigest()
            want = hashlib.sha256(open(j(o.upper, "w%d" % cpu), "rb").read()).hexdigest()
            assert lines[1].split()[0] == want
            assert lines[2].strip() == "3000"
        value = os.urandom(60000)
        os.setxattr(j(o.mp, "big"), "user.big", value)
        assert os.getxattr(j(o.mp, "big"), "user.big") == value
        with open(j(o.mp, "big"), "r+b") as f:
            f.seek(1000)
            f.write(b"x" * 7)
            f.seek(0)
            got = f.read()
        assert got == blob[:1000] + b"x" * 7 + blob[1007:]
    finally:
        o.umount()


def test_both_cpus_at_once(work, uring_param, no_env):
    """Writers and readers pinned on different CPUs at the same time, each
    queue busy with its own callers: nothing mixed up."""
    uring_param(True)
    lower = make_lower(work)
    o = Overlay(lower, extra_args=["--io-uring", "on", "--no-passthrough"])
    o.mount()
    try:
        cpus = sorted(os.sched_getaffinity(0))
        procs = []
        for k, cpu in enumerate(cpus * 2):
            script = ("for i in $(seq 1 150); do echo %d-$i > %s/p%d-$i; "
                      "cat %s/p%d-$i >/dev/null; stat %s/d/f001 >/dev/null; done"
                      % (k, o.mp, k, o.mp, k, o.mp))
            procs.append(subprocess.Popen(["taskset", "-c", str(cpu), "sh", "-c", script]))
        for p in procs:
            assert p.wait(timeout=120) == 0
        for k in range(len(procs)):
            for i in range(1, 151):
                assert open(j(o.mp, "p%d-%d" % (k, i))).read() == "%d-%d\n" % (k, i)
    finally:
        o.umount()


def test_kill9_over_the_rings(work, uring_param, no_env):
    """The daemon killed with rings in use: the mount dies (soon: the kernel
    tears dead rings down in the background), nothing hangs, and the upper
    mounts again with what was written."""
    uring_param(True)
    lower = make_lower(work)
    o = Overlay(lower, extra_args=["--io-uring", "on"])
    o.mount()
    with open(j(o.mp, "kept"), "w") as f:
        f.write("kept")
    pid = daemon_pids(lower)[0]
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            try:
                os.stat(j(o.mp, "d", "f005"))
                os.listdir(j(o.mp, "d"))
            except OSError:
                return
    t = threading.Thread(target=busy)
    t.start()
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    dead = False
    while time.monotonic() < deadline and not dead:
        try:
            os.listdir(o.mp)     # OPENDIR: a request, never the cache
            time.sleep(0.05)
        except OSError:
            dead = True
    stop.set()
    t.join(30)
    assert not t.is_alive(), "a caller hangs on the dead mount"
    assert dead, "the mount still answers after its daemon was killed"
    r = ovlfs("umount", o.mp, timeout=30)
    assert r.returncode == 0, r.err
    o.mount()
    try:
        assert open(j(o.mp, "kept")).read() == "kept"
    finally:
        o.umount()


def test_bad_values(work, uring_param, no_env, monkeypatch):
    lower = make_lower(work)
    r = ovlfs("mount", "--io-uring", "sometimes", lower)
    assert r.returncode == 2 and "--io-uring 'sometimes'" in r.err, (r.returncode, r.err)
    monkeypatch.setenv("OVLFS_IO_URING", "maybe")
    r = ovlfs("mount", lower)
    assert r.returncode == 1 and "OVLFS_IO_URING 'maybe'" in r.err, (r.returncode, r.err)
    assert not is_mounted(lower + ".mountpoint")
    # the option wins over the environment
    uring_param(False)
    o = Overlay(lower, extra_args=["--io-uring", "off"])
    o.mount()
    o.umount()


def test_compat_syntax_and_environment(work, uring_param, no_env, monkeypatch):
    """-o io_uring=on in the mount(8) syntax, and OVLFS_IO_URING=on for a
    command line that does not say (a container engine's mount_program)."""
    uring_param(True)
    lower = make_lower(work)
    upper, wd, mp = j(work, "u"), j(work, "w"), j(work, "mp")
    for p in (upper, wd, mp):
        os.mkdir(p)
    log = j(work, "log")
    r = run([OVLFS, "-o", "lowerdir=%s,upperdir=%s,workdir=%s,io_uring=on,log=%s"
             % (lower, upper, wd, log), mp])
    assert r.returncode == 0, r.err
    try:
        assert open(j(mp, "top")).read() == "top\n"
        assert "transport: FUSE-over-io_uring" in log_text(log)
    finally:
        assert ovlfs("umount", mp).returncode == 0
    r = run([OVLFS, "-o", "lowerdir=%s,upperdir=%s,workdir=%s,io_uring=often" % (lower, upper, wd), mp])
    assert r.returncode == 2 and "io_uring 'often'" in r.err, r.err
    monkeypatch.setenv("OVLFS_IO_URING", "on")
    uring_param(False)
    r = ovlfs("mount", lower)
    assert r.returncode == 1 and "enable_uring" in r.err, r.err
    assert not is_mounted(lower + ".mountpoint")
