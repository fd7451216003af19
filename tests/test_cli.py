"""The `ovlfs` command line: help, version, defaults, mount/umount, and the
refusals (one-line error naming the path, non-zero exit, nothing created)."""

import os
import subprocess
import time

import pytest

from conftest import (OVLFS, Overlay, build, ovlfs, run, is_mounted, is_fuse_mounted,
                      mount_entry, snapshot, assert_same_tree, wait_for, mounts_under)


def j(*p):
    return os.path.join(*p)


def test_help():
    r = ovlfs("--help")
    assert r.returncode == 0, r.err
    text = r.out + r.err
    assert "mount" in text and "umount" in text


def test_mount_help():
    r = ovlfs("mount", "--help")
    assert r.returncode == 0, r.err
    text = r.out + r.err
    for opt in ("--upper", "--inode-mode", "-o", "-f"):
        assert opt in text, "%s not in mount --help:\n%s" % (opt, text)


def test_version():
    r = ovlfs("--version")
    assert r.returncode == 0, r.err
    assert "0.1.0" in r.out + r.err


def test_no_args_and_unknown_command():
    r = ovlfs()
    assert r.returncode != 0
    r = ovlfs("frobnicate")
    assert r.returncode != 0
    assert r.err.strip(), "no error message for an unknown command"


def test_default_paths(work):
    lower = j(work, "alpine-3.20")
    os.mkdir(lower)
    build(lower, {"etc": {"os-release": "alpine\n"}})
    r = ovlfs("mount", lower)
    o = Overlay(lower)
    try:
        assert r.returncode == 0, r.err
        assert o.upper == j(work, "alpine-3.20.upper")
        assert os.path.isdir(o.upper)
        assert is_fuse_mounted(j(work, "alpine-3.20.mountpoint"))
        assert open(j(o.mp, "etc/os-release")).read() == "alpine\n"
    finally:
        o.cleanup()
    assert not is_mounted(o.mp)
    assert os.path.isdir(o.upper) and os.path.isdir(o.mp)   # left in place


def test_default_paths_trailing_slash_and_relative(work):
    lower = j(work, "rootfs")
    os.mkdir(lower)
    build(lower, {"a": "a"})
    r = run([OVLFS, "mount", "rootfs/"], cwd=work)
    o = Overlay(lower)
    try:
        assert r.returncode == 0, r.err
        assert is_fuse_mounted(j(work, "rootfs.mountpoint")), os.listdir(work)
        assert os.path.isdir(j(work, "rootfs.upper"))
        assert open(j(work, "rootfs.mountpoint/a")).read() == "a"
        open(j(work, "rootfs.mountpoint/b"), "w").write("b")
        assert open(j(work, "rootfs.upper/b")).read() == "b"
        r = run([OVLFS, "umount", "rootfs.mountpoint"], cwd=work)
        assert r.returncode == 0, r.err
        assert not is_mounted(o.mp)
    finally:
        o.cleanup()


def test_explicit_paths_relative(work):
    os.mkdir(j(work, "lo"))
    build(j(work, "lo"), {"x": "x"})
    r = run([OVLFS, "mount", "--upper", "up", "lo", "mnt"], cwd=work)
    o = Overlay(j(work, "lo"), upper=j(work, "up"), mp=j(work, "mnt"))
    try:
        assert r.returncode == 0, r.err
        assert is_fuse_mounted(o.mp)
        open(j(o.mp, "y"), "w").write("y")
        assert open(j(work, "up/y")).read() == "y"
        assert not os.path.exists(j(work, "lo.upper"))
    finally:
        o.cleanup()


def test_mount_umount_cycle_and_existing_dirs(work):
    lower = j(work, "l")
    os.mkdir(lower)
    os.mkdir(j(work, "u"))
    os.mkdir(j(work, "m"))
    build(lower, {"f": "f"})
    o = Overlay(lower, upper=j(work, "u"), mp=j(work, "m"))
    for i in range(3):
        o.mount()
        open(j(o.mp, "n%d" % i), "w").write(str(i))
        o.umount()
        assert not os.path.exists(j(work, "m", "f"))
    assert sorted(os.listdir(j(work, "u"))) == ["n0", "n1", "n2"]
    assert os.listdir(lower) == ["f"]


