"""OCI image-layer tarballs: `ovlfs export --tar` and `ovlfs apply --tar`.

Oracles: Python's tarfile and GNU tar read what export writes; `ovlfs
commit` of the same upper and the kernel's overlayfs over a kernel-format
upper built by hand from the tarball say what applying it must give.
"""

import hashlib
import io
import os
import stat
import subprocess
import tarfile

import pytest

from conftest import (OVLFS, Overlay, F, D, L, Fifo, HL, build, cp_a,
                      snapshot, assert_same_tree, ovlfs, run, needs_root)

LONG = "L" * 252
T_NS = 1_600_000_000_123_456_789


def j(*p):
    return os.path.join(*p)


def lower_spec():
    return {
        "keep": "keep\n",
        "modify": "old\n",
        "delete_me": "bye\n",
        "deldir": {"a": "1", "sub": {"b": "2"}},
        "dir2file": {"x": "x"},
        "opq": {"old1": "o", "olddir": {"z": "z"}},
        "merge": D({"l1": "l", "l2": "l"}, mode=0o750),
        LONG: "long",
        "hl1": "lower hard link",
        "hl2": HL("hl1"),
        "fifo0": Fifo(),
    }


def make_changes(m):
    """Changes of every kind, made through the mount at M."""
    with open(j(m, "new"), "w") as f:
        f.write("new\n")
    os.chmod(j(m, "new"), 0o640)
    os.chown(j(m, "new"), 1234, 5678)
    os.setxattr(j(m, "new"), "user.test", b"hello")
    with open(j(m, "modify"), "a") as f:
        f.write("more\n")
    os.unlink(j(m, "delete_me"))
    subprocess.run(["rm", "-rf", j(m, "deldir"), j(m, "dir2file"), j(m, "opq")],
                   check=True)
    with open(j(m, "dir2file"), "w") as f:
        f.write("was a dir\n")
    os.mkdir(j(m, "opq"))
    with open(j(m, "opq", "new"), "w") as f:
        f.write("in opaque\n")
    os.unlink(j(m, "merge", "l1"))
    with open(j(m, "merge", "n1"), "w") as f:
        f.write("n1\n")
    os.mkdir(j(m, "merge", "newdir"))
    os.unlink(j(m, LONG))
    os.link(j(m, "new"), j(m, "merge", "hardlink"))
    os.symlink("keep", j(m, "sym"))
    os.symlink("/etc/passwd", j(m, "merge", "abs"))
    os.mkfifo(j(m, "fifo"))
    os.setxattr(j(m, "keep"), "user.k", b"v")
    os.mkdir(j(m, "emptydir"), 0o700)
    os.utime(j(m, "new"), ns=(T_NS, T_NS))
    os.utime(j(m, "merge", "newdir"), ns=(T_NS, T_NS))


