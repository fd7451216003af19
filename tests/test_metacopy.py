"""Metadata-only copy-up (issue 15 item 2).

chmod, chown, utimes and xattr changes of a lower regular file copy up its
metadata only: a sparse upper file of the lower's size, with a marker (the
kernel's overlay.metacopy in the kernel format, *.ovlfs.metacopy in the OCI
one). Reads keep coming from the lower; the first open for writing,
truncate or O_TRUNC brings the data in. The kernel's overlayfs reads the
kernel-format ones (metacopy=on) and ovlfs reads the kernel's; export,
commit and diff treat the data as the lower's.
"""

import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import tarfile
import threading
import time

import pytest

from conftest import (OVLFS, Overlay, run, ovlfs, daemon_pids, needs_root,
                      snapshot, assert_same_tree, cp_a, kill_after)

MiB = 1 << 20
BIG = 256 * MiB
FORMATS = ["oci", "kernel"]
MARK = {"oci": "trusted.ovlfs.metacopy", "kernel": "trusted.overlay.metacopy"}

pytestmark = needs_root     # trusted.* markers, chown, the kernel's overlayfs


def j(*p):
    return os.path.join(*p)


def make_big(path, size=BIG):
    """A file whose every MiB differs (its number at the front)."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(i.to_bytes(8, "little") + block[8:])
    return path


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def xattrs(path):
    return set(os.listxattr(path, follow_symlinks=False))


class MC:
    def __init__(self, work, fmt, size=BIG, extra=()):
        self.work, self.fmt = work, fmt
        self.lower = j(work, "lower")
        self.upper = j(work, "upper")
        os.mkdir(self.lower)
        make_big(j(self.lower, "big"), size)
        with open(j(self.lower, "small"), "w") as f:
            f.write("hello\n")
        os.setxattr(j(self.lower, "small"), "user.old", b"1")
        os.mkdir(j(self.lower, "d"))
        with open(j(self.lower, "d", "f"), "w") as f:
            f.write("deep\n")
        self.want = digest(j(self.lower, "big"))
        args = (["--format", "kernel"] if fmt == "kernel" else []) + list(extra)
        self.ovl = Overlay(self.lower, upper=self.upper, inode_mode="persistent",
                           extra_args=args)
        self.ovl.mount()
        self.mnt = self.ovl.mp

    def m(self, *p):
        return j(self.mnt, *p)

    def u(self, *p):
        return j(self.upper, *p)

    def is_meta(self, *p):
        return MARK[self.fmt] in xattrs(self.u(*p))


@pytest.fixture(params=FORMATS)
def mc(request, work):
    return lambda **kw: MC(work, request.param, **kw)


def test_metadata_changes_write_no_data(mc):
    """chmod, chown, utimes and setxattr of a 256 MiB lower file write
    ~nothing to the upper; the merged file reads the lower's data and shows
    the new metadata, with the lower's st_blocks (as the kernel does)."""
    t = mc()
    big = t.m("big")
    os.chmod(big, 0o640)
    os.chown(big, 12, 34)
    os.utime(big, ns=(10**18, 2 * 10**18))
    os.setxattr(big, "user.new", b"v")
    os.setxattr(t.m("small"), "user.new", b"w")
    os.removexattr(t.m("small"), "user.old")
    ust = os.stat(t.u("big"))
    assert ust.st_size == BIG and ust.st_blocks == 0, ust
    assert t.is_meta("big") and t.is_meta("small")
    st, lst = os.stat(big), os.stat(j(t.lower, "big"))
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 12, 34)
    assert st.st_mtime_ns == 2 * 10**18
    assert st.st_blocks == lst.st_blocks and st.st_size == BIG
    assert digest(big) == t.want
    assert os.getxattr(big, "user.new") == b"v"
    assert open(t.m("small")).read() == "hello\n"
    assert "user.old" not in xattrs(t.m("small"))
    assert os.stat(j(t.lower, "big")).st_mode & 0o777 == 0o644   # lower intact
    # Still metacopy after a remount, and read the same.
    t.ovl.remount()
    assert digest(big) == t.want and os.stat(big).st_blocks == lst.st_blocks
    assert os.stat(t.u("big")).st_blocks == 0


