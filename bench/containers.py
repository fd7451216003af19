#!/usr/bin/python3
"""The same container job on podman's native overlay, fuse-overlayfs and ovlfs.

One job, in a `podman run --rm` of a busybox-static image (no registry is
needed: the image is imported from a rootfs built here):

    untar   tar -xf of a tarball of FILES small files (in the image) into /job
    sha256  sha256sum of every file under /job
    cp -a   cp -a /job /job2
    rm -rf  rm -rf /job /job2

timed inside the container with a static clock program (busybox's date has
no %N), and `total` = the whole `podman run --rm` as seen from outside
(container mount and unmount included). Four storage setups, each with its
own graphroot: containers/storage's overlay driver with the kernel's
overlayfs (`native`), with mount_program = fuse-overlayfs, with
mount_program = ovlfs (build/ovlfs) over /dev/fuse (`ovlfs`, with
OVLFS_IO_URING=off) and over FUSE-over-io_uring (`ovlfs-uring`, with
OVLFS_IO_URING=on in podman's environment, which containers/storage passes
on to the mount program). Each ovlfs mount logs to a file of its setup
(mountopt log=), and the run checks there that every mount used the
transport it was meant to. For `ovlfs-uring` the fuse module's
enable_uring parameter is turned on for the run and set back after (the
column is left out, with the reason, where the kernel lacks it). The
setups take turns within each run;
the table has medians and ratios to native, and whether ovlfs meets the
goals of issue 12 (total <= 1.10x native, untar <= 1.3x, rm -rf <= 1.2x).
Rootless runs too (as uid 4244 with a subordinate id range, each podman
command from a mount namespace of its own that binds a 0666 FUSE node over
/dev/fuse and private /etc/passwd, group, subuid and subgid over the host's,
as tests/test_podman.py does), where the machine allows it; otherwise the
reason is printed and written to the results.

--requests counts the FUSE requests of each phase instead of timing: one
job per ovlfs setup with `debug` in mountopt (every request goes to the
log with a millisecond time stamp), the job printing CLOCK_REALTIME marks
with a pause between phases; writes bench/results/containers-requests.md
(requests per file by opcode, per phase).

Needs root, podman, runc, busybox-static, cc, mkfs.ext4 (make deps). The
graphroots are on an ext4 image under --tmp (default /var/tmp), loop-mounted
(so no tmpfs hides I/O and the root filesystem's `discard` does not slow rm).
Writes bench/results/containers.md. Not part of `make check`.

    sudo bench/containers.py [--quick] [--reps N] [--files N] [--build DIR]
                             [--requests]
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
BUSYBOX = "/bin/busybox"
IMAGE = "localhost/ovlfs-bench:latest"
PHASES = ["untar", "sha256", "cp -a", "rm -rf"]
ROWS = PHASES + ["total"]
GOALS = {"total": 1.10, "untar": 1.3, "rm -rf": 1.2}

URING_PARAM = "/sys/module/fuse/parameters/enable_uring"

# nsnow r: CLOCK_REALTIME, to match the ovlfs log's time stamps.
NOW_C = r"""
#include <stdio.h>
#include <time.h>
int main(int argc, char **argv) { struct timespec t;
  clock_gettime(argc > 1 ? CLOCK_REALTIME : CLOCK_MONOTONIC, &t);
  printf("%lld%09ld\n", (long long)t.tv_sec, t.tv_nsec); return 0; }
