"""Fixtures and helpers for the ovlfs integration suite.

Every test works in its own directory under a tmpfs mounted once per session
(fast to create/delete many files, supports user.* and trusted.* xattrs).
Every ovlfs mount made through `Overlay` is unmounted after the test, even on
failure (``ovlfs umount``, then ``umount -l`` of that exact mount point).  A
watchdog aborts the FUSE connection of the test's own mounts if a test hangs,
so a deadlocked daemon turns into a failed test instead of a hung suite.
"""

import ctypes
import ctypes.util
import errno
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from fuzz_ops import diff_trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("OVLFS_BUILD", os.path.join(REPO, "build"))
OVLFS = os.path.join(BUILD, "ovlfs")
QUICKSTART = os.path.join(BUILD, "quickstart")

TEST_TIMEOUT = int(os.environ.get("OVLFS_TEST_TIMEOUT", "150"))

PRIVATE_XATTRS = ("trusted.ovlfs.", "user.ovlfs.", "trusted.overlay.", "user.overlay.")
WH_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")


# --------------------------------------------------------------------------
# mount table
# --------------------------------------------------------------------------

def _unescape(s):
    out = bytearray()
    i = 0
    b = s.encode("latin-1") if isinstance(s, str) else s
    while i < len(b):
        if b[i:i + 1] == b"\\" and b[i + 1:i + 4].isdigit() and len(b[i + 1:i + 4]) == 3:
            out.append(int(b[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(b[i])
            i += 1
    return bytes(out)


def mountinfo():
    """List of dicts: mp (bytes), fstype, source, majmin, opts, super_opts."""
    res = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            parts = line.rstrip(b"\n").split(b" ")
            sep = parts.index(b"-")
            res.append({
                "majmin": parts[2].decode(),
                "mp": _unescape(parts[4]),
                "opts": parts[5].decode(),
                "fstype": parts[sep + 1].decode(),
                "source": _unescape(parts[sep + 2]),
                "super_opts": parts[sep + 3].decode() if len(parts) > sep + 3 else "",
            })
    return res


def mount_entry(path):
    """The (last) mount table entry whose mount point is exactly PATH."""
    p = os.fsencode(os.path.abspath(path))
    ent = None
    for m in mountinfo():
        if m["mp"] == p:
            ent = m
    return ent


def is_mounted(path):
    return mount_entry(path) is not None


# Self-test hook: OVLFS_TEST_FSTYPES=fuse,overlay lets the suite run against a
# stand-in tool; normally only FUSE mounts count as ovlfs mounts.
FSTYPES = tuple(os.environ.get("OVLFS_TEST_FSTYPES", "fuse").split(","))


def is_fuse_mounted(path):
    e = mount_entry(path)
    return e is not None and e["fstype"].startswith(FSTYPES)


def mounts_under(path):
    p = os.fsencode(os.path.abspath(path))
    return [m["mp"] for m in mountinfo() if m["mp"] == p or m["mp"].startswith(p + b"/")]


def _processes():
    """(pid, argv as bytes) of every other process that can be read."""
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                yield int(d), f.read().split(b"\0")
        except OSError:
            continue


def pids_naming(path, progs=(b"ovlfs",)):
    """Pids of processes running one of PROGS (basenames) with an argument
    that contains PATH: ours, when PATH is a directory of our own."""
    want = os.fsencode(path)
    return [pid for pid, argv in _processes()
            if argv and os.path.basename(argv[0]) in progs and
            any(want in a for a in argv[1:])]


def traced(pid, workload, mp, calls):
    """Run python WORKLOAD on MP with strace -e trace=CALLS on PID (the
    daemon): strace's lines."""
    out = mp + ".strace"
    st = subprocess.Popen(["strace", "-f", "-e", "trace=" + calls, "-o", out,
                           "-p", str(pid)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # strace reports each attached thread on stderr; then it is tracing
        line = st.stderr.readline()
        assert b"attached" in line, line
        time.sleep(0.3)
        r = subprocess.run(["python3", "-c", workload, mp], timeout=60)
        assert r.returncode == 0
        time.sleep(0.3)
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(timeout=30)
    with open(out) as f:
        lines = f.read().splitlines()
    os.unlink(out)
    return lines


def daemon_pids(lower):
    """Pids of `ovlfs mount ... LOWER ...` processes (ours: LOWER is unique)."""
    want = os.fsencode(os.path.abspath(lower))
    return [pid for pid, argv in _processes()
            if len(argv) > 2 and os.path.basename(argv[0]) == b"ovlfs" and
            argv[1] == b"mount" and want in argv]


# --------------------------------------------------------------------------
# running the tool
# --------------------------------------------------------------------------

def run(args, check=False, timeout=60, **kw):
    args = [os.fspath(a) for a in args]
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, **kw)
    r.out = r.stdout.decode(errors="replace")
    r.err = r.stderr.decode(errors="replace")
    if check and r.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (
            " ".join(map(str, args)), r.returncode, r.out, r.err))
    return r


def traced_env():
    """The environment for a command run under strace: LeakSanitizer
    cannot work under ptrace (in a sanitizer build it fails the run at its
    exit), so leak checking is off there; the rest of ASan stays on."""
    env = dict(os.environ)
    opts = env.get("ASAN_OPTIONS", "")
    env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "detect_leaks=0"
    return env


def strace_steps(cmd, calls, env=None, fails=False):
    """The calls among CALLS (strace's trace= list) that CMD makes, run to
    its end once, in order: each as (name, k), its kth call of that name.
    strace counts an injection's when= per syscall, so `inject=A,B:when=N`
    stops at whichever of A and B first reaches its Nth call, and a crash
    test stepping N over a set skips most of the steps (one found by CI
    only, at random: a plain commit killed between the unlinks of its work
    directory). Killing at step (name, k) is `inject=name:when=k`. With
    FAILS, CMD must fail (a sweep of a rollback)."""
    fd, log = tempfile.mkstemp(prefix="ovlfs-strace-")
    os.close(fd)
    try:
        res = run(["strace", "-f", "-qq", "-o", log, "-e", "trace=" + calls]
                  + cmd, timeout=120, env=env or traced_env())
        assert (res.returncode != 0) == fails, res.err
        steps, seen, pids = [], {}, set()
        wanted = set(calls.split(","))
        with open(log) as f:
            for line in f:
                m = re.match(r"(\d+)\s+([a-z0-9_]+)\(", line)
                if not m or m.group(2) not in wanted:
                    continue        # "<... resumed>", exits, signals,
                                    # calls strace has no name for
                pids.add(m.group(1))
                seen[m.group(2)] = seen.get(m.group(2), 0) + 1
                steps.append((m.group(2), seen[m.group(2)]))
    finally:
        os.unlink(log)
    # strace counts per process: one process, or the steps would mislead.
    assert len(pids) <= 1, "%s ran %d processes" % (cmd[0], len(pids))
    return steps


# Kill-before-every-step sweeps test the commands' own logic, which is the
# same on every transport and build: every step in `make check`; in the
# io_uring and sanitizer passes every 25th (a killed run reports no memory
# error, and only the mounts that set a sweep up differ), which keeps each
# command's code run whole there and CI's time in bounds.
STEP_STRIDE = 25 if (os.environ.get("ASAN_OPTIONS") or
                     os.environ.get("OVLFS_IO_URING") == "on") else 1


def sweep_steps(n_steps, stride=1, offset=0):
    """The step numbers a sweep over N_STEPS steps tries: every
    STRIDE * STEP_STRIDE-th from OFFSET (the first and the last always),
    then N_STEPS: the run that is not killed. (Two sweeps of one command,
    stride 2, offsets 0 and 1: together every step.)"""
    stride *= STEP_STRIDE
    ns = sorted({0} | set(range(offset % stride, n_steps, stride)))
    if n_steps and ns[-1] != n_steps - 1:
        ns.append(n_steps - 1)
    return [n for n in ns if n < n_steps] + [n_steps]


def killed_at_step(cmd, step, env=None):
    """Run CMD, SIGKILLed just before STEP (see strace_steps); True if it
    was, False if it ran to its end (successfully: else the test fails)."""
    name, k = step
    res = run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=" + name,
               "-e", "inject=%s:signal=KILL:when=%d" % (name, k)] + cmd,
              timeout=60, env=env or traced_env())
    if res.returncode == 0:
        return False
    assert res.returncode in (137, -9), res.err
    return True


def ovlfs(*args, **kw):
    return run([OVLFS] + list(args), **kw)


_LIVE = []          # Overlays mounted and not yet known to be unmounted
_LIVE_LOCK = threading.Lock()
_FUSECTL = "/sys/fs/fuse/connections"


def _abort_connection(majmin):
    """Abort one FUSE connection (ours) so hung requests fail with ENOTCONN."""
    try:
        minor = int(majmin.split(":")[1])
        with open(os.path.join(_FUSECTL, str(minor), "abort"), "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


class Overlay:
    """One ovlfs mount driven through the CLI."""

    def __init__(self, lower, upper=None, mp=None, inode_mode=None, opts=None,
                 extra_args=()):
        self.lower = os.fsdecode(lower)
        base = self.lower.rstrip("/") or "/"
        self.given_upper = upper is not None
        self.given_mp = mp is not None
        self.upper = os.fsdecode(upper) if upper is not None else base + ".upper"
        self.mp = os.fsdecode(mp) if mp is not None else base + ".mountpoint"
        self.inode_mode = inode_mode
        self.opts = opts
        self.extra_args = list(extra_args)
        self.majmin = None
        self.last = None

    def __repr__(self):
        return "Overlay(%r -> %r, upper=%r)" % (self.lower, self.mp, self.upper)

    def mount_args(self, foreground=False):
        args = [OVLFS, "mount"]
        if self.given_upper:
            args += ["--upper", self.upper]
        if self.inode_mode:
            args += ["--inode-mode", self.inode_mode]
        if self.opts:
            args += ["-o", self.opts]
        if foreground:
            args += ["-f"]
        args += self.extra_args
        args.append(self.lower)
        if self.given_mp:
            args.append(self.mp)
        return args

    def mount(self, check=True, **kw):
        with _LIVE_LOCK:
            _LIVE.append(self)
        r = run(self.mount_args(), timeout=60, **kw)
        self.last = r
        ent = mount_entry(self.mp)
        if ent is not None:
            self.majmin = ent["majmin"]
        if check:
            assert r.returncode == 0, "ovlfs mount failed (%d): %s%s" % (
                r.returncode, r.out, r.err)
            assert ent is not None and ent["fstype"].startswith(FSTYPES), \
                "ovlfs mount returned 0 but %s is not a FUSE mount point" % self.mp
        return r

    @property
    def mounted(self):
        return is_fuse_mounted(self.mp)

    def umount(self, check=True):
        r = ovlfs("umount", self.mp, timeout=60)
        self.last = r
        if check:
            assert r.returncode == 0, "ovlfs umount failed (%d): %s%s" % (
                r.returncode, r.out, r.err)
            assert not self.mounted, "%s still mounted after ovlfs umount" % self.mp
        return r

    def remount(self):
        self.umount()
        self.mount()

    def abort(self):
        if self.majmin and self.mounted:
            return _abort_connection(self.majmin)
        return False

    def cleanup(self):
        """Unmount no matter what; returns a list of problems seen."""
        problems = []
        for _ in range(3):
            if not self.mounted:
                break
            try:
                r = ovlfs("umount", self.mp, timeout=20)
                if r.returncode != 0:
                    problems.append("ovlfs umount %s: rc=%d %s" % (
                        self.mp, r.returncode, r.err.strip()))
            except subprocess.TimeoutExpired:
                problems.append("ovlfs umount %s timed out" % self.mp)
                self.abort()
            if self.mounted:
                run(["umount", "-l", self.mp], timeout=20)
        with _LIVE_LOCK:
            if self in _LIVE:
                _LIVE.remove(self)
        return problems


# --------------------------------------------------------------------------
# session tmpfs and per-test work dirs
# --------------------------------------------------------------------------

def _mount_tmpfs(path, size):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size,
                    "ovlfs-test", path], check=True)