def test_mmap_reads_lower(mc):
    t = mc(size=8 * MiB)
    os.chmod(t.m("big"), 0o600)
    with open(t.m("big"), "rb") as f, open(j(t.lower, "big"), "rb") as g:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as a:
            assert a[5 * MiB:5 * MiB + 4096] == g.read()[5 * MiB:5 * MiB + 4096]
    assert t.is_meta("big")


def test_write_brings_data_in(mc):
    """The first open for writing copies the data into the same upper inode
    and then drops the marker; mode (setuid too), owner and xattrs stay."""
    t = mc()
    big = t.m("big")
    os.chown(big, 5, 6)
    os.chmod(big, 0o4755)
    os.setxattr(big, "user.k", b"x")
    assert t.is_meta("big")
    ino_up = os.stat(t.u("big")).st_ino
    ino = os.stat(big).st_ino
    # A reader opened before the copy keeps reading the same bytes.
    r = open(big, "rb")
    with open(big, "r+b") as f:
        f.seek(3 * MiB + 5)
        f.write(b"XYZ")
    assert not t.is_meta("big")
    ust = os.stat(t.u("big"))
    assert ust.st_ino == ino_up and ust.st_blocks * 512 >= BIG
    st = os.stat(big)
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o4755, 5, 6)
    assert st.st_ino == ino
    assert os.getxattr(big, "user.k") == b"x"
    with open(j(t.lower, "big"), "rb") as g:
        want = bytearray(g.read())
    want[3 * MiB + 5:3 * MiB + 8] = b"XYZ"
    with open(big, "rb") as f:
        assert f.read() == bytes(want)
    r.seek(3 * MiB + 5)
    assert len(r.read(3)) == 3
    r.close()


def test_truncate_and_o_trunc(mc):
    t = mc(size=4 * MiB)
    for n in ("big", "small"):
        os.chmod(t.m(n), 0o600)
        assert t.is_meta(n)
    os.truncate(t.m("big"), 1000)
    assert not t.is_meta("big")
    with open(j(t.lower, "big"), "rb") as g:
        assert open(t.m("big"), "rb").read() == g.read(1000)
    with open(t.m("small"), "w") as f:      # O_TRUNC
        f.write("new\n")
    assert not t.is_meta("small")
    assert open(t.m("small")).read() == "new\n"
    assert os.stat(t.m("small")).st_mode & 0o777 == 0o600


REDIR = {"oci": "trusted.ovlfs.redirect", "kernel": "trusted.overlay.redirect"}


