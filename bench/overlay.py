#!/usr/bin/python3
"""Benchmark ovlfs against the kernel's overlayfs, fuse-overlayfs and a plain directory.

Runs every workload, in one run, on four setups: a plain directory (no
overlay), the kernel overlayfs, fuse-overlayfs and ovlfs, all over the same
lower on an ext4 filesystem in a loop-mounted image (under /var/tmp by
default: tmpfs would hide I/O costs). Reports the median of several runs,
the ratio of each setup to the kernel overlayfs (1.0 = kernel speed; for the
fio rows the ratio is kernel MiB/s / setup MiB/s, so above 1 is slower
everywhere) and whether ovlfs meets the targets of the performance issue.
Prints a Markdown table and writes bench/results/latest.{csv,md}.

Needs root (loop device, mounts). Usage:

    sudo bench/overlay.py [--quick] [--reps N] [--only ROW,...]
                          [--setups plain,kernel,fuse-overlayfs,ovlfs]
                          [--strace ROW,...] [--strace-setups S,...]
                          [--files N] [--nofile N] [--results DIR]
                          [--build DIR] [--tmp DIR] [--timeout SECS]
                          [--pin CPU,...]

Rows (--only, --strace): lstat readdir read seqread write copyup create rm
rename fio-rw fio-w.

Dataset (full): 20,000 small files (256 B - 8 KiB) in 1,500 directories
(50 top directories of 30) and 4 x 256 MiB files; --quick: 4,000 files in
300 directories and 4 x 64 MiB. "fresh" = a new mount over a lower that is
already in the page cache (the lower is warmed by a read pass on the plain
directory; nothing is dropped), i.e. the overlay's own cost; "warm" = a
second pass on the same mount. Every run starts from a new, empty upper
(and workdir). For the plain directory the rows that change lower files
work on a copy of them (made outside the timing).

--pin 0,1 adds the lstat and read rows once more per CPU given, with the
caller (fsops) pinned there by taskset (the FUSE servers are left free): a
FUSE round trip costs several times more when the server's thread and the
caller run on different CPUs (docs/performance.md, "CPU locality"). The
plain rows are the unpinned caller.

--strace ROWS runs those rows once more, after the measured runs, on ovlfs
(and on fuse-overlayfs with --strace-setups ovlfs,fuse-overlayfs) with
`strace -c -f -p <server pid>` attached, and prints the syscall summaries
(not timed; for finding where the time goes).
"""

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
# ovlfs: the /dev/fuse transport; ovlfs-uring: FUSE-over-io_uring (the run
# turns the fuse module's enable_uring on for itself and back after).
SETUPS = ["plain", "kernel", "fuse-overlayfs", "ovlfs", "ovlfs-uring"]
URING_PARAM = "/sys/module/fuse/parameters/enable_uring"
OVERLAYS = SETUPS[1:]

# row key, label, unit ("s" or "MiB/s"), ovlfs/kernel target
ROWS = [
    ("lstat", "lstat every file (fresh)", "s", 2.5),
    ("readdir", "recursive readdir (fresh)", "s", 2.5),
    ("readdir-warm", "recursive readdir (warm)", "s", 2.5),
    ("read-fresh", "open+read+close small files (fresh)", "s", 2.5),
    ("read-warm", "open+read+close small files (warm)", "s", 1.3),
    ("seqread", "sequential read of the large files, 1 MiB (fresh)", "s", 1.2),
    ("seqread-warm", "sequential read of the large files, 1 MiB (warm)", "s", 1.2),
    ("write", "write a new file + fsync", "s", 1.3),
    ("copyup", "copy-up: append 1 byte to each large file + syncfs", "s", 1.2),
    ("create", "create small files (untar)", "s", 4.0),
    ("rm", "rm -rf lower files", "s", 3.0),
    ("rename", "rename lower files", "s", 0.4),
    ("fio-rw", "fio 4 KiB randrw, 2 jobs, lower file", "MiB/s", 1.3),
    ("fio-w", "fio 4 KiB randwrite, 4 jobs, new files", "MiB/s", 1.5),
]
ROW = {r[0]: r for r in ROWS}


class Failure(Exception):
    pass


