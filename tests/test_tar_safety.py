"""Nothing lost: `ovlfs export --tar FILE` replaces FILE only once the
tarball is complete, `apply` keeps a user's 0/0 character device a device
(or refuses where the upper's format cannot hold one, changing nothing),
and refusals name the path and the reason.
"""

import fcntl
import io
import os
import signal
import stat
import subprocess
import tarfile
import time

import pytest

from conftest import (OVLFS, Overlay, build, ovlfs, needs_root, snapshot,
                      wait_for)

PRECIOUS = b"precious, not a tarball\n"


def j(*p):
    return os.path.join(*p)


def _pair(work, big=0):
    """A lower and an upper holding a file (of BIG bytes if given)."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"l": "l"})
    upper = lower + ".upper"
    os.mkdir(upper)
    with open(j(upper, "f"), "wb") as f:
        f.write(os.urandom(big) if big else b"f")
    return lower, upper


def _precious(path, mode=0o600):
    with open(path, "wb") as f:
        f.write(PRECIOUS)
    os.chmod(path, mode)


def _state(path):
    st = os.lstat(path)
    data = os.readlink(path) if stat.S_ISLNK(st.st_mode) else (
        open(path, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_ino, data)


def _busy_export(lower, out):
    """An export refused because the upper is mounted."""
    o = Overlay(lower)
    o.mount()
    try:
        r = ovlfs("export", "--tar", out, lower)
    finally:
        o.umount()
    assert r.returncode == 1 and "in use" in r.err, r.err
    return r


# ------------------------------------------------------------ export FILE

def test_failed_export_keeps_file(work):
    lower, _ = _pair(work)
    out = j(work, "out.tar")
    _precious(out)
    before = _state(out)
    _busy_export(lower, out)
    assert _state(out) == before
    assert not [n for n in os.listdir(work) if n.startswith(".")]


def test_failed_export_through_symlink_keeps_link_and_target(work):
    lower, _ = _pair(work)
    target = j(work, "target.tar")
    link = j(work, "link.tar")
    _precious(target)
    os.symlink("target.tar", link)
    t_before, l_before = _state(target), _state(link)
    _busy_export(lower, link)
    assert _state(target) == t_before
    assert _state(link) == l_before


def test_export_through_symlink_writes_its_target(work):
    """On success the symlink stays and its target gets the tarball (as
    `> FILE` would), replaced whole: a new inode, FILE's mode kept."""
    lower, _ = _pair(work)
    target = j(work, "target.tar")
    link = j(work, "link.tar")
    _precious(target, 0o640)
    os.symlink("target.tar", link)
    ino = os.lstat(target).st_ino
    r = ovlfs("export", "--tar", link, lower)
    assert r.returncode == 0, r.err
    assert os.readlink(link) == "target.tar"
    with tarfile.open(target) as t:
        assert t.getnames() == ["f"]
    st = os.lstat(target)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_ino != ino
    # a dangling symlink: its target is made
    os.symlink("made.tar", j(work, "dangling.tar"))
    r = ovlfs("export", "--tar", j(work, "dangling.tar"), lower)
    assert r.returncode == 0, r.err
    assert os.path.islink(j(work, "dangling.tar"))
    with tarfile.open(j(work, "made.tar")) as t:
        assert t.getnames() == ["f"]


def test_export_new_file_mode(work):
    lower, _ = _pair(work)
    out = j(work, "new.tar")
    old = os.umask(0o022)
    try:
        r = ovlfs("export", "--tar", out, lower)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.err
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
    assert sorted(os.listdir(work)) == ["lower", "lower.upper", "new.tar"]


def test_export_to_directory_refused(work):
    lower, _ = _pair(work)
    d = j(work, "dir.tar")
    os.mkdir(d)
    os.symlink("dir.tar", j(work, "ld.tar"))
    for out in (d, j(work, "ld.tar")):
        r = ovlfs("export", "--tar", out, lower)
        assert r.returncode == 1, r.err
        assert r.err.strip() == "ovlfs: export: cannot write %s: Is a directory" % out
    assert os.listdir(d) == []
    assert sorted(os.listdir(work)) == ["dir.tar", "ld.tar", "lower", "lower.upper"]