def test_rename_keeps_metacopy(mc, work):
    """A metacopy file renamed stays metacopy (so does a lower file renamed:
    it is copied up as metacopy) with the redirect the kernel writes for
    it: its old name within its directory, else its lower path. It reads
    the same, after a remount, through the kernel, after export and
    commit; a write brings its data in and drops marker and redirect."""
    t = mc(size=4 * MiB)
    want = open(j(t.lower, "big"), "rb").read()
    os.chmod(t.m("big"), 0o600)
    ino = os.stat(t.m("big")).st_ino
    os.rename(t.m("big"), t.m("big2"))                  # same directory
    assert t.is_meta("big2")
    assert os.getxattr(t.u("big2"), REDIR[t.fmt]) == b"big"
    os.rename(t.m("small"), t.m("d", "small"))           # a lower file
    assert t.is_meta("d", "small")
    assert os.getxattr(t.u("d", "small"), REDIR[t.fmt]) == b"/small"
    os.mkdir(t.m("new"))
    os.rename(t.m("d", "f"), t.m("new", "f1"))
    os.rename(t.m("new", "f1"), t.m("new", "f2"))         # twice
    os.rename(t.m("d"), t.m("d2"))                        # its parent too
    assert os.getxattr(t.u("new", "f2"), REDIR[t.fmt]) == b"/d/f"
    assert os.stat(t.u("big2")).st_blocks == 0
    assert os.stat(t.m("big2")).st_ino == ino
    expect = {"big2": want, "d2/small": b"hello\n", "new/f2": b"deep\n"}

    def check(root):
        for n, d in expect.items():
            assert open(j(root, n), "rb").read() == d, n
        for n in ("big", "small", "d/f", "d2/f", "new/f1"):
            assert not os.path.exists(j(root, n)), n
    check(t.mnt)
    assert os.stat(t.m("big2")).st_mode & 0o777 == 0o600
    t.ovl.remount()
    check(t.mnt)
    assert os.stat(t.m("big2")).st_ino == ino
    if t.fmt == "kernel":
        t.ovl.umount()
        k = kmount(work, t.lower, t.upper)
        try:
            check(k)
        finally:
            run(["umount", k], check=True)
        t.ovl.mount()
    t.ovl.umount()
    tar = j(work, "layer.tar")
    r = ovlfs("export", "--tar", tar, "--upper", t.upper, t.lower)
    assert r.returncode == 0, r.err
    with tarfile.open(tar) as tf:
        for n, d in expect.items():
            assert tf.extractfile(n).read() == d, n
    t.ovl.mount()
    with open(t.m("new", "f2"), "a") as f:
        f.write("more\n")
    expect["new/f2"] = b"deep\nmore\n"
    assert not xattrs(t.u("new", "f2")) & {MARK[t.fmt], REDIR[t.fmt]}
    check(t.mnt)
    t.ovl.umount()
    saved = j(work, "saved-upper")
    cp_a(t.upper, saved)
    saved_l = j(work, "saved-lower")
    cp_a(t.lower, saved_l)
    for atomic in (False, True):
        r = ovlfs("commit", *(["--atomic"] if atomic else []), "--upper",
                  t.upper, t.lower)
        assert r.returncode == 0, r.err
        check(t.lower)
        if not atomic:
            shutil.rmtree(t.lower)
            cp_a(saved_l, t.lower)
            cp_a(saved, t.upper)


def test_rename_without_redirects_brings_data(work):
    """--no-redirect-dir: no redirect on a file either; the rename of a
    metacopy file copies its data up first."""
    t = MC(work, "oci", size=4 * MiB, extra=["--no-redirect-dir"])
    os.chmod(t.m("big"), 0o600)
    assert t.is_meta("big")
    os.rename(t.m("big"), t.m("d", "big"))
    assert not xattrs(t.u("d", "big")) & {MARK["oci"], REDIR["oci"]}
    assert digest(t.m("d", "big")) == t.want


def test_link_brings_data(mc):
    """A metacopy file hard-linked gets its data first."""
    t = mc(size=4 * MiB)
    os.chmod(t.m("d", "f"), 0o600)
    assert t.is_meta("d", "f")
    os.link(t.m("d", "f"), t.m("f2"))
    assert not t.is_meta("d", "f")
    assert open(t.m("f2")).read() == "deep\n"
    t.ovl.remount()
    assert open(t.m("f2")).read() == "deep\n"
    assert os.stat(t.m("f2")).st_ino == os.stat(t.m("d", "f")).st_ino


def test_inode_numbers_stable(mc):
    t = mc(size=2 * MiB)
    big = t.m("big")
    ino = os.stat(big).st_ino
    os.chmod(big, 0o600)
    assert t.is_meta("big")
    assert os.stat(big).st_ino == ino
    t.ovl.remount()
    assert os.stat(big).st_ino == ino
    with open(big, "ab") as f:
        f.write(b"x")
    assert os.stat(big).st_ino == ino
    t.ovl.remount()
    assert os.stat(big).st_ino == ino


def test_hard_linked_lower_copies_in_full(work):
    """A lower file with several links is copied up in full, names and all
    (hardlink.c): the kernel makes those metacopy with index=on only."""
    lower = j(work, "lower")
    os.mkdir(lower)
    with open(j(lower, "a"), "w") as f:
        f.write("linked\n")
    os.link(j(lower, "a"), j(lower, "b"))
    o = Overlay(lower, upper=j(work, "upper"))
    o.mount()
    os.chmod(j(o.mp, "a"), 0o600)
    assert "trusted.ovlfs.metacopy" not in xattrs(j(work, "upper", "a"))
    assert open(j(work, "upper", "a")).read() == "linked\n"
    assert os.stat(j(o.mp, "b")).st_mode & 0o777 == 0o600
    o.umount()