@pytest.fixture(scope="session")
def session_root():
    if not os.path.exists(OVLFS):
        pytest.fail("ovlfs binary not found at %s (build it first: "
                    "meson setup build && ninja -C build)" % OVLFS)
    root = tempfile.mkdtemp(prefix="ovlfs-tests-", dir="/tmp")
    os.chmod(root, 0o755)           # other users (allow_other tests) may enter
    mounted = []
    try:
        main = os.path.join(root, "main")
        alt = os.path.join(root, "alt")
        os.mkdir(main)
        os.mkdir(alt)
        if IS_ROOT:
            _mount_tmpfs(main, "4g")
            mounted.append(main)
            _mount_tmpfs(alt, "1g")
            mounted.append(alt)
            # left mounted afterwards (as systemd would have it): another
            # test session running at the same time may be using it
            with open("/proc/self/mounts") as f:
                have = any(l.split()[1] == _FUSECTL for l in f)
            if os.path.isdir(_FUSECTL) and not have:
                subprocess.run(["mount", "-t", "fusectl", "fusectl", _FUSECTL])
        yield {"root": root, "main": main, "alt": alt}
    finally:
        with _LIVE_LOCK:
            live = list(_LIVE)
        for o in live:
            o.cleanup()
        for m in reversed(mounted):
            if mounts_under(m) and mounts_under(m) != [os.fsencode(m)]:
                continue            # something of ours is stuck; leave it
            subprocess.run(["umount", m])
        if not mounts_under(root):
            shutil.rmtree(root, ignore_errors=True)


