"""Several lower layers, read-only mounts and the kernel's marker format.

The kernel's own overlayfs is the oracle: the same layers (converted to
its format where ovlfs reads OCI markers) must give the same merged view,
and an upper either side wrote must read the same on the other side.
"""
import errno
import os

import pytest
from conftest import (IS_ROOT, OVLFS, Overlay, assert_same_tree, build, run,
                      snapshot, L)

j = os.path.join

needs_root = pytest.mark.skipif(not IS_ROOT, reason="kernel overlayfs needs root")

# Three layers, top first, in the OCI format: whiteouts and an opaque
# directory in the upper two hide what the layers beneath hold.
LAYERS = [
    {   # top
        "f": "top f",
        "d": {"top": "t", ".wh.mid": "", ".wh.gone": ""},
        "opq": {".wh..wh..opq": "", "z": "z"},
        ".wh.bonly": "",
        "newdir": {"n": "n"},
        "l": L("f"),
    },
    {   # middle
        "f": "mid f",
        "bonly": "b",
        "d": {"mid": "m", "both": "middle", "sub": {"m": "m"}},
        "opq": {"y": "y"},
        "filedir": "a file hides the directory beneath",
        ".wh.cgone": "",
    },
    {   # bottom
        "f": "bottom f",
        "cf": "c",
        "cgone": "hidden by the middle",
        "d": {"gone": "g", "both": "bottom", "bot": "b", "sub": {"b": "b"}},
        "opq": {"x": "x"},
        "filedir": {"inner": "hidden"},
        "deep": {"a": {"b": {"c": "c"}}},
    },
]


def make_layers(work, fmt="oci", prefix="layer"):
    paths = []
    for i, spec in enumerate(LAYERS):
        p = j(work, "%s%d" % (prefix, i))
        os.mkdir(p)
        build(p, spec)
        if fmt == "kernel":
            to_kernel(p)
        paths.append(p)
    return paths


def to_kernel(root):
    """Rewrite the OCI markers under ROOT as the kernel's."""
    for d, dirs, files in os.walk(root):
        for name in files:
            if name == ".wh..wh..opq":
                os.unlink(j(d, name))
                os.setxattr(d, "trusted.overlay.opaque", b"y")
            elif name.startswith(".wh."):
                os.unlink(j(d, name))
                os.mknod(j(d, name[4:]), 0o600 | 0o020000, os.makedev(0, 0))


def ksnap(root):
    """A snapshot through the kernel, which shows ovlfs's own xattrs."""
    return snapshot(root, hide_private=True)


def escape(p):
    return p.replace("\\", "\\\\").replace(":", "\\:")