def setup_pair(work):
    """A lower, a pristine copy of it, and an upper holding make_changes."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, lower_spec())
    orig = j(work, "orig")
    cp_a(lower, orig)
    o = Overlay(lower)
    o.mount()
    try:
        make_changes(o.mp)
    finally:
        o.umount()
    return lower, orig, o.upper


def export(lower, out, upper=None):
    args = ["export", "--tar", out]
    if upper:
        args += ["-u", upper]
    r = ovlfs(*(args + [lower]))
    assert r.returncode == 0, r.err
    return out


def apply(lower, tar, commit=False, upper=None, check=True):
    args = ["apply", "--tar", tar]
    if commit:
        args.append("--commit")
    if upper:
        args += ["-u", upper]
    r = ovlfs(*(args + [lower]))
    if check:
        assert r.returncode == 0, r.err
    return r


def merged(lower):
    """The merged view of LOWER and its default upper, snapshot."""
    o = Overlay(lower)
    o.mount()
    try:
        return snapshot(o.mp)
    finally:
        o.umount()


def members(path):
    with tarfile.open(path) as t:
        return list(t)


def mtime_ns(m):
    s = m.pax_headers.get("mtime")
    if s is None:
        return int(m.mtime) * 10**9
    sec, _, frac = s.partition(".")
    return int(sec) * 10**9 + int((frac + "000000000")[:9])


# ------------------------------------------------------------ kernel oracle

def extract_kernel(tar_path, dest):
    """Unpack an OCI layer as a kernel overlayfs upper: 0/0 char devices
    for `.wh.` entries, trusted.overlay.opaque=y for `.wh..wh..opq`."""
    dirs = []
    with tarfile.open(tar_path) as t:
        for m in t:
            name = m.name.rstrip("/")
            if name in ("", "."):
                continue
            parent, base = os.path.split(name)
            pd = j(dest, parent)
            p = j(dest, name)
            if base == ".wh..wh..opq":
                os.setxattr(pd, "trusted.overlay.opaque", b"y")
                continue
            if base.startswith(".wh."):
                os.mknod(j(pd, base[4:]), stat.S_IFCHR, os.makedev(0, 0))
                continue
            if m.islnk():
                os.link(j(dest, m.linkname), p)
                continue
            if m.isdir():
                os.mkdir(p, 0o700)
            elif m.issym():
                os.symlink(m.linkname, p)
            elif m.isreg():
                with open(p, "wb") as f:
                    f.write(t.extractfile(m).read())
            elif m.isfifo():
                os.mkfifo(p)
            elif m.ischr() or m.isblk():
                os.mknod(p, (stat.S_IFCHR if m.ischr() else stat.S_IFBLK) | 0o600,
                         os.makedev(m.devmajor, m.devminor))
            os.chown(p, m.uid, m.gid, follow_symlinks=False)
            if not m.issym():
                os.chmod(p, m.mode)
            for k, v in m.pax_headers.items():
                if k.startswith("SCHILY.xattr."):
                    os.setxattr(p, k[13:], v.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
            if m.isdir():
                dirs.append((p, mtime_ns(m)))
            else:
                os.utime(p, ns=(mtime_ns(m),) * 2, follow_symlinks=False)
    for p, ns in reversed(dirs):
        os.utime(p, ns=(ns, ns))


class KernelOverlay:
    def __init__(self, lower, upper, work, mp):
        self.mp = mp
        os.makedirs(work, exist_ok=True)
        os.makedirs(mp, exist_ok=True)
        run(["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, work), mp],
            check=True)

    def __enter__(self):
        return self.mp

    def __exit__(self, *a):
        run(["umount", self.mp], check=True)


# ------------------------------------------------------------ export

@needs_root
def test_export_is_an_oci_layer(work):
    lower, _, upper = setup_pair(work)
    out = export(lower, j(work, "layer.tar"))
    ms = members(out)
    names = [m.name.rstrip("/") for m in ms]
    by = {m.name.rstrip("/"): m for m in ms}
    assert set(names) == {
        ".wh." + LONG, ".wh.delete_me", ".wh.deldir", "dir2file", "emptydir",
        "fifo", "keep", "merge", "merge/.wh.l1", "merge/abs", "merge/hardlink",
        "merge/n1", "merge/newdir", "modify", "new", "opq",
        "opq/.wh..wh..opq", "opq/new", "sym"}, names
    assert len(names) == len(set(names))
    # path order, a directory before its contents, the opaque marker first
    assert names == sorted(names, key=lambda n: n.encode().split(b"/"))
    assert names.index("opq/.wh..wh..opq") == names.index("opq") + 1
    for n in names:
        assert not n.startswith("/") and not n.startswith("./")
    # whiteouts: empty regular files (the long one spelled out in full)
    for n in (".wh." + LONG, ".wh.delete_me", ".wh.deldir", "merge/.wh.l1",
              "opq/.wh..wh..opq"):
        assert by[n].isreg() and by[n].size == 0, n
    assert by["dir2file"].isreg()
    assert tarfile.open(out).extractfile("dir2file").read() == b"was a dir\n"
    assert by["merge"].isdir() and by["merge"].mode == 0o750
    assert by["emptydir"].isdir() and by["emptydir"].mode == 0o700
    assert by["fifo"].isfifo()
    assert by["sym"].issym() and by["sym"].linkname == "keep"
    assert by["merge/abs"].linkname == "/etc/passwd"
    # one inode seen twice: the second name is a hard link to the first
    first, second = by["merge/hardlink"], by["new"]
    assert first.isreg() and second.islnk() and second.linkname == "merge/hardlink"
    assert (first.uid, first.gid, first.mode) == (1234, 5678, 0o640)
    assert first.pax_headers.get("SCHILY.xattr.user.test") == "hello"
    assert mtime_ns(first) == T_NS
    assert mtime_ns(by["merge/newdir"]) == T_NS
    assert by["keep"].pax_headers.get("SCHILY.xattr.user.k") == "v"
    for m in ms:
        for k in m.pax_headers:
            assert "ovlfs" not in k and "overlay" not in k, (m.name, k)
    # GNU tar reads it too, with the same names
    r = run(["tar", "--xattrs", "-tvf", out], check=True)
    listed = [l.split(None, 5)[5] for l in r.out.splitlines()]
    # as stored: directories with a trailing slash (tarfile strips it)
    for l, m in zip(listed, ms):
        assert l.endswith("/") == m.isdir(), l
    assert [l.split(" link to ")[0].split(" -> ")[0].rstrip("/")
            for l in listed] == names
    # the upper is left as it was
    assert os.path.isdir(upper)


def test_export_without_upper_is_empty(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    out = export(lower, j(work, "l.tar"))
    assert members(out) == []
    assert not os.path.exists(lower + ".upper")


def test_export_to_stdout(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    os.mkdir(lower + ".upper")
    with open(j(lower + ".upper", "f"), "w") as f:
        f.write("data")
    r = subprocess.run([OVLFS, "export", "--tar", "-", lower],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as t:
        assert t.getnames() == ["f"]
        assert t.extractfile("f").read() == b"data"


def _same_upper_two_formats(work):
    """Equivalent OCI and kernel-format uppers, built by hand."""
    spec = {"d": D({"f": "f", "sub": {"g": "g"}}, xattrs={"user.x": "1"}),
            "o": {"n": "n"}, "s": L("d/f"), "e": {}}
    oci = j(work, "oci")
    ker = j(work, "kernel")
    for u in (oci, ker):
        os.mkdir(u)
        build(u, spec)
    for name in (".wh.gone", "d/.wh.old"):
        open(j(oci, name), "w").close()
    # the ovlfs long form: hashed name, the real name as content
    with open(j(oci, ".wh..wh.lng." + hashlib.sha256(LONG.encode()).hexdigest()),
              "w") as f:
        f.write(LONG)
    open(j(oci, "o", ".wh..wh..opq"), "w").close()
    for name in ("gone", "d/old", LONG):
        os.mknod(j(ker, name), stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(j(ker, "o"), "trusted.overlay.opaque", b"y")
    for u in (oci, ker):
        for rel in ("d/sub/g", "d/sub", "d/f", "d", "o/n", "o", "e"):
            os.utime(j(u, rel), ns=(T_NS, T_NS))
        os.utime(j(u, "s"), ns=(T_NS, T_NS), follow_symlinks=False)
    return oci, ker


def _digest(path):
    out = []
    with tarfile.open(path) as t:
        for m in t:
            data = t.extractfile(m).read() if m.isreg() else None
            out.append((m.name, m.type, m.mode, m.uid, m.gid, m.size,
                        m.linkname, data, mtime_ns(m) if not
                        os.path.basename(m.name.rstrip("/")).startswith(".wh.")
                        else None,
                        sorted((k, v) for k, v in m.pax_headers.items()
                               if k.startswith("SCHILY."))))
    return out


@needs_root
def test_export_kernel_format_upper_same_as_oci(work):
    oci, ker = _same_upper_two_formats(work)
    lower = j(work, "lower")
    os.mkdir(lower)
    a = _digest(export(lower, j(work, "a.tar"), upper=oci))
    b = _digest(export(lower, j(work, "b.tar"), upper=ker))
    assert a == b
    names = [x[0] for x in a]
    assert ".wh.gone" in names and "d/.wh.old" in names
    assert ".wh." + LONG in names and "o/.wh..wh..opq" in names
    assert not any("lng" in n for n in names)


# ------------------------------------------------------------ round trip

@needs_root
def test_round_trip_commit_and_kernel(work):
    lower, orig, upper = setup_pair(work)
    out = export(lower, j(work, "layer.tar"))
    # apply --commit to one copy, ovlfs commit of the upper to another
    a = j(work, "a")
    b = j(work, "b")
    cp_a(orig, a)
    cp_a(orig, b)
    cp_a(upper, j(work, "b-upper"))
    apply(a, out, commit=True)
    r = ovlfs("commit", "-u", j(work, "b-upper"), b)
    assert r.returncode == 0, r.err
    assert not [n for n in os.listdir(work) if ".apply-" in n]
    want = snapshot(b, mtime=True, nlink=True)
    assert_same_tree(snapshot(a, mtime=True, nlink=True), want,
                     "apply --commit", "ovlfs commit")
    assert os.stat(j(a, "new")).st_ino == os.stat(j(a, "merge", "hardlink")).st_ino
    # the kernel's overlayfs, over a kernel-format upper made from the tar
    c = j(work, "c")
    cp_a(orig, c)
    ku = j(work, "kupper")
    os.mkdir(ku)
    extract_kernel(out, ku)
    with KernelOverlay(c, ku, j(work, "kwork"), j(work, "kmnt")) as mnt:
        assert_same_tree(snapshot(mnt, mtime=True), snapshot(a, mtime=True),
                         "kernel overlay", "apply --commit")


@needs_root
def test_apply_to_upper_then_mount(work):
    lower, orig, upper = setup_pair(work)
    out = export(lower, j(work, "layer.tar"))
    a = j(work, "a")
    cp_a(orig, a)
    apply(a, out, commit=True)
    b = j(work, "b")
    cp_a(orig, b)
    apply(b, out)                   # creates b.upper
    assert os.path.isdir(b + ".upper")
    o = Overlay(b)
    o.mount()
    try:
        assert_same_tree(snapshot(o.mp, mtime=True), snapshot(a, mtime=True),
                         "mount of applied upper", "apply --commit")
    finally:
        o.umount()
    # and exporting that upper gives the same layer back
    again = _digest(export(b, j(work, "again.tar")))
    assert [x for x in again] == _digest(out)


def _tar(path, entries):
    """Write a tar of ENTRIES: (name, kind, payload) with kind file, dir,
    sym, link; payload the data or link target."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            name, kind = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_500_000_000
            data = None
            if kind == "file":
                data = e[2] if len(e) > 2 else b""
                ti.size = len(data)
                ti.mode = 0o644
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[2]
            elif kind == "link":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e[2]
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _layers_tar(work):
    """A layer exercising the same-layer rules over setup_pair's upper."""
    return _tar(j(work, "t.tar"), [
        ("merge/", "dir"),
        ("merge/before", "file", b"before the marker"),
        ("merge/newdir/", "dir"),
        ("merge/newdir/x", "file", b"x"),
        ("merge/.wh..wh..opq", "file"),
        ("merge/after", "file", b"after the marker"),
        ("opq/.wh.new", "file"),
        (".wh.keep", "file"),
        (".wh.sym", "file"),
        ("sym", "file", b"whiteout and entry in one layer"),
        ("dir2file/", "dir"),
        ("dir2file/inside", "file", b"in"),
        ("deldir/", "dir"),
        ("deldir/again", "file", b"a"),
        ("implicit/parent/file", "file", b"no parent entries"),
        ("link2", "link", "merge/after"),
    ])