def _safe_name(nodeid):
    name = nodeid.split("::", 1)[-1]
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep[:80]


@pytest.fixture
def work(request, session_root):
    """A fresh directory on the session tmpfs for this test."""
    d = tempfile.mkdtemp(prefix=_safe_name(request.node.nodeid) + "-",
                         dir=session_root["main"])
    os.chmod(d, 0o755)
    yield d
    if not mounts_under(d):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def alt_work(request, session_root):
    """A fresh directory on a second, different tmpfs."""
    d = tempfile.mkdtemp(prefix=_safe_name(request.node.nodeid) + "-",
                         dir=session_root["alt"])
    os.chmod(d, 0o755)
    yield d
    if not mounts_under(d):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _unmount_and_watchdog(request):
    """Unmount everything the test mounted; abort its FUSE mounts if it hangs."""
    with _LIVE_LOCK:
        before = set(map(id, _LIVE))
    fired = []

    def watchdog():
        fired.append(True)
        sys.stderr.write("\n*** %s exceeded %ds: aborting its FUSE mounts\n"
                         % (request.node.nodeid, TEST_TIMEOUT))
        with _LIVE_LOCK:
            mine = [o for o in _LIVE if id(o) not in before]
        for o in mine:
            o.abort()

    marker = request.node.get_closest_marker("timeout")
    limit = marker.args[0] if marker else TEST_TIMEOUT
    t = threading.Timer(limit, watchdog)
    t.daemon = True
    t.start()
    yield
    t.cancel()
    with _LIVE_LOCK:
        mine = [o for o in _LIVE if id(o) not in before]
    problems = []
    for o in mine:
        problems += o.cleanup()
    if fired:
        pytest.fail("test exceeded %ds; its FUSE connections were aborted" % limit,
                    pytrace=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): watchdog limit for a test")


