"""The mount(8) / fuse-overlayfs syntax: `ovlfs [-f] [-d] -o lowerdir=...,
upperdir=...,workdir=... MOUNTPOINT`, `ovlfs SOURCE MOUNTPOINT -o ...` as
mount.fuse3 runs it, `mount -t fuse.ovlfs` and fstab lines (docs/compat.md).

mount(8) drops PATH before it runs mount.fuse3, whose shell then finds
`ovlfs` only in the default directories (/usr/local/sbin first): the tests
that go through mount(8) run in a private mount namespace where a directory
of ours, holding a link to build/ovlfs, is bind-mounted over /usr/local/sbin;
nothing is installed, and no mount leaks out of the namespace.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import (IS_ROOT, OVLFS, Overlay, build, mount_entry, needs_root,
                      ovlfs, run, snapshot, wait_for)


def j(*p):
    return os.path.join(*p)


class CompatOverlay(Overlay):
    """An Overlay mounted through the compat syntax (cleanup as usual)."""

    def __init__(self, lower, upper, mp, args):
        super().__init__(lower, upper=upper, mp=mp)
        self.args = args

    def mount_args(self, foreground=False):
        return [OVLFS] + list(self.args)


def layers(work, lower_spec=None, upper_spec=None):
    lower, upper, wd, mp = (j(work, n) for n in ("lower", "upper", "work", "mnt"))
    for d in (lower, upper, wd, mp):
        os.mkdir(d)
    build(lower, lower_spec or {"f": "lower f\n", "d": {"g": "g\n"}})
    build(upper, upper_spec or {})
    return lower, upper, wd, mp


def check_merged(mp, lower, upper, lower_before):
    """The view shows the lower; a write lands in the upper only."""
    assert open(j(mp, "f")).read() == "lower f\n"
    assert open(j(mp, "d", "g")).read() == "g\n"
    with open(j(mp, "f"), "a") as f:
        f.write("more\n")
    with open(j(mp, "new"), "w") as f:
        f.write("new\n")
    assert open(j(upper, "f")).read() == "lower f\nmore\n"
    assert open(j(upper, "new")).read() == "new\n"
    assert snapshot(lower, mtime=True) == lower_before


def test_kernel_style_syntax(work):
    lower, upper, wd, mp = layers(work)
    before = snapshot(lower, mtime=True)
    o = CompatOverlay(lower, upper, mp, [
        "-o", "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, wd), mp])
    o.mount()
    ent = mount_entry(mp)
    assert ent["fstype"] == "fuse.ovlfs"
    if IS_ROOT:
        # as fuse-overlayfs: root's mount is for every user
        assert "allow_other" in ent["super_opts"], ent
    check_merged(mp, lower, upper, before)
    assert os.listdir(wd) == []          # the work dir is not used
    o.umount()


def test_mount_fuse_helper_syntax(work):
    """As mount.fuse3 calls it: source first, -o after, several -o, the
    options mount(8) and mount.fuse3 add."""
    lower, upper, wd, mp = layers(work)
    before = snapshot(lower, mtime=True)
    o = CompatOverlay(lower, upper, mp, [
        "ovlfs", mp, "-o", "rw,lowerdir=%s,upperdir=%s" % (lower, upper),
        "-o", "workdir=%s,noauto,nofail,_netdev,x-systemd.automount,"
        "defaults,user,relatime,noatime,nodev,dev,suid,fsync=0,"
        "redirect_dir=off,index=off" % wd])
    o.mount()
    ent = mount_entry(mp)
    # dev and suid came last: libfuse's defaults (nosuid,nodev) are off
    assert "nosuid" not in ent["opts"].split(","), ent
    assert "nodev" not in ent["opts"].split(","), ent
    assert "noatime" in ent["opts"].split(","), ent
    check_merged(mp, lower, upper, before)
    o.umount()


def test_ro_keeps_the_upper_visible(work):
    lower, upper, wd, mp = layers(work, upper_spec={"up": "from upper\n"})
    before_l = snapshot(lower, mtime=True)
    before_u = snapshot(upper, mtime=True)
    o = CompatOverlay(lower, upper, mp, [
        "-o", "ro,lowerdir=%s,upperdir=%s,workdir=%s" % (lower, upper, wd), mp])
    o.mount()
    assert "ro" in mount_entry(mp)["opts"].split(",")
    assert open(j(mp, "up")).read() == "from upper\n"
    assert open(j(mp, "f")).read() == "lower f\n"
    for fn in (lambda: open(j(mp, "f"), "a"), lambda: open(j(mp, "x"), "w"),
               lambda: os.mkdir(j(mp, "y"))):
        with pytest.raises(OSError) as ei:
            fn()
        assert ei.value.errno == errno.EROFS
    o.umount()
    assert snapshot(lower, mtime=True) == before_l
    assert snapshot(upper, mtime=True) == before_u


@pytest.mark.parametrize("name", ["a:b", "c,d", "e\\f", "g:h,i\\"])
def test_escaped_lowerdir(work, name):
    """A single layer whose name holds ':' ',' or '\\', escaped as the kernel
    takes them: '\\:', '\\,' and '\\\\'."""
    lower = j(work, name)
    upper, mp = j(work, "upper"), j(work, "mnt")
    os.mkdir(lower)
    os.mkdir(upper)
    os.mkdir(mp)
    build(lower, {"f": "x\n"})
    esc = lower.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")
    o = CompatOverlay(lower, upper, mp, [
        "-o", "lowerdir=%s,upperdir=%s" % (esc, upper), mp])
    o.mount()
    assert open(j(mp, "f")).read() == "x\n"
    with open(j(mp, "n"), "w") as f:
        f.write("n")
    assert os.listdir(upper) == ["n"]
    o.umount()


def test_escaped_colon_splits_layers_right(work):
    """'A\\:B:C' is two layers, 'A:B' and 'C': with C missing the message
    names C, so the split was at the unescaped colon only."""
    ab = j(work, "a:b")
    os.mkdir(ab)
    missing = j(work, "c")
    mp = j(work, "mnt")
    os.mkdir(mp)
    r = ovlfs("-o", "lowerdir=%s:%s" % (ab.replace(":", "\\:"), missing), mp)
    assert r.returncode == 1, r.err
    assert "lowerdir %s: No such file or directory" % missing in r.err
    assert mount_entry(mp) is None


@pytest.mark.parametrize("value", ["{l}::{l}", ":{l}", "{l}:", ""])
def test_empty_layer_refused(work, value):
    lower, mp = j(work, "l"), j(work, "mnt")
    os.mkdir(lower)
    os.mkdir(mp)
    opt = "lowerdir=" + value.format(l=lower)
    r = ovlfs("-o", opt, mp)
    assert r.returncode == 2, r.err
    assert "ovlfs: %s: empty layer" % opt in r.err
    assert mount_entry(mp) is None


@pytest.mark.parametrize("which", [0, 1])
def test_missing_lowerdir_named(work, which):
    real, missing, mp = j(work, "l"), j(work, "nope"), j(work, "mnt")
    os.mkdir(real)
    os.mkdir(mp)
    dirs = [real, missing] if which else [missing, real]
    r = ovlfs("-o", "lowerdir=" + ":".join(dirs), mp)
    assert r.returncode == 1, r.err
    assert r.err.startswith("ovlfs: lowerdir %s: No such file or directory"
                            % missing), r.err
    assert mount_entry(mp) is None


def test_lowerdir_not_a_directory(work):
    f, mp = j(work, "file"), j(work, "mnt")
    open(f, "w").close()
    os.mkdir(mp)
    r = ovlfs("-o", "lowerdir=" + f, mp)
    assert r.returncode == 1
    assert "lowerdir %s: Not a directory" % f in r.err


def test_missing_lowerdir_option(work):
    mp = j(work, "mnt")
    os.mkdir(mp)
    r = ovlfs("-o", "upperdir=" + work, mp)
    assert r.returncode == 2
    assert "missing lowerdir= option" in r.err


@pytest.mark.parametrize("opt,code,msg", [
    ("bogus", 2, "unknown mount option 'bogus'"),
    ("lowerdirx=/", 2, "unknown mount option 'lowerdirx=/'"),
    ("uidmapping=0:1000:1", 2, "mount option 'uidmapping=0:1000:1' is not supported"),
    ("squash_to_root", 2, "mount option 'squash_to_root' is not supported"),
    ("static_nlink", 2, "mount option 'static_nlink' is not supported"),
    ("index=on", 2, "mount option 'index=on' is not supported"),
    ("redirect_dir=bogus", 2, "invalid redirect_dir 'bogus'"),
    ("inode=sideways", 2, "invalid inode mode 'sideways'"),
    ("format=zip", 2, "invalid format 'zip'"),
])
def test_bad_options(work, opt, code, msg):
    lower, upper, wd, mp = layers(work)
    r = ovlfs("-o", "lowerdir=%s,upperdir=%s,%s" % (lower, upper, opt), mp)
    assert r.returncode == code, r.err
    assert msg in r.err
    assert mount_entry(mp) is None
    assert os.listdir(upper) == []


def test_bad_command_line(work):
    lower, upper, wd, mp = layers(work)
    base = "lowerdir=%s,upperdir=%s" % (lower, upper)
    r = ovlfs("-o", base)
    assert r.returncode == 2 and "missing MOUNTPOINT" in r.err
    r = ovlfs("-o", base, "a", "b", mp)
    assert r.returncode == 2 and "too many arguments" in r.err
    r = ovlfs("-o", base, "-x", mp)
    assert r.returncode == 2 and "unknown option '-x'" in r.err
    assert mount_entry(mp) is None


def test_workdir_checked(work):
    lower, upper, wd, mp = layers(work)
    base = "lowerdir=%s,upperdir=%s" % (lower, upper)
    missing = j(work, "nowork")
    r = ovlfs("-o", base + ",workdir=" + missing, mp)
    assert r.returncode == 1
    assert "workdir %s: No such file or directory" % missing in r.err
    inside = j(upper, "w")
    os.mkdir(inside)
    r = ovlfs("-o", base + ",workdir=" + inside, mp)
    assert r.returncode == 1
    assert "workdir %s is inside the upper %s" % (inside, upper) in r.err
    r = ovlfs("-o", base + ",workdir=" + lower, mp)
    assert r.returncode == 1
    assert "workdir %s is the same directory as the lower %s" % (lower, lower) in r.err
    assert mount_entry(mp) is None


def test_upperdir_and_mount_point_must_exist(work):
    lower, upper, wd, mp = layers(work)
    missing = j(work, "noupper")
    r = ovlfs("-o", "lowerdir=%s,upperdir=%s" % (lower, missing), mp)
    assert r.returncode == 1
    assert "upperdir %s: No such file or directory" % missing in r.err
    assert not os.path.exists(missing)
    r = ovlfs("-o", "lowerdir=%s,upperdir=%s" % (lower, upper), j(work, "nomp"))
    assert r.returncode == 1
    assert "mount point %s: No such file or directory" % j(work, "nomp") in r.err


def test_subcommands_and_help_unaffected(work):
    r = ovlfs("--help")
    assert r.returncode == 0 and "lowerdir=" in r.out and "commands:" in r.out
    r = ovlfs("--version")
    assert r.returncode == 0 and r.out.startswith("ovlfs ")
    r = ovlfs("frobnicate", work)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.err
    r = ovlfs("--frob")
    assert r.returncode == 2 and "unknown option '--frob'" in r.err
    r = ovlfs("-o", "lowerdir=x", "-h")
    assert r.returncode == 0 and "usage: ovlfs [-f] [-d] -o lowerdir=" in r.out


def test_debug_stays_in_foreground(work):
    """-d: request traces on stderr and, as with libfuse, in the foreground
    until unmounted."""
    lower, upper, wd, mp = layers(work)
    errf = j(work, "stderr")
    o = CompatOverlay(lower, upper, mp, [])
    with open(errf, "wb") as ef:
        p = subprocess.Popen([OVLFS, "-d", "-o", "lowerdir=%s,upperdir=%s"
                              % (lower, upper), mp],
                             stdout=subprocess.DEVNULL, stderr=ef)
    try:
        from conftest import _LIVE, _LIVE_LOCK
        with _LIVE_LOCK:
            _LIVE.append(o)
        assert wait_for(lambda: o.mounted or p.poll() is not None, 30)
        assert p.poll() is None, "ovlfs -d did not stay in the foreground"
        assert open(j(mp, "f")).read() == "lower f\n"
        o.umount()
        assert p.wait(30) == 0
        err = open(errf).read()
        assert "unique:" in err and "LOOKUP" in err, err[-2000:]
    finally:
        if p.poll() is None:
            o.cleanup()
            p.kill()
            p.wait()


# --------------------------------------------------------------------------
# several lowers and read-only mounts through the compat syntax
# --------------------------------------------------------------------------

def mount_checked(o):
    r = o.mount(check=False)
    assert r.returncode == 0, r.err
    return r


def test_several_lowers(work):
    a, b, upper, mp = (j(work, n) for n in ("a", "b", "upper", "mnt"))
    for d in (a, b, upper, mp):
        os.mkdir(d)
    build(a, {"both": "from a\n", "only_a": "a\n"})
    build(b, {"both": "from b\n", "only_b": "b\n", "d": {"x": "x\n"}})
    before = snapshot(b, mtime=True)
    o = CompatOverlay(a, upper, mp, [
        "-o", "lowerdir=%s:%s,upperdir=%s" % (a, b, upper), mp])
    mount_checked(o)
    assert sorted(os.listdir(mp)) == ["both", "d", "only_a", "only_b"]
    assert open(j(mp, "both")).read() == "from a\n"
    with open(j(mp, "d", "x"), "a") as f:
        f.write("y\n")
    assert open(j(upper, "d", "x")).read() == "x\ny\n"
    assert snapshot(b, mtime=True) == before
    o.umount()


def test_no_upperdir_is_read_only(work):
    lower, mp = j(work, "lower"), j(work, "mnt")
    os.mkdir(lower)
    os.mkdir(mp)
    build(lower, {"f": "f\n"})
    before = snapshot(lower, mtime=True)
    o = CompatOverlay(lower, j(work, "unused"), mp,
                      ["-o", "lowerdir=" + lower, mp])
    mount_checked(o)
    assert open(j(mp, "f")).read() == "f\n"
    with pytest.raises(OSError) as ei:
        open(j(mp, "g"), "w")
    assert ei.value.errno == errno.EROFS
    o.umount()
    assert snapshot(lower, mtime=True) == before
    assert sorted(os.listdir(work)) == ["lower", "mnt"]


# --------------------------------------------------------------------------
# through mount(8), in a private mount namespace
# --------------------------------------------------------------------------

# Runs as root in the namespace: bind our bin dir over /usr/local/sbin, run
# the mount command given, report what the mount shows and which daemon
# serves it, unmount it the way given, and report whether the daemon left.
NS_SCRIPT = r'''
import json, os, subprocess, sys, time
bindir, mp, how_umount = sys.argv[1:4]
mount_cmd = sys.argv[4:]
out = {"pids": []}
def daemons():
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) == b"ovlfs" and os.fsencode(mp) in argv:
            pids.append(int(d))
    return pids
def mounted():
    return any(l.split()[1] == mp for l in open("/proc/self/mounts"))
try:
    subprocess.run(["mount", "--bind", bindir, "/usr/local/sbin"], check=True)
    r = subprocess.run(mount_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    out["rc"] = r.returncode
    out["err"] = r.stderr.decode(errors="replace")
    out["mounted"] = mounted()
    out["fstype"] = [l.split()[2] for l in open("/proc/self/mounts")
                     if l.split()[1] == mp]
    out["pids"] = daemons()
    if out["mounted"]:
        out["f"] = open(os.path.join(mp, "f")).read()
        with open(os.path.join(mp, "f"), "a") as f:
            f.write("more\n")
        with open(os.path.join(mp, "new"), "w") as f:
            f.write("new\n")
        r = subprocess.run(how_umount.split() + [mp], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        out["umount_rc"] = r.returncode
        out["umount_err"] = r.stderr.decode(errors="replace")
        out["mounted_after"] = mounted()
        end = time.monotonic() + 20
        while time.monotonic() < end and any(
                os.path.exists("/proc/%d" % p) for p in out["pids"]):
            time.sleep(0.05)
        out["daemon_left"] = not any(os.path.exists("/proc/%d" % p)
                                     for p in out["pids"])
finally:
    if mounted():
        subprocess.run(["umount", "-l", mp])
    print(json.dumps(out))
'''


def in_namespace(work, script, args):
    """Run SCRIPT with ARGS in a new private mount namespace; its JSON."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1)")
    r = run(["unshare", "--mount", "--propagation", "private", sys.executable,
             "-c", script] + list(args), timeout=120)
    assert r.returncode == 0, r.err
    return json.loads(r.out.strip().splitlines()[-1])