@needs_root
def test_apply_layers_on_existing_upper(work):
    """Layer T over an upper U equals committing U, then T."""
    lower, orig, upper = setup_pair(work)
    t = _layers_tar(work)
    a = j(work, "a")
    cp_a(orig, a)
    cp_a(upper, j(work, "a-upper"))
    r = ovlfs("commit", "-u", j(work, "a-upper"), a)
    assert r.returncode == 0, r.err
    apply(a, t, commit=True)
    # the same, onto the upper itself
    apply(lower, t)
    got = merged(lower)
    want = snapshot(a)
    assert_same_tree(got, want, "upper + layer", "commit, then layer")
    assert sorted(os.listdir(j(a, "merge"))) == [
        "after", "before", "newdir"]
    assert os.listdir(j(a, "merge", "newdir")) == ["x"]
    assert sorted(os.listdir(j(a, "dir2file"))) == ["inside"]
    assert os.listdir(j(a, "deldir")) == ["again"]
    assert not os.path.lexists(j(a, "keep"))
    assert os.path.isfile(j(a, "sym")) and not os.path.islink(j(a, "sym"))
    assert os.stat(j(a, "link2")).st_ino == os.stat(j(a, "merge", "after")).st_ino


@needs_root
def test_apply_twice_same_as_once(work):
    lower, orig, upper = setup_pair(work)
    t = _layers_tar(work)
    views = []
    for times in (1, 2):
        low = j(work, "l%d" % times)
        cp_a(orig, low)
        cp_a(upper, low + ".upper")
        for _ in range(times):
            apply(low, t)
        o = Overlay(low)
        o.mount()
        try:
            views.append(snapshot(o.mp, mtime=True))
        finally:
            o.umount()
    # parents made for the tar with no lower counterpart: "now" each run
    for v in views:
        for k in (b"implicit", b"implicit/parent"):
            del v[k]["mtime"]
    assert_same_tree(views[1], views[0], "applied twice", "applied once")


