"""Bad input: every command with missing, overlapping, non-directory,
unreadable, too long and non-UTF-8 paths; reserved `.wh.` names through
the mount; uppers in use, from a newer ovlfs, or in a foreign format.

A refusal is: a non-zero exit, one line on stderr naming the path and the
reason, and nothing changed on disk (no upper or mount point created, the
lower untouched, no mount left).  test_cli.py covers `ovlfs mount` with
overlapping/missing/non-directory paths given as absolute paths; this file
covers the other commands, the other kinds of path and the rest."""

import errno
import os
import stat
import subprocess

import pytest

from conftest import (IS_ROOT, OVLFS, Overlay, build, run, snapshot, assert_same_tree,
                      mounts_under, upper_listing, renameat2, RENAME_NOREPLACE)

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root")

UID = GID = 4242
AS_USER = ["setpriv", "--reuid=%d" % UID, "--regid=%d" % GID, "--clear-groups"]
NAME_MAX = 255
PATH_MAX = 4096


def j(*p):
    return os.path.join(*p)


def jb(*p):
    return os.path.join(*[os.fsencode(x) for x in p])


def state(root):
    """Everything under ROOT, with times of files (a directory's own times
    are left out: a refused mount may create and remove a directory in
    it, which test_cli.py tolerates as well)."""
    snap = snapshot(root, mtime=True, ctime=True, xattrs=True)
    for rec in snap.values():
        if rec["type"] == "dir":
            rec.pop("mtime", None)
            rec.pop("ctime", None)
    return snap


def refuse(root, args, names, cwd=None, user=False, rcs=(1, 2)):
    """`ovlfs ARGS` must fail (exit in RCS) with one line on stderr naming
    one of NAMES (str or bytes; the message may show a non-UTF-8 byte
    raw or as \\xHH) and change nothing under ROOT."""
    before = state(root)
    mounts = mounts_under(root)
    argv = [OVLFS] + [os.fsencode(a) for a in args]
    if user:
        argv = AS_USER + argv
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                       timeout=60)
    try:
        shown = b" ".join(a if isinstance(a, bytes) else os.fsencode(a) for a in args)
        assert r.returncode != 0, "ovlfs %r succeeded (exit 0), stdout %r stderr %r" % (
            shown, r.stdout, r.stderr)
        assert r.returncode in rcs, "ovlfs %r: exit %d, stderr %r" % (
            shown, r.returncode, r.stderr)
        lines = [l for l in r.stderr.split(b"\n") if l.strip()]
        assert len(lines) == 1, "ovlfs %r: expected a one-line error, got %r" % (
            shown, r.stderr)
        line = lines[0]
        cands = []
        for n in ([names] if isinstance(names, (str, bytes)) else names):
            b = os.fsencode(n)
            cands.append(b)
            cands.append("".join(chr(c) if c < 0x80 else "\\x%02x" % c
                                 for c in b).encode())
        assert any(c in line for c in cands), \
            "ovlfs %r: error %r does not name %r" % (shown, line, names)
        # a reason besides the path
        rest = line
        for c in cands:
            rest = rest.replace(c, b"")
        assert len(rest.replace(b"ovlfs:", b"").strip(b" :'\"")) >= 6, \
            "ovlfs %r: error %r gives no reason" % (shown, line)
        try:
            after = state(root)
        except OSError as e:
            raise AssertionError("ovlfs %r exited %d but left a tree that cannot "
                                 "even be walked: %s" % (shown, r.returncode, e))
        assert_same_tree(after, before, "after", "before")
        assert mounts_under(root) == mounts
    finally:
        for m in mounts_under(root):
            if m not in mounts:
                subprocess.run([b"umount", b"-l", m])
    return line


def cmd_args(cmd, lower, upper=None, mp=None):
    """argv (after `ovlfs`) of command CMD on LOWER [--upper UPPER] [MP]."""
    up = ["--upper", upper] if upper is not None else []
    if cmd == "mount":
        return ["mount"] + up + [lower] + ([mp] if mp is not None else [])
    if cmd == "run":
        return ["run", "--on-exit", "preserve"] + up + [lower, "--", "true"]
    if cmd == "commit-atomic":
        return ["commit", "--atomic", "--quiet"] + up + [lower]
    if cmd in ("commit", "discard", "recover"):
        return [cmd, "--quiet"] + up + [lower]
    if cmd == "diff":
        return ["diff"] + up + [lower]
    raise ValueError(cmd)


