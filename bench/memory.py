#!/usr/bin/python3
"""Memory of the FUSE servers: ovlfs against fuse-overlayfs.

The performance issue's memory target (both transports: ovlfs-uring is
FUSE-over-io_uring, the fuse module's enable_uring on for its row only): after a full-tree stat of 100,000
files the daemon stays under 64 MiB resident, and it gives memory back when
the kernel forgets the inodes. This builds a tree of N files (default
100,000 in 1,000 directories) on a private tmpfs, mounts each server over
it, lstats every file through the mount, reads the server's VmRSS, then
makes the kernel forget its inodes (drop_caches=2: every FORGET reaches the
server) and reads VmRSS again. Prints a Markdown table and writes
bench/results/memory.{md,csv}.

Needs root (tmpfs, mounts, drop_caches). Usage:

    sudo bench/memory.py [--files N] [--build DIR] [--results DIR]
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time

from overlay import pids_with_arg

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TARGET_MIB = 64
URING_PARAM = "/sys/module/fuse/parameters/enable_uring"


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for %d" % pid)


def server_pid(mnt):
    pids = pids_with_arg(mnt)
    if not pids:
        raise RuntimeError("no server process for %s" % mnt)
    return pids[0]


def make_tree(lower, n):
    per = 100
    for d in range((n + per - 1) // per):
        dd = os.path.join(lower, "d%05d" % d)
        os.makedirs(dd)
        for i in range(min(per, n - d * per)):
            open(os.path.join(dd, "f%03d" % i), "w").close()


def stat_all(root):
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.lstat(os.path.join(dirpath, name))
            count += 1
    return count


def measure(setup, args, base, lower):
    upper = os.path.join(base, setup + ".upper")
    work = os.path.join(base, setup + ".work")
    mnt = os.path.join(base, setup + ".mnt")
    for d in (upper, work, mnt):
        os.makedirs(d)
    if setup.startswith("ovlfs"):
        cmd = [os.path.join(args.build, "ovlfs"), "mount", "--io-uring",
               "on" if setup == "ovlfs-uring" else "off", "--upper", upper, lower, mnt]
        umount = [os.path.join(args.build, "ovlfs"), "umount", mnt]
    else:
        cmd = ["fuse-overlayfs", "-o",
               "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work), mnt]
        umount = ["fusermount3", "-u", mnt]
    subprocess.run(cmd, check=True, timeout=60)
    try:
        pid = server_pid(mnt)
        start = rss_kib(pid)
        t = time.monotonic()
        seen = stat_all(mnt)
        secs = time.monotonic() - t
        after_stat = rss_kib(pid)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        time.sleep(3)
        after_forget = rss_kib(pid)
    finally:
        subprocess.run(umount, timeout=60)
    return {"setup": setup, "entries": seen, "stat_s": secs,
            "start_mib": start / 1024, "after_stat_mib": after_stat / 1024,
            "after_forget_mib": after_forget / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=100000)
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/memory.py: needs root (tmpfs, mounts, drop_caches)")
    base = tempfile.mkdtemp(prefix="ovlfs-mem-", dir="/tmp")
    rows = []
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", base], check=True)
    try:
        lower = os.path.join(base, "lower")
        make_tree(lower, args.files)
        setups = ["ovlfs"]
        if shutil.which("fuse-overlayfs"):
            setups.insert(0, "fuse-overlayfs")
        uring_old = None
        try:
            with open(URING_PARAM) as f:
                uring_old = f.read().strip()
            with open(URING_PARAM, "w") as f:
                f.write("Y")
            setups.append("ovlfs-uring")
        except OSError:
            uring_old = None     # no FUSE-over-io_uring here: no such row
        try:
            for s in setups:
                rows.append(measure(s, args, base, lower))
        finally:
            if uring_old is not None:
                with open(URING_PARAM, "w") as f:
                    f.write(uring_old)
    finally:
        subprocess.run(["umount", base])
        os.rmdir(base)
    lines = ["Memory of the FUSE server (VmRSS) around an lstat of every entry of a "
             "%d-file tree and after the kernel forgets its inodes (drop_caches=2)." % args.files,
             "",
             "| server | entries | lstat all | RSS before | RSS after lstat | RSS after forget |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append("| %s | %d | %.2f s | %.1f MiB | %.1f MiB | %.1f MiB |" % (
            r["setup"], r["entries"], r["stat_s"], r["start_mib"],
            r["after_stat_mib"], r["after_forget_mib"]))
    ok_size = ok_back = True
    for o in (r for r in rows if r["setup"].startswith("ovlfs")):
        size = o["after_stat_mib"] < TARGET_MIB
        back = o["after_forget_mib"] < o["after_stat_mib"] / 2
        ok_size, ok_back = ok_size and size, ok_back and back
        lines += ["", "%s target: under %d MiB after the lstat: %s; gives memory back "
                  "(under half after forget): %s." % (o["setup"], TARGET_MIB,
                                                      "yes" if size else "NO",
                                                      "yes" if back else "NO")]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "memory.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.results, "memory.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    return 0 if ok_size and ok_back else 1


if __name__ == "__main__":
    sys.exit(main())