@needs_root
def test_export_full_filesystem_keeps_file(work):
    lower, _ = _pair(work, big=3 << 20)
    small = j(work, "small")
    os.mkdir(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small],
                   check=True)
    try:
        out = j(small, "out.tar")
        _precious(out)
        before = _state(out)
        r = ovlfs("export", "--tar", out, lower)
        assert r.returncode == 1
        assert r.err.startswith(
            "ovlfs: export: cannot write %s: No space left on device" % out), r.err
        assert _state(out) == before
        assert os.listdir(small) == ["out.tar"]
    finally:
        subprocess.run(["umount", small], check=True)


def _tmpfile_open(pid, work):
    """Does process PID hold its unnamed temporary file (O_TMPFILE, which
    /proc names "WORK/#INO (deleted)") or a named one in WORK?"""
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith(work + "/#") or t.startswith(work + "/.out.tar.export-"):
            return True
    return False


def _signal_waiting_export(work, lower, upper, out, sig):
    """Start `export --tar OUT LOWER` while the upper is locked, so it waits
    with its temporary file beside OUT open, and send it SIG; the process,
    ended."""
    ufd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(ufd, fcntl.LOCK_EX)
        p = subprocess.Popen([OVLFS, "export", "--tar", out, lower],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: _tmpfile_open(p.pid, work), timeout=10)
        finally:
            p.send_signal(sig)
            p.wait()
    finally:
        os.close(ufd)
    return p


def test_export_killed_leaves_file(work):
    """kill -9 midway (here: while export waits for the upper's lock): FILE
    is as it was, and no debris: the tarball is written to an unnamed file
    (O_TMPFILE; it was a named .out.tar.export-XXXXXX, left behind)."""
    lower, upper = _pair(work)
    out = j(work, "out.tar")
    _precious(out)
    before = _state(out)
    _signal_waiting_export(work, lower, upper, out, signal.SIGKILL)
    assert _state(out) == before
    debris = [n for n in os.listdir(work)
              if n not in ("lower", "lower.upper", "out.tar")]
    assert debris == [], debris
    # the next export replaces FILE as usual
    r = ovlfs("export", "--tar", out, lower)
    assert r.returncode == 0, r.err
    with tarfile.open(out) as t:
        assert t.getnames() == ["f"]


def test_export_where_no_unnamed_files(work):
    """FILE on a filesystem without O_TMPFILE (FUSE, here another ovlfs
    mount): the tarball goes to a named .FILE.export-XXXXXX, renamed over
    FILE once complete; killed while writing, that file is the debris and
    FILE as it was; a retry replaces FILE."""
    lower, upper = _pair(work)
    other = j(work, "other")
    os.mkdir(other)
    o = Overlay(other, upper=j(work, "other.upper"), mp=j(work, "otherm"))
    o.mount()
    try:
        dest = o.mp
        out = j(dest, "out.tar")
        _precious(out)
        with pytest.raises(OSError):
            os.close(os.open(dest, os.O_TMPFILE | os.O_WRONLY, 0o600))
        before = _state(out)
        _signal_waiting_export(dest, lower, upper, out, signal.SIGKILL)
        assert _state(out) == before
        left = [n for n in os.listdir(dest) if n != "out.tar"]
        assert len(left) == 1 and left[0].startswith(".out.tar.export-"), left
        os.unlink(j(dest, left[0]))
        r = ovlfs("export", "--tar", out, lower)
        assert r.returncode == 0, r.err
        with tarfile.open(out) as t:
            assert t.getnames() == ["f"]
        assert os.listdir(dest) == ["out.tar"]
        assert stat.S_IMODE(os.lstat(out).st_mode) == 0o600
    finally:
        o.umount()


def test_export_sigterm_removes_temporary(work):
    lower, upper = _pair(work)
    out = j(work, "out.tar")
    _precious(out)
    before = _state(out)
    p = _signal_waiting_export(work, lower, upper, out, signal.SIGTERM)
    assert p.returncode == -signal.SIGTERM
    assert _state(out) == before
    assert sorted(os.listdir(work)) == ["lower", "lower.upper", "out.tar"]


@needs_root
def test_export_to_device_writes_it(work):
    """A device or fifo at FILE has no contents to keep: written to as it
    is, never replaced by a regular file."""
    lower, _ = _pair(work)
    null = j(work, "null")
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    r = ovlfs("export", "--tar", null, lower)
    assert r.returncode == 0, r.err
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert sorted(os.listdir(work)) == ["lower", "lower.upper", "null"]


