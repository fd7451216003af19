#!/usr/bin/python3
"""Benchmark `ovlfs commit` and `ovlfs commit --atomic`.

Time against the size of the change (changed entries) and the size of the
lower (files), on a tmpfs, with the upper on the lower's tmpfs (same-fs) and
on another tmpfs (other-fs).  Prints a table, writes a CSV, and reports the
ratio of commit-atomic time for 10 changes into the largest lower vs the
1,000-file lower (it should stay near 1: cost grows with the change, not
with the lower).

Also the commit of a renamed 10,000-file directory (an upper holding only
the redirect and the old name's whiteout): ovlfs renames it in the lower,
copying nothing (checked: the files keep their inode numbers), against
`cp -a` + `rm -rf` of the same tree (what copying the renamed tree costs)
and a bare rename(2) (the floor).

Needs root (mounts two tmpfs under a temporary directory, unmounted at the
end).  Usage:

    sudo bench/commit.py [--quick] [--csv FILE] [--build DIR] [--reps N]

A change of N entries: 70% existing files rewritten (new content), 15% new
files, 15% files deleted (whiteouts), spread over the lower's directories;
the upper is written directly in the upper format (docs/format.md).  Each
measurement uses a fresh upper touching files not touched before, so the
lower keeps its size; combinations with more changes than lower files are
skipped.
"""

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_DIR = 100
FILE_SIZE = 512


