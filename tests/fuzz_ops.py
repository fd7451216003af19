#!/usr/bin/python3
"""Differential fuzzer: random file system operations applied in lockstep to
an ovlfs mount and to a plain directory (the oracle).

    /usr/bin/python3 tests/fuzz_ops.py --seed N --ops M [--procs K] [--keep]

A random lower tree (files, sparse files, directories, symlinks, dangling
symlinks, hard links, fifos, user.* xattrs, owners, modes, explicit mtimes)
is built, copied with `cp -a` to the oracle, and mounted with
`ovlfs mount --upper U LOWER MP`.  Every operation is run on the oracle and
then on the mount; the outcomes (return value or errno) must be equal.
Every CHECK_EVERY operations, at a remount in the middle and at the end the
whole trees must be equal (types, content, mode, owner, size, nlink, symlink
targets, xattrs except private `*.ovlfs.*` ones, mtimes that were set
explicitly, hard-link groups).  Then the overlay is remounted and compared
once more, unmounted, committed (`ovlfs commit`, `--atomic` for odd seeds)
and the lower must equal the oracle.

OVLFS_FUZZ_MOUNT_ARGS in the environment adds options to every mount
(`--format kernel`: the kernel's whiteouts and xattrs in the upper).

With --procs K the lower has K subtrees p0..p{K-1}; K processes work at the
same time, each in its own subtree, with the same checks per subtree.

On a mismatch the seed, the operation index and both outcomes are printed,
then the operation sequence is shrunk (delta debugging, every candidate
replayed on a fresh tree) and printed, and a standalone Python reproducer is
written (it carries its own copy of the engine below).

Names come from a small pool (with a unicode name, a 255-byte name, a
252-byte name and a name that is not UTF-8) so that operations collide.
Paths in operations are bytes, relative to the (sub)tree root.
"""

# ======================= BEGIN ENGINE =======================
# (Everything between the BEGIN/END ENGINE markers is copied verbatim into
# reproducer scripts: standard library only.)
import ctypes
import ctypes.util
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                            ctypes.c_char_p, ctypes.c_uint]
RENAME_FLAGS = {"plain": 0, "noreplace": 1, "exchange": 2}
OPEN_FLAGS = {"": 0, "trunc": os.O_TRUNC, "excl": os.O_EXCL, "append": os.O_APPEND}
OPEN_HOW = {"r": os.O_RDONLY, "rw": os.O_RDWR, "append": os.O_RDWR | os.O_APPEND}
XATTR_FLAGS = {"": 0, "create": os.XATTR_CREATE, "replace": os.XATTR_REPLACE}
NB = os.O_NONBLOCK          # never block on a fifo
# Every explicit time the fuzzer sets is below this; a file's mtime below it
# must be the same in both trees, one above it is just "recent".
THRESH = 10 ** 18
# Set by --without dirmtime (exploration only): directory mtimes not compared.
IGNORE_DIR_MTIME = False


