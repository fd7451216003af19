#!/usr/bin/python3
"""FUSE requests per operation on an ovlfs mount, counted.

Every operation runs on a mount of its own (`ovlfs mount -f -d`: libfuse
prints every request it receives to stderr), over a small lower and an
empty upper on a private tmpfs. Per operation:

  1. mount, then a warm-up that is not counted: a stat of the root and an
     open+read+close of another file, which spends the once-per-mount
     requests (the first FLUSH and the first STATX, both answered ENOSYS
     after which the kernel sends no more);
  2. the operation's setup, not counted (e.g. a first read for "cached");
  3. the operation itself: the requests libfuse prints from then on, until
     none has come for a while, that came from this process, from the
     commands it started (ls, dd) or from the kernel itself (pid 0:
     RELEASE, FORGET). Requests of other processes on the machine are left
     out.

"fresh" means a new mount: nothing of the lower is in the kernel's caches
of it (the FUSE inodes, dentries and page cache belong to the mount).

Each operation is counted with passthrough (the default when root on
Linux 6.9+) and with --no-passthrough. Prints Markdown tables, one row per
operation with the count of each FUSE opcode, and writes them to
bench/results/requests.md and the counts to bench/results/requests.json.
With --before FILE.json (an earlier run, e.g. of another build) each cell
shows before -> after. A loaded machine evicts inodes now and then (the
FORGETs, shown apart), and the LOOKUPs and GETATTRs that follow would be
counted: --reps N counts each operation N times and keeps the run with the
fewest requests (`make bench-requests`: 3).

Needs root (tmpfs, FUSE). Usage:

    sudo bench/requests.py [--build DIR] [--before OLD.json] [--only OPS]
                           [--reps N]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# libfuse 3.14 prints "???" for opcodes newer than itself.
OPCODES = {47: "LSEEK", 48: "COPY_FILE_RANGE", 49: "SETUPMAPPING",
           50: "REMOVEMAPPING", 51: "SYNCFS", 52: "STATX"}
LINE = re.compile(r"^unique: (\d+), opcode: (\S+) \((\d+)\), nodeid: \d+, "
                  r"insize: \d+, pid: (\d+)")
SETTLE = 0.25           # no request for this long: the operation is over


def j(*p):
    return os.path.join(*p)


def mounted(mp):
    want = os.fsencode(mp)
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split(b" ")[4] == want for line in f)


class Mount:
    """`ovlfs mount -f -d` of LOWER on MP with a new upper; the log is the
    daemon's stderr."""

    def __init__(self, ovlfs, lower, work, passthrough):
        self.ovlfs = ovlfs
        self.upper = tempfile.mkdtemp(prefix="upper-", dir=work)
        self.mp = tempfile.mkdtemp(prefix="mnt-", dir=work)
        self.log = j(work, os.path.basename(self.mp) + ".log")
        args = [ovlfs, "mount", "-f", "-d", "--upper", self.upper]
        if not passthrough:
            args.append("--no-passthrough")
        args += [lower, self.mp]
        self.logf = open(self.log, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=self.logf)
        deadline = time.monotonic() + 20
        while not mounted(self.mp):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("ovlfs mount %s failed: %s" % (
                    self.mp, open(self.log, errors="replace").read()[-2000:]))
            time.sleep(0.02)

    def settle(self):
        """Wait until no request has come for SETTLE seconds; the log's size."""
        size, since = -1, time.monotonic()
        while True:
            now = os.path.getsize(self.log)
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= SETTLE:
                return size
            time.sleep(0.02)

    def requests(self, start, pids):
        """Opcode -> count of the requests logged after byte START from PIDS
        (and the kernel's own, pid 0)."""
        counts = {}
        with open(self.log, "rb") as f:
            f.seek(start)
            for line in f.read().decode(errors="replace").splitlines():
                m = LINE.match(line)
                if not m or int(m.group(4)) not in pids | {0}:
                    continue
                op = m.group(2)
                if op == "???":
                    op = OPCODES.get(int(m.group(3)), "op%s" % m.group(3))
                counts[op] = counts.get(op, 0) + 1
        return counts

    def close(self):
        if mounted(self.mp):
            subprocess.run([self.ovlfs, "umount", self.mp],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60)
        if mounted(self.mp):
            subprocess.run(["umount", "-l", self.mp])
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()


# ---------------------------------------------------------------- workloads

