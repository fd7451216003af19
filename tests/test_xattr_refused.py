"""File capabilities, POSIX ACLs and other xattrs that a layer refuses.

The kernel checks a security.capability or system.posix_acl_* value before
ovlfs sees it (an invalid one is EINVAL, as in a plain directory); what it
lets through a layer may still refuse (here: an ext4 with 1 KiB blocks,
where a big xattr does not fit). Through the mount, such a refusal leaves
no copy-up behind and the log names the xattr and the path; at commit, it
fails the commit, naming both, instead of dropping the attribute."""

import errno
import os
import struct
import subprocess

import pytest

from conftest import IS_ROOT, Overlay, build, ovlfs, snapshot, assert_same_tree

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (loop device, FUSE)")

CAP_V2 = bytes.fromhex("0000000201000000000000000000000000000000")   # cap_chown+p


def j(*p):
    return os.path.join(*p)


def acl(users):
    """A valid system.posix_acl_access value naming USERS (uids)."""
    v = struct.pack("<I", 2) + struct.pack("<HHI", 0x01, 6, 0xffffffff)
    for u in sorted(users):
        v += struct.pack("<HHI", 0x02, 4, u)
    v += struct.pack("<HHI", 0x04, 4, 0xffffffff)
    v += struct.pack("<HHI", 0x10, 4, 0xffffffff)
    v += struct.pack("<HHI", 0x20, 4, 0xffffffff)
    return v


BIG_ACL = acl(range(1000, 1300))      # 2.4 KiB: more than a 1 KiB block holds


def outcome(fn, *a):
    try:
        return ("ok", fn(*a))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


@pytest.fixture
def small_ext4(work):
    """An ext4 with 1 KiB blocks on a loop device."""
    img, mp = j(work, "ext4.img"), j(work, "ext4")
    os.mkdir(mp)
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-I", "256", img],
                   check=True)
    subprocess.run(["mount", "-o", "loop", img, mp], check=True)
    try:
        yield mp
    finally:
        if subprocess.run(["umount", mp]).returncode != 0:
            subprocess.run(["umount", "-l", mp])


def log_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def test_invalid_capability_and_acl_refused_like_a_plain_dir(work):
    """Invalid values: refused as in a plain directory (EINVAL, or
    EOPNOTSUPP for an unknown ACL version), nothing copied up."""
    lower, plain = j(work, "lower"), j(work, "plain")
    for d in (lower, plain):
        os.mkdir(d)
        build(d, {"f": "f\n", "d": {}})
    log = j(work, "ovlfs.log")
    o = Overlay(lower, extra_args=["--log", log])
    o.mount()
    bad = [("f", "security.capability", b"\x01"),
           ("f", "security.capability", CAP_V2[:-1]),
           ("f", "system.posix_acl_access", b"\x01\x02"),
           ("f", "system.posix_acl_access", acl([])[:-2]),
           ("d", "system.posix_acl_default", struct.pack("<I", 9))]
    for name, x, v in bad:
        got = outcome(os.setxattr, j(o.mp, name), x, v)
        exp = outcome(os.setxattr, j(plain, name), x, v)
        assert got == exp and got[0] == "err", (name, x, got, exp)
    assert os.listdir(o.upper) == []
    # an empty default ACL where there is none: done, as in a plain dir
    for root in (plain, o.mp):
        os.setxattr(j(root, "d"), "system.posix_acl_default", struct.pack("<I", 2))
        os.removexattr(j(root, "f"), "system.posix_acl_access")
    # a valid capability goes up
    os.setxattr(j(o.mp, "f"), "security.capability", CAP_V2)
    assert os.getxattr(j(o.upper, "f"), "security.capability") == CAP_V2
    o.umount()


@pytest.mark.parametrize("xattr,value", [("system.posix_acl_access", BIG_ACL),
                                         ("user.big", b"v" * 3000)],
                         ids=["acl", "user"])
def test_upper_refuses_xattr_leaves_no_copy(work, small_ext4, xattr, value):
    """The upper cannot hold the value: the same error as a plain
    directory there, no copy-up left behind, the log names xattr and path."""
    lower, plain = j(work, "lower"), j(small_ext4, "plain")
    for d in (lower, plain):
        os.mkdir(d)
        build(d, {"d": {"f": "data\n"}, "g": "g\n"})
    log = j(work, "ovlfs.log")
    o = Overlay(lower, upper=j(small_ext4, "upper"), extra_args=["--log", log])
    o.mount()
    view = snapshot(o.mp, mtime=True)
    exp = outcome(os.setxattr, j(plain, "d", "f"), xattr, value)
    got = outcome(os.setxattr, j(o.mp, "d", "f"), xattr, value)
    assert got == exp and got[0] == "err", (got, exp)
    assert not os.path.lexists(j(o.upper, "d", "f")), "a copy-up was left behind"
    assert_same_tree(snapshot(o.mp, mtime=True), view)
    lines = [l for l in log_lines(log) if xattr in l]
    assert lines and "/d/f" in lines[0], log_lines(log)
    assert os.strerror(getattr(errno, got[1])) in lines[0], lines
    # a value that fits still works, and goes up
    os.setxattr(j(o.mp, "g"), xattr, acl([7]) if "acl" in xattr else b"ok")
    assert os.path.exists(j(o.upper, "g"))
    o.umount()


@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_commit_refused_acl_names_xattr_and_path(work, small_ext4, atomic):
    """An upper file whose ACL the lower cannot hold: the commit fails,
    naming the xattr and the path, and leaves no half-made copy in the
    lower (an atomic one: the lower as it was). Before, the message named
    neither, and the plain commit left its copy behind."""
    lower = j(small_ext4, "lower")
    os.mkdir(lower)
    build(lower, {"d": {"f": "old\n"}})
    upper = j(work, "upper")
    os.makedirs(j(upper, "d"))
    with open(j(upper, "d", "f"), "w") as f:
        f.write("new\n")
    os.setxattr(j(upper, "d", "f"), "system.posix_acl_access", BIG_ACL)
    before = snapshot(lower, mtime=atomic)
    r = ovlfs("commit", *(["--atomic"] if atomic else []), "--quiet", "--upper", upper,
              lower, timeout=120)
    assert r.returncode == 1, (r.returncode, r.out, r.err)
    assert "system.posix_acl_access" in r.err and "d/f" in r.err, r.err
    assert "commit" in r.err, r.err
    assert_same_tree(snapshot(lower, mtime=atomic), before, "lower now", "lower before")