def renameat2(old, new, flags):
    if _libc.renameat2(-100, old, -100, new, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def data(tag, n):
    """N bytes of a pattern made of TAG (str)."""
    if n <= 0:
        return b""
    t = tag.encode()
    return (t * (n // len(t) + 1))[:n]


def digest(b):
    return "%d:%s" % (len(b), hashlib.sha1(b).hexdigest()[:12])


def ftype(mode):
    for t, n in ((stat.S_ISREG, "reg"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "lnk"),
                 (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
                 (stat.S_ISSOCK, "sock")):
        if t(mode):
            return n
    return "?"


def _mt(ns, t=None):
    # A pipe write updates a fifo's times in the kernel's inode only, which
    # a FUSE file system never hears of: fifo times are not compared.
    if t == "fifo" or (t == "dir" and IGNORE_DIR_MTIME):
        return None
    return ns if ns < THRESH else "recent"


def _readall(fd):
    out, off = [], 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if not b:
            return b"".join(out)
        out.append(b)
        off += len(b)


def do_op(R, op, fds):
    """Apply OP to the tree rooted at R (bytes).  FDS: slot -> open fd, the
    files this tree holds open.  Returns a value to compare; raises OSError."""
    k, a = op[0], op[1:]

    def P(p):
        return os.path.join(R, p)

    if k == "create":
        path, mode, fl, tag, n = a
        fd = os.open(P(path), os.O_CREAT | os.O_WRONLY | NB | OPEN_FLAGS[fl], mode)
        try:
            return os.write(fd, data(tag, n))
        finally:
            os.close(fd)
    if k == "write":
        path, off, tag, n = a
        fd = os.open(P(path), os.O_WRONLY | NB)
        try:
            return os.pwrite(fd, data(tag, n), off)
        finally:
            os.close(fd)
    if k == "append":
        path, tag, n = a
        fd = os.open(P(path), os.O_WRONLY | os.O_APPEND | NB)
        try:
            return os.write(fd, data(tag, n)), os.fstat(fd).st_size
        finally:
            os.close(fd)
    if k == "truncate":
        os.truncate(P(a[0]), a[1])
        return None
    if k == "read":
        fd = os.open(P(a[0]), os.O_RDONLY | NB)
        try:
            return digest(_readall(fd))
        finally:
            os.close(fd)
    if k == "unlink":
        return os.unlink(P(a[0]))
    if k == "mkdir":
        return os.mkdir(P(a[0]), a[1])
    if k == "rmdir":
        return os.rmdir(P(a[0]))
    if k == "rename":
        return renameat2(P(a[0]), P(a[1]), RENAME_FLAGS[a[2]])
    if k == "link":
        return os.link(P(a[0]), P(a[1]), follow_symlinks=False)
    if k == "symlink":
        return os.symlink(a[0], P(a[1]))
    if k == "mkfifo":
        return os.mkfifo(P(a[0]), 0o644)
    if k == "chmod":
        return os.chmod(P(a[0]), a[1])
    if k == "chown":
        return os.chown(P(a[0]), a[1], a[2], follow_symlinks=False)
    if k == "utime":
        path, at, mt, follow = a
        return os.utime(P(path), ns=(at, mt), follow_symlinks=follow)
    if k == "setxattr":
        path, name, tag, n, fl = a
        return os.setxattr(P(path), name, data(tag, n), XATTR_FLAGS[fl],
                           follow_symlinks=False)
    if k == "rmxattr":
        return os.removexattr(P(a[0]), a[1], follow_symlinks=False)
    if k == "getxattrs":
        names = sorted(os.listxattr(P(a[0]), follow_symlinks=False))
        return [(n, digest(os.getxattr(P(a[0]), n, follow_symlinks=False)))
                for n in names]
    if k == "stat":
        st = os.lstat(P(a[0]))
        t = ftype(st.st_mode)
        return (t, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
                None if t == "dir" else st.st_size,
                None if t == "dir" else st.st_nlink, _mt(st.st_mtime_ns, t))
    if k == "readlink":
        return os.readlink(P(a[0]))
    if k == "readdir":
        ents = []
        with os.scandir(P(a[0])) as it:
            for e in it:
                ents.append((e.name, e.is_dir(follow_symlinks=False), e.is_symlink(),
                             e.inode() == os.lstat(e.path).st_ino))
        names = [e[0] for e in ents]
        return sorted(ents), len(names) == len(set(names))
    if k == "ouw":          # open, unlink, write through the fd, read back
        path, off, tag, n = a
        fd = os.open(P(path), os.O_RDWR | NB)
        try:
            os.unlink(P(path))
            w = os.pwrite(fd, data(tag, n), off)
            st = os.fstat(fd)
            return w, st.st_size, st.st_nlink, digest(_readall(fd))
        finally:
            os.close(fd)
    if k == "open":         # keep a file open in a slot
        slot, path, how = a
        if slot in fds:
            os.close(fds.pop(slot))
        fds[slot] = os.open(P(path), OPEN_HOW[how] | NB)
        return None
    if k == "mc":           # a metadata change, then a use of the file
        return outcome(R, a[0], fds), outcome(R, a[1], fds)
    if k == "redo":         # several operations in a row
        return tuple(outcome(R, o, fds) for o in a[0])
    if k == "rmtree":       # rm -rf, children in name order, depth first
        def rm(p):
            if not stat.S_ISDIR(os.lstat(p).st_mode):
                return os.unlink(p)
            for n in sorted(os.listdir(p)):
                rm(os.path.join(p, n))
            return os.rmdir(p)
        return rm(P(a[0]))
    if k in ("fwrite", "fread", "ftrunc", "close"):
        fd = fds.get(a[0])
        if fd is None:
            return "no such slot"
        if k == "fwrite":
            return os.pwrite(fd, data(a[2], a[3]), a[1])
        if k == "fread":
            return os.fstat(fd).st_size, digest(_readall(fd))
        if k == "ftrunc":
            return os.ftruncate(fd, a[1])
        os.close(fds.pop(a[0]))
        return None
    raise ValueError("unknown op %r" % (op,))


def outcome(R, op, fds):
    try:
        return ("ok", do_op(R, op, fds))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def close_all(fds):
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def is_private_xattr(name):
    return name.startswith(("trusted.ovlfs.", "user.ovlfs."))


def snap(R):
    """Map relative path -> description of the tree under R (bytes); the key
    b'<hard links>' holds the groups of names sharing an inode."""
    out, inos = {}, {}

    def rec(rel):
        p = os.path.join(R, rel) if rel else R
        st = os.lstat(p)
        t = ftype(st.st_mode)
        e = {"type": t}
        if rel:
            e["mode"] = oct(stat.S_IMODE(st.st_mode))
            e["uid"], e["gid"] = st.st_uid, st.st_gid
            e["mtime"] = _mt(st.st_mtime_ns, t)
            if t != "dir":
                e["nlink"] = st.st_nlink
                inos.setdefault(st.st_ino, []).append(rel)
            try:
                names = sorted(n for n in os.listxattr(p, follow_symlinks=False)
                               if not is_private_xattr(n))
                e["xattrs"] = {n: digest(os.getxattr(p, n, follow_symlinks=False))
                               for n in names}
            except OSError as ex:
                e["xattrs"] = "error %s" % errno.errorcode.get(ex.errno)
        if t == "reg":
            e["size"] = st.st_size
            with open(os.open(p, os.O_RDONLY | NB), "rb") as f:
                e["content"] = digest(f.read())
        elif t == "lnk":
            e["target"] = os.readlink(p)
            e["size"] = st.st_size
        elif t == "dir":
            names = sorted(os.listdir(p))
            e["names"] = names
        out[rel] = e
        if t == "dir":
            for n in e["names"]:
                rec(os.path.join(rel, n) if rel else n)

    rec(b"")
    out[b"<hard links>"] = sorted(sorted(g) for g in inos.values() if len(g) > 1)
    return out


def diff_trees(a, b, la="mount", lb="oracle", limit=30):
    lines = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            lines.append("only in %s: %r %r" % (lb, k, b[k]))
        elif k not in b:
            lines.append("only in %s: %r %r" % (la, k, a[k]))
        elif a[k] != b[k]:
            if isinstance(a[k], dict) and isinstance(b[k], dict):
                for f in sorted(set(a[k]) | set(b[k])):
                    if a[k].get(f) != b[k].get(f):
                        lines.append("%r: %s: %s=%r %s=%r" % (
                            k, f, la, a[k].get(f), lb, b[k].get(f)))
            else:
                lines.append("%r: %s=%r %s=%r" % (k, la, a[k], lb, b[k]))
    if len(lines) > limit:
        lines = lines[:limit] + ["... %d more" % (len(lines) - limit)]
    return lines


def build_lower(root, entries):
    """Create ENTRIES under ROOT (bytes) in order, then apply metadata in
    reverse order (children before their directory)."""
    for e in entries:
        k, p = e[0], os.path.join(root, e[1])
        if k == "dir":
            os.mkdir(p)
        elif k == "file":
            _, _, meta, tag, n, size = e
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.write(fd, data(tag, n))
            if size is not None:
                os.ftruncate(fd, size)
            os.close(fd)
        elif k == "symlink":
            os.symlink(e[3], p)
        elif k == "fifo":
            os.mkfifo(p, 0o644)
        elif k == "link":
            os.link(os.path.join(root, e[2]), p)
    for e in reversed(entries):
        if e[0] == "link":
            continue
        p = os.path.join(root, e[1])
        mode, uid, gid, xattrs, mtime = e[2]
        os.chown(p, uid, gid, follow_symlinks=False)
        if e[0] != "symlink":
            os.chmod(p, mode)
        if e[0] in ("file", "dir"):
            for n, (tag, ln) in sorted(xattrs.items()):
                os.setxattr(p, n, data(tag, ln))
        os.utime(p, ns=(mtime, mtime), follow_symlinks=False)


class Harness:
    """A lower built from ENTRIES, its oracle copy and an ovlfs mount."""

    def __init__(self, base, entries, ovlfs_bin, upper_base=None, inode_mode=None):
        self.base = os.fsencode(base)
        self.ovlfs_bin = ovlfs_bin
        self.inode_mode = inode_mode
        self.lower = os.path.join(self.base, b"lower")
        self.oracle = os.path.join(self.base, b"oracle")
        self.mp = os.path.join(self.base, b"mnt")
        self.upper = os.path.join(os.fsencode(upper_base or base), b"upper")
        os.mkdir(self.lower)
        build_lower(self.lower, entries)
        subprocess.run(["cp", "-a", "--", self.lower, self.oracle], check=True)
        os.mkdir(self.mp)
        self.mounted = False

    def _run(self, args):
        for _ in range(240):            # the binary may be being rebuilt
            if os.access(self.ovlfs_bin, os.X_OK):
                break
            time.sleep(0.5)
        return subprocess.run([self.ovlfs_bin] + args, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=120)

    def mount(self):
        args = ["mount", "--upper", self.upper]
        if self.inode_mode:
            args += ["--inode-mode", self.inode_mode]
        # e.g. OVLFS_FUZZ_MOUNT_ARGS="--format kernel" (reproducers too)
        args += os.environ.get("OVLFS_FUZZ_MOUNT_ARGS", "").split()
        r = self._run(args + [self.lower, self.mp])
        if r.returncode != 0:
            raise RuntimeError("ovlfs mount failed: %s" % r.stderr.decode(errors="replace"))
        self.mounted = True

    def umount(self):
        r = self._run(["umount", self.mp])
        if r.returncode != 0:
            raise RuntimeError("ovlfs umount failed: %s" % r.stderr.decode(errors="replace"))
        self.mounted = False

    def commit(self, atomic):
        r = self._run(["commit"] + (["--atomic"] if atomic else []) +
                      ["--quiet", "--upper", self.upper, self.lower])
        return r.returncode, r.stderr.decode(errors="replace")

    def cleanup(self):
        if self.mounted:
            try:
                self.umount()
            except Exception:
                subprocess.run(["umount", "-l", self.mp])
            self.mounted = False


def fmt_val(v):
    """repr() with long runs of one byte shown as b'N'*255."""
    if isinstance(v, bytes) and len(v) > 24 and len(set(v)) == 1:
        return "%r*%d" % (v[:1], len(v))
    if isinstance(v, bytes) and len(v) > 24:
        parts = v.split(b"/")
        if len(parts) > 1:
            return " + b'/' + ".join(fmt_val(x) for x in parts)
    if isinstance(v, tuple):
        return "(" + ", ".join(fmt_val(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


def fmt_op(op):
    return fmt_val(tuple(op))


def replay(h, ops, prefix=b"", check_every=0, final_check=True, verbose=False,
           on_step=None, check_from=0):
    """Run OPS on the oracle and the mount of harness H, in the subtree PREFIX.
    Pseudo-ops: ("remount",) closes every held fd, remounts and compares the
    trees; ("check",) compares the trees.  Returns None or a failure dict
    (kind, index, op, detail)."""
    O = os.path.join(h.oracle, prefix) if prefix else h.oracle
    M = os.path.join(h.mp, prefix) if prefix else h.mp
    fo, fm = {}, {}

    def tree_fail(kind, i, op):
        d = diff_trees(snap(M), snap(O))
        if d:
            return {"kind": kind, "index": i, "op": op, "detail": "trees differ:\n  " +
                    "\n  ".join(d)}
        return None

    try:
        for i, op in enumerate(ops):
            if on_step:
                on_step(i, op)
            if op[0] == "remount":
                close_all(fo)
                close_all(fm)
                h.umount()
                h.mount()
                f = tree_fail("remount", i, op)
                if f:
                    return f
                continue
            if op[0] == "check":
                f = tree_fail("tree", i, op)
                if f:
                    return f
                continue
            exp = outcome(O, op, fo)
            got = outcome(M, op, fm)
            if verbose:
                print("%4d %-60s %s%s" % (i, fmt_op(op), fmt_val(exp),
                                          "" if got == exp else
                                          "\n     MISMATCH: mount gave %s" % fmt_val(got)))
            if got != exp:
                return {"kind": "op:" + op[0], "index": i, "op": op,
                        "detail": "mount gave %s, plain directory gave %s" % (
                            fmt_val(got), fmt_val(exp))}
            if check_every and i >= check_from and (i + 1) % check_every == 0:
                f = tree_fail("tree", i, op)
                if f:
                    return f
    finally:
        close_all(fo)
        close_all(fm)
    if final_check:
        return tree_fail("tree", len(ops) - 1, None)
    return None


def finish(h, commit, atomic):
    """Remount and compare, then unmount, commit, compare the lower."""
    f = replay(h, [("remount",)])
    if f:
        f["kind"] = "final remount"
        return f
    if not commit:
        return None
    h.umount()
    rc, err = h.commit(atomic)
    what = "commit --atomic" if atomic else "commit"
    if rc != 0:
        return {"kind": what, "index": None, "op": None,
                "detail": "ovlfs %s failed (%d): %s" % (what, rc, err)}
    d = diff_trees(snap(h.lower), snap(h.oracle), "lower after " + what, "oracle")
    if d:
        return {"kind": what, "index": None, "op": None,
                "detail": "lower after %s differs from the oracle:\n  %s" % (
                    what, "\n  ".join(d))}
    return None


def format_failure(f):
    s = "%s failure" % f["kind"]
    if f.get("index") is not None:
        s += " at op %d" % f["index"]
    if f.get("op") is not None:
        s += " %s" % fmt_op(f["op"])
    return s + ": " + f["detail"]


def repro_main(ovlfs_bin, lower, ops, prefix=b"", split=False, inode_mode=None,
               finish_with=None):
    """Entry point of a reproducer script."""
    base = tempfile.mkdtemp(prefix="ovlfs-repro-", dir="/dev/shm")
    upper_base = None
    if split:       # the upper on a file system of its own
        upper_base = tempfile.mkdtemp(prefix="ovlfs-repro-upper-", dir="/tmp")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "ovlfs-repro",
                        upper_base], check=True)
    h = Harness(base, lower, ovlfs_bin, upper_base, inode_mode)
    print("lower %s, oracle %s, mount %s, upper %s" % (
        os.fsdecode(h.lower), os.fsdecode(h.oracle), os.fsdecode(h.mp),
        os.fsdecode(h.upper)))
    f = None
    try:
        h.mount()
        f = replay(h, ops, prefix, verbose=True)
        if f is None and finish_with:
            f = finish(h, finish_with != "remount", finish_with == "commit-atomic")
    finally:
        h.cleanup()
    if f:
        print("\nREPRODUCED: " + format_failure(f))
    else:
        print("\nnot reproduced: mount and plain directory agree")
    if "--keep" not in sys.argv:
        shutil.rmtree(base, ignore_errors=True)
        if upper_base:
            subprocess.run(["umount", upper_base])
            os.rmdir(upper_base)
    else:
        print("kept", base, upper_base or "")
    return 1 if f else 0
# ======================= END ENGINE =======================

import argparse
import multiprocessing
import pickle
import random
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OVLFS = os.path.join(os.environ.get("OVLFS_BUILD", os.path.join(REPO, "build")), "ovlfs")

NAMES = [b"a", b"b", b"c", b"d", b"e", "ü€😀".encode(), b"N" * 255, b"M" * 252,
         b"x\xff\xfey"]
MODES_F = [0o644, 0o600, 0o755, 0o444, 0o4755, 0o2750, 0o000, 0o640]
MODES_D = [0o755, 0o700, 0o555, 0o1777, 0o2775, 0o750]
UIDS = [0, 1000, 65534]
GIDS = [0, 100, 65534]
TIMES = [0, 1, 123456789, 10 ** 9, 10 ** 9 + 999999999, 946684800 * 10 ** 9 + 123,
         999999999 * 10 ** 9, -1500000000]
LENS = [0, 1, 7, 300, 4096, 9000, 70000]
OFFS = [0, 1, 511, 4096, 5000, 65535, 131072, 1 << 20]
SIZES = [0, 1, 100, 4095, 4096, 4097, 65536, 70000, 200000]
XNAMES = ["user.a", "user.b", "user.k" + "x" * 200]
XLENS = [0, 5, 300, 4000]
TARGETS = [b"a", b"b", b"d/a", b"nowhere", b"e/b/c", "ü€😀".encode(), b"N" * 255, b"."]
MAX_DEPTH = 3


# ---------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------

def gen_lower(rng, prefix=b"", depth=0, entries=None, files=None, without=()):
    """Random lower tree entries for build_lower (paths relative to the lower
    root, under PREFIX).  WITHOUT: features left out ("fifo", "hardlink")."""
    if entries is None:
        entries, files = [], []
    names = rng.sample(NAMES, rng.randint(3, 7) if depth == 0 else rng.randint(0, 4))
    for n in names:
        p = os.path.join(prefix, n) if prefix else n
        meta = (rng.choice(MODES_F), rng.choice(UIDS), rng.choice(GIDS),
                {x: ("lx%d" % rng.randrange(100), rng.choice(XLENS))
                 for x in rng.sample(XNAMES, rng.choice([0, 0, 1, 2]))},
                rng.choice(TIMES))
        r = rng.random()
        if r < 0.25 and depth < MAX_DEPTH - 1:
            meta = (rng.choice(MODES_D),) + meta[1:]
            entries.append(("dir", p, meta))
            gen_lower(rng, p, depth + 1, entries, files, without)
        elif r < 0.68 or (r < 0.8 and not files):
            size = rng.choice([None, None, None, rng.choice(SIZES)])
            entries.append(("file", p, meta, "L%d|" % len(entries), rng.choice(LENS), size))
            files.append(p)
        elif r < 0.8:
            if "hardlink" in without:
                continue
            entries.append(("link", p, rng.choice(files)))
        elif r < 0.95:
            entries.append(("symlink", p, (0o777,) + meta[1:3] + ({},) + meta[4:],
                            rng.choice(TARGETS)))
        elif "fifo" not in without:
            entries.append(("fifo", p, meta))
    return entries


def list_tree(R):
    """(all non-root paths, directories incl. b'') of the tree under R."""
    paths, dirs = [], [(b"", 0)]
    stack = [(b"", 0)]
    while stack:
        rel, depth = stack.pop()
        try:
            names = sorted(os.listdir(os.path.join(R, rel) if rel else R))
        except OSError:
            continue
        for n in names:
            p = os.path.join(rel, n) if rel else n
            paths.append(p)
            if stat.S_ISDIR(os.lstat(os.path.join(R, p)).st_mode):
                dirs.append((p, depth + 1))
                stack.append((p, depth + 1))
    return paths, dirs


WEIGHTS = {
    "create": 7, "write": 8, "append": 4, "truncate": 5, "read": 4, "unlink": 6,
    "mkdir": 5, "rmdir": 4, "rename": 14, "link": 4, "symlink": 4, "mkfifo": 1,
    "chmod": 3, "chown": 2, "utime": 5, "setxattr": 4, "rmxattr": 2, "getxattrs": 2,
    "stat": 4, "readlink": 1, "readdir": 4, "ouw": 3, "open": 4, "fwrite": 3,
    "fread": 3, "ftrunc": 1, "close": 1, "mc": 6, "redo": 3,
}
_KINDS = sorted(WEIGHTS)
_CUM = []
_t = 0
for _k in _KINDS:
    _t += WEIGHTS[_k]
    _CUM.append(_t)


def gen_op(rng, R, i, without=()):
    """One random operation for the tree under R (the oracle)."""
    paths, dirs = list_tree(R)
    while True:
        r = rng.random() * _t
        kind = _KINDS[next(j for j, c in enumerate(_CUM) if c > r)]
        if not ((kind == "mkfifo" and "fifo" in without) or
                (kind == "link" and "hardlink" in without)):
            break
    tag = "%d|" % i

    def new_path():
        d = rng.choice([x for x in dirs if x[1] < MAX_DEPTH])[0]
        n = rng.choice(NAMES)
        return os.path.join(d, n) if d else n

    def any_path():
        if paths and rng.random() < 0.7:
            return rng.choice(paths)
        return new_path()

    dirset = set(d for d, _ in dirs)
    files = [p for p in paths if p not in dirset]

    def file_path():
        if files and rng.random() < 0.75:
            return rng.choice(files)
        return any_path()

    def target_path():
        return new_path() if rng.random() < 0.6 or not paths else rng.choice(paths)

    if kind == "create":
        return ("create", target_path(), rng.choice(MODES_F),
                rng.choice(["", "trunc", "trunc", "excl", "append"]), tag, rng.choice(LENS))
    if kind == "write":
        return ("write", file_path(), rng.choice(OFFS), tag, rng.choice(LENS))
    if kind == "append":
        return ("append", file_path(), tag, rng.choice(LENS))
    if kind == "truncate":
        return ("truncate", file_path(), rng.choice(SIZES))
    if kind in ("read", "unlink", "readlink"):
        return (kind, file_path())
    if kind in ("rmdir", "getxattrs", "stat"):
        return (kind, any_path())
    if kind == "readdir":
        return ("readdir", rng.choice(dirs)[0] if rng.random() < 0.9 else any_path())
    if kind == "mkdir":
        return ("mkdir", target_path(), rng.choice(MODES_D))
    if kind == "rename":
        return ("rename", any_path(), target_path(),
                rng.choice(["plain", "plain", "noreplace", "exchange"]))
    if kind == "link":
        return ("link", any_path(), target_path())
    if kind == "symlink":
        t = rng.choice(TARGETS) if rng.random() < 0.6 or not paths else rng.choice(paths)
        return ("symlink", t, target_path())
    if kind == "mkfifo":
        return ("mkfifo", target_path())
    if kind == "chmod":
        return ("chmod", any_path(), rng.choice(MODES_F + MODES_D))
    if kind == "chown":
        return ("chown", any_path(), rng.choice(UIDS + [-1]), rng.choice(GIDS + [-1]))
    if kind == "utime":
        return ("utime", any_path(), rng.choice(TIMES), rng.choice(TIMES),
                rng.random() < 0.3)
    if kind == "setxattr":
        return ("setxattr", any_path(), rng.choice(XNAMES), tag, rng.choice(XLENS),
                rng.choice(["", "", "create", "replace"]))
    if kind == "rmxattr":
        return ("rmxattr", any_path(), rng.choice(XNAMES))
    if kind == "mc":
        # A metadata-only copy-up (metacopy) of a file, most often one
        # still in the lower, then what brings its data up, or reads it.
        p = file_path()
        first = rng.choice([
            ("chmod", p, rng.choice(MODES_F)),
            ("chown", p, rng.choice(UIDS), rng.choice(GIDS)),
            ("utime", p, rng.choice(TIMES), rng.choice(TIMES), False),
            ("setxattr", p, rng.choice(XNAMES), tag, rng.choice(XLENS), "")])
        then = rng.choice([
            ("write", p, rng.choice(OFFS), tag, rng.choice(LENS)),
            ("append", p, tag, rng.choice(LENS)),
            ("truncate", p, rng.choice(SIZES)),
            ("create", p, rng.choice(MODES_F), "trunc", tag, rng.choice(LENS)),
            ("rename", p, target_path(), "plain"),
            ("link", p, target_path()),
            ("read", p),
            ("stat", p),
            ("open", rng.randrange(3), p, rng.choice(["r", "rw"])),
            ("ouw", p, rng.choice(OFFS), tag, rng.choice(LENS))])
        return ("mc", first, then)
    if kind == "redo":
        # A directory deleted whole and made again with some of the
        # subdirectories it had (rm -rf d; mkdir -p d/c/g): d opaque in
        # the upper, c and g under it not, though the lower has them.
        subdirs = [d for d, _ in dirs if d]
        if not subdirs:
            return ("stat", any_path())
        d = rng.choice(subdirs)
        ops = [("rmtree", d), ("mkdir", d, rng.choice(MODES_D))]
        parent = d
        for _ in range(rng.randrange(1, 3)):
            olds = [n for n in sorted(os.listdir(os.path.join(R, parent)))
                    if stat.S_ISDIR(os.lstat(os.path.join(R, parent, n)).st_mode)] \
                if os.path.isdir(os.path.join(R, parent)) else []
            if not olds:
                break
            parent = os.path.join(parent, rng.choice(olds))
            ops.append(("mkdir", parent, 0o755))
        ops.append(("create", os.path.join(parent, rng.choice(NAMES)),
                    rng.choice(MODES_F), "", tag, rng.choice(LENS)))
        return ("redo", ops)
    if kind == "ouw":
        return ("ouw", file_path(), rng.choice(OFFS), tag, rng.choice(LENS))
    if kind == "open":
        return ("open", rng.randrange(3), file_path(), rng.choice(["r", "rw", "append"]))
    if kind == "fwrite":
        return ("fwrite", rng.randrange(3), rng.choice(OFFS), tag, rng.choice(LENS))
    if kind == "ftrunc":
        return ("ftrunc", rng.randrange(3), rng.choice(SIZES))
    return (kind, rng.randrange(3))         # fread, close


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------

class Config:
    def __init__(self, seed, ops, procs=1, split=None, inode_mode=None, atomic=None,
                 check_every=50, commit=True, shrink_time=120.0, repro_dir=None,
                 verbose=False, ovlfs_bin=OVLFS, quiet=False, without=()):
        self.seed = seed
        self.ops = ops
        self.procs = procs
        self.split = (seed % 3 == 2) if split is None else split
        self.inode_mode = inode_mode or ("persistent" if seed % 2 else "virtual")
        self.atomic = (seed % 2 == 1) if atomic is None else atomic
        self.check_every = check_every
        self.commit = commit
        self.shrink_time = shrink_time
        self.repro_dir = repro_dir or tempfile.gettempdir()
        self.verbose = verbose
        self.ovlfs_bin = ovlfs_bin
        self.quiet = quiet
        self.without = tuple(without)

    def __repr__(self):
        return ("seed=%d ops=%d procs=%d split=%s inode_mode=%s commit=%s" % (
            self.seed, self.ops, self.procs, self.split, self.inode_mode,
            ("commit --atomic" if self.atomic else "commit") if self.commit else "no") +
            (" without=%s" % ",".join(self.without) if self.without else ""))


class Dirs:
    """Where harnesses are made: MAIN (lower, oracle, mount) and, for split
    layers, ALT (upper) on another file system."""

    def __init__(self, main, alt=None):
        self.main = main
        self.alt = alt
        self.n = 0

    def fresh(self):
        self.n += 1
        m = os.path.join(self.main, "h%03d" % self.n)
        os.mkdir(m)
        a = None
        if self.alt:
            a = os.path.join(self.alt, "h%03d" % self.n)
            os.mkdir(a)
        return m, a

    def drop(self, m, a):
        for d in (m, a):
            if d and os.path.exists(d):
                shutil.rmtree(d, ignore_errors=True)


def make_harness(cfg, dirs, lower):
    m, a = dirs.fresh()
    h = TrackedHarness(m, lower, cfg.ovlfs_bin, a if cfg.split else None, cfg.inode_mode)
    h.dirs = (m, a)
    h.mount()
    return h


class TrackedHarness(Harness):
    """Harness whose mounts go through conftest's Overlay when it is
    importable, so pytest's watchdog can abort a hung mount."""

    def mount(self):
        Harness.mount(self)
        _register(self)

    def umount(self):
        Harness.umount(self)
        _unregister(self)

    def cleanup(self):
        Harness.cleanup(self)
        _unregister(self)


def _conftest():
    try:
        import conftest
        return conftest
    except Exception:
        return None


def _register(h):
    ct = _conftest()
    if ct is None:
        return
    o = ct.Overlay(os.fsdecode(h.lower), upper=os.fsdecode(h.upper), mp=os.fsdecode(h.mp))
    ent = ct.mount_entry(o.mp)
    o.majmin = ent["majmin"] if ent else None
    h._ovl = o
    with ct._LIVE_LOCK:
        ct._LIVE.append(o)


def _unregister(h):
    ct = _conftest()
    o = getattr(h, "_ovl", None)
    if ct is None or o is None:
        return
    with ct._LIVE_LOCK:
        if o in ct._LIVE:
            ct._LIVE.remove(o)
    h._ovl = None


def lower_for(cfg):
    rng = random.Random("lower-%d" % cfg.seed)
    if cfg.procs <= 1:
        return gen_lower(rng, without=cfg.without), [b""]
    entries = []
    prefixes = []
    for k in range(cfg.procs):
        p = b"p%d" % k
        prefixes.append(p)
        entries.append(("dir", p, (0o755, 0, 0, {}, TIMES[3])))
        gen_lower(rng, p, 1, entries, [], cfg.without)
    return entries, prefixes


def run_ops_generated(cfg, h, prefix, rng, nops, remount_at=None, log=None):
    """Generate and apply NOPS operations in lockstep; returns (ops, failure)."""
    O = os.path.join(h.oracle, prefix) if prefix else h.oracle
    ops = []
    fo, fm = {}, {}
    M = os.path.join(h.mp, prefix) if prefix else h.mp
    try:
        for i in range(nops):
            if remount_at is not None and i == remount_at:
                op = ("remount",)
            else:
                op = gen_op(rng, O, i, cfg.without)
            ops.append(op)
            if op[0] == "remount":
                close_all(fo)
                close_all(fm)
                f = replay(h, [op])
                if f:
                    f["index"] = i
                    return ops, f
                continue
            exp = outcome(O, op, fo)
            got = outcome(M, op, fm)
            if cfg.verbose:
                print("%5d %s -> %s%s" % (i, fmt_op(op), fmt_val(exp), "" if got == exp
                                          else "   MISMATCH mount: %s" % fmt_val(got)))
            if got != exp:
                return ops, {"kind": "op:" + op[0], "index": i, "op": op,
                             "detail": "mount gave %s, plain directory gave %s" % (
                                 fmt_val(got), fmt_val(exp))}
            if cfg.check_every and (i + 1) % cfg.check_every == 0:
                d = diff_trees(snap(M), snap(O))
                if d:
                    ops.append(("check",))
                    return ops, {"kind": "tree", "index": i, "op": op,
                                 "detail": "trees differ:\n  " + "\n  ".join(d)}
    finally:
        close_all(fo)
        close_all(fm)
    d = diff_trees(snap(M), snap(O))
    if d:
        return ops, {"kind": "tree", "index": len(ops) - 1, "op": None,
                     "detail": "trees differ:\n  " + "\n  ".join(d)}
    return ops, None


def _child(cfg, h, prefix, k, out):
    rng = random.Random("ops-%d-%d" % (cfg.seed, k))
    try:
        ops, f = run_ops_generated(cfg, h, prefix, rng, cfg.ops)
    except BaseException:
        ops, f = [], {"kind": "exception", "index": None, "op": None,
                      "detail": traceback.format_exc()}
    with open(out, "wb") as fh:
        pickle.dump((ops, f), fh)


class Result:
    def __init__(self, cfg):
        self.cfg = cfg
        self.failure = None
        self.prefix = b""
        self.ops = []
        self.lower = None
        self.shrunk = None
        self.shrunk_failure = None
        self.repro = None
        self.nops = 0
        self.elapsed = 0.0
        self.shrink_tests = 0
        self.finish_with = None

    def report(self):
        c = self.cfg
        lines = ["ovlfs fuzz %r: %d ops in %.1fs" % (c, self.nops, self.elapsed)]
        if not self.failure:
            lines.append("OK")
            return "\n".join(lines)
        lines.append("FAILED (seed %d%s): %s" % (
            c.seed, ", subtree %r" % self.prefix if self.prefix else "",
            format_failure(self.failure)))
        if self.shrunk is not None:
            lines.append("shrunk to %d ops (%d replays):" % (len(self.shrunk),
                                                            self.shrink_tests))
            for i, op in enumerate(self.shrunk):
                lines.append("  %3d %s" % (i, fmt_op(op)))
            if self.shrunk_failure:
                lines.append("shrunk failure: " + format_failure(self.shrunk_failure))
        if self.repro:
            lines.append("reproducer: /usr/bin/python3 %s" % self.repro)
        lines.append("rerun: /usr/bin/python3 %s --seed %d --ops %d --procs %d%s" % (
            os.path.relpath(__file__, REPO) if __file__.startswith(REPO) else __file__,
            c.seed, c.ops, c.procs,
            " --without " + ",".join(c.without) if c.without else ""))
        return "\n".join(lines)


def fuzz(cfg, dirs):
    """One full fuzz run; returns a Result (failure shrunk if any)."""
    res = Result(cfg)
    t0 = time.monotonic()
    lower, prefixes = lower_for(cfg)
    res.lower = lower
    h = make_harness(cfg, dirs, lower)
    try:
        if cfg.procs <= 1:
            rng = random.Random("ops-%d" % cfg.seed)
            ops, f = run_ops_generated(cfg, h, b"", rng, cfg.ops, remount_at=cfg.ops // 2)
            res.ops = ops
            res.nops = len(ops)
        else:
            ctx = multiprocessing.get_context("fork")
            outs, procs = [], []
            for k, p in enumerate(prefixes):
                out = os.path.join(h.base, b"result%d" % k)
                outs.append(out)
                pr = ctx.Process(target=_child, args=(cfg, h, p, k, out))
                pr.start()
                procs.append(pr)
            for pr in procs:
                pr.join(600)
            f = None
            for k, (pr, out) in enumerate(zip(procs, outs)):
                if pr.is_alive():
                    f = f or {"kind": "hang", "index": None, "op": None,
                              "detail": "process %d still running after 600s" % k}
                    pr.kill()
                    continue
                with open(out, "rb") as fh:
                    ops, fk = pickle.load(fh)
                res.nops += len(ops)
                if fk and not f:
                    f, res.ops, res.prefix = fk, ops, prefixes[k]
            if not f:
                d = diff_trees(snap(h.mp), snap(h.oracle))
                if d:
                    f = {"kind": "tree", "index": None, "op": None,
                         "detail": "whole trees differ after the processes:\n  " +
                         "\n  ".join(d)}
        if not f:
            f = finish(h, cfg.commit, cfg.atomic)
            if f:
                res.finish_with = "remount" if f["kind"] == "final remount" else (
                    "commit-atomic" if cfg.atomic else "commit")
                if cfg.procs > 1:
                    # replay one subtree at a time to find the culprit
                    res.ops = None
        res.failure = f
    finally:
        h.cleanup()
        dirs.drop(*h.dirs)
    res.elapsed = time.monotonic() - t0
    if res.failure and not cfg.quiet:
        print("FAILURE seed %d: %s" % (cfg.seed, format_failure(res.failure)), flush=True)
    if res.failure and res.failure["kind"] not in ("exception", "hang"):
        shrink_result(res, dirs)
    return res


def _replay_fresh(cfg, dirs, lower, ops, prefix, finish_with):
    h = make_harness(cfg, dirs, lower)
    try:
        f = replay(h, ops, prefix)
        if f is None and finish_with:
            f = finish(h, finish_with != "remount", finish_with == "commit-atomic")
        return f
    except RuntimeError as e:
        return {"kind": "harness", "index": None, "op": None, "detail": str(e)}
    finally:
        h.cleanup()
        dirs.drop(*h.dirs)


def ddmin(items, test, deadline):
    """Delta debugging (complement removal, then single items) while TEST
    holds, until DEADLINE (time.monotonic())."""
    n = 2
    while len(items) >= 2 and time.monotonic() < deadline:
        chunk = (len(items) + n - 1) // n
        reduced = False
        for start in range(0, len(items), chunk):
            if time.monotonic() >= deadline:
                break
            cand = items[:start] + items[start + chunk:]
            if cand and test(cand):
                items = cand
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if n >= len(items):
                break
            n = min(len(items), 2 * n)
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        for i in range(len(items) - 1, -1, -1):
            if time.monotonic() >= deadline or len(items) <= 1:
                break
            cand = items[:i] + items[i + 1:]
            if test(cand):
                items = cand
                changed = True
    return items


def shrink_result(res, dirs):
    cfg = res.cfg
    f = res.failure
    deadline = time.monotonic() + cfg.shrink_time
    finish_with = res.finish_with
    ops = res.ops
    prefix = res.prefix
    lower = res.lower
    if ops is None:                     # a finish failure after several processes
        ops = []
    elif f.get("index") is not None and f["kind"] != "tree":
        ops = ops[:f["index"] + 1]
    ops = [op for op in ops if op[0] != "check"]
    kind = f["kind"]
    if kind == "tree" and f.get("index") is not None and cfg.procs <= 1:
        # the trees were equal at the previous check: find the first op
        # after which they differ
        h = make_harness(cfg, dirs, lower)
        try:
            g = replay(h, ops[:f["index"] + 1], prefix, check_every=1,
                       check_from=max(0, f["index"] - cfg.check_every - 1))
        finally:
            h.cleanup()
            dirs.drop(*h.dirs)
        if g is not None and g["kind"] == "tree" and g["index"] is not None:
            ops = ops[:g["index"] + 1]

    def test(cand):
        res.shrink_tests += 1
        g = _replay_fresh(cfg, dirs, lower, cand, prefix, finish_with)
        return g is not None and g["kind"] == kind

    if not cfg.quiet:
        print("shrinking %d ops (up to %.0fs)..." % (len(ops), cfg.shrink_time), flush=True)
    g = _replay_fresh(cfg, dirs, lower, ops, prefix, finish_with)
    if g is None or g["kind"] != kind:
        res.shrunk = None
        res.shrunk_failure = None
        res.failure["detail"] += ("\n(replaying the %d ops single-process on a fresh tree "
                                  "gives %s: not shrunk)" % (
                                      len(ops), format_failure(g) if g else "no failure"))
        write_repro(res, ops, prefix, finish_with)
        return
    ops = ddmin(ops, test, deadline)
    res.shrunk = ops
    res.shrunk_failure = _replay_fresh(cfg, dirs, lower, ops, prefix, finish_with)
    write_repro(res, ops, prefix, finish_with)


def _engine_source():
    with open(os.path.abspath(__file__), encoding="utf-8") as fh:
        src = fh.read()
    a = src.index("# ======================= BEGIN ENGINE")
    b = src.index("# ======================= END ENGINE")
    return src[a:b]


def write_repro(res, ops, prefix, finish_with):
    cfg = res.cfg
    name = os.path.join(cfg.repro_dir, "ovlfs-fuzz-repro-seed%d%s.py" % (
        cfg.seed, "-procs%d" % cfg.procs if cfg.procs > 1 else ""))
    lines = [
        "#!/usr/bin/python3",
        '"""ovlfs fuzz reproducer (seed %d, %r).' % (cfg.seed, cfg),
        "",
        "Failure: %s" % format_failure(res.shrunk_failure or res.failure)
        .replace("\\", "\\\\").replace('"""', "'''"),
        "",
        "Run as root: /usr/bin/python3 %s [path/to/ovlfs] [--keep]" % os.path.basename(name),
        '"""',
        _engine_source(),
        "LOWER = [",
    ]
    lines += ["    %s," % fmt_val(e) for e in res.lower]
    lines += ["]", "", "PREFIX = %r" % prefix, "", "OPS = ["]
    lines += ["    %s," % fmt_op(op) for op in ops]
    lines += [
        "]", "",
        "if __name__ == '__main__':",
        "    args = [a for a in sys.argv[1:] if a != '--keep']",
        "    sys.exit(repro_main(args[0] if args else %r, LOWER, OPS, PREFIX, split=%r,"
        % (cfg.ovlfs_bin, cfg.split),
        "                        inode_mode=%r, finish_with=%r))" % (cfg.inode_mode,
                                                                      finish_with),
        "",
    ]
    with open(name, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    os.chmod(name, 0o755)
    res.repro = name


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def _mount_tmpfs(path):
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "ovlfs-fuzz", path],
                   check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="run seeds SEED..SEED+N-1")
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (lower, oracle, upper) of a failure")
    ap.add_argument("--split", choices=["auto", "yes", "no"], default="auto",
                    help="upper on another file system (auto: seed %% 3 == 2)")
    ap.add_argument("--inode-mode", choices=["virtual", "persistent"])
    ap.add_argument("--commit", choices=["auto", "plain", "atomic", "none"], default="auto",
                    help="finish with commit (auto: --atomic for odd seeds)")
    ap.add_argument("--check-every", type=int, default=50)
    ap.add_argument("--shrink-time", type=float, default=180)
    ap.add_argument("--repro-dir", default=os.getcwd())
    ap.add_argument("--without", default="",
                    help="comma separated features to leave out: fifo, hardlink, "
                    "dirmtime (directory mtimes are not compared)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("fuzz_ops.py needs root (mounts, chown)", file=sys.stderr)
        return 2
    root = tempfile.mkdtemp(prefix="ovlfs-fuzz-", dir="/tmp")
    main_d, alt_d = os.path.join(root, "main"), os.path.join(root, "alt")
    os.mkdir(main_d)
    os.mkdir(alt_d)
    _mount_tmpfs(main_d)
    _mount_tmpfs(alt_d)
    rc = 0
    failed = False
    global IGNORE_DIR_MTIME
    IGNORE_DIR_MTIME = "dirmtime" in a.without.split(",")
    try:
        for seed in range(a.seed, a.seed + a.seeds):
            cfg = Config(seed, a.ops, a.procs,
                         split=None if a.split == "auto" else a.split == "yes",
                         inode_mode=a.inode_mode,
                         atomic=None if a.commit in ("auto", "none") else a.commit == "atomic",
                         commit=a.commit != "none", check_every=a.check_every,
                         shrink_time=a.shrink_time, repro_dir=a.repro_dir,
                         verbose=a.verbose,
                         without=[x for x in a.without.split(",") if x])
            dirs = Dirs(main_d, alt_d)
            if a.keep:
                dirs.drop = lambda m, x: None
            res = fuzz(cfg, dirs)
            print(res.report(), flush=True)
            if res.failure:
                rc = 1
                failed = True
    finally:
        if a.keep and failed:
            print("kept work directories under %s (tmpfs mounts %s, %s)" % (
                root, main_d, alt_d))
        else:
            for d in (main_d, alt_d):
                subprocess.run(["umount", d])
            os.rmdir(main_d)
            os.rmdir(alt_d)
            os.rmdir(root)
    return rc


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