"""

JOB = r"""
set -e
t() { echo "$1 $(/bin/nsnow)"; }
t start
mkdir /job && tar -xf /src.tar -C /job
t untar
find /job -type f | xargs sha256sum > /tmp/sums
t sha256
cp -a /job /job2
t 'cp -a'
rm -rf /job /job2
t 'rm -rf'
test "$(wc -l < /tmp/sums)" = "$FILES"
"""

# The same job for --requests: realtime marks, and a pause around each
# phase so that no request lands near a boundary (the log has ms stamps).
COUNT_JOB = JOB.replace('echo "$1 $(/bin/nsnow)"',
                        'sleep 0.3; echo "$1 $(/bin/nsnow r)"; sleep 0.3')


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def sh(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, **kw)


def make_image_tar(tmp, files):
    """A busybox rootfs with /bin/nsnow and /src.tar (FILES small files)."""
    root = os.path.join(tmp, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    for a in sh([BUSYBOX, "--list"]).stdout.decode().split():
        if a != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", a))
    for d in ("etc", "tmp", "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    src = os.path.join(tmp, "nsnow.c")
    with open(src, "w") as f:
        f.write(NOW_C)
    sh(["cc", "-static", "-O1", "-o", os.path.join(root, "bin", "nsnow"), src])
    data = os.path.join(tmp, "data")
    rnd = open("/dev/urandom", "rb")
    per_dir = 50
    for i in range(files):
        d = os.path.join(data, "d%03d" % (i // per_dir))
        if i % per_dir == 0:
            os.makedirs(d)
        with open(os.path.join(d, "f%05d" % i), "wb") as f:
            f.write(rnd.read(256 + (i * 7919) % 8000))
    rnd.close()
    sh(["tar", "-C", data, "-cf", os.path.join(root, "src.tar"), "."])
    out = os.path.join(tmp, "image.tar")
    sh(["tar", "-C", root, "--numeric-owner", "--owner=0", "--group=0", "-cf", out, "."])
    shutil.rmtree(root)
    shutil.rmtree(data)
    return out


# The rootless user, made without changing the host: as the tests make it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests"))
from rootless_podman import RootlessUser  # noqa: E402

BENCH_USER = RootlessUser("ovlfsbench", 4244, 400000)


class Engine:
    """podman with one storage setup, its own graphroot and configuration."""

    def __init__(self, name, base, short, mount_program, user=None,
                 uring=None, debug=False):
        self.name = name
        self.base = base
        self.short = short          # conmon socket paths must stay short
        self.user = user            # a prepared RootlessUser, or None
        self.mount_program = mount_program
        # ovlfs: each mount's lines (the transport) go to this file
        self.log = os.path.join(base, "ovlfs.log") if uring else None
        self.uring = uring          # "on", "off" or None (not ovlfs)
        for d in (base, short, os.path.join(base, "home"), os.path.join(base, "tmp")):
            os.makedirs(d, exist_ok=True)
        for d in ("run", "libpod", "xdg"):
            os.makedirs(os.path.join(short, d))
        os.chmod(os.path.join(short, "xdg"), 0o700)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        graph = os.path.join(base, "graph")
        with open(os.path.join(base, "storage.conf"), "w") as f:
            mountopt = "nodev"
            if self.log:
                mountopt += ",log=" + self.log + (",debug" if debug else "")
            f.write('[storage]\ndriver = "overlay"\ngraphroot = "%s"\n'
                    'runroot = "%s"\nrootless_storage_path = "%s"\n'
                    '[storage.options.overlay]\nmountopt = "%s"\n'
                    % (graph, os.path.join(short, "run"), graph, mountopt))
            if mount_program:
                f.write('mount_program = "%s"\n' % mount_program)
        with open(os.path.join(base, "containers.conf"), "w") as f:
            # runc may not raise rlimits above the host's; nproc fails here
            # even at the host's hard limit
            f.write('[containers]\ndefault_ulimits = ["nofile=%d:%d", '
                    '"nproc=4096:4096"]\nnetns = "none"\n[engine]\n'
                    'cgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    'runtime = "runc"\ntmp_dir = "%s"\n'
                    % (nofile, nofile, os.path.join(short, "libpod")))
        if user is not None:
            sh(["chown", "-R", "%d:%d" % (user.pw_uid, user.pw_gid), base, short])
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.path.join(base, "home"),
            "TMPDIR": os.path.join(base, "tmp"),
            "CONTAINERS_STORAGE_CONF": os.path.join(base, "storage.conf"),
            "CONTAINERS_CONF": os.path.join(base, "containers.conf"),
            "XDG_RUNTIME_DIR": os.path.join(short, "xdg"),
        }
        if user is not None:
            self.env.update(USER=user.pw_name, LOGNAME=user.pw_name)
        if uring:
            # the plain ovlfs setup says off: enable_uring is on meanwhile
            self.env["OVLFS_IO_URING"] = uring

    def __call__(self, *args, timeout=600):
        argv = ["podman"] + list(args)
        if self.user is not None:
            argv = self.user.wrap(argv)
        r = subprocess.run(argv, env=self.env, cwd=self.base, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise RuntimeError("%s: podman %s failed (%d): %s" % (
                self.name, " ".join(args[:3]), r.returncode,
                r.stderr.decode(errors="replace").strip()[-600:]))
        return r.stdout.decode()

    def setup(self, image_tar):
        info = json.loads(self("info", "--format", "json"))
        got = info["store"]["graphOptions"].get("overlay.mount_program", {}).get("Executable")
        if got != self.mount_program:
            raise RuntimeError("%s: podman info shows mount_program %r, not %r"
                               % (self.name, got, self.mount_program))
        tar = image_tar
        if self.user is not None:
            tar = os.path.join(self.base, "image.tar")
            shutil.copy(image_tar, tar)
            os.chown(tar, self.user.pw_uid, self.user.pw_gid)
        self("import", tar, IMAGE)

    def job(self, files, job=JOB):
        t0 = time.perf_counter()
        out = self("run", "--rm", "-e", "FILES=%d" % files, IMAGE, "/bin/sh", "-c", job)
        total = time.perf_counter() - t0
        marks = [l.rsplit(" ", 1) for l in out.splitlines() if l.strip()]
        res, prev = {}, None
        for name, ns in marks:
            ns = int(ns)
            if prev is not None:
                res[name] = (ns - prev) / 1e9
            prev = ns
        if sorted(res) != sorted(PHASES):
            raise RuntimeError("%s: job output %r" % (self.name, out))
        res["total"] = total
        if job is COUNT_JOB:
            res["marks"] = [(name, int(ns)) for name, ns in marks]
        return res

    def transports(self):
        """The transport line of each mount in the log so far."""
        if not self.log or not os.path.exists(self.log):
            return []
        with open(self.log, errors="replace") as f:
            return [l.split("transport: ", 1)[1].strip() for l in f
                    if "transport: " in l]

    def check_transport(self):
        """Raise unless every mount so far used the transport meant."""
        want = "FUSE-over-io_uring" if self.uring == "on" else "/dev/fuse"
        got = self.transports()
        bad = [t for t in got if not t.startswith(want)]
        if bad:
            raise RuntimeError("%s: a mount used %r, not %s" % (self.name, bad[0], want))
        if got:
            return got[-1]
        if self.uring == "on":
            raise RuntimeError("%s: no transport line in %s" % (self.name, self.log))
        # io_uring=off asks nothing of the kernel and logs no transport line
        return "/dev/fuse (OVLFS_IO_URING=off: no transport line)"

    def cleanup(self):
        for args in (("rm", "-af", "-t", "0"), ("rmi", "-af")):
            try:
                self(*args, timeout=120)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                log("# cleanup: %s" % e)
        pause = os.path.join(self.short, "libpod", "pause.pid")
        for pidfile in (pause, os.path.join(self.short, "xdg", "libpod", "tmp", "pause.pid")):
            try:
                with open(pidfile) as f:
                    os.kill(int(f.read().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def mounts_under(path):
    p = os.path.abspath(path) + "/"
    with open("/proc/self/mountinfo") as f:
        mps = [l.split()[4] for l in f]
    return [m for m in mps if m == p[:-1] or m.startswith(p)]


def rootless_blocker():
    for tool in ("setpriv", "unshare", "newuidmap", "newgidmap"):
        path = shutil.which(tool)
        if path is None:
            return "%s not found (util-linux, uidmap)" % tool
        st = os.stat(path)
        if tool.startswith("new") and not (st.st_mode & 0o4000 and st.st_uid == 0):
            return "%s is not setuid root" % path
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    r = subprocess.run(["setpriv", "--reuid=%d" % BENCH_USER.pw_uid,
                        "--regid=%d" % BENCH_USER.pw_gid, "--clear-groups",
                        "unshare", "-Ur", "true"], stderr=subprocess.PIPE)
    if r.returncode != 0:
        return "user namespaces unavailable to a non-root user"
    return None


class UringParam:
    """enable_uring on for the run. It is one switch for the whole machine,
    and a test suite run meanwhile (scripts/with-uring.sh) turns it back
    when it ends: on() sets it again before each job that needs it and
    counts how often it had to."""

    def __init__(self):
        self.turned_off = 0

    def on(self):
        with open(URING_PARAM) as f:
            if f.read().strip() == "Y":
                return
        with open(URING_PARAM, "w") as f:
            f.write("Y")
        self.turned_off += 1


def load_requests_module():
    """bench/requests.py's request line pattern and opcode names."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "ovlfs_bench_requests", os.path.join(HERE, "requests.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3}) \S+ (.*)$")


