"""Redirects inside lower layers: an upper with renamed directories used as
a lower (layer rotation, as unionmount-testsuite --ov=N and image builders
stack layers).

A directory a lower layer shows through a redirect (it was renamed while
that layer was an upper) must show the layers beneath it from where the
redirect points, as the kernel's overlayfs does with redirect_dir=on. Each
step runs the same operations on a plain directory (the model); in the
kernel format the kernel's overlayfs mounts the same stack and must show
the same tree.
"""

import os

import pytest

from conftest import (Overlay, build, cp_a, snapshot, assert_same_tree, run,
                      IS_ROOT)
from test_redirect import TREE, FORMATS, j
from test_layers import escape


def stack_overlay(lowers, upper, mp, extra):
    """An Overlay mounting LOWERS (top first) with --lower, no positional."""
    o = Overlay(lowers[0], upper=upper, mp=mp,
                extra_args=extra + ["--lower",
                                    ":".join(escape(p) for p in lowers)])
    plain = o.mount_args

    def mount_args(foreground=False):
        args = plain(foreground)
        del args[len(args) - 2]     # the positional LOWER, before MP
        return args
    o.mount_args = mount_args
    return o


def kernel_view(work, lowers, upper):
    mnt, kwork = j(work, "kmnt"), j(work, "kwork")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(kwork, exist_ok=True)
    opts = ("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,index=off,"
            "metacopy=off" % (":".join(lowers), upper, kwork))
    if not IS_ROOT:
        opts += ",userxattr"
    r = run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt])
    if r.returncode != 0:
        pytest.skip("kernel overlayfs mount failed: " + r.err.strip())
    try:
        return snapshot(mnt, hide_private=True)
    finally:
        run(["umount", mnt], check=True)


def step1(p):
    os.rename(j(p, "d"), j(p, "d2"))
    os.unlink(j(p, "d2/gone"))
    os.rename(j(p, "d2/y"), j(p, "e/y"))
    os.mkdir(j(p, "n"))
    os.rename(j(p, "e"), j(p, "n/e"))


def step2(p):
    # Directories whose lower part a middle layer redirects, renamed again.
    os.rename(j(p, "d2"), j(p, "d3"))
    os.rename(j(p, "n/e"), j(p, "e"))
    open(j(p, "e/y/deep"), "a").write("more\n")
    os.rename(j(p, "e/y/deeper"), j(p, "deeper"))
    os.unlink(j(p, "d3/x"))


def step3(p):
    os.rename(j(p, "d3"), j(p, "n/d"))
    os.rename(j(p, "deeper"), j(p, "n/d/deeper"))
    os.mkdir(j(p, "d"))
    open(j(p, "d/new"), "w").write("new\n")


@pytest.mark.parametrize("fmt", FORMATS)
def test_rotated_layers_follow_redirects(work, fmt):
    lower, oracle = j(work, "lower"), j(work, "oracle")
    os.mkdir(lower)
    build(lower, TREE)
    cp_a(lower, oracle)
    extra = ["--format", "kernel"] if fmt == "kernel" else []
    lowers = [lower]
    for n, step in enumerate([step1, step2, step3], 1):
        upper = j(work, "u%d" % n)
        o = stack_overlay(lowers, upper, j(work, "mnt"), extra)
        o.mount()
        try:
            assert_same_tree(snapshot(o.mp), snapshot(oracle),
                             "ovlfs over %d layers" % len(lowers), "model")
            step(o.mp)
            step(oracle)
            assert_same_tree(snapshot(o.mp), snapshot(oracle),
                             "ovlfs after step %d" % n, "model")
        finally:
            o.umount()
        o.mount()
        try:
            assert_same_tree(snapshot(o.mp), snapshot(oracle),
                             "ovlfs remounted after step %d" % n, "model")
        finally:
            o.umount()
        if fmt == "kernel":
            assert_same_tree(kernel_view(work, lowers, upper),
                             snapshot(oracle), "kernel overlay", "model")
        lowers = [upper] + lowers