@needs_root
def test_apply_gnu_tar_layer(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"etc": {"hostname": "old\n", "gone": "g", "x": {"y": "y"}},
                  "var": {"a": "a", "b": {"c": "c"}}, "keep": "k"})
    layer = j(work, "layer")
    os.mkdir(layer)
    build(layer, {"etc": {"hostname": F("new\n", xattrs={"user.h": "1"}),
                          ".wh.gone": "", ".wh.x": ""},
                  "var": {".wh..wh..opq": "", "fresh": "f"},
                  "bin": {"sh": L("/bin/busybox")}})
    os.chmod(j(layer, "var"), 0o711)
    for comp in ("", "z"):
        t = j(work, "layer.tar" + ("." + comp if comp else ""))
        run(["tar", "--xattrs", "--xattrs-include=user.*", "-C", layer,
             "-c" + comp + "f", t, "."], check=True)
        a = j(work, "a" + comp)
        cp_a(lower, a)
        apply(a, t, commit=True)
        s = snapshot(a)
        assert set(k for k in s if k) == {
            b"etc", b"etc/hostname", b"var", b"var/fresh", b"bin", b"bin/sh",
            b"keep"}, sorted(s)
        assert open(j(a, "etc", "hostname")).read() == "new\n"
        assert os.getxattr(j(a, "etc", "hostname"), "user.h") == b"1"
        assert s[b"var"]["mode"] == oct(0o711)
        assert os.readlink(j(a, "bin", "sh")) == "/bin/busybox"