def count_requests(engines, files, param):
    """Engine name -> phase -> opcode -> requests, from one COUNT_JOB each."""
    rq = load_requests_module()
    out = {}
    for e in engines:
        if not e.log:
            continue
        start = os.path.getsize(e.log) if os.path.exists(e.log) else 0
        if e.uring == "on":
            param.on()
        res = e.job(files, COUNT_JOB)
        e.check_transport()
        bounds = [(name, ns / 1e9) for name, ns in res["marks"]]
        phases = {name: {} for name, _ in bounds[1:]}
        with open(e.log, "rb") as f:
            f.seek(start)
            for line in f.read().decode(errors="replace").splitlines():
                m = STAMP.match(line)
                if not m:
                    continue
                r = rq.LINE.match(m.group(3))
                if not r:
                    continue
                t = time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) \
                    + int(m.group(2)) / 1000
                op = r.group(2)
                if op == "???":
                    op = rq.OPCODES.get(int(r.group(3)), "op%s" % r.group(3))
                for (_, t0), (name, t1) in zip(bounds, bounds[1:]):
                    if t0 <= t < t1:
                        phases[name][op] = phases[name].get(op, 0) + 1
                        break
        out[e.name] = phases
        log("# %s: %s" % (e.name, {p: sum(c.values()) for p, c in phases.items()}))
    return out