def test_export_to_stdout_unchanged(work):
    lower, _ = _pair(work)
    r = subprocess.run([OVLFS, "export", "--tar", "-", lower],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as t:
        assert t.getnames() == ["f"]
    assert sorted(os.listdir(work)) == ["lower", "lower.upper"]


# ------------------------------------------------------------ 0/0 devices

def _tar(path, entries):
    """ENTRIES: (name, "file", data) | (name, "dev00") | (name, "dir")."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            ti = tarfile.TarInfo(e[0])
            ti.mtime = 1_500_000_000
            data = None
            if e[1] == "file":
                data = e[2]
                ti.size = len(data)
            elif e[1] == "dev00":
                ti.type = tarfile.CHRTYPE
                ti.devmajor = ti.devminor = 0
            elif e[1] == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _is_dev00(path):
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _dev_tar(work):
    return _tar(j(work, "dev.tar"), [("ok", "file", b"ok"), ("a", "dev00"),
                                     (".wh.gone", "file", b"")])


@needs_root
def test_apply_zero_device_stays_a_device(work):
    """In the OCI format a 0/0 device is an ordinary file: applied, it stays
    a device through mount, diff, export and commit."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a", "gone": "gone", "keep": "keep"})
    upper = j(work, "up")              # missing: made as a mount makes it
    r = ovlfs("apply", "--tar", _dev_tar(work), "-u", upper, lower)
    assert r.returncode == 0, r.err
    assert os.getxattr(upper, "user.ovlfs.format") == b"1"
    assert _is_dev00(j(upper, "a"))
    o = Overlay(lower, upper=upper)
    o.mount()
    try:
        assert _is_dev00(j(o.mp, "a"))
        assert sorted(os.listdir(o.mp)) == ["a", "keep", "ok"]
    finally:
        o.umount()
    r = ovlfs("diff", "-u", upper, lower)
    assert r.returncode == 0, r.err
    assert "/a" in r.out and "/gone" in r.out, r.out
    out = j(work, "out.tar")
    r = ovlfs("export", "--tar", out, "-u", upper, lower)
    assert r.returncode == 0, r.err
    with tarfile.open(out) as t:
        a = t.getmember("a")
        assert a.ischr() and (a.devmajor, a.devminor) == (0, 0)
        assert ".wh.gone" in t.getnames()
    r = ovlfs("commit", "--quiet", "-u", upper, lower)
    assert r.returncode == 0, r.err
    assert _is_dev00(j(lower, "a"))
    assert sorted(os.listdir(lower)) == ["a", "keep", "ok"]