def test_no_metacopy_copies_data(work):
    """--no-metacopy: a chmod copies the whole file up, as before."""
    lower = j(work, "lower")
    os.mkdir(lower)
    make_big(j(lower, "big"), 2 * MiB)
    o = Overlay(lower, upper=j(work, "upper"), extra_args=["--no-metacopy"])
    o.mount()
    os.chmod(j(o.mp, "big"), 0o600)
    ust = os.stat(j(work, "upper", "big"))
    assert ust.st_blocks * 512 >= 2 * MiB
    assert "trusted.ovlfs.metacopy" not in xattrs(j(work, "upper", "big"))
    o.umount()


def test_metacopy_option_mount8_syntax(work):
    """-o metacopy=on|off in the mount(8) syntax, off when not given (a
    mount program's upper is read directly by containers/storage); a bad
    value is refused."""
    lower = j(work, "lower")
    os.mkdir(lower)
    make_big(j(lower, "big"), 2 * MiB)
    for val, meta in (("off", False), ("on", True), ("", False)):
        upper, wd, mp = (j(work, "%s-%s" % (n, val or "default"))
                         for n in ("u", "w", "m"))
        for p in (upper, wd, mp):
            os.mkdir(p)
        opt = ",metacopy=" + val if val else ""
        r = run([OVLFS, "-o", "lowerdir=%s,upperdir=%s,workdir=%s%s"
                 % (lower, upper, wd, opt), mp])
        assert r.returncode == 0, r.err
        try:
            os.chmod(j(mp, "big"), 0o600)
            assert digest(j(mp, "big")) == digest(j(lower, "big"))
        finally:
            assert ovlfs("umount", mp).returncode == 0
        ust = os.stat(j(upper, "big"))
        assert ("trusted.ovlfs.metacopy" in xattrs(j(upper, "big"))) == meta
        assert (ust.st_blocks == 0) == meta, (val, ust.st_blocks)
    r = run([OVLFS, "-o", "lowerdir=%s,upperdir=%s,workdir=%s,metacopy=sometimes"
             % (lower, j(work, "u-off"), j(work, "w-off")), j(work, "m-off")])
    assert r.returncode == 2 and "metacopy 'sometimes'" in r.err, r.err


def test_kill_during_data_copy(work):
    """SIGKILL of the daemon while it copies a metacopy file's data in:
    after a remount the file reads either the lower's data (still
    metacopy) or the full copy, never holes."""
    t = MC(work, "oci")
    want = t.want
    rnd = random.Random(15)
    for trial in range(4):
        os.chmod(t.m("big"), 0o600 + trial)
        assert t.is_meta("big")
        pid, = daemon_pids(t.lower)
        out = {}

        def writer():
            try:
                with open(t.m("big"), "r+b") as f:
                    out["ok"] = True
                    f.write(b"")
            except OSError as e:
                out["err"] = e.errno

        th = threading.Thread(target=writer)
        th.start()
        time.sleep(rnd.uniform(0, 0.15))
        os.kill(pid, signal.SIGKILL)
        th.join(30)
        t.ovl.cleanup()
        meta = t.is_meta("big")
        if not meta:
            assert digest(t.u("big")) == want, "marker gone, data incomplete"
        t.ovl.mount()
        assert digest(t.m("big")) == want, "trial %d (metacopy %s)" % (trial, meta)
        if not meta:
            # Start over from a metacopy file.
            t.ovl.umount()
            os.unlink(t.u("big"))
            t.ovl.mount()