@pytest.mark.parametrize("commit", [False, True], ids=["upper", "commit"])
def test_apply_file_listed_twice(work, commit):
    """GNU tar lists a file named twice on its command line (`tar -cf T d
    d/t`) the second time as a hard link to itself; GNU tar extracts that
    as nothing to do. apply removed the file, then failed to link it to
    itself ('entry "d/t": No such file or directory') with the upper left
    without d/t. Same as GNU tar's extraction now, both ways."""
    src = j(work, "src")
    os.mkdir(src)
    build(src, {"d": {"t": "t\n", "u": "u\n"}, "e": "e\n"})
    t = j(work, "twice.tar")
    run(["tar", "-C", src, "-cf", t, "d", "d/t", "e", "d/u"], check=True)
    kinds = [(m.name, m.islnk() and m.linkname) for m in members(t)]
    assert ("d/t", "d/t") in kinds, kinds          # the self link
    lower, model = j(work, "lower"), j(work, "model")
    os.mkdir(lower)
    build(lower, {"d": {"t": "old\n", "x": "x\n"}})
    cp_a(lower, model)
    run(["tar", "-C", model, "-xf", t], check=True)
    apply(lower, t, commit=commit)
    got = snapshot(lower) if commit else merged(lower)
    assert_same_tree(got, snapshot(model), "applied", "GNU tar -x")


# ------------------------------------------------------------ security

def _malicious(work, kind):
    outside = j(work, "outside")
    p = j(work, kind + ".tar")
    if kind == "dotdot":
        _tar(p, [("ok", "file", b"ok"), ("../outside/x", "file", b"evil")])
    elif kind == "absolute":
        _tar(p, [("ok", "file", b"ok"), (outside + "/x", "file", b"evil")])
    elif kind == "symlink":
        _tar(p, [("ok", "file", b"ok"), ("a", "sym", outside),
                 ("a/file", "file", b"evil")])
    elif kind == "hardlink":
        _tar(p, [("ok", "file", b"ok"), ("h", "link", "../../outside/secret")])
    elif kind == "reserved":
        _tar(p, [("ok", "file", b"ok"), (".wh..wh.lng.abc", "file", b"x")])
    elif kind == "whdir":
        _tar(p, [("ok", "file", b"ok"), (".wh.d/x", "file", b"x")])
    return p


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink",
                                  "reserved", "whdir"])
