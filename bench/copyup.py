#!/usr/bin/python3
"""Copy-up avoided: directory rename (redirects) and chmod/chown (metacopy).

Two workloads that a naive overlay answers by copying data into the upper,
on every setup in one run: a plain directory (no overlay), ovlfs, the
kernel's overlayfs with the options that avoid the copy and with this
kernel's defaults (read from /sys/module/overlay/parameters), and
fuse-overlayfs.

* rename: rename(2) of a lower directory holding N files (N = 1,000,
  10,000, 100,000; 100 files per subdirectory, 1 KiB each). Where the
  overlay refuses with EXDEV (kernel with redirect_dir=off, fuse-overlayfs)
  the row times `mv`, which then copies the tree and deletes the old one,
  as a user would see it. ovlfs records a redirect: the time should not
  follow N (target: under 5 ms at every N).
* chmod -R / chown -R over 4 lower files of 256 MiB (64 MiB with --quick):
  a metadata-only copy-up (ovlfs by default once metacopy is in, the
  kernel with metacopy=on) writes no data; the others copy 1 GiB.
  These take a few milliseconds, most of it starting chmod: every setup
  runs 11 times (--reps) and the median is shown. Where the kernel offers
  FUSE-over-io_uring (/sys/module/fuse/parameters/enable_uring) ovlfs is
  also run over the rings ("ovlfs io_uring": the parameter is set for that
  row's mounts and put back after each). For each ovlfs row the FUSE
  requests the command made are counted (one more run, mounted with -d),
  and a request's round trip with nothing to do is timed on the same mount
  (getxattr of a name no file has, 2,000 times, from this process):
  "floor" = the plain directory's time + requests x that round trip, what
  ovlfs would take with no work of its own in any request. A floor above
  the kernel's time says the target is out of reach on this transport.

Everything is on one tmpfs (size 8 GiB, the layers and the mount point's
upper alike) so that the disk does not dominate: the figures are the
overlay's own work and the memory copies it makes. Every measurement is a
fresh mount over a new, empty upper, unmounted before the upper is
measured: "upper bytes" is the sum of st_blocks x 512 over the upper (what
du counts), "upper entries" the number of entries in it. The result is
checked each time (the new name holds N files, the old one is gone; every
large file shows the new mode or owner and its size; the lower unchanged),
a failed check shows FAIL. Median of --reps runs; a setup whose run took
over 10 s is not repeated.

Needs root (tmpfs, mounts). Prints Markdown tables and writes
bench/results/copyup.{md,csv}.

    sudo bench/copyup.py [--quick] [--reps N] [--meta-reps N]
                         [--files 1000,10000,100000]
                         [--only rename,chmod,chown] [--build DIR] [--results DIR]
"""

import argparse
import csv
import errno
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MIB = 1 << 20
TARGET_RENAME_S = 0.005
SLOW_S = 10.0
OWNER = 4242
URING = "/sys/module/fuse/parameters/enable_uring"
NOXATTR = "user.ovlfs-bench-none"
RTT_CALLS = 2000


def kparam(name):
    try:
        with open("/sys/module/overlay/parameters/" + name) as f:
            return f.read().strip() == "Y"
    except OSError:
        return None


def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=kw.pop("timeout", 600), **kw)


def ovlfs_has(build, option):
    """Whether this build of ovlfs knows OPTION (e.g. --no-metacopy)."""
    exe = os.path.join(build, "ovlfs")
    r = sh([exe, "mount", "--help"])
    return option in (r.stdout + r.stderr).decode(errors="replace")