def pids_with_arg(arg):
    """Pids of processes (not this one) with ARG among their arguments:
    the FUSE server of a mount point."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if os.fsencode(arg) in argv:
            pids.append(int(p))
    return pids


class Config:
    def __init__(self, quick):
        self.quick = quick
        if quick:
            self.tops, self.dirs_per_top, self.files = 10, 30, 4000
            self.big_n, self.big_mib = 4, 64
            self.write_mib, self.create_n, self.rm_tops, self.rename_n = 256, 2000, 2, 200
            self.fio_secs, self.fio_w_mib = 3, 16
            self.reps, self.fio_reps, self.image_gib = 3, 3, 3
        else:
            self.tops, self.dirs_per_top, self.files = 50, 30, 20000
            self.big_n, self.big_mib = 4, 256
            self.write_mib, self.create_n, self.rm_tops, self.rename_n = 1024, 10000, 10, 1000
            self.fio_secs, self.fio_w_mib = 10, 64
            self.reps, self.fio_reps, self.image_gib = 5, 3, 8
        self.files_per_top = self.files // self.tops

    def labels(self):
        """Row labels with this dataset's sizes."""
        c = self
        d = {
            "lstat": "lstat every file, %s (fresh)" % fmt_n(c.files + c.tops * c.dirs_per_top + c.big_n),
            "readdir": "recursive readdir, %s entries (fresh)" % fmt_n(
                c.files + c.tops * c.dirs_per_top + c.big_n + 2),
            "readdir-warm": "recursive readdir, %s entries (warm)" % fmt_n(
                c.files + c.tops * c.dirs_per_top + c.big_n + 2),
            "read-fresh": "open+read+close %s small files (fresh)" % fmt_n(c.files),
            "read-warm": "open+read+close %s small files (warm)" % fmt_n(c.files),
            "seqread": "seq. read %d x %d MiB, 1 MiB reads (fresh)" % (c.big_n, c.big_mib),
            "seqread-warm": "seq. read %d x %d MiB, 1 MiB reads (warm)" % (c.big_n, c.big_mib),
            "write": "write a new %d MiB file + fsync" % c.write_mib,
            "copyup": "copy-up: append 1 B to %d x %d MiB lower files + syncfs" % (
                c.big_n, c.big_mib),
            "create": "create %s small files (untar)" % fmt_n(c.create_n),
            "rm": "rm -rf %s lower files" % fmt_n(c.rm_tops * c.files_per_top),
            "rename": "rename %s lower files" % fmt_n(c.rename_n),
            "fio-rw": "fio 4 KiB randrw, 2 jobs, %d MiB lower file, %ds (MiB/s)" % (
                c.big_mib, c.fio_secs),
            "fio-w": "fio 4 KiB randwrite, 4 jobs x %d MiB new files, %ds (MiB/s)" % (
                c.fio_w_mib, c.fio_secs),
        }
        for key in ROW:
            if "@" in key:
                base, cpu = key.split("@")
                d[key] = d[base].replace(" (", ", caller on CPU %s (" % cpu, 1)
        return d


