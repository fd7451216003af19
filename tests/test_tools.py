"""Everyday tools over the mount behave as over a plain copy."""

import os
import subprocess

import pytest

from conftest import F, D, L, Fifo, run

TREE = {
    "etc": {"hosts": "127.0.0.1 localhost\n", "conf.d": {"a.conf": "a", "b.conf": "b"}},
    "usr": {"bin": {"tool": F("#!/bin/sh\n", mode=0o755)},
            "lib": {"libx.so.1": F(b"\x7fELF" + b"\0" * 5000), "libx.so": L("libx.so.1")},
            "share": {"doc": {"readme": "r" * 3000}}},
    "var": {"empty": {}, "log": {"old.log": "o" * 100}},
    "tmp": D({}, mode=0o1777),
    "fifo": Fifo(),
}


def modify(r):
    os.unlink(os.path.join(r, "etc/conf.d/a.conf"))
    open(os.path.join(r, "etc/conf.d/c.conf"), "w").write("c")
    os.rename(os.path.join(r, "usr/share/doc"), os.path.join(r, "usr/share/docs"))
    os.makedirs(os.path.join(r, "var/lib/app"))
    open(os.path.join(r, "var/log/old.log"), "a").write("more")
    os.chmod(os.path.join(r, "usr/bin/tool"), 0o700)
    os.rmdir(os.path.join(r, "var/empty"))


def out(args, cwd):
    r = run(args, cwd=cwd, timeout=120)
    assert r.returncode == 0, (args, r.err)
    return r.stdout


def test_find(scenario):
    sc = scenario(TREE)
    sc.both(modify)
    for args in (["find", ".", "-type", "d", "-printf", "%y %m %u %g %p\n"],
                 ["find", ".", "!", "-type", "d", "-printf", "%y %m %u %g %s %n %p %l\n"]):
        assert sorted(out(args, sc.mnt).splitlines()) == \
            sorted(out(args, sc.oracle).splitlines()), args


def test_find_types_and_depth(scenario):
    sc = scenario(TREE)
    sc.both(modify)
    for args in (["find", ".", "-type", "f"], ["find", ".", "-type", "d"],
                 ["find", ".", "-type", "l"], ["find", ".", "-mindepth", "3"],
                 ["find", ".", "-name", "*.conf"]):
        assert sorted(out(args, sc.mnt).splitlines()) == \
            sorted(out(args, sc.oracle).splitlines()), args


def test_tar_roundtrip(scenario, work):
    sc = scenario(TREE)
    sc.both(modify)
    res = {}
    for name, root in (("mount", sc.mnt), ("oracle", sc.oracle)):
        tarball = os.path.join(work, name + ".tar")
        out(["tar", "--xattrs", "--numeric-owner", "-cf", tarball, "."], root)
        listing = out(["tar", "--numeric-owner", "-tvf", tarball], work)
        # drop the date/time columns and dir sizes
        rows = []
        for l in listing.splitlines():
            f = l.split()
            rows.append((f[0], f[1], f[2] if not f[0].startswith(b"d") else b"",
                         b" ".join(f[5:])))
        res[name] = sorted(rows)
    assert res["mount"] == res["oracle"]


def test_cp_a_and_diff(scenario, work):
    sc = scenario(TREE)
    sc.both(modify)
    dst = os.path.join(work, "copied")
    out(["cp", "-a", sc.mnt + "/.", dst], work)
    r = run(["diff", "-r", "--no-dereference", "-x", "fifo", dst, sc.oracle])
    assert r.returncode == 0, r.out + r.err
    r = run(["diff", "-r", "--no-dereference", "-x", "fifo", sc.mnt, sc.oracle])
    assert r.returncode == 0, r.out + r.err


def test_du_apparent_size(scenario):
    sc = scenario(TREE)
    sc.both(modify)
    a = out(["du", "-a", "-b", "."], sc.mnt).splitlines()
    b = out(["du", "-a", "-b", "."], sc.oracle).splitlines()
    # directory sizes differ between filesystems: compare regular files only
    files = set(out(["find", ".", "-type", "f"], sc.oracle).splitlines())
    pick = lambda ls: sorted(l for l in ls if l.split(b"\t")[1] in files)
    assert pick(a) == pick(b)