# --------------------------------------------------------------------------
# tree builder
# --------------------------------------------------------------------------

class Node:
    def __init__(self, mode=None, uid=None, gid=None, mtime=None, atime=None,
                 xattrs=None):
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.atime = atime
        self.xattrs = xattrs or {}

    def meta(self, path, is_link=False):
        if self.uid is not None or self.gid is not None:
            os.chown(path, -1 if self.uid is None else self.uid,
                     -1 if self.gid is None else self.gid,
                     follow_symlinks=False)
        if self.mode is not None and not is_link:
            os.chmod(path, self.mode)
        for k, v in self.xattrs.items():
            os.setxattr(path, k, os.fsencode(v), follow_symlinks=False)
        if self.mtime is not None or self.atime is not None:
            mt = self.mtime if self.mtime is not None else self.atime
            at = self.atime if self.atime is not None else mt
            os.utime(path, ns=(int(at * 1e9), int(mt * 1e9)), follow_symlinks=False)


class F(Node):
    """Regular file.  DATA bytes/str; SIZE truncates (sparse) after writing
    DATA; CHUNKS {offset: bytes} are written at offsets (sparse file)."""

    def __init__(self, data=b"", size=None, chunks=None, **kw):
        super().__init__(**kw)
        self.data = os.fsencode(data) if isinstance(data, str) else data
        self.size = size
        self.chunks = chunks or {}

    def make(self, path):
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            if self.data:
                os.write(fd, self.data)
            for off, b in sorted(self.chunks.items()):
                os.pwrite(fd, b, off)
            if self.size is not None:
                os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        self.meta(path)


