"""Metacopy files in lower layers: an upper holding metacopy files stacked as
a lower (layer rotation, `--upper u2 --lower u1:lower`, as unionmount-
testsuite --ov=N and image builders stack layers).

A metacopy file in a lower layer takes its metadata (mode, owner, times,
xattrs, size) from that layer and its data from the layers beneath it,
where its redirect says or at its own name, skipping further metacopy
files: as the kernel's overlayfs (metacopy=on, redirect_dir=on) shows it.
Each step runs the same operations on a plain directory (the model); in the
kernel format the kernel's overlayfs mounts the same stack and must show the
same tree, and ovlfs must read a stack the kernel wrote.
"""

import errno
import os
import stat

import pytest

from conftest import (OVLFS, Overlay, build, cp_a, snapshot, assert_same_tree,
                      run, needs_root)
from test_layers import escape

pytestmark = needs_root     # trusted.* markers, chown, the kernel's overlayfs

FORMATS = ["oci", "kernel"]
MARK = {"oci": "trusted.ovlfs.metacopy", "kernel": "trusted.overlay.metacopy"}

TREE = {
    "plain": "plain data\n" * 100,
    "owned": "owned data\n" * 50,
    "gone": "to be unlinked\n",
    "d": {"r1": "renamed in dir\n" * 30, "x1": "moved away\n" * 40,
          "keep": "keep\n"},
    "other": {"o": "o\n"},
}


def j(*p):
    return os.path.join(*p)


def stack_overlay(lowers, upper, mp, fmt, inode_mode=None):
    """An Overlay of FMT mounting LOWERS (top first) with --lower."""
    extra = ["--format", "kernel"] if fmt == "kernel" else []
    o = Overlay(lowers[0], upper=upper, mp=mp, inode_mode=inode_mode,
                extra_args=extra + ["--lower",
                                    ":".join(escape(p) for p in lowers)])
    plain = o.mount_args

    def mount_args(foreground=False):
        args = plain(foreground)
        del args[len(args) - 2]     # the positional LOWER, before MP
        return args
    o.mount_args = mount_args
    return o


def kernel_mount(work, lowers, upper, name="kmnt"):
    mnt, kwork = j(work, name), j(work, name + "-work")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(kwork, exist_ok=True)
    opts = ("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=on,index=off,"
            "metacopy=on" % (":".join(lowers), upper, kwork))
    r = run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt])
    if r.returncode != 0:
        pytest.skip("kernel overlayfs mount failed: " + r.err.strip())
    return mnt


def kernel_view(work, lowers, upper):
    mnt = kernel_mount(work, lowers, upper)
    try:
        return snapshot(mnt, hide_private=True)
    finally:
        run(["umount", mnt], check=True)


def has_mark(path, fmt):
    return MARK[fmt] in os.listxattr(path, follow_symlinks=False)


def blocks(root, rels):
    return {r: os.lstat(j(root, r)).st_blocks for r in rels}


def meta_step(p):
    """Metadata-only changes (and renames of the files they copied up)."""
    os.chmod(j(p, "plain"), 0o600)
    os.chmod(j(p, "d/r1"), 0o640)
    os.rename(j(p, "d/r1"), j(p, "d/r2"))
    os.chmod(j(p, "d/x1"), 0o604)
    os.rename(j(p, "d/x1"), j(p, "other/x2"))
    os.chown(j(p, "owned"), 1234, 5678)
    os.setxattr(j(p, "owned"), "user.k", b"v")
    os.chmod(j(p, "gone"), 0o600)


def ops_step(p):
    """Through a mount over the rotated stack: the files' data is beneath."""
    for rel in ("plain", "d/r2", "other/x2", "owned"):
        open(j(p, rel), "rb").read()
    with open(j(p, "plain"), "a") as f:
        f.write("appended\n")
    os.truncate(j(p, "d/r2"), 7)
    os.chmod(j(p, "other/x2"), 0o644)
    os.rename(j(p, "owned"), j(p, "d/owned2"))
    os.link(j(p, "d/r2"), j(p, "r2link"))
    os.unlink(j(p, "gone"))