def build_lower(lower, nfiles):
    os.mkdir(lower)
    data = b"L" * FILE_SIZE
    for i in range(nfiles):
        d = os.path.join(lower, "d%05d" % (i // PER_DIR))
        if i % PER_DIR == 0:
            os.mkdir(d)
        fd = os.open(os.path.join(d, "f%07d" % i), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)


class Changes:
    """Hands out files of the lower, least recently touched first; tracks
    deletions and new files so the picture stays true across commits."""

    def __init__(self, nfiles):
        from collections import deque
        self.files = deque(("d%05d" % (i // PER_DIR), "f%07d" % i) for i in range(nfiles))
        self.serial = 0

    def pick(self, n):
        if n > len(self.files):
            raise RuntimeError("lower exhausted")
        return [self.files.popleft() for _ in range(n)]

    def make_upper(self, upper, n):
        """Write an upper with N changed entries; returns the count."""
        self.serial += 1
        nmod = max(1, int(n * 0.7))
        ndel = int(n * 0.15)
        nnew = n - nmod - ndel
        os.mkdir(upper)
        mod = self.pick(nmod)
        dele = self.pick(ndel)
        data = ("changed %d " % self.serial).encode().ljust(FILE_SIZE, b"C")
        made = set()

        def dirof(d):
            p = os.path.join(upper, d)
            if p not in made:
                os.makedirs(p, exist_ok=True)
                made.add(p)
            return p

        for d, name in mod:
            with open(os.path.join(dirof(d), name), "wb") as f:
                f.write(data)
        for d, name in dele:
            open(os.path.join(dirof(d), ".wh." + name), "wb").close()
        # new files go beside the deleted ones (same directories), so the
        # lower keeps its size and its layout
        new = []
        for k in range(nnew):
            d = (dele or mod)[k % len(dele or mod)][0]
            name = "n%d_%d" % (self.serial, k)
            with open(os.path.join(dirof(d), name), "wb") as f:
                f.write(data)
            new.append((d, name))
        self.files.extend(mod)
        self.files.extend(new)
        return nmod + ndel + nnew


RENAMED_FILES = 10000


def bench_renamed(ovlfs, fs_a, fs_b, reps):
    """Commit of a renamed RENAMED_FILES-file directory; rows for the CSV."""
    lower = os.path.join(fs_a, "lower-renamed")
    os.mkdir(lower)
    src = os.path.join(lower, "big0")
    os.mkdir(src)
    data = b"R" * FILE_SIZE
    for i in range(RENAMED_FILES):
        fd = os.open(os.path.join(src, "f%05d" % i), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.close(fd)
    serial = [0]
    xattr = "trusted.ovlfs.redirect" if os.geteuid() == 0 else "user.ovlfs.redirect"

    def names():
        return "big%d" % serial[0], "big%d" % (serial[0] + 1)

    def ovlfs_run(fsdir, atomic):
        old, new = names()
        upper = os.path.join(fsdir, "upper")
        if os.path.exists(upper):
            rm_rf(upper)
        os.mkdir(upper)
        os.mkdir(os.path.join(upper, new))
        os.setxattr(os.path.join(upper, new), xattr, old.encode())
        open(os.path.join(upper, ".wh." + old), "wb").close()
        ino = os.lstat(os.path.join(lower, old, "f00000")).st_ino
        dt = run_commit(ovlfs, lower, upper, atomic)
        if os.lstat(os.path.join(lower, new, "f00000")).st_ino != ino:
            raise RuntimeError("commit of a renamed directory copied it")
        serial[0] += 1
        return dt

    def copy_run(_fsdir, _atomic):
        old, new = names()
        t = time.perf_counter()
        subprocess.run(["cp", "-a", "--", os.path.join(lower, old),
                        os.path.join(lower, new)], check=True)
        subprocess.run(["rm", "-rf", "--", os.path.join(lower, old)], check=True)
        dt = time.perf_counter() - t
        serial[0] += 1
        return dt

    def rename_run(_fsdir, _atomic):
        old, new = names()
        t = time.perf_counter()
        os.rename(os.path.join(lower, old), os.path.join(lower, new))
        dt = time.perf_counter() - t
        serial[0] += 1
        return dt

    rows = []
    for label, fn, place, fsdir, atomic in (
            ("commit", ovlfs_run, "same-fs", fs_a, False),
            ("commit-atomic", ovlfs_run, "same-fs", fs_a, True),
            ("commit", ovlfs_run, "other-fs", fs_b, False),
            ("commit-atomic", ovlfs_run, "other-fs", fs_b, True),
            ("cp-a+rm-rf", copy_run, "-", None, False),
            ("rename(2)", rename_run, "-", None, False)):
        times = [fn(fsdir, atomic) for _ in range(reps)]
        med = statistics.median(times)
        rows.append({"lower_files": RENAMED_FILES, "changed": "renamed-dir",
                     "mode": label, "upper": place, "seconds": round(med, 5),
                     "runs": reps})
        print("renamed %d-file dir  %-13s %-8s %9.4fs" % (
            RENAMED_FILES, label, place, med), file=sys.stderr)
    rm_rf(lower)
    return rows


def mount_tmpfs(path, size):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "ovlfs-bench", path],
                   check=True)


def rm_rf(path):
    subprocess.run(["rm", "-rf", "--", path], check=True)


def run_commit(ovlfs, lower, upper, atomic):
    args = [ovlfs, "commit"] + (["--atomic"] if atomic else []) + \
        ["--quiet", "--upper", upper, lower]
    t = time.perf_counter()
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(args), r.stderr.decode()))
    if os.path.exists(upper):
        raise RuntimeError("upper %s still there after commit" % upper)
    return dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes (lowers 1k/10k/100k, changes 10/100), 3 runs each")
    ap.add_argument("--csv", default="bench-commit.csv", help="CSV output file")
    ap.add_argument("--build", default=os.path.join(REPO, "build"),
                    help="build directory holding ovlfs")
    ap.add_argument("--reps", type=int, default=None, help="runs per point (median)")
    ap.add_argument("--lowers", default=None, help="comma-separated lower sizes")
    ap.add_argument("--changes", default=None, help="comma-separated change sizes")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/commit.py needs root (it mounts tmpfs)")
    ovlfs = os.path.join(a.build, "ovlfs")
    if a.quick:
        lowers, changes, reps = [1000, 10000, 100000], [10, 100], a.reps or 3
    else:
        lowers, changes, reps = [1000, 10000, 100000], [10, 100, 1000, 10000], a.reps or 3
    if a.lowers:
        lowers = [int(x) for x in a.lowers.split(",")]
    if a.changes:
        changes = [int(x) for x in a.changes.split(",")]

    base = tempfile.mkdtemp(prefix="ovlfs-bench-")
    fs_a, fs_b = os.path.join(base, "a"), os.path.join(base, "b")
    os.mkdir(fs_a)
    os.mkdir(fs_b)
    mounted = []
    rows = []
    t_start = time.monotonic()
    try:
        mount_tmpfs(fs_a, "8g")
        mounted.append(fs_a)
        mount_tmpfs(fs_b, "4g")
        mounted.append(fs_b)
        for nl in lowers:
            lower = os.path.join(fs_a, "lower-%d" % nl)
            t = time.monotonic()
            build_lower(lower, nl)
            print("# built a %d-file lower in %.1fs" % (nl, time.monotonic() - t),
                  file=sys.stderr)
            ch = Changes(nl)
            for nc in changes:
                if nc > nl:
                    continue
                for place, fsdir in (("same-fs", fs_a), ("other-fs", fs_b)):
                    for mode in ("commit", "commit-atomic"):
                        times = []
                        # the smallest change is the scaling claim: more runs
                        n_runs = reps * 3 if nc == min(changes) else reps
                        for _ in range(n_runs):
                            upper = os.path.join(fsdir, "upper")
                            if os.path.exists(upper):
                                rm_rf(upper)
                            ch.make_upper(upper, nc)
                            times.append(run_commit(ovlfs, lower, upper,
                                                    mode == "commit-atomic"))
                        med = statistics.median(times)
                        rows.append({"lower_files": nl, "changed": nc, "mode": mode,
                                     "upper": place, "seconds": round(med, 5),
                                     "runs": n_runs})
                        print("lower %7d  changed %6d  %-13s %-8s %9.4fs" % (
                            nl, nc, mode, place, med), file=sys.stderr)
            rm_rf(lower)
        renamed = bench_renamed(ovlfs, fs_a, fs_b, reps * 3)
        rows.extend(renamed)
    finally:
        for m in reversed(mounted):
            subprocess.run(["umount", m])
        if not any(os.path.ismount(m) for m in mounted):
            shutil.rmtree(base, ignore_errors=True)

    with open(a.csv, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["lower_files", "changed", "mode", "upper",
                                           "seconds", "runs"])
        wr.writeheader()
        wr.writerows(rows)

    # table: one row per (lower, changed), one column per (mode, upper)
    cols = [(m, p) for m in ("commit", "commit-atomic") for p in ("same-fs", "other-fs")]
    print()
    print("%11s %8s " % ("lower files", "changed") +
          " ".join("%21s" % ("%s/%s" % (m.replace("commit-atomic", "atomic"), p))
                   for m, p in cols))
    idx = {(r["lower_files"], r["changed"], r["mode"], r["upper"]): r["seconds"] for r in rows}
    for nl in lowers:
        for nc in changes:
            if nc > nl:
                continue
            print("%11d %8d " % (nl, nc) + " ".join(
                "%20.4fs" % idx[(nl, nc, m, p)] for m, p in cols))
    print()
    ren = {(r["mode"], r["upper"]): r["seconds"] for r in renamed}
    cp_t = ren[("cp-a+rm-rf", "-")]
    print("commit of a renamed %d-file directory (a rename in the lower, no "
          "data copied):" % RENAMED_FILES)
    for (m, p), sec in ren.items():
        print("  %-14s %-8s %9.4fs  %s" % (
            m, p, sec, "" if m == "cp-a+rm-rf" else
            "(%.3f x cp -a + rm -rf)" % (sec / cp_t if cp_t > 0 else 0)))
    print()
    small, big = min(lowers), max(lowers)
    nc = min(changes)
    verdict = []
    for p in ("same-fs", "other-fs"):
        k1, k2 = (small, nc, "commit-atomic", p), (big, nc, "commit-atomic", p)
        if k1 in idx and k2 in idx and small != big:
            ratio = idx[k2] / idx[k1] if idx[k1] > 0 else float("inf")
            verdict.append(ratio)
            print("commit-atomic, %d changes, upper %s: %d-file lower %.4fs, "
                  "%d-file lower %.4fs, ratio %.2f" % (nc, p, big, idx[k2], small,
                                                      idx[k1], ratio))
    if verdict:
        worst = max(verdict)
        print("=> %s (worst ratio %.2f; ~1 means independent of the lower's size)" % (
            "does not scale with the lower" if worst < 2.0 else
            "SCALES WITH THE LOWER", worst))
    print("CSV written to %s; total %.1fs" % (a.csv, time.monotonic() - t_start))


if __name__ == "__main__":
    main()