LOWER_CMDS = ["mount", "run", "diff", "commit", "commit-atomic", "discard", "recover"]
FIN_CMDS = ["diff", "commit", "commit-atomic", "discard", "recover"]


def make_pair(work, with_change=True):
    """A lower and a (not mounted) upper with one change each kind."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a\n", "gone": "g\n", "sub": {"b": "b\n"}})
    upper = j(work, "lower.upper")
    if with_change:
        o = Overlay(lower)
        o.mount()
        open(j(o.mp, "new"), "w").write("n\n")
        open(j(o.mp, "a"), "a").write("more\n")
        os.unlink(j(o.mp, "gone"))
        o.umount()
        os.rmdir(o.mp)
    return lower, upper


# ----------------------------------------------------------------- missing

@pytest.mark.parametrize("cmd", LOWER_CMDS)
def test_missing_lower(work, cmd):
    lower = j(work, "nothere")
    refuse(work, cmd_args(cmd, lower), lower)


@pytest.mark.parametrize("cmd", LOWER_CMDS)
def test_missing_lower_relative(work, cmd):
    refuse(work, cmd_args(cmd, "nothere"), ["nothere"], cwd=work)


@pytest.mark.parametrize("cmd", ["diff", "commit", "commit-atomic", "discard"])
def test_missing_explicit_upper(work, cmd):
    """An --upper that does not exist is a mistake (a typo), not an empty
    change set: commit/discard/diff must say so instead of succeeding."""
    lower, _ = make_pair(work, with_change=False)
    up = j(work, "no-such-upper")
    refuse(work, cmd_args(cmd, lower, up), up)


def test_umount_missing(work):
    mp = j(work, "nothere")
    refuse(work, ["umount", mp], mp)
    refuse(work, ["umount", "nothere"], ["nothere"], cwd=work)


def test_umount_file_and_plain_dir(work):
    open(j(work, "file"), "w").close()
    refuse(work, ["umount", j(work, "file")], j(work, "file"))
    os.mkdir(j(work, "d"))
    refuse(work, ["umount", "d"], ["d"], cwd=work)
    # a mount point that is not ovlfs's: the session tmpfs itself is one
    parent = os.path.dirname(work)
    r = run([OVLFS, "umount", parent])
    assert r.returncode != 0 and parent in r.err
    assert mounts_under(parent)


# ------------------------------------------------------------ not a dir

@pytest.mark.parametrize("cmd", LOWER_CMDS)
def test_lower_not_a_directory(work, cmd):
    lower = j(work, "file")
    with open(lower, "w") as f:
        f.write("x")
    refuse(work, cmd_args(cmd, lower), lower)


@pytest.mark.parametrize("cmd", ["mount", "run", "diff", "commit", "commit-atomic",
                                 "discard"])
def test_upper_not_a_directory(work, cmd):
    lower, _ = make_pair(work, with_change=False)
    up = j(work, "upfile")
    with open(up, "w") as f:
        f.write("precious\n")
    refuse(work, cmd_args(cmd, lower, up), up)


def test_upper_symlink_to_file(work):
    lower, _ = make_pair(work, with_change=False)
    with open(j(work, "target"), "w") as f:
        f.write("t")
    os.symlink("target", j(work, "uplink"))
    for cmd in ("mount", "run", "discard", "commit"):
        refuse(work, cmd_args(cmd, lower, j(work, "uplink")),
               [j(work, "uplink"), j(work, "target")])


# ------------------------------------------------------------ overlapping

OVERLAPS = ["upper-equals-lower", "upper-inside-lower", "lower-inside-upper"]


def overlap_paths(work, kind):
    if kind == "upper-equals-lower":
        lower, _ = make_pair(work, with_change=False)
        return lower, lower
    if kind == "upper-inside-lower":
        lower, _ = make_pair(work, with_change=False)
        up = j(lower, "sub")
        return lower, up
    if kind == "lower-inside-upper":
        up = j(work, "up")
        os.mkdir(up)
        lower = j(up, "lower")
        os.mkdir(lower)
        build(lower, {"keep": "k\n", "sub": {"b": "b"}})
        return lower, up
    raise ValueError(kind)


@pytest.mark.parametrize("kind", OVERLAPS)
@pytest.mark.parametrize("cmd", ["run"] + FIN_CMDS)
def test_overlapping_layers(work, cmd, kind):
    """Overlapping layers are refused by every command, not only mount:
    `discard --upper LOWER LOWER` would delete the lower."""
    lower, up = overlap_paths(work, kind)
    refuse(work, cmd_args(cmd, lower, up), [lower, up])


@pytest.mark.parametrize("cmd", ["run", "diff", "commit", "discard"])
def test_overlapping_layers_relative(work, cmd):
    lower, _ = make_pair(work, with_change=False)
    refuse(work, cmd_args(cmd, "lower", "./lower/"), ["lower"], cwd=work)
    refuse(work, cmd_args(cmd, "lower", "lower/sub"), ["lower"], cwd=work)
    refuse(work, cmd_args(cmd, "lower/sub/..", "lower"), ["lower"], cwd=work)


def test_mountpoint_inside_upper(work):
    lower, _ = make_pair(work, with_change=False)
    up = j(work, "up")
    os.mkdir(up)
    refuse(work, cmd_args("mount", lower, up, j(up, "mnt")), [up, j(up, "mnt")])
    os.mkdir(j(up, "mnt"))
    refuse(work, cmd_args("mount", lower, up, j(up, "mnt")), [up, j(up, "mnt")])
    # relative, through ..
    refuse(work, cmd_args("mount", "lower", "up", "lower/../up/mnt"),
           ["up", "mnt"], cwd=work)


def test_run_upper_is_default_mountpoint(work):
    lower, _ = make_pair(work, with_change=False)
    refuse(work, cmd_args("run", lower, lower + ".mountpoint"), lower + ".mountpoint")


def test_mount_overlaps_via_symlinks(work):
    lower, _ = make_pair(work, with_change=False)
    os.symlink("lower/sub", j(work, "alias"))
    refuse(work, cmd_args("mount", lower, j(work, "alias"), j(work, "mnt")),
           [j(work, "alias"), j(lower, "sub"), lower])
    refuse(work, cmd_args("mount", lower, j(work, "up"), j(work, "alias")),
           [j(work, "alias"), j(lower, "sub"), lower])


# ------------------------------------------------------------- unreadable

def user_tree(work):
    """WORK/home owned by the user; in it a root-only lower and upper."""
    home = j(work, "home")
    os.mkdir(home)
    os.chown(home, UID, GID)
    lower = j(home, "lower")
    os.mkdir(lower)
    build(lower, {"secret": "s\n", "d": {"x": "x"}})
    os.chmod(lower, 0o700)
    up = j(home, "rootupper")
    os.mkdir(up)
    build(up, {"a": "a\n", ".wh.secret": ""})
    os.chmod(up, 0o700)
    mine = j(home, "mine")
    os.mkdir(mine)
    build(mine, {"f": "f\n"})
    myupper = j(home, "myupper")
    os.mkdir(myupper)
    build(myupper, {"new": "n\n", ".wh.secret": "", "d": {"y": "y"}})
    for p in (mine, j(mine, "f"), myupper, j(myupper, "new"), j(myupper, ".wh.secret"),
              j(myupper, "d"), j(myupper, "d", "y")):
        os.chown(p, UID, GID)
    return home, lower, up, mine


@pytest.mark.parametrize("cmd", ["mount", "run", "diff", "commit", "commit-atomic",
                                 "recover"])
def test_unreadable_lower(work, cmd):
    home, lower, up, mine = user_tree(work)
    refuse(work, cmd_args(cmd, lower, j(home, "myupper")), lower, user=True)


@pytest.mark.parametrize("cmd", ["mount", "run", "diff", "commit", "commit-atomic",
                                 "discard"])
def test_unreadable_upper(work, cmd):
    home, lower, up, mine = user_tree(work)
    refuse(work, cmd_args(cmd, mine, up), up, user=True)


def test_unwritable_parent_for_upper(work):
    """The default upper cannot be created: refused naming it, nothing
    left behind."""
    home, lower, up, mine = user_tree(work)
    ro = j(home, "ro")
    os.mkdir(ro)
    os.chmod(ro, 0o755)                      # root's, not writable by the user
    os.mkdir(j(ro, "lower"))
    os.chmod(j(ro, "lower"), 0o755)
    refuse(work, cmd_args("mount", j(ro, "lower")),
           [j(ro, "lower.upper"), j(ro, "lower.mountpoint")], user=True)


# --------------------------------------------------------------- too long

LONG = "n" * (NAME_MAX + 1)


@pytest.mark.parametrize("cmd", LOWER_CMDS)
def test_lower_component_too_long(work, cmd):
    lower = j(work, LONG)
    refuse(work, cmd_args(cmd, lower), lower)


@pytest.mark.parametrize("cmd", ["mount", "run", "diff", "commit", "discard"])
def test_upper_component_too_long(work, cmd):
    lower, _ = make_pair(work, with_change=False)
    up = j(work, LONG)
    refuse(work, cmd_args(cmd, lower, up), up)


def test_mountpoint_component_too_long(work):
    lower, _ = make_pair(work, with_change=False)
    mp = j(work, LONG)
    refuse(work, cmd_args("mount", lower, j(work, "up"), mp), mp)
    refuse(work, ["umount", mp], mp)


def test_default_names_too_long(work):
    """A lower whose name fits but whose default upper (NAME.upper) or mount
    point (NAME.mountpoint) would not."""
    name = "l" * (NAME_MAX - 3)
    lower = j(work, name)
    os.mkdir(lower)
    build(lower, {"f": "f"})
    for cmd in LOWER_CMDS:
        refuse(work, cmd_args(cmd, lower), [lower, name])


@pytest.mark.parametrize("cmd", LOWER_CMDS + ["umount"])
def test_path_too_long(work, cmd):
    """More than PATH_MAX bytes in all: the message names the path (its
    start at least) and the reason."""
    p = work + "/d" * ((PATH_MAX - len(work)) // 2 + 10)
    assert len(p) > PATH_MAX
    args = ["umount", p] if cmd == "umount" else cmd_args(cmd, p)
    line = refuse(work, args, [p[:200]])
    assert b"too long" in line.lower() or b"long" in line.lower(), line


# ---------------------------------------------------------- non-UTF-8 names

BAD = b"bad\xff\xfename"


@pytest.mark.parametrize("cmd", LOWER_CMDS)
def test_non_utf8_missing_lower(work, cmd):
    lower = jb(work, BAD)
    refuse(work, cmd_args(cmd, lower), lower)


@pytest.mark.parametrize("cmd", ["mount", "run", "diff", "commit", "discard"])
def test_non_utf8_overlap(work, cmd):
    lower = jb(work, BAD)
    os.mkdir(lower)
    build(lower, {b"\xe9t\xe9": "latin-1 name", "sub": {}})
    up = jb(lower, b"\xe9t\xe9")
    refuse(work, cmd_args(cmd, lower, up), [lower, up])


@pytest.mark.parametrize("cmd", ["mount", "diff", "commit"])
def test_newline_in_path_is_one_line(work, cmd):
    """A path with a newline still gives a one-line message (escaped, as
    `ovlfs diff` escapes paths)."""
    lower = j(work, "new\nline")
    refuse(work, cmd_args(cmd, lower), ["new\\nline", "new\\x0aline", "new\\012line",
                                        "line"])


def test_non_utf8_lower_mounts(work):
    """Not bad input: a valid lower with a non-UTF-8 name mounts, with
    default upper and mount point named after it."""
    lower = jb(work, BAD)
    os.mkdir(lower)
    build(lower, {"f": "f\n"})
    o = Overlay(lower)
    o.mount()
    assert open(jb(o.mp, b"f")).read() == "f\n"
    open(jb(o.mp, b"g"), "w").write("g")
    o.umount()
    assert os.path.isfile(jb(work, BAD + b".upper", b"g"))


# ------------------------------------------------------ .wh. through the mount

def expect_errno(err, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except OSError as e:
        assert e.errno == err, "%s%r: %s, expected %s" % (
            fn.__name__, a, errno.errorcode.get(e.errno), errno.errorcode[err])
        return
    raise AssertionError("%s%r succeeded, expected %s" % (fn.__name__, a,
                                                          errno.errorcode[err]))


def test_wh_names_through_mount(work):
    """Creating any kind of `.wh.` entry is EINVAL; looking one up is ENOENT
    even where the upper has it (test_names.py covers the common forms;
    here mknod of devices, sockets, and names the upper really has)."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "f", "x": "x", "d": {"y": "y"}})
    o = Overlay(lower)
    o.mount()
    m = o.mp
    os.unlink(j(m, "x"))                    # upper now has .wh.x
    os.unlink(j(m, "d", "y"))               # and d/.wh.y
    assert os.path.exists(j(o.upper, ".wh.x"))
    before = upper_listing(o.upper)
    for name in (".wh.x", ".wh.y", ".wh..wh..opq", ".wh.new"):
        for d in ("", "d"):
            p = j(m, d, name)
            expect_errno(errno.ENOENT, os.lstat, p)
            expect_errno(errno.ENOENT, os.open, p, os.O_RDONLY)
            expect_errno(errno.ENOENT, os.getxattr, p, "user.x", follow_symlinks=False)
            expect_errno(errno.ENOENT, os.unlink, p)
            expect_errno(errno.ENOENT, os.rename, p, j(m, "stolen"))
            expect_errno(errno.EINVAL, os.mknod, p, stat.S_IFCHR | 0o600, os.makedev(1, 3))
            expect_errno(errno.EINVAL, os.mknod, p, stat.S_IFREG | 0o600)
            expect_errno(errno.EINVAL, os.mkdir, p)
            expect_errno(errno.EINVAL, os.symlink, "f", p)
            expect_errno(errno.EINVAL, os.link, j(m, "f"), p)
            expect_errno(errno.EINVAL, os.rename, j(m, "f"), p)
            expect_errno(errno.EINVAL, renameat2, j(m, "f"), p, RENAME_NOREPLACE)
    import socket
    s = socket.socket(socket.AF_UNIX)
    try:
        expect_errno(errno.EINVAL, s.bind, j(m, ".wh.sock"))
    finally:
        s.close()
    assert sorted(os.listdir(m)) == ["d", "f"]
    assert os.listdir(j(m, "d")) == []
    assert upper_listing(o.upper) == before