class Setup:
    """One way of serving the lower: NAME, how to mount, how to unmount."""

    def __init__(self, name, kind, opts=(), note="", uring=False):
        self.name, self.kind, self.opts, self.note = name, kind, list(opts), note
        self.uring = uring          # enable_uring set while mounted
        self.uring_was = None

    def mount(self, args, lower, upper, work, mnt, extra=()):
        if self.uring:
            with open(URING) as f:
                self.uring_was = f.read().strip()
            with open(URING, "w") as f:
                f.write("Y")
        if self.kind == "ovlfs":
            cmd = [os.path.join(args.build, "ovlfs"), "mount", "--upper", upper,
                   *self.opts, *extra, lower, mnt]
        elif self.kind == "kernel":
            o = "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work)
            cmd = ["mount", "-t", "overlay", "overlay", "-o",
                   ",".join([o] + self.opts), mnt]
        elif self.kind == "fuse-overlayfs":
            cmd = ["fuse-overlayfs", "-o", "lowerdir=%s,upperdir=%s,workdir=%s"
                   % (lower, upper, work), mnt]
        else:
            return
        r = sh(cmd, timeout=60)
        if r.returncode != 0 or not os.path.ismount(mnt):
            raise RuntimeError("mount failed: %s: %s" % (
                " ".join(cmd), r.stderr.decode(errors="replace").strip()))

    def umount(self, mnt):
        try:
            if self.kind == "plain" or not os.path.ismount(mnt):
                return
            r = sh(["umount", mnt], timeout=60)
            if r.returncode != 0:
                sh(["umount", "-l", mnt], timeout=60)
            # A FUSE server may still be writing its last replies out.
            end = time.monotonic() + 10
            while os.path.ismount(mnt) and time.monotonic() < end:
                time.sleep(0.05)
        finally:
            # The parameter is the machine's: put back what it was.
            if self.uring_was is not None:
                with open(URING, "w") as f:
                    f.write(self.uring_was)
                self.uring_was = None


def setups(args, which):
    rd, mc = kparam("redirect_dir"), kparam("metacopy")
    default = "default: redirect_dir=%s, metacopy=%s" % (
        {True: "on", False: "off", None: "?"}[rd],
        {True: "on", False: "off", None: "?"}[mc])
    out = [Setup("plain", "plain", note="no overlay")]
    out.append(Setup("ovlfs", "ovlfs", note="defaults"))
    if which == "rename":
        out.append(Setup("kernel redirect_dir=on", "kernel", ["redirect_dir=on"]))
    else:
        if ovlfs_has(args.build, "--no-metacopy"):
            out.append(Setup("ovlfs --no-metacopy", "ovlfs", ["--no-metacopy"]))
        else:
            out.append(Setup("ovlfs --no-metacopy", "skip",
                             note="this build has no --no-metacopy (no metacopy "
                                  "yet: the ovlfs row copies data)"))
        if os.path.exists(URING) and ovlfs_has(args.build, "--io-uring"):
            out.append(Setup("ovlfs io_uring", "ovlfs", ["--io-uring", "on"],
                             note="FUSE-over-io_uring", uring=True))
        out.append(Setup("kernel metacopy=on", "kernel",
                         ["metacopy=on", "redirect_dir=on"]))
    out.append(Setup("kernel default", "kernel", note=default))
    if shutil.which("fuse-overlayfs"):
        out.append(Setup("fuse-overlayfs", "fuse-overlayfs"))
    else:
        out.append(Setup("fuse-overlayfs", "skip",
                         note="not installed (apt-get install fuse-overlayfs)"))
    return out


# ---- the dataset ----