class KernelOverlay:
    def __init__(self, work, lowers, upper=None):
        self.mnt = j(work, "kmnt")
        os.makedirs(self.mnt, exist_ok=True)
        opts = "lowerdir=" + ":".join(lowers)
        if upper:
            os.makedirs(upper, exist_ok=True)
            self.work = j(work, "kwork")
            os.makedirs(self.work, exist_ok=True)
            opts += ",upperdir=%s,workdir=%s" % (upper, self.work)
        # ovlfs writes metacopy files (a chmod of a lower file copies its
        # metadata only), which the kernel reads with metacopy=on alone;
        # that takes redirect_dir=on.
        opts += ",redirect_dir=on,index=off,metacopy=on"
        r = run(["mount", "-t", "overlay", "overlay", "-o", opts, self.mnt])
        if r.returncode != 0:
            pytest.skip("kernel overlayfs mount failed: " + r.err.strip())

    def umount(self):
        run(["umount", self.mnt], check=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        if os.path.ismount(self.mnt):
            run(["umount", "-l", self.mnt])


def lowers_overlay(lowers, upper, mp, *extra):
    o = Overlay(lowers[0], upper=upper, mp=mp,
                extra_args=["--lower", ":".join(escape(p) for p in lowers),
                            *extra])
    # --lower replaces the positional LOWER.
    o.mount_args_orig = o.mount_args

    def mount_args(foreground=False):
        args = o.mount_args_orig(foreground)
        args.remove(o.lower)
        return args
    o.mount_args = mount_args
    return o


def ops(root, layers=3):
    """Changes both overlays make the same way."""
    os.unlink(j(root, "f"))
    open(j(root, "f"), "w").write("new f")
    os.unlink(j(root, "cf"))
    os.unlink(j(root, "d/both"))
    open(j(root, "d/new"), "w").write("new")
    if layers > 1:
        os.unlink(j(root, "d/sub/m"))
    os.unlink(j(root, "d/sub/b"))
    os.rmdir(j(root, "d/sub"))
    os.mkdir(j(root, "d/sub"))
    open(j(root, "d/sub/fresh"), "w").write("fresh")
    os.rename(j(root, "d/bot"), j(root, "bot-moved"))
    os.chmod(j(root, "deep/a/b/c"), 0o600)
    os.setxattr(j(root, "deep/a/b/c"), "user.k", b"v")
    os.unlink(j(root, "opq/z" if layers > 1 else "opq/x"))
    os.rmdir(j(root, "opq"))
    os.symlink("f", j(root, "l2"))


@needs_root
@pytest.mark.parametrize("fmt", ["oci", "kernel"])
def test_several_lowers_match_kernel(work, fmt):
    """The merged view of three layers, then of changes on top, as the kernel's."""
    ours = make_layers(work, fmt, "ours")
    theirs = make_layers(work, "kernel", "theirs")
    extra = ["--format", "kernel"] if fmt == "kernel" else []
    o = lowers_overlay(ours, j(work, "upper"), j(work, "mnt"), *extra)
    o.mount()
    with KernelOverlay(work, theirs, upper=j(work, "kupper")) as k:
        assert_same_tree(snapshot(o.mp), ksnap(k.mnt), "ovlfs", "kernel")
        assert sorted(os.listdir(j(o.mp, "d"))) == ["bot", "both", "sub", "top"]
        assert open(j(o.mp, "d/both")).read() == "middle"
        assert sorted(os.listdir(j(o.mp, "opq"))) == ["z"]
        assert not os.path.isdir(j(o.mp, "filedir"))
        ops(o.mp)
        ops(k.mnt)
        assert_same_tree(snapshot(o.mp), ksnap(k.mnt), "ovlfs", "kernel")
        o.remount()
        assert_same_tree(snapshot(o.mp), ksnap(k.mnt), "ovlfs", "kernel")
    # The layers were never written.
    for p, spec in zip(ours, LAYERS):
        fresh = j(work, "fresh")
        os.mkdir(fresh)
        build(fresh, spec)
        if fmt == "kernel":
            to_kernel(fresh)
        assert_same_tree(snapshot(p), snapshot(fresh), "layer", "as built")
        run(["rm", "-rf", fresh], check=True)


@needs_root
def test_kernel_format_upper_mounts_under_kernel(work):
    """An upper ovlfs writes in the kernel format reads the same under the kernel."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, LAYERS[2])
    upper = j(work, "upper")
    o = Overlay(lower, upper=upper, extra_args=["--format", "kernel"])
    o.mount()
    ops(o.mp, 1)
    os.unlink(j(o.mp, "filedir/inner"))
    os.rmdir(j(o.mp, "filedir"))               # lower dir -> whiteout
    os.mkdir(j(o.mp, "filedir"))               # ... -> opaque dir
    open(j(o.mp, "filedir/again"), "w").write("again")
    os.rename(j(o.mp, "f"), j(o.mp, "f2"))     # upper file moved: whiteout left
    os.rename(j(o.mp, "cgone"), j(o.mp, "cg"))  # lower file moved
    with pytest.raises(OSError) as e:
        os.mknod(j(o.mp, "fakewh"), 0o600 | 0o020000, os.makedev(0, 0))
    assert e.value.errno == errno.EPERM
    view = snapshot(o.mp)
    o.umount()
    # No OCI markers: the kernel would show them as files.
    for d, dirs, files in os.walk(upper):
        assert not [n for n in dirs + files if n.startswith(".wh.")], d
    assert os.getxattr(j(upper, "filedir"), "trusted.overlay.opaque") == b"y"
    with KernelOverlay(work, [lower], upper=upper) as k:
        assert_same_tree(ksnap(k.mnt), view, "kernel", "ovlfs")
        k.umount()
    o.mount()
    assert_same_tree(snapshot(o.mp), view, "ovlfs remounted", "ovlfs")


@needs_root
def test_kernel_made_upper_mounts_under_ovlfs(work):
    """An upper the kernel's overlayfs wrote mounts under ovlfs, and back."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, LAYERS[2])
    upper = j(work, "upper")
    os.mkdir(upper)
    with KernelOverlay(work, [lower], upper=upper) as k:
        ops(k.mnt, 1)
        view = ksnap(k.mnt)
        k.umount()
    o = Overlay(lower, upper=upper)
    o.mount()
    assert_same_tree(snapshot(o.mp), view, "ovlfs", "kernel")
    # Its own changes follow the upper's (kernel) format.
    os.unlink(j(o.mp, "deep/a/b/c"))
    os.rmdir(j(o.mp, "deep/a/b"))
    view = snapshot(o.mp)
    o.umount()
    assert not os.path.exists(j(upper, "deep/a/.wh.b"))
    with KernelOverlay(work, [lower], upper=upper) as k:
        assert_same_tree(ksnap(k.mnt), view, "kernel", "ovlfs")
    # Asking for the other format is refused, naming the way out.
    o2 = Overlay(lower, upper=upper, extra_args=["--format", "oci"])
    r = o2.mount(check=False)
    assert r.returncode == 1
    assert "kernel format" in r.err and "convert" in r.err, r.err


def test_read_only_mount(work):
    lowers = make_layers(work)
    mp = j(work, "mnt")
    o = lowers_overlay(lowers, None, mp, "--read-only")
    o.mount()
    assert open(j(mp, "f")).read() == "top f"
    assert sorted(os.listdir(j(mp, "d"))) == ["bot", "both", "sub", "top"]
    for fn in (lambda: open(j(mp, "new"), "w"),
               lambda: os.unlink(j(mp, "f")),
               lambda: open(j(mp, "f"), "a"),
               lambda: os.mkdir(j(mp, "nd")),
               lambda: os.setxattr(j(mp, "f"), "user.x", b"1")):
        with pytest.raises(OSError) as e:
            fn()
        assert e.value.errno == errno.EROFS
    o.umount()
    assert not os.path.exists(lowers[0] + ".upper")


def test_commit_several_lowers_needs_into(work):
    lowers = make_layers(work)
    upper = j(work, "upper")
    o = lowers_overlay(lowers, upper, j(work, "mnt"))
    o.mount()
    open(j(o.mp, "d/new"), "w").write("new")
    os.unlink(j(o.mp, "d/both"))
    o.umount()
    spec = ":".join(lowers)
    r = run([OVLFS, "commit", "--lower", spec, "-u", upper])
    assert r.returncode == 1 and "--into" in r.err, r.err
    r = run([OVLFS, "commit", "--lower", spec, "-u", upper, "--into",
             j(work, "elsewhere")])
    assert r.returncode == 1, r.err
    assert os.path.isdir(upper)
    r = run([OVLFS, "diff", "--lower", spec, "-u", upper, "--into", lowers[1]])
    assert r.returncode == 0, r.err
    assert "A /d/new" in r.out and "D /d/both" in r.out, r.out
    r = run([OVLFS, "commit", "--lower", spec, "-u", upper, "--into", lowers[1]])
    assert r.returncode == 0, r.err
    assert open(j(lowers[1], "d/new")).read() == "new"
    assert not os.path.exists(j(lowers[1], "d/both"))
    assert os.path.exists(j(lowers[2], "d/both"))
    assert not os.path.exists(upper)


def test_lower_list_errors(work):
    a, b = j(work, "a"), j(work, "b:c")
    os.mkdir(a)
    os.mkdir(b)
    open(j(b, "in-b"), "w").write("b")
    mp = j(work, "mnt")
    # A colon in a layer's name, escaped.
    o = lowers_overlay([a, b], j(work, "up"), mp)
    o.mount()
    assert os.listdir(mp) == ["in-b"]
    o.umount()
    r = run([OVLFS, "mount", "--lower", a + ":" + j(work, "missing"), mp])
    assert r.returncode == 1 and j(work, "missing") in r.err, r.err
    r = run([OVLFS, "mount", "--lower", a + ":" + a, mp])
    assert r.returncode == 1 and "twice" in r.err, r.err
    r = run([OVLFS, "mount", "--lower", a + "::" + escape(b), mp])
    assert r.returncode == 2 and "empty layer" in r.err, r.err
    assert not os.path.ismount(mp)


def upper_kinds(upper):
    """(OCI marker names, 0/0 devices) found anywhere in UPPER."""
    oci, kdev = [], []
    for d, dirs, files in os.walk(upper):
        for n in dirs + files:
            p = j(d, n)
            if n.startswith(".wh."):
                oci.append(p)
            st = os.lstat(p)
            if (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0:
                kdev.append(p)
    return oci, kdev


@needs_root
def test_convert_round_trip(work):
    """oci -> kernel (read by the kernel) -> oci: the same view throughout."""
    lower = j(work, "lower")
    os.mkdir(lower)
    spec = dict(LAYERS[2])
    spec["l" * 252] = "long name"
    build(lower, spec)
    upper = j(work, "upper")
    o = Overlay(lower, upper=upper)
    o.mount()
    ops(o.mp, 1)
    os.unlink(j(o.mp, "l" * 252))
    view = snapshot(o.mp)
    r = run([OVLFS, "convert", "--to", "kernel", "-u", upper, lower])
    assert r.returncode == 1 and "in use" in r.err, r.err
    o.umount()
    r = run([OVLFS, "convert", "--to", "kernel", "-u", upper, lower])
    assert r.returncode == 0, r.err
    oci, kdev = upper_kinds(upper)
    assert not oci and kdev, (oci, kdev)
    assert os.getxattr(upper, "user.ovlfs.format") == b"1 kernel"
    with KernelOverlay(work, [lower], upper=upper) as k:
        assert_same_tree(ksnap(k.mnt), view, "kernel", "ovlfs before")
        k.umount()
    o.mount()
    assert_same_tree(snapshot(o.mp), view, "ovlfs (kernel format)", "ovlfs before")
    o.umount()
    r = run([OVLFS, "convert", "--to", "oci", "-u", upper, lower])
    assert r.returncode == 0, r.err
    oci, kdev = upper_kinds(upper)
    assert oci and not kdev, (oci, kdev)
    o.mount()
    assert_same_tree(snapshot(o.mp), view, "ovlfs (oci again)", "ovlfs before")
    o.umount()
    r = run([OVLFS, "convert", "-u", upper, lower])
    assert r.returncode == 2 and "--to" in r.err, r.err


def test_flatten(work):
    lowers = make_layers(work)
    open(j(lowers[2], "hl"), "w").write("linked")
    os.link(j(lowers[2], "hl"), j(lowers[2], "hl-link"))
    upper = j(work, "upper")
    o = lowers_overlay(lowers, upper, j(work, "mnt"))
    o.mount()
    ops(o.mp)
    view = snapshot(o.mp, root_attrs=True, mtime=True)
    o.umount()
    dest = j(work, "flat")
    spec = ":".join(lowers)
    r = run([OVLFS, "flatten", "--lower", spec, "-u", upper, dest])
    assert r.returncode == 0, r.err
    assert_same_tree(snapshot(dest, root_attrs=True, mtime=True), view,
                     "flattened", "mounted view")
    # Hard links stay links; nothing of the layers' markers shows.
    o.mount()
    assert os.stat(j(o.mp, "hl-link")).st_nlink == 2
    o.umount()
    assert os.stat(j(dest, "hl-link")).st_nlink == 2
    assert os.stat(j(dest, "hl-link")).st_ino == os.stat(j(dest, "hl")).st_ino
    assert not [n for d, ds, fs in os.walk(dest) for n in ds + fs
                if n.startswith(".wh.")]
    # Refusals leave nothing behind.
    r = run([OVLFS, "flatten", "--lower", spec, "-u", upper, dest])
    assert r.returncode == 1 and "exists" in r.err, r.err
    inside = j(lowers[1], "flat")
    r = run([OVLFS, "flatten", "--lower", spec, "-u", upper, inside])
    assert r.returncode == 1 and "overlaps" in r.err, r.err
    assert not os.path.exists(inside)
    assert sorted(n for n in os.listdir(work) if "flatten" in n) == []


def test_repeated_lower_options(work):
    """--lower A --lower B:C is --lower A:B:C."""
    lowers = make_layers(work)
    a = lowers_overlay(lowers, j(work, "up1"), j(work, "mnt1"))
    a.mount()
    o = Overlay(lowers[0], upper=j(work, "up2"), mp=j(work, "mnt2"),
                extra_args=["--lower", escape(lowers[0]),
                            "--lower", ":".join(escape(p) for p in lowers[1:])])
    o.mount_args_orig = o.mount_args
    # Drop the positional LOWER (the last argument but the mount point).
    o.mount_args = lambda foreground=False: (
        lambda a: a[:-2] + a[-1:])(o.mount_args_orig(foreground))
    o.mount()
    assert_same_tree(snapshot(o.mp), snapshot(a.mp), "repeated --lower", "A:B:C")
    assert open(j(o.mp, "d/both")).read() == "middle"