def test_metacopy_without_lower_is_eio(work):
    lower, upper = j(work, "lower"), j(work, "upper")
    os.mkdir(lower)
    os.mkdir(upper)
    with open(j(upper, "orphan"), "wb") as f:
        f.truncate(100)
    os.setxattr(j(upper, "orphan"), "trusted.ovlfs.metacopy", b"")
    # The kernel's index=on makes hard-linked metacopy files, whose index
    # ovlfs does not read: an error, not zeros for data.
    with open(j(lower, "hl"), "w") as f:
        f.write("data\n")
    with open(j(upper, "hl"), "wb") as f:
        f.truncate(5)
    os.setxattr(j(upper, "hl"), "trusted.ovlfs.metacopy", b"")
    os.link(j(upper, "hl"), j(upper, "hl2"))
    o = Overlay(lower, upper=upper)
    o.mount()
    for n in ("orphan", "hl"):
        with pytest.raises(OSError) as e:
            os.stat(j(o.mp, n))
        assert e.value.errno == 5, n
    o.umount()


# ---- the kernel's overlayfs ----

def kmount(work, lower, upper, mp="kmnt"):
    mnt, kw = j(work, mp), j(work, mp + "-work")
    os.makedirs(mnt, exist_ok=True)
    os.makedirs(kw, exist_ok=True)
    r = run(["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=%s,upperdir=%s,workdir=%s,metacopy=on,redirect_dir=on"
             % (lower, upper, kw), mnt])
    if r.returncode != 0:
        pytest.skip("kernel overlayfs mount failed: " + r.err.strip())
    return mnt


def test_kernel_reads_ovlfs_metacopy(work):
    t = MC(work, "kernel", size=16 * MiB)
    os.chmod(t.m("big"), 0o604)
    os.chown(t.m("d", "f"), 7, 8)
    os.setxattr(t.m("small"), "user.q", b"1")
    want = {n: (os.stat(t.m(n)).st_mode, os.stat(t.m(n)).st_uid,
                os.stat(t.m(n)).st_blocks) for n in ("big", "d/f", "small")}
    t.ovl.umount()
    assert t.is_meta("big") and os.stat(t.u("big")).st_blocks == 0
    k = kmount(work, t.lower, t.upper)
    try:
        for n, w in want.items():
            st = os.stat(j(k, n))
            assert (st.st_mode, st.st_uid, st.st_blocks) == w, n
        assert digest(j(k, "big")) == t.want
        assert open(j(k, "d", "f")).read() == "deep\n"
        assert os.getxattr(j(k, "small"), "user.q") == b"1"
    finally:
        run(["umount", k], check=True)


def test_ovlfs_reads_kernel_metacopy(work):
    """The kernel's metacopy uppers, renamed ones too (relative and absolute
    overlay.redirect on the file), read through ovlfs; writing one brings
    its data in and drops marker and redirect."""
    lower, upper = j(work, "lower"), j(work, "upper")
    os.mkdir(lower)
    make_big(j(lower, "big"), 4 * MiB)
    want = digest(j(lower, "big"))
    os.mkdir(j(lower, "d"))
    with open(j(lower, "d", "x"), "w") as f:
        f.write("deep\n")
    with open(j(lower, "s"), "w") as f:
        f.write("small\n")
    os.mkdir(upper)
    k = kmount(work, lower, upper)
    try:
        os.chmod(j(k, "big"), 0o600)
        os.chmod(j(k, "s"), 0o640)
        os.rename(j(k, "s"), j(k, "s2"))
        os.mkdir(j(k, "e"))
        os.chmod(j(k, "d", "x"), 0o700)
        os.rename(j(k, "d", "x"), j(k, "e", "x2"))
    finally:
        run(["umount", k], check=True)
    assert "trusted.overlay.metacopy" in xattrs(j(upper, "big"))
    assert "trusted.overlay.redirect" in xattrs(j(upper, "e", "x2"))
    o = Overlay(lower, upper=upper)
    o.mount()
    assert digest(j(o.mp, "big")) == want
    assert os.stat(j(o.mp, "big")).st_mode & 0o777 == 0o600
    assert os.stat(j(o.mp, "big")).st_blocks == os.stat(j(lower, "big")).st_blocks
    assert open(j(o.mp, "s2")).read() == "small\n"
    assert open(j(o.mp, "e", "x2")).read() == "deep\n"
    assert not os.path.exists(j(o.mp, "d", "x"))
    with open(j(o.mp, "e", "x2"), "a") as f:
        f.write("more\n")
    assert open(j(o.mp, "e", "x2")).read() == "deep\nmore\n"
    assert not xattrs(j(upper, "e", "x2")) & {"trusted.overlay.metacopy",
                                              "trusted.overlay.redirect"}
    o.umount()
    k = kmount(work, lower, upper)
    try:
        assert open(j(k, "e", "x2")).read() == "deep\nmore\n"
        assert digest(j(k, "big")) == want
    finally:
        run(["umount", k], check=True)