# --------------------------------------------------------- uppers in use

def test_upper_in_use_other_commands(work):
    """While mounted, commit/discard/recover/run on the same upper (also by
    a relative path, a symlink, or a different lower) are refused and
    change nothing; diff works."""
    lower, upper = make_pair(work)
    o = Overlay(lower)
    o.mount()
    os.symlink("lower.upper", j(work, "upalias"))
    lower2 = j(work, "lower2")
    os.mkdir(lower2)
    for args, cwd in [
            (cmd_args("commit", lower), None),
            (cmd_args("commit-atomic", lower), None),
            (cmd_args("discard", lower), None),
            (cmd_args("discard", "lower", "upalias"), work),
            (cmd_args("discard", lower2, upper), None),
            (cmd_args("commit", lower2, j(work, "upalias")), None),
            (cmd_args("run", lower2, upper), None),
            (cmd_args("mount", lower2, "./upalias/", j(work, "m2")), work)]:
        refuse(work, args, [upper, "upalias", lower, "lower", j(work, "m2")], cwd=cwd)
    assert o.mounted
    r = run([OVLFS, "diff", lower])
    assert r.returncode == 0 and "/new" in r.out, r.out + r.err
    open(j(o.mp, "still"), "w").write("ok")
    o.umount()


# ----------------------------------------------------------- foreign uppers