def kill_leftovers(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mount8(work, how_umount, mount_cmd):
    lower, upper, wd, mp = layers(work)
    before = snapshot(lower, mtime=True)
    bindir = j(work, "bin")
    os.mkdir(bindir)
    os.symlink(OVLFS, j(bindir, "ovlfs"))
    res = None
    try:
        res = in_namespace(work, NS_SCRIPT, [
            bindir, mp, how_umount] + [a.format(lower=lower, upper=upper,
                                                work=wd, mp=mp,
                                                dir=work)
                                       for a in mount_cmd])
        assert res["rc"] == 0, res["err"]
        assert res["mounted"] and res["fstype"] == ["fuse.ovlfs"], res
        assert len(res["pids"]) == 1, res
        assert res["f"] == "lower f\n"
        assert res["umount_rc"] == 0, res["umount_err"]
        assert not res["mounted_after"]
        assert res["daemon_left"], "the daemon still runs after the unmount"
    finally:
        if res:
            kill_leftovers(res["pids"])
    assert open(j(upper, "f")).read() == "lower f\nmore\n"
    assert open(j(upper, "new")).read() == "new\n"
    assert snapshot(lower, mtime=True) == before


@needs_root
def test_mount_t_fuse_ovlfs(work):
    mount8(work, "umount", [
        "mount", "-t", "fuse.ovlfs", "ovlfs", "{mp}",
        "-o", "lowerdir={lower},upperdir={upper},workdir={work}"])


@needs_root
def test_fstab_line(work):
    fstab = j(work, "fstab")
    mp = j(work, "mnt")
    with open(fstab, "w") as f:
        f.write("# test\novlfs %s fuse.ovlfs lowerdir=%s,upperdir=%s,"
                "workdir=%s,nofail,x-test=1 0 0\n" % (
                    mp, j(work, "lower"), j(work, "upper"), j(work, "work")))
    mount8(work, "fusermount3 -u", ["mount", "--fstab", fstab, "{mp}"])