# ---- offline ----

def test_export_writes_lower_data(mc, work):
    t = mc(size=4 * MiB)
    os.chmod(t.m("big"), 0o600)
    os.setxattr(t.m("small"), "user.z", b"9")
    assert t.is_meta("big") and t.is_meta("small")
    t.ovl.umount()
    tar = j(work, "layer.tar")
    r = ovlfs("export", "--tar", tar, "--upper", t.upper, t.lower)
    assert r.returncode == 0, r.err
    with tarfile.open(tar) as tf:
        m = tf.getmember("big")
        assert m.mode & 0o7777 == 0o600 and m.size == 4 * MiB
        data = tf.extractfile(m).read()
        assert hashlib.sha256(data).hexdigest() == t.want
        assert tf.extractfile("small").read() == b"hello\n"


def test_diff_reports_metadata_only(mc):
    t = mc(size=4 * MiB)
    os.chmod(t.m("big"), 0o600)
    os.setxattr(t.m("small"), "user.z", b"9")
    assert t.is_meta("big") and t.is_meta("small")
    t.ovl.umount()
    r = ovlfs("diff", "--json", "--upper", t.upper, t.lower)
    assert r.returncode == 0, r.err
    got = {c["path"]: c for c in json.loads(r.out)["changes"]}
    assert got["/big"]["change"] == "M" and got["/big"]["what"] == ["mode"]
    assert got["/small"]["change"] == "M" and "content" not in got["/small"]["what"]


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_commit_applies_metadata_in_place(mc, atomic):
    t = mc(size=4 * MiB)
    lino = os.stat(j(t.lower, "big")).st_ino
    os.chmod(t.m("big"), 0o600)
    os.chown(t.m("big"), 3, 4)
    os.setxattr(t.m("small"), "user.z", b"9")
    os.utime(t.m("d", "f"), ns=(10**18, 10**18))
    with open(t.m("d", "f"), "a") as f:      # a full copy-up beside them
        f.write("more\n")
    assert t.is_meta("big") and t.is_meta("small")
    t.ovl.umount()
    r = ovlfs("commit", *(["--atomic"] if atomic else []), "--upper", t.upper,
              t.lower)
    assert r.returncode == 0, r.err
    st = os.stat(j(t.lower, "big"))
    assert (st.st_ino, st.st_mode & 0o7777, st.st_uid, st.st_gid) == \
        (lino, 0o600, 3, 4)
    assert digest(j(t.lower, "big")) == t.want
    assert os.getxattr(j(t.lower, "small"), "user.z") == b"9"
    assert open(j(t.lower, "small")).read() == "hello\n"
    assert open(j(t.lower, "d", "f")).read() == "deep\nmore\n"
    assert not xattrs(j(t.lower, "big")) & set(MARK.values())


