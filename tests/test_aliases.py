"""Aliases of the layers, and deleting across mounts.

The overlap checks (lower, upper, mount point, the compat syntax's
workdir, the --log file, flatten's DEST) go by identity: a bind mount of a
lower's subdirectory, a symlink or a ".." spelling is as refused as the
plain path.  Deletion (discard, commit, apply) never reaches into another
mount, and is refused before anything is deleted when a mount point is in
the way.  An upper named by a symlink is refused by every command, and an
upper on a read-only filesystem by the mount.

Every bind mount and tmpfs here is made in the test's own directory and
unmounted at the end of the test, whatever happens.
"""

import os
import subprocess

import pytest

from conftest import (IS_ROOT, OVLFS, Overlay, build, run, ovlfs, is_mounted,
                      mount_entry)
from test_badinput import LOWER_CMDS, cmd_args, make_pair, refuse, state

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root")


def j(*p):
    return os.path.join(*p)


@pytest.fixture
def mounts():
    """mounts.bind(src, dst, ro=False), mounts.tmpfs(dst, ro=False): made
    now, unmounted (last first) when the test ends."""
    made = []

    class M:
        @staticmethod
        def bind(src, dst, ro=False):
            os.makedirs(dst, exist_ok=True)
            subprocess.run(["mount", "--bind", src, dst], check=True)
            made.append(dst)
            if ro:
                subprocess.run(["mount", "-o", "remount,bind,ro", dst], check=True)
            return dst

        @staticmethod
        def tmpfs(dst, ro=False):
            os.makedirs(dst, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m",
                            "ovlfs-test-alias", dst], check=True)
            made.append(dst)
            if ro:
                subprocess.run(["mount", "-o", "remount,ro", dst], check=True)
            return dst

        @staticmethod
        def umount(dst):
            subprocess.run(["umount", dst], check=True)
            made.remove(dst)

    yield M
    for m in reversed(made):
        if is_mounted(m) and subprocess.run(["umount", m]).returncode != 0:
            subprocess.run(["umount", "-l", m])


def precious(d):
    """A tree that must survive: its contents as a dict."""
    build(d, {"keep": "precious\n", "deep": {"x": "x\n"}})


def listing(d):
    out = {}
    for root, dirs, files in os.walk(d):
        for n in files:
            p = j(root, n)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
        for n in dirs:
            out[os.path.relpath(j(root, n), d) + "/"] = None
    return out


# ------------------------------------------------------- A: aliases of layers

@pytest.mark.parametrize("cmd", LOWER_CMDS)
def test_upper_bind_mount_of_lower_subdir(work, mounts, cmd):
    """The issue's case: an upper that is lower/sub mounted elsewhere was
    accepted; writes went into the lower and commit emptied lower/sub."""
    lower, _ = make_pair(work, with_change=False)
    up = mounts.bind(j(lower, "sub"), j(work, "up"))
    args = cmd_args(cmd, lower, up, j(work, "mnt") if cmd == "mount" else None)
    refuse(work, args, [up, lower])
    assert not os.path.exists(j(work, "mnt"))


def test_alias_message_names_the_real_directory(work, mounts):
    lower, _ = make_pair(work, with_change=False)
    up = mounts.bind(j(lower, "sub"), j(work, "up"))
    r = ovlfs("mount", "--upper", up, lower, j(work, "mnt"))
    assert r.returncode == 1
    assert ("upper %s is inside the lower %s (it is %s, reached through another mount)"
            % (up, lower, j(lower, "sub"))) in r.err, r.err


def test_upper_bind_mount_of_lower_itself(work, mounts):
    lower, _ = make_pair(work, with_change=False)
    up = mounts.bind(lower, j(work, "up"))
    refuse(work, cmd_args("mount", lower, up, j(work, "mnt")), [up, lower])
    refuse(work, cmd_args("discard", lower, up), [up, lower])