class D(Node):
    def __init__(self, children=None, **kw):
        super().__init__(**kw)
        self.children = children or {}

    def make(self, path):
        os.mkdir(path)
        build(path, self.children)
        self.meta(path)


class L(Node):
    def __init__(self, target, **kw):
        super().__init__(**kw)
        self.target = target

    def make(self, path):
        os.symlink(self.target, path)
        self.meta(path, is_link=True)


class Fifo(Node):
    def make(self, path):
        os.mkfifo(path, 0o644)
        self.meta(path)


class Dev(Node):
    def __init__(self, major=1, minor=3, kind="c", **kw):
        super().__init__(**kw)
        self.major, self.minor, self.kind = major, minor, kind

    def make(self, path):
        t = stat.S_IFCHR if self.kind == "c" else stat.S_IFBLK
        os.mknod(path, t | 0o644, os.makedev(self.major, self.minor))
        self.meta(path)


class Sock(Node):
    """A unix socket (bound, then closed)."""

    def make(self, path):
        import socket
        d, n = os.path.split(path)
        old = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        s = socket.socket(socket.AF_UNIX)
        try:
            os.chdir(d)                  # keep the bound name short
            s.bind(n)
        finally:
            s.close()
            os.fchdir(old)
            os.close(old)
        self.meta(path)


class HL:
    """Hard link to a path (relative to the tree root) created earlier."""

    def __init__(self, rel):
        self.rel = rel


def churn_names(d, names, stop, seed):
    """Create and unlink NAMES in directory D at random (seeded by SEED)
    until the event STOP is set: a directory changing under its listers."""
    import random
    rng = random.Random(seed)
    names = sorted(names)
    while not stop.is_set():
        n = rng.choice(names)
        try:
            if rng.random() < 0.5:
                os.unlink(os.path.join(d, n))
            else:
                with open(os.path.join(d, n), "x") as f:
                    f.write("c\n")
        except (FileNotFoundError, FileExistsError):
            pass


def build(root, spec, _top=None):
    """Create the tree SPEC under directory ROOT (which must exist).

    Values: bytes/str -> regular file with that content; dict -> directory;
    F/D/L/Fifo/Dev/HL objects for everything else.  Keys are str or bytes.
    Directory metadata is applied after its children are made.
    """
    root = os.fsencode(root)
    top = root if _top is None else _top
    for name, val in spec.items():
        path = os.path.join(root, os.fsencode(name))
        if isinstance(val, (bytes, str)):
            F(val).make(path)
        elif isinstance(val, dict):
            os.mkdir(path)
            build(path, val, top)
        elif isinstance(val, HL):
            os.link(os.path.join(top, os.fsencode(val.rel)), path)
        elif isinstance(val, D):
            os.mkdir(path)
            build(path, val.children, top)
            val.meta(path)
        else:
            val.make(path)


def cp_a(src, dst):
    subprocess.run(["cp", "-a", "--", os.fspath(src), os.fspath(dst)], check=True)


# --------------------------------------------------------------------------
# snapshots
# --------------------------------------------------------------------------

def is_private_xattr(name):
    return name.startswith(PRIVATE_XATTRS)