@pytest.mark.parametrize("commit", [False, True], ids=["upper", "commit"])
def test_malicious_tarball_refused(work, kind, commit):
    outside = j(work, "outside")
    os.mkdir(outside)
    with open(j(outside, "secret"), "w") as f:
        f.write("secret")
    before = snapshot(outside, mtime=True, nlink=True, root_attrs=True)
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"l": "l"})
    lower_before = snapshot(lower, mtime=True, root_attrs=True)
    r = apply(lower, _malicious(work, kind), commit=commit, check=False)
    assert r.returncode == 1, (r.out, r.err)
    assert r.err.startswith("ovlfs: ") and "entry" in r.err, r.err
    assert snapshot(outside, mtime=True, nlink=True, root_attrs=True) == before
    if commit:
        assert snapshot(lower, mtime=True, root_attrs=True) == lower_before
        assert sorted(os.listdir(work)) == sorted(["lower", "outside", kind + ".tar"])
    else:
        # refused before anything is written: not even the upper is made
        assert not os.path.exists(lower + ".upper")
        assert sorted(os.listdir(work)) == sorted(["lower", "outside", kind + ".tar"])


def test_symlink_in_upper_refused_at_its_entry(work):
    """What only the upper shows (its own symlink in the way) is refused
    when the entry comes: what came before it stays applied."""
    outside = j(work, "outside")
    os.mkdir(outside)
    lower = j(work, "lower")
    os.mkdir(lower)
    os.mkdir(lower + ".upper")
    os.symlink(outside, j(lower + ".upper", "a"))
    t = _tar(j(work, "t.tar"), [("ok", "file", b"ok"), ("a/file", "file", b"evil")])
    r = apply(lower, t, check=False)
    assert r.returncode == 1 and 'entry "a/file"' in r.err and "symlink" in r.err, r.err
    assert os.listdir(outside) == []
    assert sorted(os.listdir(lower + ".upper")) == ["a", "ok"]


# ------------------------------------------------------------ kernel format

@needs_root
def test_apply_writes_kernel_format(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a", "d": {"x": "x"}, "e": {"y": "y"}})
    ku = j(work, "kupper")
    os.mkdir(ku)
    os.mknod(j(ku, "a"), stat.S_IFCHR, os.makedev(0, 0))   # kernel format
    t = _tar(j(work, "t.tar"), [("d/", "dir"), ("d/.wh..wh..opq", "file"),
                                ("d/n", "file", b"n"), (".wh.e", "file"),
                                ("a", "file", b"back")])
    apply(lower, t, upper=ku)
    st = os.lstat(j(ku, "e"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(j(ku, "d"), "trusted.overlay.opaque") == b"y"
    assert not [n for n in os.listdir(ku) if n.startswith(".wh.")]
    assert open(j(ku, "a")).read() == "back"
    a = j(work, "a")
    cp_a(lower, a)
    apply(a, t, commit=True)
    with KernelOverlay(lower, ku, j(work, "kwork"), j(work, "kmnt")) as mnt:
        assert_same_tree(snapshot(mnt), snapshot(a), "kernel overlay",
                         "apply --commit")


# ------------------------------------------------------------ errors

def test_errors(work):
    lower = j(work, "lower")
    t = _tar(j(work, "t.tar"), [("f", "file", b"f")])
    r = apply(lower, t, check=False)
    assert r.returncode == 1 and "lower" in r.err and lower in r.err, r.err
    r = ovlfs("export", "--tar", j(work, "x.tar"), lower)
    assert r.returncode == 1 and lower in r.err, r.err
    assert not os.path.exists(j(work, "x.tar"))
    os.mkdir(lower)
    bad = j(work, "bad.tar")
    with open(bad, "wb") as f:
        f.write(b"this is not a tarball\n" * 100)
    r = apply(lower, bad, check=False)
    assert r.returncode == 1 and "cannot read the tar" in r.err, r.err
    r = apply(lower, j(work, "missing.tar"), check=False)
    assert r.returncode == 1 and "missing.tar" in r.err, r.err
    for args in (["apply", lower], ["export", lower],
                 ["apply", "--tar", t], ["export", "--tar", t, "--commit", lower]):
        r = ovlfs(*args)
        assert r.returncode == 2, (args, r.err)


def test_busy_upper_refused(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "f"})
    t = _tar(j(work, "t.tar"), [("g", "file", b"g")])
    o = Overlay(lower)
    o.mount()
    try:
        for args in (["export", "--tar", j(work, "o.tar"), lower],
                     ["apply", "--tar", t, lower],
                     ["apply", "--tar", t, "--commit", lower]):
            r = ovlfs(*args, timeout=30)
            assert r.returncode == 1, (args, r.err)
            assert r.err.startswith("ovlfs: ") and "in use" in r.err, r.err
        assert not os.path.exists(j(o.upper, "g"))
        assert not os.path.exists(j(lower, "g"))
    finally:
        o.umount()
    apply(lower, t)
    assert open(j(o.upper, "g")).read() == "g"