def make_rename_tree(root, n):
    per = 100
    blob = b"x" * 1024
    for d in range((n + per - 1) // per):
        dd = os.path.join(root, "s%04d" % d)
        os.makedirs(dd)
        for i in range(min(per, n - d * per)):
            with open(os.path.join(dd, "f%03d" % i), "wb") as f:
                f.write(blob)


def make_big(root, count, size):
    os.makedirs(root)
    chunk = os.urandom(MIB)
    for i in range(count):
        with open(os.path.join(root, "big%d" % i), "wb") as f:
            for _ in range(size // MIB):
                f.write(chunk)


def usage(root):
    """(bytes by st_blocks, entries) under ROOT, ROOT itself not counted."""
    total, n = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_blocks * 512
            n += 1
    return total, n


def count_files(root):
    return sum(len(f) for _, _, f in os.walk(root))


def tree_sig(root):
    """Names, modes, owners and sizes under ROOT (for 'lower unchanged')."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, name))
            h.update(("%s/%s %o %d %d %d\n" % (
                os.path.relpath(dirpath, root), name, st.st_mode, st.st_uid,
                st.st_gid, st.st_size)).encode())
    return h.hexdigest()


# ---- what a request costs, and how many ----

def null_rtt(path):
    """Median round trip (s) of a request ovlfs answers with one fstat:
    statx of PATH with AT_STATX_FORCE_SYNC, which FUSE always sends on
    (GETATTR), from this process, in batches of 100."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    p = os.fsencode(path)
    flags = 0x100 | 0x2000          # AT_SYMLINK_NOFOLLOW | AT_STATX_FORCE_SYNC

    def batch():
        t = time.perf_counter()
        for _ in range(100):
            if libc.statx(-100, p, flags, 0x7ff, buf) != 0:
                raise OSError(ctypes.get_errno(), "statx", path)
        return (time.perf_counter() - t) / 100
    batch()                         # warm-up: the first STATX is refused
    return statistics.median(batch() for _ in range(RTT_CALLS // 100))


def count_requests(args, base, lower, setup, cmd_of):
    """Opcode -> FUSE requests of the command CMD_OF(mount point) on a fresh
    mount of SETUP (ovlfs, with -d): those from its process and the
    kernel's own (pid 0)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "ovlfs_bench_requests", os.path.join(HERE, "requests.py"))
    rq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rq)
    upper, work, mnt = (os.path.join(base, "run", "count" + s)
                        for s in (".upper", ".work", ".mnt"))
    log = os.path.join(base, "count.log")
    for d in (upper, work, mnt):
        os.makedirs(d)
    counts = {}
    try:
        setup.mount(args, lower, upper, work, mnt, extra=("-d", "--log", log))
        start = os.path.getsize(log)
        proc = subprocess.Popen(cmd_of(mnt), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        proc.wait(timeout=600)
        time.sleep(0.3)             # the kernel's RELEASEDIR comes after
        with open(log, "rb") as f:
            f.seek(start)
            for line in f.read().decode(errors="replace").splitlines():
                # --log lines: "TIME LEVEL unique: ..."
                m = rq.LINE.match(line[max(line.find("unique: "), 0):])
                if m and int(m.group(4)) in (proc.pid, 0):
                    counts[m.group(2)] = counts.get(m.group(2), 0) + 1
    finally:
        setup.umount(mnt)
        shutil.rmtree(os.path.join(base, "run"))
        os.makedirs(os.path.join(base, "run"))
        if os.path.exists(log):
            os.unlink(log)
    return counts


def meta_cmd(op, target):
    return (["chmod", "-R", "g+w", target] if op == "chmod" else
            ["chown", "-R", "%d:%d" % (OWNER, OWNER), target])


# ---- one measurement ----

def one(args, base, lower, setup, op, param, idx):
    """Time OP on a fresh mount of SETUP: dict of secs, how, upper bytes."""
    tag = "%s-%d" % (setup.name.replace(" ", "_").replace("=", "_"), idx)
    upper, work, mnt = (os.path.join(base, "run", tag + s)
                        for s in (".upper", ".work", ".mnt"))
    for d in (upper, work, mnt):
        os.makedirs(d)
    res = {"how": "rename(2)" if op == "rename" else op + " -R"}
    try:
        if setup.kind == "plain":
            if op == "rename":
                root = lower          # renamed back below
            else:
                # chmod works on a copy, made outside the timing
                root = os.path.join(mnt, "copy")
                os.makedirs(root)
                sh(["cp", "-a", os.path.join(lower, "big"), root], check=True)
        else:
            setup.mount(args, lower, upper, work, mnt)
            root = mnt
        if op == "rename":
            src = os.path.join(root, "ren%d" % param)
            dst = os.path.join(root, "renamed%d" % param)
            os.lstat(src)             # the lookup is not what is timed
            t = time.perf_counter()
            try:
                os.rename(src, dst)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
                res["how"] = "mv (EXDEV: copy + delete)"
                r = sh(["mv", src, dst], timeout=3600)
                if r.returncode != 0:
                    raise RuntimeError("mv: " + r.stderr.decode(errors="replace"))
            res["secs"] = time.perf_counter() - t
            ok = (not os.path.lexists(src) and count_files(dst) == param)
            if setup.kind == "plain":
                os.rename(dst, src)
        else:
            target = os.path.join(root, "big")
            cmd = meta_cmd(op, target)
            t = time.perf_counter()
            r = sh(cmd, timeout=3600)
            res["secs"] = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(" ".join(cmd) + ": " +
                                   r.stderr.decode(errors="replace"))
            ok = True
            for i in range(param[0]):
                st = os.lstat(os.path.join(target, "big%d" % i))
                ok = ok and st.st_size == param[1] and (
                    st.st_mode & 0o777 == 0o664 if op == "chmod" else
                    (st.st_uid, st.st_gid) == (OWNER, OWNER))
            # A sample of the data, through the setup, against the lower.
            with open(os.path.join(target, "big0"), "rb") as a, \
                    open(os.path.join(lower, "big", "big0"), "rb") as b:
                ok = ok and a.read(MIB) == b.read(MIB)
            if setup.kind == "ovlfs":
                res["rtt"] = null_rtt(root)
        res["ok"] = ok
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        res.update(ok=False, secs=None, error=str(e))
    finally:
        setup.umount(mnt)
    if setup.kind == "plain":
        res["upper_bytes"], res["upper_entries"] = None, None
    else:
        res["upper_bytes"], res["upper_entries"] = usage(upper)
    shutil.rmtree(os.path.join(base, "run"))
    os.makedirs(os.path.join(base, "run"))
    return res


def fmt_secs(s):
    if s is None:
        return "FAIL"
    if s < 1:
        return "%.2f ms" % (s * 1000) if s < 0.1 else "%.0f ms" % (s * 1000)
    return "%.2f s" % s


def fmt_bytes(b):
    if b is None:
        return "-"
    if b < MIB:
        return "%.0f KiB" % (b / 1024)
    return "%.1f MiB" % (b / MIB)


def run_rows(args, base, lower, op, params, label):
    rows = []
    for param in params:
        ss = setups(args, "rename" if op == "rename" else "meta")
        runs = {s.name: [] for s in ss}
        for rep in range(args.reps if op == "rename" else args.meta_reps):
            for i, s in enumerate(ss):
                if s.kind == "skip":
                    continue
                done = runs[s.name]
                if done and (done[0]["secs"] is None or done[0]["secs"] > SLOW_S):
                    continue
                done.append(one(args, base, lower, s, op, param, rep * 10 + i))
                print("  %s %s %s: %s" % (op, label(param), s.name,
                                          fmt_secs(done[-1]["secs"])),
                      file=sys.stderr, flush=True)
        counted = {}
        if op != "rename":
            for s in ss:
                if s.kind == "ovlfs" and runs[s.name] and runs[s.name][0]["ok"]:
                    counted[s.name] = count_requests(
                        args, base, lower, s,
                        lambda mnt: meta_cmd(op, os.path.join(mnt, "big")))
        for s in ss:
            rs = runs[s.name]
            row = {"op": op, "param": label(param), "setup": s.name,
                   "note": s.note}
            if s.name in counted:
                row["requests"] = counted[s.name]
                rtts = [r["rtt"] for r in rs if r.get("rtt")]
                row["rtt"] = statistics.median(rtts) if rtts else None
            if s.kind == "skip":
                row.update(secs=None, how="skipped", ok=None, runs=0,
                           upper_bytes=None, upper_entries=None, all_secs="")
            else:
                good = all(r["ok"] for r in rs)
                secs = [r["secs"] for r in rs if r["secs"] is not None]
                row.update(secs=statistics.median(secs) if good and secs else None,
                           how=rs[0]["how"], ok=good, runs=len(rs),
                           upper_bytes=rs[-1]["upper_bytes"],
                           upper_entries=rs[-1]["upper_entries"],
                           all_secs=" ".join("%.6f" % x for x in secs),
                           error=next((r.get("error") for r in rs
                                       if r.get("error")), ""))
            rows.append(row)
    return rows


def table(rows, title):
    lines = ["### " + title, "",
             "| size | setup | time | how | upper bytes | upper entries | runs | note |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r["how"] == "skipped":
            t = "skipped"
        else:
            t = fmt_secs(r["secs"]) if r["ok"] else "FAIL"
        note = r["note"]
        if r.get("error"):
            note = (note + "; " if note else "") + r["error"][:120]
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["param"], r["setup"], t, r["how"], fmt_bytes(r["upper_bytes"]),
            "-" if r["upper_entries"] is None else "{:,}".format(r["upper_entries"]),
            r["runs"], note))
    return lines


def floor_table(rows):
    """Requests, round trip and floor of the ovlfs rows of one op, and the
    target line."""
    by = {r["setup"]: r for r in rows}
    plain, kern = by.get("plain"), by.get("kernel metacopy=on")
    lines = ["| setup | time | requests | by opcode | round trip | floor | "
             "kernel metacopy=on |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    verdict = []
    for r in rows:
        if "requests" not in r:
            continue
        n = sum(r["requests"].values())
        ops = ", ".join("%s %d" % kv for kv in sorted(
            r["requests"].items(), key=lambda kv: (-kv[1], kv[0])))
        floor = None
        if plain and plain["secs"] is not None and r.get("rtt"):
            floor = plain["secs"] + n * r["rtt"]
        ks = kern["secs"] if kern else None
        lines.append("| %s | %s | %d | %s | %s | %s | %s |" % (
            r["setup"], fmt_secs(r["secs"]), n, ops,
            "%.1f us" % (r["rtt"] * 1e6) if r.get("rtt") else "-",
            fmt_secs(floor) if floor is not None else "-",
            fmt_secs(ks) if ks is not None else "-"))
        if r["secs"] is not None and ks is not None:
            verdict.append("%s %s (%s)%s" % (
                r["setup"], fmt_secs(r["secs"]),
                "yes" if r["secs"] <= ks else "NO",
                "; its floor is above the kernel's time" if floor is not None
                and floor > ks else ""))
    if kern and kern["secs"] is not None and verdict:
        lines += ["", "ovlfs target, at most the kernel's time with metacopy=on "
                  "(%s): %s." % (fmt_secs(kern["secs"]), "; ".join(verdict))]
    return lines


def fuse_overlayfs_version():
    if not shutil.which("fuse-overlayfs"):
        return "no fuse-overlayfs"
    r = sh(["fuse-overlayfs", "--version"], timeout=30)
    for line in (r.stdout + r.stderr).decode(errors="replace").splitlines():
        if line.startswith("fuse-overlayfs"):
            return line.strip()
    return "fuse-overlayfs ?"


def git_describe():
    r = sh(["git", "-C", REPO, "describe", "--always", "--dirty"], timeout=30)
    return r.stdout.decode().strip() if r.returncode == 0 else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="1,000 and 10,000 files, 4 x 64 MiB, 3 runs")
    ap.add_argument("--reps", type=int, default=None,
                    help="runs of each rename row (default 3)")
    ap.add_argument("--meta-reps", type=int, default=11,
                    help="runs of each chmod/chown row (default 11)")
    ap.add_argument("--files", default=None,
                    help="rename sizes, comma-separated (default 1000,10000,100000)")
    ap.add_argument("--only", default="rename,chmod,chown")
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/copyup.py: needs root (tmpfs, mounts)")
    args.reps = args.reps or 3
    sizes = [int(x) for x in (args.files or (
        "1000,10000" if args.quick else "1000,10000,100000")).split(",")]
    big = (4, (64 if args.quick else 256) * MIB)
    only = args.only.split(",")

    base = tempfile.mkdtemp(prefix="ovlfs-copyup-", dir="/tmp")
    sh(["mount", "-t", "tmpfs", "-o", "size=8g", "ovlfs-bench", base], check=True)
    rows = []
    load = os.getloadavg()
    try:
        lower = os.path.join(base, "lower")
        os.makedirs(os.path.join(base, "run"))
        for n in sizes:
            make_rename_tree(os.path.join(lower, "ren%d" % n), n)
        make_big(os.path.join(lower, "big"), *big)
        sig = tree_sig(lower)
        if "rename" in only:
            rows += run_rows(args, base, lower, "rename", sizes,
                             lambda n: "{:,} files".format(n))
        for op in ("chmod", "chown"):
            if op in only:
                rows += run_rows(args, base, lower, op, [big],
                                 lambda b: "%d x %d MiB" % (b[0], b[1] // MIB))
        if tree_sig(lower) != sig:
            for r in rows:
                r["ok"], r["secs"] = False, None
            print("bench/copyup.py: the lower changed: every row FAIL",
                  file=sys.stderr)
    finally:
        for d in sorted(os.listdir(os.path.join(base, "run")), reverse=True) \
                if os.path.isdir(os.path.join(base, "run")) else []:
            m = os.path.join(base, "run", d)
            if os.path.ismount(m):
                sh(["umount", "-l", m])
        sh(["umount", base])
        os.rmdir(base)
    load_end = os.getloadavg()

    head = ["# Copy-up avoided: directory rename and chmod/chown", "",
            "ovlfs %s, kernel %s, %s; all layers on tmpfs; median of up to %d runs "
            "(rename) or %d (chmod, chown); "
            "1-minute load average %.1f at start, %.1f at end (2 CPUs shared)." % (
                git_describe(), platform.release(),
                fuse_overlayfs_version(), args.reps, args.meta_reps, load[0],
                load_end[0]), ""]
    body = []
    ren = [r for r in rows if r["op"] == "rename"]
    if ren:
        body += table(ren, "rename of a lower directory") + [""]
        o = [r for r in ren if r["setup"] == "ovlfs"]
        if o and all(r["ok"] for r in o):
            worst = max(r["secs"] for r in o)
            body += ["ovlfs target, rename under %d ms at every size: %s (worst %s; "
                     "largest/smallest size: %.2fx)." % (
                         TARGET_RENAME_S * 1000,
                         "yes" if worst < TARGET_RENAME_S else "NO", fmt_secs(worst),
                         o[-1]["secs"] / o[0]["secs"]), ""]
    for op in ("chmod", "chown"):
        rs = [r for r in rows if r["op"] == op]
        if rs:
            body += table(rs, "%s -R over the large lower files" % op) + [""]
            body += floor_table(rs) + [""]
    text = "\n".join(head + body)
    print(text)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "copyup.md"), "w") as f:
        f.write(text)
    for r in rows:
        if "requests" in r:
            r["requests"] = " ".join("%s=%d" % kv for kv in
                                     sorted(r["requests"].items()))
    fields = ["op", "param", "setup", "secs", "how", "ok", "runs", "upper_bytes",
              "upper_entries", "all_secs", "requests", "rtt", "note", "error"]
    with open(os.path.join(args.results, "copyup.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
