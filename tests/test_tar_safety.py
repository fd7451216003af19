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


def test_export_killed_leaves_file(work):
    """kill -9 midway (here: while export waits for the upper's lock): FILE
    is as it was; the only debris is a temporary file named for it."""
    lower, upper = _pair(work)
    out = j(work, "out.tar")
    _precious(out)
    before = _state(out)
    ufd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(ufd, fcntl.LOCK_EX)
        p = subprocess.Popen([OVLFS, "export", "--tar", out, lower],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: len(os.listdir(work)) == 4, timeout=10)
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
    finally:
        os.close(ufd)
    assert _state(out) == before
    debris = [n for n in os.listdir(work)
              if n not in ("lower", "lower.upper", "out.tar")]
    assert len(debris) == 1 and debris[0].startswith(".out.tar.export-"), debris
    # the next export replaces FILE as usual
    r = ovlfs("export", "--tar", out, lower)
    assert r.returncode == 0, r.err
    with tarfile.open(out) as t:
        assert t.getnames() == ["f"]


def test_export_sigterm_removes_temporary(work):
    lower, upper = _pair(work)
    out = j(work, "out.tar")
    _precious(out)
    before = _state(out)
    ufd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(ufd, fcntl.LOCK_EX)
        p = subprocess.Popen([OVLFS, "export", "--tar", out, lower],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: len(os.listdir(work)) == 4, timeout=10)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait()
    finally:
        os.close(ufd)
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