FILES = ["plain", "owned", "gone", "d/r2", "other/x2"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_rotated_metacopy(work, fmt):
    lower, model = j(work, "lower"), j(work, "model")
    os.mkdir(lower)
    build(lower, TREE)
    cp_a(lower, model)
    mp = j(work, "mnt")

    u1 = j(work, "u1")
    o = stack_overlay([lower], u1, mp, fmt)
    o.mount()
    try:
        meta_step(o.mp)
    finally:
        o.umount()
    meta_step(model)
    for rel in FILES:
        assert has_mark(j(u1, rel), fmt), rel
        assert os.lstat(j(u1, rel)).st_blocks == 0, rel

    # u1 stacked as a lower: reads go beneath, metadata is u1's.
    lowers = [u1, lower]
    u2 = j(work, "u2")
    # Persistent numbers: they must hold across copy-up and remount.
    o = stack_overlay(lowers, u2, mp, fmt, inode_mode="persistent")
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs over a rotated metacopy upper", "model")
        # st_blocks of the data, as the kernel shows it.
        assert blocks(o.mp, FILES) == blocks(model, FILES)
        inos = {r: os.lstat(j(o.mp, r)).st_ino for r in FILES}
        # A metadata change copies up a metacopy file again: same number.
        os.chmod(j(o.mp, "other/x2"), 0o606)
        assert os.lstat(j(o.mp, "other/x2")).st_ino == inos["other/x2"]
        os.chmod(j(model, "other/x2"), 0o606)
        # Metadata copied up, then the data (from beneath) in this mount.
        for p in (o.mp, model):
            os.chmod(j(p, "plain"), 0o602)
        ops_step(o.mp)
        ops_step(model)
        assert os.lstat(j(o.mp, "plain")).st_ino == inos["plain"]
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs after ops over the rotated stack", "model")
    finally:
        o.umount()
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs remounted", "model")
        # Its number is the one the lower metacopy file showed.
        assert os.lstat(j(o.mp, "other/x2")).st_ino == inos["other/x2"]
        assert os.lstat(j(o.mp, "d/owned2")).st_ino == inos["owned"]
    finally:
        o.umount()
    if fmt == "kernel":
        assert_same_tree(kernel_view(work, lowers, u2), snapshot(model),
                         "kernel overlay", "model")

    # Again one layer down: u2's metacopy file over u1's over the data.
    assert has_mark(j(u2, "other/x2"), fmt)
    assert has_mark(j(u2, "d/owned2"), fmt)
    lowers = [u2, u1, lower]
    o = stack_overlay(lowers, j(work, "u3"), mp, fmt)
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs over three layers", "model")
        for p in (o.mp, model):
            with open(j(p, "other/x2"), "a") as f:
                f.write("tail\n")
            os.link(j(p, "d/owned2"), j(p, "owned3"))
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs after a write over three layers", "model")
    finally:
        o.umount()


@pytest.mark.parametrize("fmt", FORMATS)
def test_chained_metacopy(work, fmt):
    """chmod in each rotation: a chain of metacopy files over the data."""
    lower, model = j(work, "lower"), j(work, "model")
    os.mkdir(lower)
    build(lower, {"f": "chained data\n" * 200, "d": {"g": "g data\n" * 20}})
    cp_a(lower, model)
    mp = j(work, "mnt")
    lowers = [lower]
    steps = [lambda p: os.chmod(j(p, "f"), 0o600),
             lambda p: (os.chmod(j(p, "f"), 0o640),
                        os.rename(j(p, "d/g"), j(p, "g2")),
                        os.chmod(j(p, "g2"), 0o600)),
             lambda p: (os.chmod(j(p, "f"), 0o604),
                        os.rename(j(p, "f"), j(p, "d/f3")),
                        os.chmod(j(p, "g2"), 0o640))]
    for n, step in enumerate(steps, 1):
        upper = j(work, "u%d" % n)
        o = stack_overlay(lowers, upper, mp, fmt)
        o.mount()
        try:
            assert_same_tree(snapshot(o.mp), snapshot(model),
                             "ovlfs over %d layers" % len(lowers), "model")
            step(o.mp)
            step(model)
            assert_same_tree(snapshot(o.mp), snapshot(model),
                             "ovlfs after step %d" % n, "model")
        finally:
            o.umount()
        if fmt == "kernel":
            assert_same_tree(kernel_view(work, lowers, upper),
                             snapshot(model), "kernel overlay", "model")
        lowers = [upper] + lowers
    for u in lowers[:-1]:
        f = "d/f3" if os.path.exists(j(u, "d/f3")) else "f"
        assert has_mark(j(u, f), fmt), u
    # Four layers, three of them metacopy: lower-only reads, then writes.
    o = stack_overlay(lowers, j(work, "u4"), mp, fmt)
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs over a metacopy chain", "model")
        assert (os.lstat(j(o.mp, "d/f3")).st_blocks ==
                os.lstat(j(lower, "f")).st_blocks)
        for p in (o.mp, model):
            with open(j(p, "d/f3"), "r+") as f:
                f.seek(3)
                f.write("XY")
            os.truncate(j(p, "g2"), 4)
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs after writes over a metacopy chain", "model")
    finally:
        o.umount()
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs remounted over a metacopy chain", "model")
    finally:
        o.umount()


def f_is_eio(o, log, access):
    """Mount O logging to LOG: ACCESS(mount point) of its metacopy file f
    fails with EIO, "keep" reads, and the log names f."""
    o.extra_args += ["--log", log]
    o.mount()
    try:
        with pytest.raises(OSError) as e:
            access(o.mp)
        assert e.value.errno == errno.EIO
        assert open(j(o.mp, "keep")).read() == "keep\n"
    finally:
        o.umount()
    text = open(log).read()
    assert "metacopy file f" in text and "no data beneath" in text, text


@pytest.mark.parametrize("fmt", FORMATS)
def test_lower_metacopy_without_data(work, fmt):
    """No data beneath a lower metacopy file: EIO, and the log names it."""
    lower, lower2 = j(work, "lower"), j(work, "lower2")
    os.mkdir(lower)
    build(lower, {"f": "data\n", "keep": "keep\n"})
    mp = j(work, "mnt")
    u1 = j(work, "u1")
    o = stack_overlay([lower], u1, mp, fmt)
    o.mount()
    try:
        os.chmod(j(o.mp, "f"), 0o600)
    finally:
        o.umount()
    cp_a(lower, lower2)
    os.unlink(j(lower2, "f"))
    o = stack_overlay([u1, lower2], j(work, "u2"), mp, fmt)
    f_is_eio(o, j(work, "log"),
             lambda mp: open(j(mp, "f"), "rb").read())


@pytest.mark.parametrize("fmt", FORMATS)
def test_bottom_layer_metacopy_is_eio(work, fmt):
    """A metacopy file in the bottom (here the only) lower layer, an upper
    of an earlier mount stacked without the layers it was made over: its
    lookup fails with EIO and the log names it, as the kernel fails it;
    its holes are never read as its data, so flatten fails (DEST removed)
    instead of writing zeros. The other files read as ever."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"keep": "keep\n"})
    for n in ("f", "holes"):        # holes: sparse, no marker: its zeros
        with open(j(lower, n), "wb") as f:
            f.truncate(4096)
    os.setxattr(j(lower, "f"), MARK[fmt], b"")
    o = stack_overlay([lower], j(work, "u"), j(work, "mnt"), fmt)

    def listed_then_stat(mp):
        # Listed (READDIRPLUS gives it without attributes), failing on stat.
        assert sorted(os.listdir(mp)) == ["f", "holes", "keep"]
        assert open(j(mp, "holes"), "rb").read() == b"\0" * 4096
        os.stat(j(mp, "f"))
    f_is_eio(o, j(work, "log"), listed_then_stat)
    dest = j(work, "flat")
    r = run([OVLFS, "flatten"] + (["--format", "kernel"] if fmt == "kernel"
                                   else []) +
            ["--upper", j(work, "u"), "--lower", escape(lower), dest])
    assert r.returncode != 0, r.out
    assert not os.path.exists(dest)


def test_ovlfs_reads_kernel_stack(work):
    """The kernel's metacopy upper (chmod, chown, rename) as ovlfs's lower."""
    lower, model = j(work, "lower"), j(work, "model")
    os.mkdir(lower)
    build(lower, TREE)
    cp_a(lower, model)
    u1 = j(work, "u1")
    os.mkdir(u1)
    mnt = kernel_mount(work, [lower], u1)
    try:
        meta_step(mnt)
    finally:
        run(["umount", mnt], check=True)
    meta_step(model)
    if not has_mark(j(u1, "plain"), "kernel"):
        pytest.skip("the kernel made no metacopy file")
    mp = j(work, "mnt")
    o = stack_overlay([u1, lower], j(work, "u2"), mp, "kernel")
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs over the kernel's metacopy upper", "model")
        ops_step(o.mp)
        ops_step(model)
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs after ops over the kernel's stack", "model")
    finally:
        o.umount()
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs remounted over the kernel's stack", "model")
    finally:
        o.umount()
    assert_same_tree(kernel_view(work, [u1, lower], j(work, "u2")),
                     snapshot(model), "kernel overlay", "model")


def test_lower_metacopy_mmap_and_stat(work):
    """mmap reads the data; the shown size and mode are the metacopy's."""
    import mmap
    lower = j(work, "lower")
    os.mkdir(lower)
    data = bytes(range(256)) * 64
    with open(j(lower, "f"), "wb") as f:
        f.write(data)
    mp = j(work, "mnt")
    u1 = j(work, "u1")
    o = stack_overlay([lower], u1, mp, "oci")
    o.mount()
    try:
        os.chmod(j(o.mp, "f"), 0o751)
    finally:
        o.umount()
    o = stack_overlay([u1, lower], j(work, "u2"), mp, "oci")
    o.mount()
    try:
        st = os.lstat(j(o.mp, "f"))
        assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_size == len(data)
        with open(j(o.mp, "f"), "rb") as f:
            m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            try:
                assert m[:] == data
            finally:
                m.close()
    finally:
        o.umount()


@pytest.mark.parametrize("fmt", FORMATS)
def test_rotated_no_redirect(work, fmt):
    """--no-redirect-dir over a rotated stack: renames copy the data up,
    a directory's tree included, from beneath the lower metacopy files."""
    lower, model = j(work, "lower"), j(work, "model")
    os.mkdir(lower)
    build(lower, TREE)
    cp_a(lower, model)
    mp = j(work, "mnt")
    u1 = j(work, "u1")
    o = stack_overlay([lower], u1, mp, fmt)
    o.mount()
    try:
        meta_step(o.mp)
    finally:
        o.umount()
    meta_step(model)
    o = stack_overlay([u1, lower], j(work, "u2"), mp, fmt)
    o.extra_args += ["--no-redirect-dir"]
    o.mount()
    try:
        for p in (o.mp, model):
            os.rename(j(p, "d"), j(p, "d9"))
            os.rename(j(p, "other/x2"), j(p, "x3"))
            os.rename(j(p, "plain"), j(p, "other/plain"))
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs after renames without redirects", "model")
    finally:
        o.umount()
    assert not has_mark(j(work, "u2", "d9/r2"), fmt)
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp), snapshot(model),
                         "ovlfs remounted", "model")
    finally:
        o.umount()