def ftype(mode):
    for t, n in ((stat.S_ISREG, "reg"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "lnk"),
                 (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
                 (stat.S_ISSOCK, "sock")):
        if t(mode):
            return n
    return "?"


def file_hash(path):
    """sha256 of a file's content, read without touching its atime."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    with open(fd, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def snapshot(root, mtime=False, atime=False, ctime=False, ino=False, nlink=False,
             blocks=False, content=True, xattrs=True, hide_private=False,
             root_attrs=False, dir_size=False):
    """Map of relative path (bytes, b'' for the root) to a dict describing it.

    Always: type, mode (permission bits incl. suid/sgid/sticky), uid, gid;
    regular files: size and sha256 (unless content=False); symlinks: target;
    devices: rdev; directories: sorted child names; xattrs (all of them,
    unless hide_private).  Optional: mtime/atime/ctime (ns), ino, nlink,
    blocks.  The root's own attributes only with root_attrs.
    """
    root = os.fsencode(root)
    out = {}

    def rec(rel):
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        r = {"type": ftype(st.st_mode)}
        if rel or root_attrs:
            r["mode"] = oct(stat.S_IMODE(st.st_mode))
            r["uid"] = st.st_uid
            r["gid"] = st.st_gid
            if mtime:
                r["mtime"] = st.st_mtime_ns
            if atime:
                r["atime"] = st.st_atime_ns
            if ctime:
                r["ctime"] = st.st_ctime_ns
            if ino:
                r["ino"] = st.st_ino
            if nlink and not stat.S_ISDIR(st.st_mode):
                r["nlink"] = st.st_nlink
            if blocks:
                r["blocks"] = st.st_blocks
            if xattrs:
                try:
                    names = os.listxattr(path, follow_symlinks=False)
                except OSError as e:
                    names = ["<listxattr error %s>" % errno.errorcode.get(e.errno)]
                xa = {}
                for n in sorted(names):
                    if hide_private and is_private_xattr(n):
                        continue
                    if n.startswith("<"):
                        xa[n] = None
                        continue
                    try:
                        xa[n] = os.getxattr(path, n, follow_symlinks=False)
                    except OSError as e:
                        xa[n] = "<getxattr error %s>" % errno.errorcode.get(e.errno)
                r["xattrs"] = xa
        if stat.S_ISREG(st.st_mode):
            r["size"] = st.st_size
            if content:
                r["sha256"] = file_hash(path)
        elif stat.S_ISLNK(st.st_mode):
            r["target"] = os.readlink(path)
            r["size"] = st.st_size
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            r["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif stat.S_ISDIR(st.st_mode):
            names = sorted(os.listdir(path))
            r["names"] = names
            if dir_size:
                r["size"] = st.st_size
        out[rel] = r
        if stat.S_ISDIR(st.st_mode):
            for n in r["names"]:
                rec(os.path.join(rel, n) if rel else n)

    rec(b"")
    return out


def diff_snapshots(a, b, label_a="a", label_b="b", limit=40):
    """Lines naming every difference between snapshots A and B."""
    # The fuzzer's (stdlib-only, copied into its reproducers) does the same.
    return diff_trees(a, b, label_a, label_b, limit)


def assert_same_tree(a, b, label_a="mount", label_b="oracle"):
    d = diff_snapshots(a, b, label_a, label_b)
    assert not d, "trees differ:\n  " + "\n  ".join(d)


def upper_listing(upper):
    """All paths under UPPER (bytes, relative), with type."""
    return {k: v["type"] for k, v in snapshot(upper, xattrs=False,
                                              content=False).items()}


# --------------------------------------------------------------------------
# scenario: a mount plus an oracle copy, operations applied to both
# --------------------------------------------------------------------------

def _outcome(fn, root):
    try:
        return ("ok", fn(root))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


class Scenario:
    def __init__(self, work, spec, inode_mode=None, opts=None, upper=None):
        self.work = work
        self.lower = os.path.join(work, "lower")
        os.mkdir(self.lower)
        build(self.lower, spec)
        self.oracle = os.path.join(work, "oracle")
        cp_a(self.lower, self.oracle)
        # cp read the lower and so bumped its atimes: give the lower the
        # oracle's (original) times back so the two start out identical
        for rel, rec in snapshot(self.oracle, xattrs=False, content=False).items():
            st = os.lstat(os.path.join(os.fsencode(self.oracle), rel) if rel
                          else os.fsencode(self.oracle))
            os.utime(os.path.join(os.fsencode(self.lower), rel) if rel
                     else os.fsencode(self.lower),
                     ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        self.lower_before = snapshot(self.lower, mtime=True, ctime=True, ino=True,
                                     nlink=True, root_attrs=True)
        self.ovl = Overlay(self.lower, upper=upper, inode_mode=inode_mode, opts=opts)
        self.ovl.mount()
        self.mnt = self.ovl.mp
        self.upper = self.ovl.upper

    def m(self, *parts):
        return os.path.join(self.mnt, *parts)

    def o(self, *parts):
        return os.path.join(self.oracle, *parts)

    def u(self, *parts):
        return os.path.join(self.upper, *parts)

    def both(self, fn):
        """Run FN(root) on the oracle and the mount; outcomes (return value
        or errno) must agree.  Returns the mount's return value."""
        exp = _outcome(fn, self.oracle)
        got = _outcome(fn, self.mnt)
        assert got == exp, "mount gave %r, plain directory gave %r" % (got, exp)
        return got[1]

    def check(self, **kw):
        """Whole merged view equals the oracle; the lower is unchanged."""
        assert_same_tree(snapshot(self.mnt, **kw), snapshot(self.oracle, **kw))
        self.check_lower()

    def check_lower(self):
        now = snapshot(self.lower, mtime=True, ctime=True, ino=True, nlink=True,
                       root_attrs=True)
        assert_same_tree(now, self.lower_before, "lower now", "lower before")

    def remount(self):
        self.ovl.remount()


@pytest.fixture(params=["same-fs", "split-fs"])
def scenario(request, work, alt_work):
    """scenario(spec, **overlay_kw) -> Scenario (mounted).

    Every scenario test runs twice: with the upper on the lower's filesystem
    and with the upper on another filesystem (no link/rename across layers,
    colliding inode numbers)."""
    def make(spec, **kw):
        if request.param == "split-fs" and "upper" not in kw:
            kw["upper"] = os.path.join(alt_work, "upper")
        return Scenario(work, spec, **kw)
    return make


@pytest.fixture
def overlay(work):
    """overlay(spec, **kw) -> (Overlay mounted, lower path) without oracle."""
    def make(spec, mount=True, **kw):
        lower = os.path.join(work, "lower")
        os.mkdir(lower)
        build(lower, spec)
        o = Overlay(lower, **kw)
        if mount:
            o.mount()
        return o
    return make


# --------------------------------------------------------------------------
# syscalls Python lacks
# --------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(old, new, flags):
    f = _libc.renameat2
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                  ctypes.c_uint]
    if f(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def utimensat(path, atime, mtime, follow=True):
    """ATIME/MTIME: (sec, nsec), or UTIME_NOW / UTIME_OMIT."""
    ts = (_Timespec * 2)()
    for i, t in enumerate((atime, mtime)):
        if t in (UTIME_NOW, UTIME_OMIT):
            ts[i].tv_sec, ts[i].tv_nsec = 0, t
        else:
            ts[i].tv_sec, ts[i].tv_nsec = t
    f = _libc.utimensat
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    if f(AT_FDCWD, os.fsencode(path), ctypes.addressof(ts),
         0 if follow else AT_SYMLINK_NOFOLLOW) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def run_threads(fn, n, timeout=100):
    """Run fn(0) .. fn(n-1) in n threads at once; the errors they raised
    (repr), after all have finished."""
    errors = []

    def wrap(k):
        try:
            fn(k)
        except BaseException as e:             # noqa: B902 (reported)
            errors.append(repr(e))

    ts = [threading.Thread(target=wrap, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    return errors


def kill_after(cmd, delay):
    """Start CMD, SIGKILL it after DELAY seconds; True if it was killed.
    A run that ended by itself first must have succeeded."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if delay > 0:
        time.sleep(delay)
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if p.returncode != -signal.SIGKILL:
        assert p.returncode == 0, "%s failed by itself: %s" % (cmd, err)
    return p.returncode == -signal.SIGKILL


def wait_for(pred, timeout=10.0, interval=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# The start of a Python program run as another user (%(uid)d/%(gid)d are
# filled in): t(name, fn) records fn's result or errno in res, for tests that
# compare what an unprivileged caller may do on the mount and on a plain copy.
CHILD_PRELUDE = r'''
import errno, json, os, sys
os.setgroups([]); os.setgid(%(gid)d); os.setuid(%(uid)d)
os.umask(0o022)
root = sys.argv[1]
def P(*a): return os.path.join(root, *a)
res = []
def t(name, fn):
    try:
        v = fn()
        res.append([name, "ok", v])
    except OSError as e:
        res.append([name, errno.errorcode.get(e.errno, e.errno)])
def st(p):
    s = os.lstat(p)
    return [s.st_uid, s.st_gid, oct(s.st_mode)]
def write(p, data=b"w", flags=os.O_WRONLY | os.O_APPEND):
    fd = os.open(p, flags, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
'''