class Ctx:
    """What an operation may use: the mount point and a way to run commands
    whose requests count."""

    def __init__(self, mp):
        self.mp = mp
        self.pids = {os.getpid()}

    def p(self, *names):
        return j(self.mp, *names)

    def run(self, args):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                env=dict(os.environ, LC_ALL="C"))
        self.pids.add(proc.pid)
        err = proc.communicate(timeout=300)[1]
        if proc.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(args), err.decode()))


def read_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.read(fd, 65536):
            pass
    finally:
        os.close(fd)


def create_write(path):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"x" * 4096)
    finally:
        os.close(fd)


def dd_write(c):
    c.run(["dd", "if=/dev/zero", "of=" + c.p("w"), "bs=4k", "count=100",
           "conv=notrunc", "status=none"])


# name, setup (not counted), operation. Files f1..f9 are lower files.
# The first row is counted without the warm-up: what a mount's first
# open+read+close costs (once-per-mount requests included).
FIRST = "open+read+close (first of the mount)"
OPS = [
    (FIRST, None, lambda c: read_file(c.p("f1"))),
    ("stat (fresh)", None, lambda c: os.stat(c.p("f1"))),
    ("stat (cached)", lambda c: os.stat(c.p("f1")),
     lambda c: os.stat(c.p("f1"))),
    ("open+read+close (fresh)", None, lambda c: read_file(c.p("f1"))),
    ("open+read+close (cached)", lambda c: read_file(c.p("f1")),
     lambda c: read_file(c.p("f1"))),
    ("create+write 4 KiB+close", None, lambda c: create_write(c.p("new"))),
    ("dd bs=4k count=100 conv=notrunc (upper file)",
     lambda c: create_write(c.p("w")), dd_write),
    ("dd bs=4k count=100 conv=notrunc (lower file, copy-up)", None,
     lambda c: c.run(["dd", "if=/dev/zero", "of=" + c.p("f2"), "bs=4k",
                      "count=100", "conv=notrunc", "status=none"])),
    ("chmod", lambda c: os.stat(c.p("f1")),
     lambda c: os.chmod(c.p("f1"), 0o600)),
    ("chown", lambda c: os.stat(c.p("f1")),
     lambda c: os.chown(c.p("f1"), 1000, 1000)),
    ("truncate", lambda c: os.stat(c.p("f1")),
     lambda c: os.truncate(c.p("f1"), 10)),
    ("utimensat", lambda c: os.stat(c.p("f1")),
     lambda c: os.utime(c.p("f1"), ns=(10 ** 18, 10 ** 18))),
    ("ls, 1,000 entries (fresh)", None, lambda c: c.run(["ls", c.p("d1k")])),
    ("ls -l, 1,000 entries (fresh)", None,
     lambda c: c.run(["ls", "-l", c.p("d1k")])),
    ("ls, 10,000 entries (fresh)", None,
     lambda c: c.run(["ls", c.p("d10k")])),
    ("ls -l, 10,000 entries (fresh)", None,
     lambda c: c.run(["ls", "-l", c.p("d10k")])),
    ("mkdir", None, lambda c: os.mkdir(c.p("newdir"))),
    ("unlink (lower file)", lambda c: os.stat(c.p("f1")),
     lambda c: os.unlink(c.p("f1"))),
    ("rename (lower file)", lambda c: os.stat(c.p("f1")),
     lambda c: os.rename(c.p("f1"), c.p("f1.mv"))),
]


def make_lower(lower):
    os.makedirs(lower)
    for i in range(10):
        with open(j(lower, "f%d" % i), "wb") as f:
            f.write(b"L" * 8192)
    for name, n in (("d1k", 1000), ("d10k", 10000)):
        os.mkdir(j(lower, name))
        for i in range(n):
            open(j(lower, name, "file-with-a-name-%05d" % i), "w").close()


def count(ovlfs, lower, work, passthrough, setup, op, first=False):
    m = Mount(ovlfs, lower, work, passthrough)
    try:
        c = Ctx(m.mp)
        if not first:
            os.stat(m.mp)
            read_file(c.p("f0"))
        if setup:
            setup(c)
        start = m.settle()
        op(c)
        m.settle()
        return m.requests(start, c.pids)
    finally:
        m.close()
        shutil.rmtree(m.upper, ignore_errors=True)
        os.rmdir(m.mp)
        os.unlink(m.log)


# ---------------------------------------------------------------- report