def test_newer_format_refused_by_every_command(work):
    lower, upper = make_pair(work)
    os.setxattr(upper, "user.ovlfs.format", b"99")
    for cmd in ("mount", "run", "diff", "commit", "commit-atomic"):
        line = refuse(work, cmd_args(cmd, lower), upper)
        assert b"99" in line or b"format" in line.lower(), line
    assert os.getxattr(upper, "user.ovlfs.format") == b"99"


@pytest.mark.parametrize("value", [b"", b"1x", b"-1", b"0", b"garbage"])
def test_bad_format_value_refused(work, value):
    lower, upper = make_pair(work)
    os.setxattr(upper, "user.ovlfs.format", value)
    refuse(work, cmd_args("mount", lower), upper)


def kernel_overlay_upper(work, kind):
    """A kernel-overlayfs upper made by hand: whiteouts are 0/0 character
    devices, opaque directories carry trusted.overlay.opaque=y."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a", "gone": "g", "dir": {"old": "o"}, "sub": {"deep": "d"}})
    upper = j(work, "lower.upper")
    os.mkdir(upper)
    build(upper, {"a": "changed", "sub": {}})
    if kind in ("whiteout", "both"):
        os.mknod(j(upper, "sub", "deep"), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        first = j(upper, "sub", "deep")
    if kind in ("opaque", "both"):
        os.mkdir(j(upper, "dir"))
        os.setxattr(j(upper, "dir"), "trusted.overlay.opaque", b"y")
        first = j(upper, "dir")
    return lower, upper, first


@pytest.mark.parametrize("kind", ["whiteout", "opaque", "both"])
def test_kernel_overlayfs_upper_read_as_kernel_format(work, kind):
    """An upper in the kernel's format is recognised and read as such."""
    lower, upper, first = kernel_overlay_upper(work, kind)
    o = Overlay(lower)
    o.mount()
    try:
        names = set(os.listdir(o.mp))
        assert names == {"a", "gone", "dir", "sub"}, names
        assert open(j(o.mp, "a")).read() == "changed"
        if kind in ("whiteout", "both"):
            assert os.listdir(j(o.mp, "sub")) == []
        if kind in ("opaque", "both"):
            assert os.listdir(j(o.mp, "dir")) == []
        for n in ("a", "dir", "sub"):
            assert not [x for x in os.listxattr(j(o.mp, n))
                        if "overlay." in x], n
    finally:
        o.umount()
    assert os.getxattr(upper, "user.ovlfs.format") == b"1 kernel"