@needs_root
def test_apply_commit_zero_device_only(work):
    """A layer holding only a 0/0 device: the lower file is replaced by the
    device, not deleted."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"x": "x", "y": "y"})
    r = ovlfs("apply", "--commit", "--tar",
              _tar(j(work, "t.tar"), [("x", "dev00")]), lower)
    assert r.returncode == 0, r.err
    assert _is_dev00(j(lower, "x"))
    assert sorted(os.listdir(lower)) == ["x", "y"]


@needs_root
@pytest.mark.parametrize("stamped", [False, True], ids=["scanned", "stamped"])
@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_apply_zero_device_kernel_upper_refused(work, stamped, stdin):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"w": "w"})
    upper = j(work, "kup")
    os.mkdir(upper)
    os.mknod(j(upper, "w"), stat.S_IFCHR, 0)       # a kernel whiteout
    if stamped:
        os.setxattr(upper, "user.ovlfs.format", b"1 kernel")
    before = snapshot(upper, mtime=True, root_attrs=True)
    t = _dev_tar(work)
    if stdin:
        with open(t, "rb") as f:
            r = subprocess.run([OVLFS, "apply", "--tar", "-", "-u", upper, lower],
                               stdin=f, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
        err = r.stderr
    else:
        r = ovlfs("apply", "--tar", t, "-u", upper, lower)
        err = r.err
    assert r.returncode == 1, err
    assert err.startswith("ovlfs: apply to %s: entry \"a\": a 0/0 character device"
                          % upper), err
    assert snapshot(upper, mtime=True, root_attrs=True) == before
    assert sorted(os.listdir(work)) == ["dev.tar", "kup", "lower"]


@needs_root
def test_convert_to_kernel_refuses_zero_device(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"gone": "g", "d": {"sub": {}}})
    upper = lower + ".upper"
    os.makedirs(j(upper, "d", "sub"))
    open(j(upper, ".wh.gone"), "w").close()
    os.mknod(j(upper, "d", "sub", "dev"), stat.S_IFCHR, 0)
    os.setxattr(upper, "user.ovlfs.format", b"1")
    before = snapshot(upper, mtime=True, root_attrs=True)
    r = ovlfs("convert", "--to", "kernel", lower)
    assert r.returncode == 1, r.err
    assert r.err.startswith("ovlfs: convert: %s/d/sub/dev is a 0/0 character device"
                            % upper), r.err
    assert snapshot(upper, mtime=True, root_attrs=True) == before
    # without it, the conversion goes ahead
    os.unlink(j(upper, "d", "sub", "dev"))
    r = ovlfs("convert", "--to", "kernel", lower)
    assert r.returncode == 0, r.err
    assert _is_dev00(j(upper, "gone"))


@needs_root
def test_export_kernel_upper_devices_are_whiteouts(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    upper = lower + ".upper"
    os.mkdir(upper)
    os.mknod(j(upper, "w"), stat.S_IFCHR, 0)
    os.mknod(j(upper, "null"), stat.S_IFCHR, os.makedev(1, 3))
    out = j(work, "o.tar")
    r = ovlfs("export", "--tar", out, lower)
    assert r.returncode == 0, r.err
    with tarfile.open(out) as t:
        assert t.getnames() == [".wh.w", "null"]
        assert t.getmember(".wh.w").isreg()


# ------------------------------------------------------------ messages

def test_apply_directory_as_tar(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    d = j(work, "d")
    os.mkdir(d)
    r = ovlfs("apply", "--tar", d, lower)
    assert r.returncode == 1
    assert r.err == "ovlfs: apply: cannot read %s: Is a directory\n" % d, r.err
    assert sorted(os.listdir(work)) == ["d", "lower"]


@pytest.mark.parametrize("kind", ["path", "name", "dirname", "stdin"])
def test_apply_long_path_refused(work, kind):
    lower = j(work, "lower")
    os.mkdir(lower)
    if kind in ("path", "stdin"):
        bad, why = "/".join(["d" * 200] * 25), "path longer than PATH_MAX"
    elif kind == "name":
        bad, why = "x" * 300, "name longer than NAME_MAX"
    else:
        bad, why = "a/" + "x" * 300 + "/f", "a directory name of the path is longer than NAME_MAX"
    t = _tar(j(work, "t.tar"), [("ok", "file", b"ok"), ("a/", "dir"),
                                (bad, "file", b"bad")])
    if kind == "stdin":
        with open(t, "rb") as f:
            r = subprocess.run([OVLFS, "apply", "--tar", "-", lower], stdin=f,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
        err = r.stderr
    else:
        r = ovlfs("apply", "--tar", t, lower)
        err = r.err
    assert r.returncode == 1, err
    # both ends of the path, its length and the reason, in one short line
    assert len(err) < 400 and err.count("\n") == 1, err
    assert ('entry "%s...' % bad[:100]) in err and bad[-50:] in err, err
    assert "(%d bytes): %s" % (len(bad), why) in err, err
    assert sorted(os.listdir(work)) == ["lower", "t.tar"]


def test_apply_creates_missing_upper(work):
    """As `ovlfs mount` does: a named upper that does not exist is made,
    with the lower root's metadata and the format stamp."""
    lower = j(work, "lower")
    os.mkdir(lower)
    os.chmod(lower, 0o751)
    t = _tar(j(work, "t.tar"), [("f", "file", b"f")])
    upper = j(work, "named")
    r = ovlfs("apply", "--tar", t, "-u", upper, lower)
    assert r.returncode == 0, r.err
    assert open(j(upper, "f")).read() == "f"
    assert stat.S_IMODE(os.stat(upper).st_mode) == 0o751
    assert os.getxattr(upper, "user.ovlfs.format") == b"1"
    missing = j(work, "no", "such")
    r = ovlfs("apply", "--tar", t, "-u", missing, lower)
    assert r.returncode == 1
    assert r.err.startswith("ovlfs: upper %s: cannot create: No such file"
                            % missing), r.err


def test_export_into_the_upper_refused(work):
    """FILE inside the upper would be an entry of itself (its temporary file
    used to be exported, empty or half done): refused, the upper untouched."""
    lower, upper = _pair(work)
    before = sorted(os.listdir(upper))
    out = j(upper, "self.tar")
    r = ovlfs("export", "--tar", out, lower)
    assert r.returncode == 1 and "inside the upper" in r.err, r.err
    assert sorted(os.listdir(upper)) == before