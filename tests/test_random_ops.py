"""Seeded random sequences of operations, on the mount and on a plain copy;
every outcome (value or errno) and the final trees must agree, also after a
remount."""

import errno
import os
import random

import pytest

from conftest import F, D, L, snapshot

SPEC = {
    "a": "a\n", "b": F("bbbb\n", mode=0o600), "c": F(b"\0" * 5000),
    "d1": {"x": "x\n", "y": "y\n", "s": {"z": "z\n", "t": {"u": "u\n"}}},
    "d2": {"p": "p\n"},
    "e": {},
    "l1": L("a"), "l2": L("d1/s"), "l3": L("gone"),
}

NAMES = ["a", "b", "c", "d1", "d2", "e", "x", "y", "s", "t", "u", "p", "n1", "n2", "n3",
         "l1", "l2", "l3", "nd"]


def all_paths(root):
    out = [""]
    for dirpath, dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for n in dirs + files:
            out.append(os.path.join(rel, n) if rel else n)
    return sorted(out)


def make_op(rng, paths, dirs):
    p = rng.choice(paths)
    d = rng.choice(dirs)
    q = os.path.join(d, rng.choice(NAMES)) if d else rng.choice(NAMES)
    kind = rng.choice(["write", "append", "trunc", "unlink", "mkdir", "rmdir", "rename",
                       "rename", "symlink", "link", "chmod", "xattr", "create", "read",
                       "list", "utime"])
    data = rng.choice([b"", b"short", b"Z" * 7000])
    mode = rng.choice([0o600, 0o644, 0o755, 0o700])
    size = rng.choice([0, 1, 100, 9000])

    def op(root):
        if not p and kind in ("rmdir", "unlink", "rename", "link", "write", "append",
                              "trunc", "read"):
            return "skip"       # the mount root is a mount point (EBUSY)
        P = os.path.join(root, p) if p else root
        Q = os.path.join(root, q)
        if kind == "write":
            with open(P, "r+b") as f:
                f.write(data)
        elif kind == "append":
            with open(P, "ab") as f:
                f.write(data)
        elif kind == "trunc":
            os.truncate(P, size)
        elif kind == "unlink":
            os.unlink(P)
        elif kind == "mkdir":
            os.mkdir(Q, mode)
        elif kind == "rmdir":
            os.rmdir(P)
        elif kind == "rename":
            os.rename(P, Q)
        elif kind == "symlink":
            os.symlink(p or ".", Q)
        elif kind == "link":
            os.link(P, Q, follow_symlinks=False)
        elif kind == "chmod":
            os.chmod(P, mode)
        elif kind == "xattr":
            os.setxattr(P, "user.r", data or b"v", follow_symlinks=False)
        elif kind == "create":
            fd = os.open(Q, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
            os.write(fd, data)
            os.close(fd)
        elif kind == "read":
            with open(P, "rb") as f:
                return f.read()
        elif kind == "list":
            return sorted(os.listdir(P))
        elif kind == "utime":
            os.utime(P, ns=(size, size * 3), follow_symlinks=False)
    op.desc = "%s %r %r" % (kind, p, q)
    return op


def ino_partition(root):
    """Names grouped by inode number: hard links together, all else alone."""
    groups = {}
    for rel in all_paths(root):
        if rel:
            groups.setdefault(os.lstat(os.path.join(root, rel)).st_ino, []).append(rel)
    return sorted(sorted(g) for g in groups.values())


def check_inos(sc):
    got, exp = ino_partition(sc.mnt), ino_partition(sc.oracle)
    assert got == exp, "inode numbers group names differently: mount %r, plain %r" % (
        [g for g in got if g not in exp][:5], [g for g in exp if g not in got][:5])


@pytest.mark.parametrize("seed", list(range(1, 11)))
def test_random_ops(scenario, seed):
    rng = random.Random(seed)
    sc = scenario(SPEC, inode_mode="persistent" if seed % 2 else "virtual")
    log = []
    for step in range(250):
        paths = all_paths(sc.oracle)
        dirs = [x for x in paths if os.path.isdir(os.path.join(sc.oracle, x))
                and not os.path.islink(os.path.join(sc.oracle, x))]
        op = make_op(rng, paths, dirs)
        log.append(op.desc)
        try:
            sc.both(op)
        except AssertionError as e:
            raise AssertionError("step %d (%s): %s\nlast ops:\n  %s" % (
                step, op.desc, e, "\n  ".join(log[-15:])))
        if step % 50 == 49:
            try:
                sc.check()
                check_inos(sc)
            except AssertionError as e:
                raise AssertionError("after step %d: %s\nlast ops:\n  %s" % (
                    step, e, "\n  ".join(log[-15:])))
        if step == 125:
            sc.remount()
    sc.check()
    check_inos(sc)
    sc.remount()
    sc.check()
    check_inos(sc)