def write_requests(a, counted, files, notes):
    """bench/results/containers-requests.md: requests per file per phase,
    with the cost per request where containers.json has the phase times."""
    times = {}
    try:
        with open(os.path.join(a.results, "containers.json")) as f:
            times = json.load(f)["medians"]
    except (OSError, ValueError, KeyError):
        notes.append("no containers.json (a timing run): no times per request")
    rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().strip()
    lines = ["# FUSE requests per phase of the container job (bench/containers.py --requests)",
             "", "%s, kernel %s, %d files; one job per setup with every request logged "
             "(`debug` in mountopt). Per file = requests / %d. Phase times are the medians "
             "of the last timing run (containers.json); us/request = that time / requests; "
             "extra us/request = (that time - native's) / requests, what each request "
             "adds; native us/file = native's phase time / files." % (
                 rev, platform.release(), files, files), ""]
    for name, phases in counted.items():
        mode = name.split("/")[0]
        t = times.get(name, {})
        nat = times.get(mode + "/native", {})
        lines += ["## %s" % name, "",
                  "| phase | requests | per file | by opcode (per file) | phase time | "
                  "us/request | extra us/request | native us/file |",
                  "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
        for p in PHASES:
            c = phases.get(p, {})
            n = sum(c.values())
            ops = ", ".join("%s %.2f" % (k, v / files) for k, v in
                            sorted(c.items(), key=lambda kv: -kv[1]) if v / files >= 0.005)
            pt = t.get(p)
            lines.append("| %s | %d | %.2f | %s | %s | %s | %s | %s |" % (
                p, n, n / files, ops or "-", fmt(pt) if pt else "-",
                "%.1f" % (pt / n * 1e6) if pt and n else "-",
                "%.1f" % ((pt - nat[p]) / n * 1e6) if pt and n and p in nat else "-",
                "%.1f" % (nat[p] / files * 1e6) if p in nat else "-"))
        lines.append("")
    if notes:
        lines += ["Notes:", ""] + ["- " + n for n in notes] + [""]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(a.results, exist_ok=True)
    with open(os.path.join(a.results, "containers-requests.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.results, "containers-requests.json"), "w") as f:
        json.dump({"rev": rev, "files": files, "counts": counted}, f, indent=1,
                  sort_keys=True)
        f.write("\n")
    log("# wrote %s/containers-requests.md" % a.results)
    return 0


def fmt(v):
    return "%.3f s" % v if v < 10 else "%.1f s" % v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 files, 3 runs")
    ap.add_argument("--reps", type=int, default=None, help="runs (median); default 5")
    ap.add_argument("--files", type=int, default=None, help="files in the tarball (5000)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"),
                    help="meson build dir holding ovlfs")
    ap.add_argument("--tmp", default="/var/tmp", help="where the ext4 image goes")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-rootless", action="store_true")
    ap.add_argument("--no-uring", action="store_true",
                    help="leave the ovlfs-uring setup out")
    ap.add_argument("--requests", action="store_true",
                    help="count the FUSE requests of each phase (ovlfs setups) "
                    "instead of timing")
    a = ap.parse_args()
    files = a.files or (1000 if a.quick else 5000)
    reps = a.reps or (3 if a.quick else 5)
    ovlfs = os.path.join(os.path.abspath(a.build), "ovlfs")
    if os.geteuid() != 0:
        sys.exit("containers.py: needs root")
    for tool in ("podman", "runc", "cc", "mkfs.ext4"):
        if not shutil.which(tool):
            sys.exit("containers.py: %s not found (make deps)" % tool)
    if not os.path.exists(BUSYBOX) or not os.path.exists(ovlfs):
        sys.exit("containers.py: needs %s and %s" % (BUSYBOX, ovlfs))

    # (name, mount program, OVLFS_IO_URING)
    setups = [("native", None, None)]
    fo = shutil.which("fuse-overlayfs")
    notes = []
    if fo and not a.requests:
        setups.append(("fuse-overlayfs", fo, None))
    elif not fo:
        notes.append("fuse-overlayfs not installed: its column is left out")
    setups.append(("ovlfs", ovlfs, "off"))
    uring_old = None
    if a.no_uring:
        pass
    elif not os.path.exists(URING_PARAM):
        notes.append("ovlfs-uring left out: %s is missing (Linux 6.14+, "
                     "CONFIG_FUSE_IO_URING)" % URING_PARAM)
    else:
        with open(URING_PARAM) as f:
            uring_old = f.read().strip()
        setups.append(("ovlfs-uring", ovlfs, "on"))
    if a.requests:
        setups = [s for s in setups if s[2]]

    tmp = tempfile.mkdtemp(prefix="ovlfs-cbench-", dir=a.tmp)
    short = tempfile.mkdtemp(prefix="ovlfs-cb-", dir="/tmp")
    mnt = os.path.join(tmp, "mnt")
    os.makedirs(mnt)
    img = os.path.join(tmp, "fs.img")
    engines = []
    mounted = False
    param = UringParam()
    try:
        if uring_old is not None:
            # restored in the finally below, whatever happens
            with open(URING_PARAM, "w") as f:
                f.write("Y")
        sh(["truncate", "-s", "8G", img])
        sh(["mkfs.ext4", "-q", "-E", "nodiscard", img])
        sh(["mount", "-o", "loop", img, mnt])
        mounted = True
        os.chmod(mnt, 0o755)
        image_tar = make_image_tar(os.path.join(mnt, "image"), files)
        user = None
        if not a.no_rootless:
            why = rootless_blocker()
            if why:
                notes.append("rootless not run: " + why)
                log("# rootless not run: " + why)
            else:
                # the user reaches the graphroots and the short directories
                for d in (tmp, short):
                    os.chmod(d, 0o755)
                BENCH_USER.prepare(os.path.join(tmp, "rootless"), "/nonexistent")
                user = BENCH_USER
        modes = [("root", None)] + ([("rootless", user)] if user else [])
        for mode, u in modes:
            for name, prog, uring in setups:
                key = "%s/%s" % (mode, name)
                # rootless podman's run directory is under XDG_RUNTIME_DIR,
                # in SHORT: a longer name there makes every run 20 s longer
                # (conmon's socket paths are limited to 108 bytes)
                e = Engine(key, os.path.join(mnt, mode, name),
                           os.path.join(short, str(len(engines))), prog, u,
                           uring, a.requests)
                engines.append(e)
                e.setup(image_tar)
        if a.requests:
            counted = count_requests(engines, files, param)
        runs = {e.name: {r: [] for r in ROWS} for e in engines}
        failed = {}
        transport = {}
        load0 = os.getloadavg()
        for i in range(0 if a.requests else reps + 1):  # run 0 warms the page cache
            for e in engines:
                if e.name in failed:
                    continue
                try:
                    if e.uring == "on":
                        param.on()
                    res = e.job(files)
                    if e.uring:
                        transport[e.name] = e.check_transport()
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    failed[e.name] = str(err)
                    log("# %s failed: %s" % (e.name, err))
                    continue
                if i:
                    for r in ROWS:
                        runs[e.name][r].append(res[r])
            log("# run %d/%d done" % (i, reps))
        load1 = os.getloadavg()
    finally:
        if uring_old is not None:
            try:
                with open(URING_PARAM, "w") as f:
                    f.write(uring_old)
            except OSError as err:
                log("# could not set %s back to %s: %s" % (URING_PARAM, uring_old, err))
        for e in engines:
            e.cleanup()
        for mp in sorted(mounts_under(tmp) + mounts_under(short), key=len, reverse=True):
            if mp != mnt:
                subprocess.run(["umount", "-l", mp])
        if mounted:
            subprocess.run(["umount", mnt])
        shutil.rmtree(short, ignore_errors=True)
        if not mounts_under(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

    if param.turned_off:
        notes.append("%s was turned off by someone else %d times during the run "
                     "(a test suite ending): set again before the next ovlfs-uring job"
                     % (URING_PARAM, param.turned_off))
    if a.requests:
        return write_requests(a, counted, files, notes)
    names = [n for n, _, _ in setups]
    rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().strip()
    fo_ver = "-"
    if fo:
        out = subprocess.run([fo, "--version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT).stdout.decode()
        fo_ver = next((l.strip() for l in out.splitlines()
                       if l.startswith("fuse-overlayfs") and "version" in l), "fuse-overlayfs")
    lines = ["# Container job: native overlay vs fuse-overlayfs vs ovlfs (podman)", "",
             "`bench/containers.py`%s, %s, kernel %s, %s, podman %s, %d files, median of %d runs, "
             "load average %.1f -> %.1f (%d CPUs)." % (
                 " --quick" if a.quick else "", rev, platform.release(), fo_ver,
                 subprocess.run(["podman", "--version"], stdout=subprocess.PIPE)
                 .stdout.decode().split()[-1], files, reps, load0[0], load1[0],
                 os.cpu_count()), ""]
    for mode in ("root", "rootless"):
        keys = ["%s/%s" % (mode, n) for n in names]
        if not any(k in runs for k in keys):
            continue
        lines += ["## %s" % mode, "",
                  "| phase | " + " | ".join(names) + " | " +
                  " | ".join("%s/native" % n for n in names[1:]) + " | goal | %s meets |" % " / ".join(
                      n for n in names if n.startswith("ovlfs")),
                  "| --- |" + " ---: |" * (2 * len(names) - 1) + " ---: | --- |"]
        for r in ROWS:
            med = {}
            for n, k in zip(names, keys):
                med[n] = statistics.median(runs[k][r]) if k in runs and runs[k][r] else None
            cells = [fmt(med[n]) if med[n] is not None else "FAIL" for n in names]
            ratios = {}
            for n in names[1:]:
                ratios[n] = med[n] / med["native"] if med[n] and med["native"] else None
                cells.append("%.2f" % ratios[n] if ratios[n] else "-")
            goal = GOALS.get(r)
            verdict = "-"
            if goal:
                verdict = " / ".join(
                    "NO (failed)" if o is None else "yes" if o <= goal else
                    "NO (> %.2fx)" % goal
                    for o in (ratios.get(n) for n in names if n.startswith("ovlfs")))
            lines.append("| %s | %s | %s | %s |" % (
                r, " | ".join(cells), "<=%.2f" % goal if goal else "", verdict))
        lines.append("")
    for k, err in failed.items():
        notes.append("%s failed: %s" % (k, err))
    for k, t in transport.items():
        notes.append("%s: transport %s" % (k, t if t.startswith("/dev/fuse (OVLFS")
                                                 else "`%s` (every mount)" % t))
    if notes:
        lines += ["Notes:", ""] + ["- " + n for n in notes] + [""]
    lines += ["Phases are timed inside the container (CLOCK_MONOTONIC); total is the whole "
              "`podman run --rm` (mounting and unmounting the container's root included). "
              "Single runs:", ""]
    for k in runs:
        lines.append("- %s: " % k + "; ".join(
            "%s %s" % (r, " ".join("%.3f" % v for v in runs[k][r])) for r in ROWS))
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(a.results, exist_ok=True)
    with open(os.path.join(a.results, "containers.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.results, "containers.json"), "w") as f:
        json.dump({"rev": rev, "files": files, "reps": reps,
                   "medians": {k: {r: statistics.median(v) for r, v in rr.items() if v}
                               for k, rr in runs.items()}}, f, indent=1, sort_keys=True)
        f.write("\n")
    log("# wrote %s/containers.md" % a.results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
