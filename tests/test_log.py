"""Logging of what happens while mounted: `--log FILE` (and `-o log=FILE`)
gets one timestamped line per event, -d's request traces too; a daemon
without --log logs to syslog; in the foreground lines go to stderr.

The event triggered here is a copy-up that fails for want of space (the
upper on a 1 MiB tmpfs, a 3 MB lower file opened for writing): the writer
sees only ENOSPC, the log says which file it was.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import (OVLFS, Overlay, _LIVE, _LIVE_LOCK, build, needs_root,
                      ovlfs, run, wait_for)

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} "
                  r"(EMERG|ALERT|CRIT|ERROR|WARNING|NOTICE|INFO|DEBUG) .+$")
ENOSPC_MSG = "copy-up of /d/big failed: No space left on device"


def j(*p):
    return os.path.join(*p)


@contextlib.contextmanager
def small_fs(path, size="1m"):
    """A tmpfs of SIZE at PATH, unmounted after the overlays on it."""
    os.mkdir(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "ovlfs-test",
                    path], check=True)
    overlays = []
    try:
        yield overlays
    finally:
        for o in overlays:
            o.cleanup()
        if subprocess.run(["umount", path]).returncode != 0:
            subprocess.run(["umount", "-l", path])


def make_lower(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"d": {"big": "", "small": "s\n"}})
    with open(j(lower, "d", "big"), "wb") as f:
        f.write(b"L" * 3000000)
    return lower


def fail_copy_up(mp):
    with pytest.raises(OSError) as ei:
        with open(j(mp, "d", "big"), "ab") as f:
            f.write(b"x")
    assert ei.value.errno == errno.ENOSPC


def is_transport(line):
    """Every mount says which transport runs (FUSE-over-io_uring or
    /dev/fuse, docs/performance.md): not what these tests look at."""
    return " transport: " in line or line.split(": ", 1)[-1].startswith("transport: ")


def log_lines(path):
    with open(path) as f:
        text = f.read()
    assert text.endswith("\n") or not text
    return [l for l in text.splitlines() if not is_transport(l)]


@needs_root
def test_log_file_names_failed_copy_up(work):
    lower = make_lower(work)
    log = j(work, "ovlfs.log")
    with open(log, "w") as f:
        f.write("kept\n")
    with small_fs(j(work, "small")) as overlays:
        o = Overlay(lower, upper=j(work, "small", "upper"),
                    extra_args=["--log", log])
        overlays.append(o)
        o.mount()
        fail_copy_up(o.mp)
        # the parent directory was copied up; nothing else failed
        assert os.listdir(j(work, "small", "upper")) == ["d"]
        with open(j(o.mp, "d", "small"), "a") as f:
            f.write("fits\n")
        o.umount()
    lines = log_lines(log)
    assert lines[0] == "kept"                       # appended to, not truncated
    assert len(lines) == 2, lines
    assert LINE.match(lines[1]), lines[1]
    assert lines[1].split(" ", 1)[1] == "ERROR " + ENOSPC_MSG


@needs_root
def test_log_in_the_foreground_goes_to_stderr(work):
    lower = make_lower(work)
    errf = j(work, "stderr")
    with small_fs(j(work, "small")) as overlays:
        o = Overlay(lower, upper=j(work, "small", "upper"))
        overlays.append(o)
        with _LIVE_LOCK:
            _LIVE.append(o)
        with open(errf, "wb") as ef:
            p = subprocess.Popen(o.mount_args(foreground=True),
                                 stdout=subprocess.DEVNULL, stderr=ef)
        try:
            assert wait_for(lambda: o.mounted or p.poll() is not None, 30)
            assert p.poll() is None
            fail_copy_up(o.mp)
            o.umount()
            assert p.wait(30) == 0
        finally:
            if p.poll() is None:
                o.cleanup()
                p.kill()
                p.wait()
    assert open(errf).read() == "ovlfs: " + ENOSPC_MSG + "\n"


def test_debug_traces_go_to_the_log_file(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "f\n"})
    log = j(work, "trace.log")
    o = Overlay(lower, extra_args=["-d", "--log", log])
    r = o.mount()                       # returns: stderr is not held open
    assert r.err == ""
    assert open(j(o.mp, "f")).read() == "f\n"
    o.umount()
    lines = log_lines(log)
    bad = [l for l in lines if not LINE.match(l)]
    assert not bad, bad[:5]
    assert any(" DEBUG unique: " in l and "opcode: LOOKUP" in l
               for l in lines), lines[:20]
    assert any(" DEBUG unique: " in l and "opcode: INIT" in l
               for l in lines), lines[:20]


def test_compat_log_option_with_debug(work):
    """-o log=FILE,debug in the mount(8) syntax: traces in FILE, in the
    background."""
    lower, upper, mp = j(work, "lower"), j(work, "upper"), j(work, "mnt")
    for d in (lower, upper, mp):
        os.mkdir(d)
    build(lower, {"f": "f\n"})
    log = j(work, "a,b.log")
    o = Overlay(lower, upper=upper, mp=mp)
    with _LIVE_LOCK:
        _LIVE.append(o)
    r = ovlfs("-o", "lowerdir=%s,upperdir=%s,debug,log=%s"
              % (lower, upper, log.replace(",", "\\,")), mp)
    assert r.returncode == 0, r.err
    assert o.mounted
    os.listdir(mp)
    o.umount()
    lines = log_lines(log)
    assert any("opcode: READDIR" in l for l in lines), lines[:20]
    assert all(LINE.match(l) for l in lines)


def test_log_file_unopenable(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    bad = j(work, "no", "such", "dir", "log")
    mp = j(work, "mnt")     # not WORK: a log inside the mount point is refused
    os.mkdir(mp)
    for args in (["mount", "--log", bad, lower],
                 ["run", "--log", bad, lower, "--", "true"],
                 ["-o", "lowerdir=%s,log=%s" % (lower, bad), mp]):
        r = ovlfs(*args)
        assert r.returncode == 1, (args, r.err)
        assert r.err.startswith("ovlfs: cannot open log file %s: No such file "
                                "or directory" % bad), r.err
    assert not os.path.exists(lower + ".mountpoint")
    assert not os.path.exists(lower + ".upper")


@needs_root
def test_run_log(work):
    lower = make_lower(work)
    log = j(work, "run.log")
    with small_fs(j(work, "small")):
        r = ovlfs("run", "--log", log, "--on-exit", "discard",
                  "-u", j(work, "small", "upper"), lower, "--",
                  "sh", "-c", "echo x >> d/big")
    assert r.returncode != 0
    lines = log_lines(log)
    assert len(lines) == 1 and lines[0].endswith(" ERROR " + ENOSPC_MSG), lines


# --------------------------------------------------------------------------
# syslog: a daemon with no --log. There is no syslog daemon here, so the test
# runs in a private mount namespace with a tmpfs over /dev (the devices it
# needs bound back in) and listens on /dev/log itself.
# --------------------------------------------------------------------------

NS_SYSLOG = r'''
import json, os, socket, subprocess, sys, time
ovlfs, lower, small, mp, realdev = sys.argv[1:6]
out = {"pids": [], "msgs": []}
def sh(*a):
    subprocess.run(a, check=True)
def mounted():
    return any(l.split()[1] == mp for l in open("/proc/self/mounts"))
try:
    sh("mount", "--bind", "/dev", realdev)
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "fakedev", "/dev")
    for n in ("fuse", "null", "zero", "urandom", "random"):
        open("/dev/" + n, "w").close()
        sh("mount", "--bind", os.path.join(realdev, n), "/dev/" + n)
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "ovlfs-test", small)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("/dev/log")
    s.settimeout(10)
    r = subprocess.run([ovlfs, "mount", "-u", small + "/upper", lower, mp],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    out["rc"] = r.returncode
    out["err"] = r.stderr.decode(errors="replace")
    for d in os.listdir("/proc"):
        try:
            argv = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
        except OSError:
            continue
        if argv[0] == os.fsencode(ovlfs) and os.fsencode(lower) in argv:
            out["pids"].append(int(d))
    try:
        with open(os.path.join(mp, "d", "big"), "ab") as f:
            f.write(b"x")
        out["write"] = "ok"
    except OSError as e:
        out["write"] = e.errno
    try:
        # the first message may be the transport's (see is_transport)
        for _ in range(2):
            m = s.recv(4096).decode(errors="replace")
            out["msgs"].append(m)
            if " transport: " not in m:
                break
    except socket.timeout:
        pass
    r = subprocess.run([ovlfs, "umount", mp], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    out["umount_rc"] = r.returncode
finally:
    if mounted():
        subprocess.run(["umount", "-l", mp])
    print(json.dumps(out))
'''


@needs_root
def test_daemon_logs_to_syslog(work):
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1)")
    lower = make_lower(work)
    small, mp, realdev = j(work, "small"), j(work, "mnt"), j(work, "realdev")
    for d in (small, mp, realdev):
        os.mkdir(d)
    res = None
    try:
        r = run(["unshare", "--mount", "--propagation", "private",
                 sys.executable, "-c", NS_SYSLOG, OVLFS, lower, small, mp,
                 realdev], timeout=120)
        assert r.returncode == 0, r.err
        res = json.loads(r.out.strip().splitlines()[-1])
        assert res["rc"] == 0, res["err"]
        assert res["write"] == errno.ENOSPC
        assert res["umount_rc"] == 0
        pid, = res["pids"]
        # <facility daemon (3) * 8 + err (3)>, "ovlfs[PID]: MSG"
        msgs = [m for m in res["msgs"] if not is_transport(m)]
        assert len(msgs) == 1, res
        msg = msgs[0]
        assert msg.startswith("<27>"), msg
        assert msg.endswith("ovlfs[%d]: %s" % (pid, ENOSPC_MSG)), msg
    finally:
        for p in (res or {}).get("pids", []):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