def fmt_n(n):
    return "{:,}".format(n)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Bench:
    def __init__(self, a, cfg):
        self.a, self.cfg = a, cfg
        self.ovlfs = os.path.join(a.build, "ovlfs")
        self.mounts = []          # (path, kind) in mount order
        self.loopdev = None
        self.base = None
        self.loads = []
        self.pin = None           # CPU the fsops caller is pinned to (--pin)

    # Run a command with a timeout; a FUSE mount that hangs is aborted so
    # the child can be killed.
    def run(self, args, timeout, check=True):
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            log("!! timeout (%ss): %s" % (timeout, " ".join(args)))
            self.abort_fuse()
            p.kill()
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            raise Failure("timeout after %ss: %s" % (timeout, " ".join(args)))
        except BaseException:
            p.kill()
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            raise
        out = (out or b"").decode(errors="replace")
        err = (err or b"").decode(errors="replace")
        if check and p.returncode != 0:
            raise Failure("%s exited %d: %s" % (" ".join(args), p.returncode, err.strip()[-2000:]))
        return p.returncode, out, err

    def fsops(self, *args, timeout=None):
        pin = ["taskset", "-c", self.pin] if self.pin else []
        _, out, err = self.run(pin + [self.fsops_bin] + [str(x) for x in args],
                               timeout=timeout or self.a.timeout)
        m = dict(kv.split("=", 1) for kv in out.split())
        r = {"count": int(m["count"]), "bytes": int(m["bytes"]), "sum": m["sum"],
             "errors": int(m["errors"]), "secs": float(m["secs"])}
        if r["errors"]:
            raise Failure("fsops %s: %d errors: %s" % (args[0], r["errors"], err.strip()[:1000]))
        return r

    # ------------------------------------------------------------ mounts

    @staticmethod
    def mountinfo():
        """{mount point: (major:minor, fstype)} from /proc/self/mountinfo
        (no stat(), which would hang on a dead FUSE mount)."""
        res = {}
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                parts = line.split()
                sep = parts.index(b"-")
                mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), parts[4])
                res[os.fsdecode(mp)] = (parts[2].decode(), parts[sep + 1].decode())
        return res

    def abort_fuse(self):
        info = self.mountinfo()
        for path, kind in self.mounts:
            if path in info and info[path][1].startswith("fuse"):
                minor = info[path][0].split(":")[1]
                ab = "/sys/fs/fuse/connections/%s/abort" % minor
                try:
                    with open(ab, "w") as f:
                        f.write("1")
                    log("!! aborted FUSE connection of %s" % path)
                except OSError:
                    pass

    def mount(self, setup, lower, upper, work, mnt):
        if setup == "kernel":
            args = ["mount", "-t", "overlay", "overlay", "-o",
                    "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work), mnt]
            fstype = "overlay"
        elif setup == "fuse-overlayfs":
            args = [self.fuse_overlayfs, "-o",
                    "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work), mnt]
            fstype = "fuse"
        else:
            args = [self.ovlfs, "mount", "--io-uring",
                    "on" if setup == "ovlfs-uring" else "off", "--upper", upper, lower, mnt]
            fstype = "fuse"
        self.mounts.append((mnt, setup))
        try:
            self.run(args, timeout=60)
        except Failure:
            if mnt not in self.mountinfo():
                self.mounts.pop()
            raise
        info = self.mountinfo().get(mnt)
        if not os.path.ismount(mnt) or not info or not info[1].startswith(fstype):
            raise Failure("%s: mount did not happen at %s (%s)" % (setup, mnt, info))

    def umount(self, mnt, setup):
        if setup in ("kernel", "ext4"):
            args = ["umount", mnt]
        elif setup == "fuse-overlayfs":
            args = ["fusermount3", "-u", mnt]
        else:
            args = [self.ovlfs, "umount", mnt]
        try:
            rc, _, err = self.run(args, timeout=60, check=False)
            if rc != 0:
                log("!! %s: %s" % (" ".join(args), err.strip()))
        finally:
            # wait for the kernel to let go, then force it if needed
            for _ in range(100):
                if mnt not in self.mountinfo():
                    break
                time.sleep(0.05)
            if mnt in self.mountinfo():
                log("!! %s still mounted, aborting and lazy-unmounting" % mnt)
                self.abort_fuse()
                subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
            if (mnt, setup) in self.mounts:
                self.mounts.remove((mnt, setup))
        # the FUSE servers finish writing when they exit: wait for them
        self.wait_daemon_gone(mnt)

    def daemon_pids(self, mnt):
        return pids_with_arg(mnt)

    def wait_daemon_gone(self, mnt):
        for _ in range(200):
            if not self.daemon_pids(mnt):
                return
            time.sleep(0.05)
        log("!! a server of %s is still running after unmount: %s" % (mnt, self.daemon_pids(mnt)))

    def cleanup(self):
        for mnt, setup in reversed(list(self.mounts)):
            try:
                self.umount(mnt, setup)
            except BaseException as e:   # keep going: everything must go
                log("!! unmounting %s: %s" % (mnt, e))
                subprocess.run(["umount", "-l", mnt], stderr=subprocess.DEVNULL)
        self.mounts = []
        if self.loopdev:
            subprocess.run(["losetup", "-d", self.loopdev])
            self.loopdev = None
        if self.base and not any(m.startswith(self.base + "/") for m in self.mountinfo()):
            shutil.rmtree(self.base, ignore_errors=True)
        elif self.base:
            log("!! leaving %s: something is still mounted under it" % self.base)

    # ------------------------------------------------------------ setup

    def setup_fs(self):
        cfg = self.cfg
        self.base = tempfile.mkdtemp(prefix="ovlfs-bench-", dir=self.a.tmp)
        self.fsops_bin = os.path.join(self.base, "fsops")
        self.run(["cc", "-O2", "-o", self.fsops_bin, os.path.join(HERE, "fsops.c")], timeout=120)
        img = os.path.join(self.base, "fs.img")
        with open(img, "wb") as f:
            f.truncate(cfg.image_gib << 30)
        self.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                  img], timeout=300)
        try:
            _, out, _ = self.run(["losetup", "--direct-io=on", "--show", "-f", img], timeout=60)
        except Failure:
            _, out, _ = self.run(["losetup", "--show", "-f", img], timeout=60)
        self.loopdev = out.strip()
        self.fs = os.path.join(self.base, "fs")
        os.mkdir(self.fs)
        self.mounts.append((self.fs, "ext4"))
        self.run(["mount", "-t", "ext4", self.loopdev, self.fs], timeout=60)
        if not os.path.ismount(self.fs):
            raise Failure("ext4 image not mounted at %s" % self.fs)
        self.lower = os.path.join(self.fs, "lower")
        self.scratch = os.path.join(self.fs, "run")
        self.mnt = os.path.join(self.base, "mnt")
        os.mkdir(self.mnt)
        self.lists = os.path.join(self.base, "lists")
        os.mkdir(self.lists)

    def build_dataset(self):
        cfg = self.cfg
        t = time.monotonic()
        lower = self.lower
        os.mkdir(lower)
        dirs, files = [], []
        for ti in range(cfg.tops):
            top = "small/t%03d" % ti
            tdirs = [top] + ["%s/s%02d" % (top, si) for si in range(cfg.dirs_per_top - 1)]
            dirs.extend(tdirs)
            for k in range(cfg.files_per_top):
                files.append("%s/f%05d" % (tdirs[k % len(tdirs)], ti * cfg.files_per_top + k))
        os.mkdir(os.path.join(lower, "small"))
        for d in dirs:
            os.mkdir(os.path.join(lower, d))
        filler = bytes(range(256)) * 40
        for i, f in enumerate(files):
            size = 256 + (i * 7919) % 7937
            head = ("%s %d\n" % (f, i)).encode()
            with open(os.path.join(lower, f), "wb") as fh:
                fh.write((head + filler)[:size])
        os.mkdir(os.path.join(lower, "big"))
        big = ["big/b%d" % i for i in range(cfg.big_n)]
        block = bytearray((i * 37 + 11) & 0xff for i in range(MIB))
        for bi, b in enumerate(big):
            with open(os.path.join(lower, b), "wb") as fh:
                for k in range(cfg.big_mib):
                    block[0:16] = ("%d:%d" % (bi, k)).encode().ljust(16, b".")
                    fh.write(block)
        self.small_files = files
        self.big_files = big
        self.all_paths = ["small"] + dirs + files + ["big"] + big
        self.rm_tops = ["small/t%03d" % ti for ti in range(cfg.rm_tops)]
        self.rm_count = cfg.rm_tops * cfg.files_per_top
        rn_from = cfg.rm_tops * cfg.files_per_top      # files after the rm tops
        self.rename_files = files[rn_from:rn_from + cfg.rename_n]
        self.write_list("all", self.all_paths)
        self.write_list("small", files)
        self.write_list("big", big)
        self.write_list("rename", self.rename_files)
        self.write_list("renamed", [p + ".mv" for p in self.rename_files])
        self.total_entries = len(self.all_paths)
        self.small_bytes = sum(os.path.getsize(os.path.join(lower, f)) for f in files)
        self.big_bytes = cfg.big_n * cfg.big_mib * MIB
        # the tarball for "create": N files in N/100 directories, outside the lower
        src = os.path.join(self.base, "tarsrc")
        os.makedirs(os.path.join(src, "new"))
        for i in range(cfg.create_n):
            d = os.path.join(src, "new", "d%03d" % (i // 100))
            if i % 100 == 0:
                os.mkdir(d)
            with open(os.path.join(d, "n%05d" % i), "wb") as fh:
                fh.write((("new %d\n" % i).encode() + filler)[:256 + (i * 613) % 3840])
        self.tarball = os.path.join(self.fs, "create.tar")
        self.run(["tar", "-cf", self.tarball, "-C", src, "new"], timeout=300)
        shutil.rmtree(src)
        self.create_entries = 1 + (cfg.create_n + 99) // 100 + cfg.create_n
        os.sync()
        log("# dataset: %s files in %s dirs + %d x %d MiB, built in %.1fs" % (
            fmt_n(len(files)), fmt_n(len(dirs)), cfg.big_n, cfg.big_mib, time.monotonic() - t))
        # reference values, on the lower itself (this also warms it)
        self.ref_small = self.fsops("read", lower, self.list_path("small"))
        self.ref_big = self.fsops("seqread", lower, self.list_path("big"))
        if self.ref_small["bytes"] != self.small_bytes or self.ref_big["bytes"] != self.big_bytes:
            raise Failure("dataset sizes are off")

    def write_list(self, name, paths):
        with open(self.list_path(name), "w") as f:
            f.write("\n".join(paths) + "\n")

    def list_path(self, name):
        return os.path.join(self.lists, name)

    def warm_lower(self):
        self.fsops("lstat", self.lower, self.list_path("all"))
        self.fsops("read", self.lower, self.list_path("small"))
        self.fsops("seqread", self.lower, self.list_path("big"))

    # ------------------------------------------------------------ workloads

    def expect(self, cond, what):
        if not cond:
            raise Failure("check failed: " + what)

    def w_lstat(self, view, ctx):
        r = self.fsops("lstat", view, self.list_path("all"))
        self.expect(r["count"] == len(self.all_paths), "lstat count %d" % r["count"])
        return {"lstat": r["secs"]}

    def w_readdir(self, view, ctx):
        res = {}
        for key in ("readdir", "readdir-warm"):
            r = self.fsops("readdir", view, ".")
            # plain view of the lower: exactly the dataset; overlays: the same
            self.expect(r["count"] == self.total_entries, "readdir saw %d entries, want %d" % (
                r["count"], self.total_entries))
            res[key] = r["secs"]
        return res

    def w_read(self, view, ctx):
        res = {}
        for key in ("read-fresh", "read-warm"):
            r = self.fsops("read", view, self.list_path("small"))
            self.expect(r["count"] == len(self.small_files) and r["bytes"] == self.small_bytes
                        and r["sum"] == self.ref_small["sum"], "small file data differs")
            res[key] = r["secs"]
        return res

    def w_seqread(self, view, ctx):
        res = {}
        for key in ("seqread", "seqread-warm"):
            r = self.fsops("seqread", view, self.list_path("big"))
            self.expect(r["bytes"] == self.big_bytes and r["sum"] == self.ref_big["sum"],
                        "large file data differs")
            res[key] = r["secs"]
        return res

    def w_write(self, view, ctx):
        r = self.fsops("write", view, "newfile", self.cfg.write_mib)
        self.expect(os.path.getsize(os.path.join(view, "newfile")) == self.cfg.write_mib * MIB,
                    "new file size")
        ctx["upper_sizes"] = {"newfile": self.cfg.write_mib * MIB}
        return {"write": r["secs"]}

    def w_copyup(self, view, ctx):
        # syncfs of the mount and then of the ext4 holding the upper: a FUSE
        # server may not pass syncfs on, and the copies must be on disk
        r = self.fsops("append", view, self.list_path("big"), self.fs)
        want = self.cfg.big_mib * MIB + 1
        for b in self.big_files:
            self.expect(os.path.getsize(os.path.join(view, b)) == want, "size of %s" % b)
        with open(os.path.join(view, self.big_files[0]), "rb") as f:
            f.seek(want - 2)
            self.expect(f.read() == bytes([((MIB - 1) * 37 + 11) & 0xff]) + b"X",
                        "tail of copied-up file")
        ctx["upper_sizes"] = {b: want for b in self.big_files}
        return {"copyup": r["secs"]}

    def w_create(self, view, ctx):
        t = time.perf_counter()
        self.run(["tar", "-xf", self.tarball, "-C", view], timeout=self.a.timeout)
        dt = time.perf_counter() - t
        r = self.fsops("readdir", view, "new")
        self.expect(r["count"] == self.create_entries - 1, "untarred %d entries" % r["count"])
        ctx["upper_count"] = ("new", self.create_entries - 1)
        return {"create": dt}

    def w_rm(self, view, ctx):
        t = time.perf_counter()
        self.run(["rm", "-rf", "--"] + [os.path.join(view, d) for d in self.rm_tops],
                 timeout=self.a.timeout)
        dt = time.perf_counter() - t
        for d in self.rm_tops:
            self.expect(not os.path.lexists(os.path.join(view, d)), "%s still there" % d)
        r = self.fsops("readdir", view, "small")
        want = len([p for p in self.all_paths if p.startswith("small/")]) - \
            len([p for p in self.all_paths
                 if any(p == d or p.startswith(d + "/") for d in self.rm_tops)])
        self.expect(r["count"] == want, "after rm: %d entries under small, want %d" % (
            r["count"], want))
        return {"rm": dt}

    def w_rename(self, view, ctx):
        r = self.fsops("rename", view, self.list_path("rename"), ".mv")
        self.expect(r["count"] == len(self.rename_files), "renamed %d" % r["count"])
        r2 = self.fsops("lstat", view, self.list_path("renamed"))
        self.expect(r2["count"] == len(self.rename_files), "renamed files missing")
        self.expect(not os.path.lexists(os.path.join(view, self.rename_files[0])),
                    "old name still there")
        return {"rename": r["secs"]}

    def fio(self, args, view):
        secs = self.cfg.fio_secs
        cmd = [self.fio_bin, "--output-format=json", "--ioengine=psync", "--bs=4k",
               "--invalidate=0", "--runtime=%d" % secs, "--time_based", "--group_reporting",
               "--randseed=42"] + args
        _, out, _ = self.run(cmd, timeout=self.a.timeout + secs)
        j = json.loads(out[out.index("{"):])
        job = j["jobs"][0]
        if job.get("error"):
            raise Failure("fio error %s" % job["error"])
        bw = (job["read"]["bw_bytes"] + job["write"]["bw_bytes"]) / MIB
        self.expect(bw > 0, "fio did no I/O")
        return bw

    def w_fio_rw(self, view, ctx):
        target = os.path.join(view, self.big_files[0])
        bw = self.fio(["--name=rw", "--filename=" + target, "--rw=randrw", "--numjobs=2",
                       "--size=%dM" % self.cfg.big_mib], view)
        self.expect(os.path.getsize(target) == self.cfg.big_mib * MIB, "fio changed the size")
        ctx["upper_sizes"] = {self.big_files[0]: self.cfg.big_mib * MIB}
        return {"fio-rw": bw}

    def w_fio_w(self, view, ctx):
        d = os.path.join(view, "fio")
        os.mkdir(d)
        bw = self.fio(["--name=w", "--directory=" + d, "--rw=randwrite", "--numjobs=4",
                       "--size=%dM" % self.cfg.fio_w_mib], view)
        names = sorted(os.listdir(d))
        self.expect(len(names) == 4, "fio files: %s" % names)
        ctx["upper_sizes"] = {"fio/" + n: self.cfg.fio_w_mib * MIB for n in names}
        return {"fio-w": bw}

    def workloads(self):
        """(name, rows, function, paths the plain setup needs a copy of, or
        None to use the lower itself read-only)."""
        return [
            ("lstat", ["lstat"], self.w_lstat, None),
            ("readdir", ["readdir", "readdir-warm"], self.w_readdir, None),
            ("read", ["read-fresh", "read-warm"], self.w_read, None),
            ("seqread", ["seqread", "seqread-warm"], self.w_seqread, None),
            ("write", ["write"], self.w_write, []),
            ("copyup", ["copyup"], self.w_copyup, ["big"]),
            ("create", ["create"], self.w_create, []),
            ("rm", ["rm"], self.w_rm, ["small"]),
            ("rename", ["rename"], self.w_rename, ["small"]),
            ("fio-rw", ["fio-rw"], self.w_fio_rw, ["big/" + os.path.basename(self.big_files[0])]),
            ("fio-w", ["fio-w"], self.w_fio_w, []),
        ] + [(name + "@" + cpu, [r + "@" + cpu for r in rows], self.pinned(fn, cpu), None)
             for cpu in self.a.pin
             for name, rows, fn in (("lstat", ["lstat"], self.w_lstat),
                                    ("read", ["read-fresh", "read-warm"], self.w_read))]

    def pinned(self, fn, cpu):
        """Workload FN with the caller on CPU; its rows get "@CPU"."""
        def w(view, ctx):
            self.pin = cpu
            try:
                return {k + "@" + cpu: v for k, v in fn(view, ctx).items()}
            finally:
                self.pin = None
        return w

    # ------------------------------------------------------------ one run

    def one(self, setup, fn, plain_needs, strace=False):
        sc = self.scratch
        if os.path.exists(sc):
            self.run(["rm", "-rf", "--", sc], timeout=600)
        os.mkdir(sc)
        upper, work = os.path.join(sc, "upper"), os.path.join(sc, "work")
        ctx = {}
        mounted = False
        tracer = None
        if setup == "plain":
            if plain_needs is None:
                view = self.lower
            else:
                view = os.path.join(sc, "plain")
                os.mkdir(view)
                for p in plain_needs:
                    os.makedirs(os.path.dirname(os.path.join(view, p)), exist_ok=True)
                    self.run(["cp", "-a", "--", os.path.join(self.lower, p),
                              os.path.join(view, p)], timeout=600)
        else:
            os.mkdir(upper)
            os.mkdir(work)
            self.mount(setup, self.lower, upper, work, self.mnt)
            mounted = True
            view = self.mnt
        try:
            if strace:
                pids = [p for p in self.daemon_pids(self.mnt)]
                tracer = subprocess.Popen(
                    ["strace", "-c", "-f", "-o", os.path.join(self.base, "strace.out")] +
                    sum([["-p", str(p)] for p in pids], []),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            os.sync()
            res = fn(view, ctx)
        finally:
            if tracer:
                tracer.send_signal(signal.SIGINT)
                try:
                    tracer.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    tracer.kill()
                    tracer.wait()
            if mounted:
                self.umount(self.mnt, setup)
        if setup != "plain":
            for rel, size in ctx.get("upper_sizes", {}).items():
                p = os.path.join(upper, rel)
                self.expect(os.path.isfile(p) and os.path.getsize(p) == size,
                            "%s: upper %s missing or wrong size" % (setup, rel))
            if "upper_count" in ctx:
                # fuse-overlayfs marks new directories opaque: skip .wh.*
                rel, n = ctx["upper_count"]
                got = 0
                for _, ds, fs in os.walk(os.path.join(upper, rel)):
                    got += sum(1 for x in ds + fs if not x.startswith(".wh."))
                self.expect(got == n, "%s: upper has %d new entries, want %d" % (setup, got, n))
            # the lower must be untouched
            self.expect(os.path.getsize(os.path.join(self.lower, self.big_files[0])) ==
                        self.cfg.big_mib * MIB, "lower changed")
        if tracer:
            with open(os.path.join(self.base, "strace.out")) as f:
                res["strace"] = f.read()
        return res


def load():
    return os.getloadavg()[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller dataset (4,000 files, 4 x 64 MiB), 3 runs, 3 s fio")
    ap.add_argument("--reps", type=int, default=None, help="runs per row (median)")
    ap.add_argument("--only", default=None, help="comma-separated rows (workloads) to run")
    ap.add_argument("--setups", default=",".join(SETUPS), help="comma-separated setups")
    ap.add_argument("--build", default=os.path.join(REPO, "build"),
                    help="build directory holding ovlfs")
    ap.add_argument("--tmp", default="/var/tmp", help="where the ext4 image goes")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per step")
    ap.add_argument("--results", default=os.path.join(HERE, "results"),
                    help="directory for latest.csv and latest.md")
    ap.add_argument("--pin", default="",
                    help="comma-separated CPUs: the lstat and read rows again with the "
                    "caller pinned to each")
    ap.add_argument("--strace", default=None,
                    help="comma-separated rows to run once more on ovlfs under strace -c")
    ap.add_argument("--strace-setups", default="ovlfs",
                    help="FUSE setups to strace for --strace (ovlfs,fuse-overlayfs)")
    ap.add_argument("--files", type=int, default=None,
                    help="override the number of small files (a multiple of the top "
                    "directories: 50, or 10 with --quick)")
    ap.add_argument("--nofile", type=int, default=-1,
                    help="RLIMIT_NOFILE for the run and the FUSE servers it starts "
                    "(default: fs.nr_open; 0 keeps the inherited limit)")
    a = ap.parse_args()
    a.pin = [c for c in a.pin.split(",") if c]
    for c in a.pin:
        if not c.isdigit() or int(c) not in os.sched_getaffinity(0):
            sys.exit("--pin: %s is not a CPU this run may use (%s)" % (
                c, ",".join(map(str, sorted(os.sched_getaffinity(0))))))
    if a.pin and not shutil.which("taskset"):
        sys.exit("--pin needs taskset (apt-get install util-linux)")
    for c in a.pin:
        for key in ("lstat", "read-fresh", "read-warm"):
            ROWS.append((key + "@" + c,) + ROW[key][1:])
            ROW[key + "@" + c] = ROWS[-1]
    if os.geteuid() != 0:
        sys.exit("bench/overlay.py needs root (loop device and mounts)")
    cfg = Config(a.quick)
    if a.reps:
        cfg.reps = cfg.fio_reps = a.reps
    if a.files:
        if a.files % cfg.tops or a.files // cfg.tops < cfg.dirs_per_top:
            sys.exit("--files must be a multiple of %d, at least %d" % (
                cfg.tops, cfg.tops * cfg.dirs_per_top))
        cfg.files = a.files
        cfg.files_per_top = cfg.files // cfg.tops
        cfg.rename_n = min(cfg.rename_n, cfg.files - cfg.rm_tops * cfg.files_per_top)
    b = Bench(a, cfg)
    notes = []
    setups = [s for s in a.setups.split(",") if s]
    for s in setups:
        if s not in SETUPS:
            sys.exit("unknown setup %s (have %s)" % (s, ", ".join(SETUPS)))
    if not os.access(b.ovlfs, os.X_OK):
        sys.exit("%s not found: build it first (make)" % b.ovlfs)
    b.fuse_overlayfs = shutil.which("fuse-overlayfs")
    if "fuse-overlayfs" in setups and (not b.fuse_overlayfs or not shutil.which("fusermount3")):
        setups.remove("fuse-overlayfs")
        notes.append("fuse-overlayfs (or fusermount3) not installed: column skipped "
                     "(apt-get install fuse-overlayfs)")
    uring_old = None
    if "ovlfs-uring" in setups:
        try:
            with open(URING_PARAM) as f:
                uring_old = f.read().strip()
            with open(URING_PARAM, "w") as f:
                f.write("Y")
        except OSError as e:
            setups.remove("ovlfs-uring")
            uring_old = None
            notes.append("ovlfs-uring column skipped: cannot turn on %s (%s)" % (
                URING_PARAM, e.strerror))
    b.fio_bin = shutil.which("fio")
    for tool in ("cc", "mkfs.ext4", "losetup", "tar"):
        if not shutil.which(tool):
            sys.exit("%s not found (needed by the benchmark)" % tool)
    wanted = set(a.only.split(",")) if a.only else None
    strace_rows = set(a.strace.split(",")) if a.strace else set()
    if strace_rows and not shutil.which("strace"):
        sys.exit("--strace needs strace (apt-get install strace)")
    # ovlfs holds a descriptor per inode it has seen, and the servers inherit
    # this limit: raise it (fuse-overlayfs raises its own), and say so
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if a.nofile != 0:
        want = a.nofile
        if want < 0:
            with open("/proc/sys/fs/nr_open") as f:
                want = int(f.read())
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            notes.append("RLIMIT_NOFILE set from %d to %d for the FUSE servers "
                         "(--nofile; ovlfs needs more descriptors than the dataset has "
                         "entries)" % (soft, want))
        except (OSError, ValueError) as e:
            if soft < hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            notes.append("could not raise RLIMIT_NOFILE to %d (%s): the FUSE servers "
                         "run with %d/%d" % (want, e, soft, hard))
    else:
        notes.append("RLIMIT_NOFILE left at %d" % soft)
    for n in notes:
        log("# note: " + n)

    def sigterm(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, sigterm)
    signal.signal(signal.SIGHUP, sigterm)

    t_start = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    results = {}     # row -> setup -> [values]
    straces = {}
    failed = {}      # (workload, setup) -> message
    interrupted = None
    try:
        b.setup_fs()
        b.build_dataset()
        wls = b.workloads()
        if wanted:
            bad = wanted - {w[0] for w in wls} - set(ROW)
            if bad:
                sys.exit("unknown rows: %s" % ", ".join(sorted(bad)))
        for name, rows, fn, needs in wls:
            base = name.split("@")[0]
            if wanted and base not in wanted and not ({r.split("@")[0] for r in rows} & wanted):
                continue
            if name.startswith("fio") and not b.fio_bin:
                notes.append("fio not installed: fio rows skipped (apt-get install fio)")
                continue
            reps = min(cfg.reps, cfg.fio_reps) if name.startswith("fio") else cfg.reps
            b.warm_lower()
            t_row = time.monotonic()
            for r in rows:
                results.setdefault(r, {})
            for rep in range(reps):
                for setup in setups:
                    if (name, setup) in failed:
                        continue
                    b.loads.append(load())
                    try:
                        res = b.one(setup, fn, needs)
                    except Failure as e:
                        # one setup failing must not stop the others
                        failed[(name, setup)] = str(e)
                        for r in rows:
                            results[r].pop(setup, None)
                            results[r].setdefault("failed", {})[setup] = str(e)
                        notes.append("%s FAILED on %s: %s" % (setup, name,
                                                               str(e).splitlines()[0]))
                        log("!! %s FAILED on %s: %s" % (setup, name, e))
                        continue
                    for k, v in res.items():
                        results[k].setdefault(setup, []).append(v)
            line = "  ".join("%s %s" % (s, fmt_val(statistics.median(results[r][s]), ROW[r][2])
                                        if results[r].get(s) else "FAIL")
                             for r in rows for s in setups)
            log("%-8s (%d runs, %.0fs, load %.1f)  %s" % (name, reps, time.monotonic() - t_row,
                                                         load(), line))
        for name, rows, fn, needs in b.workloads():
            if name in strace_rows or set(rows) & strace_rows:
                if name.startswith("fio") and not b.fio_bin:
                    continue
                for setup in [x for x in a.strace_setups.split(",") if x in setups]:
                    if setup in ("plain", "kernel"):
                        continue
                    b.warm_lower()
                    log("# strace -c -f on the %s server during %s" % (setup, name))
                    try:
                        res = b.one(setup, fn, needs, strace=True)
                    except Failure as e:
                        log("!! %s failed under strace on %s: %s" % (setup, name, e))
                        notes.append("%s failed under strace on %s: %s" % (
                            setup, name, str(e).splitlines()[0]))
                        continue
                    straces[(name, setup)] = res["strace"]
    except KeyboardInterrupt as e:
        interrupted = "interrupted (%s)" % (e or "Ctrl-C")
        log("!! " + interrupted + ": cleaning up")
    except Failure as e:
        interrupted = "failed: %s" % str(e).splitlines()[0]
        log("!! " + interrupted)
    finally:
        b.cleanup()
        if uring_old is not None:
            with open(URING_PARAM, "w") as f:
                f.write(uring_old)

    load_end = os.getloadavg()
    info = {
        "started": started,
        "mode": "quick" if cfg.quick else "full",
        "reps": cfg.reps if cfg.fio_reps == cfg.reps or not b.fio_bin else
        "%d (fio rows %d)" % (cfg.reps, cfg.fio_reps),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "ovlfs": git_describe(),
        "fuse-overlayfs": tool_version([b.fuse_overlayfs or "fuse-overlayfs", "--version"]),
        "fio": tool_version([b.fio_bin or "fio", "--version"]),
        "load": "load average %.2f at start, %.2f at end, max 1-min %.2f during runs" % (
            load_start[0], load_end[0], max(b.loads or [0])),
        "total": "%.0fs" % (time.monotonic() - t_start),
    }
    if max(b.loads or [0]) > 0.5 * (os.cpu_count() or 1):
        notes.append("the machine was loaded by other work during the run (see load); "
                     "figures are noisier than on an idle machine")
    if interrupted:
        notes.append("run " + interrupted + "; the table is partial")
    md = report(cfg, setups, results, info, notes)
    print(md)
    if results:
        os.makedirs(a.results, exist_ok=True)
        write_csv(os.path.join(a.results, "latest.csv"), cfg, setups, results, info)
        with open(os.path.join(a.results, "latest.md"), "w") as f:
            f.write(md)
        log("# wrote %s/latest.csv and latest.md" % a.results)
    if straces:
        text = "".join("\n### strace -c -f of the %s server during `%s`\n\n```\n%s```\n" % (
            setup, name, out) for (name, setup), out in straces.items())
        print(text)
        os.makedirs(a.results, exist_ok=True)
        with open(os.path.join(a.results, "latest-strace.md"), "w") as f:
            f.write(text)
    if interrupted:
        sys.exit(1)


def git_describe():
    try:
        r = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "?"
    except Exception:
        return "?"


def tool_version(args):
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=10)
        out = (r.stdout + r.stderr).strip().splitlines()
        name = os.path.basename(args[0])
        mine = [line for line in out if name in line]
        return (mine or out or ["?"])[0].strip()
    except Exception:
        return "not installed"


def fmt_val(v, unit):
    if v is None:
        return "-"
    if unit == "MiB/s":
        return "%.1f MiB/s" % v if v < 100 else "%.0f MiB/s" % v
    if v < 0.1:
        return "%.1f ms" % (v * 1e3)
    return "%.3f s" % v if v < 10 else "%.1f s" % v


def summarize(cfg, setups, results):
    """Per row: medians, ratios to the kernel (time ratios: for MiB/s rows
    kernel/setup), and the ovlfs verdict."""
    out = []
    for key, _, unit, target in ROWS:
        if key not in results or not any(isinstance(v, list) for v in results[key].values()) \
                and not results[key].get("failed"):
            continue
        fails = results[key].get("failed", {})
        med = {s: statistics.median(results[key][s]) if results[key].get(s) else None
               for s in SETUPS}
        k = med.get("kernel")

        def ratio(s):
            v = med.get(s)
            if v is None or not k:
                return None
            return (k / v) if unit == "MiB/s" else (v / k)
        rat = {s: ratio(s) for s in SETUPS}

        def judge(s):
            if s in fails:
                return False, "NO (failed)"
            if rat[s] is None:
                return None, "-"
            ok = rat[s] <= target
            why = [] if ok else ["> %gx" % target]
            if rat["fuse-overlayfs"] is not None and rat[s] > rat["fuse-overlayfs"]:
                ok = False
                why.append("slower than fuse-overlayfs")
            return ok, "yes" if ok else "NO (" + ", ".join(why) + ")"
        meets, verdict = judge("ovlfs")
        umeets, uverdict = judge("ovlfs-uring")
        out.append({"key": key, "unit": unit, "target": target, "med": med, "ratio": rat,
                    "failed": fails,
                    "meets": meets, "verdict": verdict,
                    "umeets": umeets, "uverdict": uverdict,
                    "runs": {s: results[key].get(s, []) for s in SETUPS}})
    return out


def fmt_ratio(r):
    return "-" if r is None else "%.2f" % r


def report(cfg, setups, results, info, notes):
    labels = cfg.labels()
    rows = summarize(cfg, setups, results)
    lines = []
    lines.append("ovlfs overlay benchmark, %s mode (%s), median of %s runs; ext4 in a "
                 "loop-mounted image; ratios are to the kernel overlayfs (1.00 = kernel "
                 "speed, higher = slower; for MiB/s rows kernel MiB/s / setup MiB/s)." % (
                     info["mode"], info["started"], info["reps"]))
    lines.append("")
    lines.append("| workload | plain | kernel | fuse-overlayfs | ovlfs | ovlfs io_uring | "
                 "plain/k | fuse-ovl/k | ovlfs/k | uring/k | target | ovlfs meets | "
                 "io_uring meets |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                 "| --- | --- |")
    for r in rows:
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | **%s** | **%s** | %s | %s | %s |" % (
            labels[r["key"]],
            *["FAIL" if s in r["failed"] else fmt_val(r["med"][s], r["unit"]) for s in SETUPS],
            fmt_ratio(r["ratio"]["plain"]), fmt_ratio(r["ratio"]["fuse-overlayfs"]),
            fmt_ratio(r["ratio"]["ovlfs"]), fmt_ratio(r["ratio"]["ovlfs-uring"]),
            "≤%g" % r["target"], r["verdict"], r["uverdict"]))
    for key, name in (("meets", "ovlfs (/dev/fuse)"), ("umeets", "ovlfs over io_uring")):
        judged = [r for r in rows if r[key] is not None]
        if judged:
            ok = sum(1 for r in judged if r[key])
            lines.append("")
            lines.append("%s meets %d of %d targets (target: ovlfs/kernel at most the "
                         "figure shown, and no slower than fuse-overlayfs)." % (
                             name, ok, len(judged)))
    lines.append("")
    lines.append("Machine: kernel %s, %d CPUs; ovlfs %s; %s; %s; %s; total %s." % (
        info["kernel"], info["cpus"], info["ovlfs"], info["fuse-overlayfs"], info["fio"],
        info["load"], info["total"]))
    for n in dict.fromkeys(notes):
        lines.append("")
        lines.append("Note: " + n)
    return "\n".join(lines) + "\n"


def write_csv(path, cfg, setups, results, info):
    rows = summarize(cfg, setups, results)
    labels = cfg.labels()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "workload", "unit"] + SETUPS +
                   ["plain/kernel", "fuse-overlayfs/kernel", "ovlfs/kernel",
                    "ovlfs-uring/kernel", "target",
                    "ovlfs_meets", "runs", "mode", "started"] +
                   ["runs_" + s for s in SETUPS])
        for r in rows:
            w.writerow([r["key"], labels[r["key"]], r["unit"]] +
                       ["" if r["med"][s] is None else "%.6g" % r["med"][s] for s in SETUPS] +
                       [fmt_ratio(r["ratio"][s])
                        for s in ("plain", "fuse-overlayfs", "ovlfs", "ovlfs-uring")] +
                       [r["target"], "" if r["meets"] is None else ("yes" if r["meets"] else "no"),
                        max(len(v) for v in r["runs"].values()), info["mode"], info["started"]] +
                       [";".join("%.6g" % v for v in r["runs"][s]) for s in SETUPS])


if __name__ == "__main__":
    main()