def test_convert_moves_marker(mc):
    t = mc(size=4 * MiB)
    os.chmod(t.m("big"), 0o600)
    t.ovl.umount()
    to = "oci" if t.fmt == "kernel" else "kernel"
    r = ovlfs("convert", "--to", to, "--upper", t.upper, t.lower)
    assert r.returncode == 0, r.err
    x = xattrs(t.u("big"))
    assert MARK[to] in x and MARK[t.fmt] not in x
    o = Overlay(t.lower, upper=t.upper)
    o.mount()
    assert digest(j(o.mp, "big")) == t.want
    o.umount()
    if to == "kernel":
        k = kmount(t.work, t.lower, t.upper)
        try:
            assert digest(j(k, "big")) == t.want
        finally:
            run(["umount", k], check=True)


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_commit_metacopy_in_renamed_dir(mc, work, atomic):
    """A metacopy file inside a renamed (redirected) directory: its data is
    where the directory's lower part is, not at its new path; export and
    commit find it there."""
    t = mc(size=4 * MiB)
    os.rename(t.m("d"), t.m("d2"))
    os.chmod(t.m("d2", "f"), 0o600)
    os.rename(t.m("big"), t.m("d2", "big"))      # metacopy, redirected
    os.chmod(t.m("small"), 0o640)
    assert t.is_meta("d2", "f")
    t.ovl.umount()
    tar = j(work, "layer.tar")
    r = ovlfs("export", "--tar", tar, "--upper", t.upper, t.lower)
    assert r.returncode == 0, r.err
    with tarfile.open(tar) as tf:
        assert tf.extractfile("d2/f").read() == b"deep\n"
    r = ovlfs("commit", *(["--atomic"] if atomic else []), "--upper", t.upper,
              t.lower)
    assert r.returncode == 0, r.err
    assert open(j(t.lower, "d2", "f")).read() == "deep\n"
    assert os.stat(j(t.lower, "d2", "f")).st_mode & 0o777 == 0o600
    assert digest(j(t.lower, "d2", "big")) == t.want
    assert not os.path.exists(j(t.lower, "d"))
    assert open(j(t.lower, "small")).read() == "hello\n"


def test_unlinked_while_open(mc):
    """A metacopy file unlinked while open for reading still reads (its
    lower is pinned), and fstat shows it."""
    t = mc(size=4 * MiB)
    os.chmod(t.m("big"), 0o600)
    assert t.is_meta("big")
    with open(t.m("big"), "rb") as f:
        os.unlink(t.m("big"))
        assert os.fstat(f.fileno()).st_size == 4 * MiB
        f.seek(2 * MiB)
        with open(j(t.lower, "big"), "rb") as g:
            g.seek(2 * MiB)
            assert f.read(MiB) == g.read(MiB)
    assert not os.path.exists(t.m("big"))
    assert os.path.exists(j(t.lower, "big"))


def test_commit_atomic_killed_with_metacopy(work):
    """commit --atomic of metacopy files (one in a renamed directory) killed
    at random points, then recovered: the lower is the old one or the new
    one, never data lost; an old one commits again."""
    t = MC(work, "oci", size=4 * MiB)
    os.chmod(t.m("big"), 0o600)
    os.chown(t.m("small"), 9, 9)
    os.rename(t.m("d"), t.m("d2"))
    os.chmod(t.m("d2", "f"), 0o700)

    def snap(root):
        s = snapshot(root, mtime=True)
        return {k: ({kk: vv for kk, vv in v.items() if kk != "mtime"}
                    if v["type"] == "dir" else v) for k, v in s.items()}

    new = snap(t.mnt)
    t.ovl.umount()
    old = snap(t.lower)
    saved_l, saved_u = j(work, "saved-lower"), j(work, "saved-upper")
    cp_a(t.lower, saved_l)
    cp_a(t.upper, saved_u)
    cmd = [OVLFS, "commit", "--atomic", "--quiet", "--upper", t.upper, t.lower]
    t0 = time.monotonic()
    r = run(cmd, timeout=60)
    assert r.returncode == 0, r.err
    took = time.monotonic() - t0
    assert snap(t.lower) == new
    rnd = random.Random(15)
    for trial in range(8):
        for p, s in ((t.lower, saved_l), (t.upper, saved_u)):
            if os.path.lexists(p):
                shutil.rmtree(p)
            cp_a(s, p)
        killed = kill_after(cmd, rnd.uniform(0, took * 1.5) if trial else 0)
        rec = ovlfs("recover", "--upper", t.upper, t.lower)
        assert rec.returncode == 0, rec.err
        now = snap(t.lower)
        if now == new:
            continue
        assert_same_tree(now, old, "lower after kill (trial %d, killed %s)"
                         % (trial, killed), "old lower")
        t.ovl.mount()
        assert_same_tree(snap(t.mnt), new, "mount after kill", "new tree")
        t.ovl.umount()
        r = run(cmd, timeout=60)
        assert r.returncode == 0, r.err
        assert_same_tree(snap(t.lower), new, "lower after a second commit",
                         "new tree")