def test_foreground(work):
    lower = j(work, "l")
    os.mkdir(lower)
    build(lower, {"f": "fg"})
    o = Overlay(lower)
    p = subprocess.Popen(o.mount_args(foreground=True), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        with __import__("conftest")._LIVE_LOCK:
            __import__("conftest")._LIVE.append(o)
        assert wait_for(lambda: o.mounted or p.poll() is not None, 20), "never mounted"
        assert p.poll() is None, "ovlfs -f exited: %r" % (p.communicate(),)
        ent = mount_entry(o.mp)
        o.majmin = ent["majmin"]
        assert open(j(o.mp, "f")).read() == "fg"
        r = ovlfs("umount", o.mp)
        assert r.returncode == 0, r.err
        p.wait(timeout=20)
        assert p.returncode == 0, p.stderr.read()
    finally:
        o.cleanup()
        if p.poll() is None:
            p.kill()
            p.wait()


def test_fuse_options_passed(work):
    lower = j(work, "l")
    os.mkdir(lower)
    o = Overlay(lower, opts="allow_other")
    o.mount()
    ent = mount_entry(o.mp)
    assert "allow_other" in ent["super_opts"] + "," + ent["opts"], ent


@pytest.mark.parametrize("mode", ["virtual", "persistent"])
def test_inode_mode_option(work, mode):
    lower = j(work, "l")
    os.mkdir(lower)
    build(lower, {"f": "f"})
    o = Overlay(lower, inode_mode=mode)
    o.mount()
    assert open(j(o.mp, "f")).read() == "f"


def test_bad_inode_mode(work):
    lower = j(work, "l")
    os.mkdir(lower)
    before = sorted(os.listdir(work))
    r = ovlfs("mount", "--inode-mode", "bogus", lower)
    assert r.returncode != 0
    assert r.err.strip()
    assert sorted(os.listdir(work)) == before
    assert not mounts_under(work)


def test_umount_not_mounted(work):
    os.mkdir(j(work, "plain"))
    r = ovlfs("umount", j(work, "plain"))
    assert r.returncode != 0
    assert "plain" in r.err


def test_umount_not_permitted(work):
    """Another user may not unmount root's mount: the message says why (who
    mounted it), exit 1, still mounted."""
    lower = j(work, "l")
    os.mkdir(lower)
    o = Overlay(lower)
    o.mount()
    for user in (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
                 ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"]):
        r = run(user + [OVLFS, "umount", o.mp])
        assert r.returncode == 1, (r.returncode, r.err)
        assert r.err == "ovlfs: cannot unmount %s: not permitted: mounted by uid 0\n" % o.mp, \
            r.err
        assert o.mounted
    o.umount()


def test_umount_other_subtype(work):
    """A mount given another subtype= (fuse.x) is still ovlfs's own."""
    lower = j(work, "l")
    os.mkdir(lower)
    build(lower, {"f": "f"})
    o = Overlay(lower, opts="subtype=x")
    o.mount()
    assert mount_entry(o.mp)["fstype"] == "fuse.x"
    assert open(j(o.mp, "f")).read() == "f"
    o.umount()
    assert not is_mounted(o.mp)


def test_umount_refuses_other_fuse_filesystems(work):
    """Another FUSE filesystem is not ovlfs's to unmount: its root does
    not answer the marker xattr ovlfs's own mounts answer."""
    exe = "/usr/bin/fuse-overlayfs"
    if not os.path.exists(exe):
        pytest.skip("needs fuse-overlayfs")
    for d in ("lo", "up", "wk", "mp"):
        os.mkdir(j(work, d))
    mp = j(work, "mp")
    r = run([exe, "-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (
        j(work, "lo"), j(work, "up"), j(work, "wk")), mp])
    assert r.returncode == 0, r.err
    try:
        assert mount_entry(mp)["fstype"].startswith("fuse")
        r = ovlfs("umount", mp)
        assert r.returncode == 1 and "not an ovlfs mount point" in r.err, r.err
        assert is_mounted(mp)
    finally:
        run(["umount", mp])


# ---------------------------------------------------------------- refusals

def refusal(work, args, must_name, cwd=None):
    """Run `ovlfs mount ARGS`: must fail with a one-line message naming
    MUST_NAME (one of several accepted paths), and change nothing in WORK."""
    # times of WORK itself are not compared (a directory created and removed
    # again would show there); everything inside WORK must be untouched
    before = snapshot(work, mtime=True, ctime=True, xattrs=True)
    mounts_before = mounts_under(work)
    r = ovlfs("mount", *args, timeout=30, cwd=cwd)
    try:
        assert r.returncode != 0, "mount succeeded: %r" % (args,)
        lines = [l for l in r.err.splitlines() if l.strip()]
        assert len(lines) == 1, "expected a one-line error, got %r" % r.err
        names = [must_name] if isinstance(must_name, str) else must_name
        assert any(n in lines[0] for n in names), \
            "error %r does not name any of %r" % (lines[0], names)
        assert_same_tree(snapshot(work, mtime=True, ctime=True, xattrs=True),
                         before, "after", "before")
    finally:
        for m in mounts_under(work):
            if m not in mounts_before:
                run(["umount", "-l", m])
    assert mounts_under(work) == mounts_before
    return lines[0]


def test_lower_missing(work):
    lower = j(work, "nothere")
    refusal(work, [lower], lower)
    assert not os.path.exists(lower + ".upper")
    assert not os.path.exists(lower + ".mountpoint")


def test_lower_is_a_file(work):
    lower = j(work, "file")
    open(lower, "w").write("x")
    refusal(work, [lower], lower)
    assert not os.path.exists(lower + ".upper")


def test_lower_is_symlink_to_file(work):
    open(j(work, "file"), "w").write("x")
    os.symlink("file", j(work, "lnk"))
    refusal(work, [j(work, "lnk")], [j(work, "lnk"), j(work, "file")])


def make_lower(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a", "sub": {"b": "b"}})
    return lower


def test_upper_inside_lower(work):
    lower = make_lower(work)
    up = j(lower, "up")
    refusal(work, ["--upper", up, lower, j(work, "mp")], [up, lower])


def test_upper_inside_lower_existing_dir(work):
    lower = make_lower(work)
    up = j(lower, "sub")
    refusal(work, ["--upper", up, lower, j(work, "mp")], [up, lower])


def test_mountpoint_inside_lower(work):
    lower = make_lower(work)
    mp = j(lower, "mnt")
    refusal(work, [lower, mp], [mp, lower])


def test_lower_inside_upper(work):
    os.mkdir(j(work, "up"))
    lower = j(work, "up", "lower")
    os.mkdir(lower)
    refusal(work, ["--upper", j(work, "up"), lower, j(work, "mp")], [j(work, "up"), lower])


def test_lower_inside_mountpoint(work):
    os.mkdir(j(work, "mp"))
    lower = j(work, "mp", "lower")
    os.mkdir(lower)
    # mp is also not empty; either reason is fine, but it must be refused
    refusal(work, [lower, j(work, "mp")], [j(work, "mp"), lower])


def test_upper_equals_lower(work):
    lower = make_lower(work)
    refusal(work, ["--upper", lower, lower, j(work, "mp")], lower)


def test_upper_equals_lower_via_symlink(work):
    lower = make_lower(work)
    os.symlink("lower", j(work, "alias"))
    refusal(work, ["--upper", j(work, "alias"), lower, j(work, "mp")],
            [lower, j(work, "alias")])


def test_upper_equals_lower_trailing_slash(work):
    lower = make_lower(work)
    refusal(work, ["--upper", lower + "/", lower, j(work, "mp")], lower)


def test_mountpoint_equals_lower(work):
    lower = make_lower(work)
    refusal(work, [lower, lower], lower)


def test_mountpoint_equals_upper(work):
    lower = make_lower(work)
    refusal(work, ["--upper", j(work, "x"), lower, j(work, "x")], j(work, "x"))


def test_mountpoint_not_empty(work):
    lower = make_lower(work)
    mp = j(work, "mp")
    os.mkdir(mp)
    open(j(mp, "junk"), "w").close()
    refusal(work, [lower, mp], mp)
    assert not os.path.exists(lower + ".upper")


def test_default_mountpoint_not_empty(work):
    lower = make_lower(work)
    os.mkdir(lower + ".mountpoint")
    os.mkdir(j(lower + ".mountpoint", "sub"))
    refusal(work, [lower], lower + ".mountpoint")
    assert not os.path.exists(lower + ".upper")


def test_upper_in_use(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    mp2 = j(work, "second")
    line = refusal(work, ["--upper", o.upper, lower, mp2], o.upper)
    assert not os.path.exists(mp2)
    assert o.mounted
    # the first mount still works
    open(j(o.mp, "still"), "w").write("ok")
    assert open(j(o.upper, "still")).read() == "ok"
    # a second lower using the same upper is refused as well
    lower2 = j(work, "lower2")
    os.mkdir(lower2)
    refusal(work, ["--upper", o.upper, lower2, j(work, "third")], o.upper)
    # after unmounting, the upper can be used again
    o.umount()
    o2 = Overlay(lower, upper=o.upper, mp=mp2)
    o2.mount()
    assert open(j(mp2, "still")).read() == "ok"


def test_upper_in_use_default_paths(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    # same lower again: default upper is busy (and default mount point busy)
    r = ovlfs("mount", lower)
    assert r.returncode != 0
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1, r.err
    assert o.mounted
    assert len([m for m in mounts_under(work)]) == 1


def test_upper_is_a_file(work):
    lower = make_lower(work)
    up = j(work, "upfile")
    open(up, "w").close()
    refusal(work, ["--upper", up, lower, j(work, "mp")], up)


def test_mountpoint_is_a_file(work):
    lower = make_lower(work)
    mp = j(work, "mpfile")
    open(mp, "w").close()
    refusal(work, [lower, mp], mp)


def test_unknown_upper_format_refused(work):
    lower = make_lower(work)
    o = Overlay(lower)
    o.mount()
    o.umount()
    try:
        fmt = os.getxattr(o.upper, "user.ovlfs.format")
    except OSError:
        pytest.skip("upper carries no user.ovlfs.format marker")
    newer = str(int(fmt.decode().strip("\0")) + 1).encode()
    os.setxattr(o.upper, "user.ovlfs.format", newer)
    refusal(work, [lower], o.upper)
    assert os.getxattr(o.upper, "user.ovlfs.format") == newer