def test_upper_holding_the_lower_through_a_bind_mount(work, mounts):
    """The upper is a bind mount of a directory that holds the lower."""
    outer = j(work, "outer")
    os.mkdir(outer)
    lower = j(outer, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a\n"})
    up = mounts.bind(outer, j(work, "up"))
    refuse(work, cmd_args("mount", lower, up, j(work, "mnt")), [up, lower])
    refuse(work, cmd_args("commit", lower, up), [up, lower])


def test_upper_inside_a_bind_mount_of_the_lower(work, mounts):
    """--upper ALIAS/up where ALIAS is the lower mounted again: the upper
    would be made inside the lower."""
    lower, _ = make_pair(work, with_change=False)
    alias = mounts.bind(lower, j(work, "alias"))
    refuse(work, cmd_args("mount", lower, j(alias, "up"), j(work, "mnt")),
           [j(alias, "up"), lower])
    assert not os.path.exists(j(lower, "up"))


def test_mount_point_aliases(work, mounts):
    lower, _ = make_pair(work, with_change=False)
    up = j(work, "up")
    os.mkdir(up)
    os.mkdir(j(up, "m"))
    # the mount point is a directory of the upper, mounted elsewhere
    mp = mounts.bind(j(up, "m"), j(work, "mp1"))
    refuse(work, cmd_args("mount", lower, up, mp), [mp, up])
    # ... or the lower's
    mp = mounts.bind(j(lower, "sub"), j(work, "mp2"))
    refuse(work, cmd_args("mount", lower, up, mp), [mp, lower])
    # ... or the upper itself
    mp = mounts.bind(up, j(work, "mp3"))
    refuse(work, cmd_args("mount", lower, up, mp), [mp, up])


def test_symlink_and_dotdot_aliases(work):
    lower, _ = make_pair(work, with_change=False)
    os.symlink("lower", j(work, "ln"))
    refuse(work, cmd_args("mount", lower, j(work, "ln/sub/up"), j(work, "mnt")),
           [lower, "up"])
    refuse(work, cmd_args("mount", lower, j(work, "up"), j(work, "ln/sub/..")),
           [lower])
    refuse(work, cmd_args("mount", j(work, "ln"), j(work, "lower/sub"), j(work, "mnt")),
           [lower, "sub"])


def test_lower_given_twice_through_a_bind_mount(work, mounts):
    lower, _ = make_pair(work, with_change=False)
    again = mounts.bind(lower, j(work, "again"))
    refuse(work, ["mount", "--upper", j(work, "up"), "--lower", "%s:%s" % (lower, again),
                  j(work, "mnt")], [again])


def test_into_an_alias_of_a_layer(work, mounts):
    """--into names a layer by identity: a bind mount of it is that layer."""
    a = j(work, "a")
    b = j(work, "b")
    build(work, {"a": {"fa": "a\n"}, "b": {"fb": "b\n"}})
    up = j(work, "up")
    os.mkdir(up)
    build(up, {"new": "n\n"})
    alias = mounts.bind(b, j(work, "balias"))
    r = ovlfs("commit", "--quiet", "--upper", up, "--lower", "%s:%s" % (a, b),
              "--into", alias)
    assert r.returncode == 0, r.err
    assert open(j(b, "new")).read() == "n\n"
    assert not os.path.exists(j(a, "new"))


@pytest.mark.parametrize("where", ["lower", "lower-alias", "upper", "mount point",
                                   "mount point-alias"])
@pytest.mark.parametrize("cmd", ["mount", "run", "compat"])
def test_log_file_inside_a_layer(work, mounts, cmd, where):
    """--log FILE in the lower was written into the lower while mounted; in
    the mount point it was created and then the mount refused."""
    lower, _ = make_pair(work, with_change=False)
    up = j(work, "up")
    os.mkdir(up)
    mp = j(work, "mnt")
    os.mkdir(mp)
    place = {"lower": lower, "upper": up, "mount point": mp,
             "lower-alias": j(work, "lalias"), "mount point-alias": j(work, "malias")}[where]
    if where == "lower-alias":
        mounts.bind(j(lower, "sub"), place)
    if where == "mount point-alias":
        mounts.bind(mp, place)
    log = j(place, "ovlfs.log")
    if cmd == "mount":
        args = ["mount", "--log", log, "--upper", up, lower, mp]
    elif cmd == "run":
        args = ["run", "--on-exit", "preserve", "--log", log, "--upper", up, lower,
                "--", "true"]
        if where.startswith("mount point"):
            pytest.skip("run makes its own mount point")
    else:
        args = ["-o", "lowerdir=%s,upperdir=%s,log=%s" % (lower, up, log), mp]
    refuse(work, args, [log, "log file"])
    assert not os.path.exists(log)


def test_log_file_next_to_the_layers(work):
    lower, _ = make_pair(work, with_change=False)
    log = j(work, "ovlfs.log")
    o = Overlay(lower, extra_args=["--log", log])
    o.mount()
    open(j(o.mp, "x"), "w").write("x")
    o.umount()
    assert os.path.exists(log)


def test_compat_workdir_alias(work, mounts):
    lower, _ = make_pair(work, with_change=False)
    up = j(work, "up")
    os.mkdir(up)
    mp = j(work, "mnt")
    os.mkdir(mp)
    wd = mounts.bind(j(lower, "sub"), j(work, "wd"))
    refuse(work, ["-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, up, wd), mp],
           [wd, "workdir"])


def test_flatten_dest_in_a_lower_alias(work, mounts):
    lower, _ = make_pair(work, with_change=False)
    alias = mounts.bind(j(lower, "sub"), j(work, "alias"))
    dest = j(alias, "flat")
    # (it failed before too, but only once the copy had run into itself,
    # writing into the lower)
    refuse(work, ["flatten", lower, dest], [dest, lower])
    r = ovlfs("flatten", lower, dest)
    assert "flatten: %s overlaps the layer %s (as %s)" % (
        dest, lower, j(lower, "sub", "flat")) in r.err, r.err
    assert not os.path.exists(j(lower, "sub", "flat"))


def test_legitimate_setups_pass(work, alt_work, mounts):
    """An upper on its own tmpfs, a lower on another filesystem, a lower
    that is a bind mount of a directory next to the upper (same
    filesystem, apart): all mount, commit and discard as before."""
    # upper on a separate tmpfs (a directory in it), lower elsewhere
    lower = j(alt_work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a\n", "d": {"b": "b\n"}})
    fs = mounts.tmpfs(j(work, "fs"))
    up = j(fs, "up")
    o = Overlay(lower, upper=up, mp=j(work, "mnt"))
    o.mount()
    open(j(o.mp, "new"), "w").write("n\n")
    o.umount()
    r = ovlfs("commit", "--quiet", "--upper", up, lower)
    assert r.returncode == 0, r.err
    assert open(j(lower, "new")).read() == "n\n"
    # the upper is a tmpfs mount root: mounting works
    root_up = mounts.tmpfs(j(work, "rootup"))
    o = Overlay(lower, upper=root_up, mp=j(work, "mnt2"))
    o.mount()
    open(j(o.mp, "new2"), "w").write("n\n")
    o.umount()
    assert os.path.exists(j(root_up, "new2"))
    # lower a bind mount of a directory beside the upper on one tmpfs
    os.mkdir(j(fs, "realLower"))
    build(j(fs, "realLower"), {"f": "f\n"})
    blower = mounts.bind(j(fs, "realLower"), j(work, "blower"))
    up2 = j(fs, "up2")
    o = Overlay(blower, upper=up2, mp=j(work, "mnt3"))
    o.mount()
    os.unlink(j(o.mp, "f"))
    o.umount()
    r = ovlfs("discard", "--quiet", "--upper", up2, blower)
    assert r.returncode == 0, r.err
    assert not os.path.exists(up2)
    assert os.path.exists(j(blower, "f"))


# ------------------------------------------------- B: deleting across mounts

def precious_mount(work, mounts, target):
    """Bind WORK/other, filled by precious(), on directory TARGET; its
    path. What a command must never touch through a layer."""
    other = j(work, "other")
    os.mkdir(other)
    precious(other)
    mounts.bind(other, target)
    return other


@pytest.mark.parametrize("cmd", ["discard", "commit", "commit-atomic"])
def test_mount_point_inside_the_upper(work, mounts, cmd):
    """discard deleted the contents of a bind mount inside the upper (and
    commit copied them into the lower, then deleted them)."""
    lower, upper = make_pair(work)
    os.mkdir(j(upper, "m"))
    other = precious_mount(work, mounts, j(upper, "m"))
    before_other = listing(other)
    before = state(lower)
    args = cmd_args(cmd, lower)
    r = run([OVLFS] + args)
    assert listing(other) == before_other
    assert state(lower) == before
    assert r.returncode == 1, r.err
    assert "mount point" in r.err and j(upper, "m") in r.err, r.err
    assert os.path.exists(j(upper, "new"))


def test_discard_upper_that_is_a_mount_point(work, mounts):
    """An upper that is a filesystem's root cannot be removed: refused
    before its contents go (they went, then rmdir failed)."""
    lower, _ = make_pair(work, with_change=False)
    up = mounts.tmpfs(j(work, "up"))
    precious(up)
    before = listing(up)
    r = ovlfs("discard", "--quiet", "--upper", up, lower)
    assert listing(up) == before
    assert r.returncode == 1
    assert "upper %s is a mount point" % up in r.err, r.err


@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_commit_does_not_delete_into_a_mount_in_the_lower(work, mounts, atomic):
    """A whiteout of lower/m, which holds a mount point: the commit is
    refused, naming it, and the mounted filesystem keeps its contents."""
    lower, _ = make_pair(work, with_change=False)
    os.makedirs(j(lower, "m", "inner"))
    other = precious_mount(work, mounts, j(lower, "m", "inner"))
    o = Overlay(lower)
    o.mount()
    subprocess.run(["rm", "-rf", j(o.mp, "m")], check=True)
    open(j(o.mp, "new"), "w").write("n\n")
    o.umount()
    before_other = listing(other)
    args = ["commit", "--quiet"] + (["--atomic"] if atomic else []) + [lower]
    r = ovlfs(*args)
    assert listing(other) == before_other
    assert r.returncode == 1, r.err
    assert j(lower, "m", "inner") in r.err and "mount point" in r.err, r.err
    assert os.path.isdir(j(lower, "m", "inner"))
    assert not os.path.exists(j(lower, ".wh..wh.ovlfs-commit"))


def test_commit_opaque_dir_over_a_mount_in_the_lower(work, mounts):
    """The same through an opaque directory replacing lower/m."""
    lower, _ = make_pair(work, with_change=False)
    os.makedirs(j(lower, "m", "inner"))
    other = precious_mount(work, mounts, j(lower, "m", "inner"))
    o = Overlay(lower)
    o.mount()
    subprocess.run(["rm", "-rf", j(o.mp, "m")], check=True)
    os.mkdir(j(o.mp, "m"))
    open(j(o.mp, "m", "f"), "w").write("f\n")
    o.umount()
    before_other = listing(other)
    r = ovlfs("commit", "--quiet", lower)
    assert listing(other) == before_other
    assert r.returncode == 1 and "mount point" in r.err, r.err


def test_apply_whiteout_over_a_mount_in_the_upper(work, mounts):
    """ovl_remove_tree() itself stops at a mount point (here reached by a
    tar whiteout of a directory of the upper)."""
    lower, upper = make_pair(work)
    os.makedirs(j(upper, "d", "mnt"))
    other = precious_mount(work, mounts, j(upper, "d", "mnt"))
    src = j(work, "tarsrc")
    os.mkdir(src)
    open(j(src, ".wh.d"), "w").close()
    tar = j(work, "wh.tar")
    subprocess.run(["tar", "-C", src, "-cf", tar, ".wh.d"], check=True)
    before_other = listing(other)
    r = ovlfs("apply", "--tar", tar, lower)
    assert listing(other) == before_other
    assert r.returncode == 1, r.err


SYMLINK_CMDS = LOWER_CMDS + ["convert", "export", "apply", "flatten"]


@pytest.mark.parametrize("cmd", SYMLINK_CMDS)
def test_upper_named_by_a_symlink(work, cmd):
    """Every command refuses it alike (they followed it, and a discard or
    commit then left the link dangling, which the next mount refused)."""
    lower, upper = make_pair(work)
    real = j(work, "real.upper")
    os.rename(upper, real)
    os.symlink("real.upper", upper)
    tar = j(work, "t.tar")
    if cmd == "apply":
        src = j(work, "tarsrc")
        os.mkdir(src)
        open(j(src, "f"), "w").close()
        subprocess.run(["tar", "-C", src, "-cf", tar, "f"], check=True)
    extra = {"convert": ["convert", "--to", "kernel", lower],
             "export": ["export", "--tar", tar, lower],
             "apply": ["apply", "--tar", tar, lower],
             "flatten": ["flatten", lower, j(work, "flat")]}
    args = extra.get(cmd) or cmd_args(cmd, lower)
    refuse(work, args, [upper])
    if cmd != "apply":
        assert not os.path.exists(tar)
    assert os.path.isdir(real) and os.path.islink(upper)


# ------------------------------------------------------ C: read-only upper

@pytest.mark.parametrize("syntax", ["mount", "compat", "run"])
@pytest.mark.parametrize("how", ["existing", "missing"])
def test_upper_on_a_read_only_filesystem(work, mounts, syntax, how):
    """Was mounted "rw", and every change then failed with EROFS."""
    lower, _ = make_pair(work, with_change=False)
    base = j(work, "rofs")
    os.mkdir(base)
    os.mkdir(j(base, "up"))
    ro = mounts.bind(base, j(work, "ro"), ro=True)
    up = j(ro, "up") if how == "existing" else j(ro, "newup")
    mp = j(work, "mnt")
    os.mkdir(mp)
    if syntax == "mount":
        args = ["mount", "--upper", up, lower, mp]
    elif syntax == "run":
        args = ["run", "--on-exit", "preserve", "--upper", up, lower, "--", "true"]
    else:
        if how == "missing":
            pytest.skip("upperdir= must exist")
        args = ["-o", "lowerdir=%s,upperdir=%s" % (lower, up), mp]
    r = run([OVLFS] + args)
    assert r.returncode == 1, r.err
    assert "upper %s is on a read-only filesystem" % up in r.err, r.err
    assert "--read-only" in r.err
    assert mount_entry(mp) is None


def test_read_only_view_without_upper_still_works(work, mounts):
    lower, _ = make_pair(work, with_change=False)
    o = Overlay(lower, mp=j(work, "mnt"), extra_args=["--read-only"])
    o.mount()
    assert open(j(o.mp, "a")).read() == "a\n"
    o.umount()


@pytest.mark.parametrize("where", ["lower", "upper", "lower-alias"])
def test_export_tar_inside_a_layer(work, mounts, where):
    """The same class: export --tar FILE wrote FILE into the lower (or into
    the upper it was exporting)."""
    lower, upper = make_pair(work)
    d = {"lower": lower, "upper": upper}.get(where)
    if where == "lower-alias":
        d = mounts.bind(j(lower, "sub"), j(work, "alias"))
    tar = j(d, "layer.tar")
    refuse(work, ["export", "--tar", tar, lower], [tar, "tar file"])
    assert not os.path.exists(tar)