# Sent when the kernel evicts inodes (memory pressure, a drop_caches by
# anyone on the machine), not because of the operation: shown apart.
FORGETS = ("FORGET", "BATCH_FORGET")


def split(counts):
    """(the operation's requests, the number of forgets)."""
    return ({k: v for k, v in counts.items() if k not in FORGETS},
            sum(v for k, v in counts.items() if k in FORGETS))


def cell(counts):
    if not counts:
        return "-"
    return ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items()))


def diff_cell(old, new):
    ops = sorted(set(old) | set(new))
    parts = []
    for k in ops:
        a, b = old.get(k, 0), new.get(k, 0)
        parts.append("%s %d" % (k, b) if a == b else
                     "%s **%d -> %d**" % (k, a, b))
    return ", ".join(parts) or "-"


def table(results, before, mode):
    out = []
    if before:
        out.append("| operation | total before | total after | requests "
                   "| forgets |")
        out.append("| --- | ---: | ---: | --- | ---: |")
    else:
        out.append("| operation | total | requests | forgets |")
        out.append("| --- | ---: | --- | ---: |")
    for name, _, _ in OPS:
        if name not in results[mode]:
            continue
        new, nf = split(results[mode][name])
        if before:
            old = before.get(mode, {}).get(name)
            if old is None:
                out.append("| %s | - | %d | %s | %d |" % (
                    name, sum(new.values()), cell(new), nf))
            else:
                old = split(old)[0]
                out.append("| %s | %d | %d | %s | %d |" % (
                    name, sum(old.values()), sum(new.values()),
                    diff_cell(old, new), nf))
        else:
            out.append("| %s | %d | %s | %d |" % (
                name, sum(new.values()), cell(new), nf))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=j(REPO, "build"),
                    help="the build directory holding ovlfs (default: build/)")
    ap.add_argument("--results", default=j(HERE, "results"),
                    help="where requests.md and requests.json go")
    ap.add_argument("--before", help="counts of an earlier run (its .json): "
                    "show before -> after")
    ap.add_argument("--only", help="comma-separated substrings of operation "
                    "names")
    ap.add_argument("--modes", default="passthrough,no-passthrough")
    ap.add_argument("--reps", type=int, default=1,
                    help="count each operation N times and keep the run "
                    "with the fewest requests (evictions by a loaded "
                    "machine add LOOKUPs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/requests.py: needs root (tmpfs and FUSE mounts)")
    ovlfs = j(os.path.abspath(args.build), "ovlfs")
    if not os.access(ovlfs, os.X_OK):
        sys.exit("bench/requests.py: no ovlfs at %s (make build)" % ovlfs)
    before = None
    if args.before:
        with open(args.before) as f:
            before = json.load(f)["results"]
    ops = [o for o in OPS if not args.only or
           any(s in o[0] for s in args.only.split(","))]
    modes = args.modes.split(",")

    base = tempfile.mkdtemp(prefix="ovlfs-requests-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", base],
                   check=True)
    results = {m: {} for m in modes}
    try:
        lower = j(base, "lower")
        make_lower(lower)
        for mode in modes:
            for name, setup, op in ops:
                runs = [count(ovlfs, lower, base, mode == "passthrough",
                              setup, op, name == FIRST)
                        for _ in range(args.reps)]
                results[mode][name] = min(
                    runs, key=lambda r: (sum(split(r)[0].values()), split(r)[1]))
                print("%-16s %-55s %s" % (mode, name,
                                          cell(results[mode][name])),
                      file=sys.stderr)
    finally:
        subprocess.run(["umount", base])
        os.rmdir(base)

    rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                         stdout=subprocess.PIPE, text=True).stdout.strip()
    lines = ["# FUSE requests per operation (bench/requests.py)", "",
             "ovlfs %s (%s), kernel %s. Requests from the operation's own "
             "process, the commands it ran, and the kernel (pid 0), after a "
             "warm-up that spends the first FLUSH and STATX of the mount "
             "(but for the first row). "
             "Totals leave out FORGET and BATCH_FORGET (\"forgets\": the "
             "kernel evicting inodes, not the operation)."
             % (rev, ovlfs, os.uname().release), ""]
    for mode in modes:
        lines += ["## %s" % mode, ""] + table(results, before, mode) + [""]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.results, exist_ok=True)
    with open(j(args.results, "requests.md"), "w") as f:
        f.write(text)
    with open(j(args.results, "requests.json"), "w") as f:
        json.dump({"rev": rev, "kernel": os.uname().release,
                   "results": results}, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