def test_kernel_overlayfs_upper_other_format_refused(work):
    lower, upper, first = kernel_overlay_upper(work, "whiteout")
    line = refuse(work, ["mount", "--format", "oci", lower], [upper])
    assert b"kernel format" in line and b"convert" in line, line


def test_mixed_formats_refused(work):
    lower, upper, first = kernel_overlay_upper(work, "whiteout")
    open(j(upper, ".wh.gone"), "w").close()
    line = refuse(work, cmd_args("mount", lower), [upper])
    assert b"both" in line, line


@pytest.mark.parametrize("cmd", ["commit", "commit-atomic"])
def test_kernel_overlayfs_upper_commits(work, cmd):
    """Whiteouts delete: no 0/0 device may land in the lower."""
    lower, upper, first = kernel_overlay_upper(work, "both")
    r = subprocess.run([OVLFS] + cmd_args("diff", lower), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"D /sub/deep" in r.stdout and b"D /dir/old" in r.stdout, r.stdout
    r = subprocess.run([OVLFS] + cmd_args(cmd, lower), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(lower)) == ["a", "dir", "gone", "sub"]
    assert os.listdir(j(lower, "sub")) == [] and os.listdir(j(lower, "dir")) == []
    assert open(j(lower, "a")).read() == "changed"
    assert not [x for x in os.listxattr(j(lower, "dir")) if "overlay." in x]


def test_device_0_0_through_mount_keeps_upper_mountable(work):
    """A 0/0 character device made through the mount must not turn the
    upper into one ovlfs then refuses as foreign."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "f"})
    o = Overlay(lower)
    o.mount()
    try:
        os.mknod(j(o.mp, "zero"), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        made = True
    except OSError:
        made = False
    o.umount()
    r = o.mount(check=False)
    assert r.returncode == 0, "upper refused after mknod c 0 0 through the mount " \
        "(made=%r): %s" % (made, r.err)
