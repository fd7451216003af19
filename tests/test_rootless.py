"""Rootless: a non-root user (uid 4242) mounts through fusermount3, with
`ovlfs mount` and the fuse-overlayfs syntax, in both upper formats, also as
root of a user namespace (`unshare -Urm`), and changes, remounts, commits and
discards as that user (docs/containers.md, "Rootless").

/dev/fuse is 0600 here, so each run happens in a private mount namespace
(unshare -m, as root) where a 0666 node of the same device is bound over
/dev/fuse and a copy of /etc/passwd naming uid 4242 over /etc/passwd
(fusermount3 wants a user name); then setpriv drops to the user, who runs
tests/rootless_user.py. Nothing of the host is changed. The private
namespace's mounts die with it; its daemons are found by their command
line (which holds this test's own directory) and ended if still there.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time

import pytest

from conftest import OVLFS, F, build, pids_naming, run

UID = GID = 4242
HERE = os.path.dirname(os.path.abspath(__file__))
USER_SCRIPT = os.path.join(HERE, "rootless_user.py")
PY = "/usr/bin/python3"

# Runs as root inside `unshare -m`: the device node, passwd, then the user.
WRAPPER = r'''
import os, subprocess, sys
home, cmd = sys.argv[1], sys.argv[2:]
node = os.path.join(home, "..", "fuse")
if os.path.exists(node):
    os.unlink(node)
os.mknod(node, 0o20666, os.makedev(10, 229))
os.chmod(node, 0o666)
subprocess.run(["mount", "--bind", node, "/dev/fuse"], check=True)
for name, line in (("passwd", "ovlfsrl:x:%d:%d::/nonexistent:/usr/sbin/nologin\n"),
                   ("group", "ovlfsrl:x:%d:\n")):
    copy = os.path.join(home, "..", name)
    with open("/etc/" + name) as f, open(copy, "w") as g:
        g.write(f.read() + line.replace("%d", "4242"))
    os.chmod(copy, 0o644)
    subprocess.run(["mount", "--bind", copy, "/etc/" + name], check=True)
r = subprocess.run(cmd, timeout=240)
sys.exit(r.returncode)
'''


def fuse_ok():
    f = shutil.which("fusermount3")
    if not f:
        return "fusermount3 is not installed (Debian package fuse3)"
    st = os.stat(f)
    if not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
        return "%s is not setuid root" % f
    if os.geteuid() != 0:
        return "the test needs root to set up the user's namespace"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    return None


def userns_ok():
    r = run(["unshare", "-Urm", "true"])
    if r.returncode != 0:
        return "user namespaces are not available: %s" % r.err.strip()
    return None


def our_daemons(top):
    """Pids of ovlfs processes whose command line names our directory TOP."""
    return pids_naming(top)


def end_daemons(top):
    """After a run: a daemon still there is ours and stuck; end it."""
    for _ in range(50):
        if not our_daemons(top):
            return []
        time.sleep(0.1)
    left = our_daemons(top)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def as_user(top, home, cfg, userns):
    """Run the user script in a private mount namespace as uid 4242
    (inside `unshare -Urm` if USERNS); its JSON output."""
    cmd = ["setpriv", "--reuid=%d" % UID, "--regid=%d" % GID,
           "--clear-groups"]
    if userns:
        cmd += ["unshare", "-Urm"]
    cmd += [PY, USER_SCRIPT, json.dumps(cfg)]
    try:
        r = run(["unshare", "-m", "--propagation", "private", PY, "-c",
                 WRAPPER, home] + cmd, timeout=300)
    finally:
        stuck = end_daemons(top)
    assert not stuck, "ovlfs daemons left running (ended): %r" % stuck
    assert r.returncode == 0, "rootless run failed (%d): %s%s" % (
        r.returncode, r.out, r.err)
    return json.loads(r.out)


# In a user namespace, root's files (uid 0 outside, unmapped inside) show
# as the overflow uid on a plain directory and through the mount alike, but
# a FUSE mount's inodes take their owners through the mounter's namespace,
# so the kernel holds them as invalid ids and its VFS refuses changes to
# them with its own errnos before any request reaches ovlfs (as for
# fuse-overlayfs): may_delete and notify_change say EOVERFLOW,
# xattr_permission EPERM.
USERNS_UNMAPPED = {
    "unlink in root's dir": "EOVERFLOW",
    "chmod root's file": "EOVERFLOW",
    "set user on root's": "EPERM",
}

LOWER_SPEC = {
    "f": "a\n", "gone": "g\n", "xa": F("x\n", xattrs={"user.a": "1"}),
    "d": {"x": "x\n", "sub": {"y": "y\n"}},
    "e": {"z": "z\n"},
    "ro": {"r": "r\n"},
    "rootonly": F("secret\n", mode=0o600, uid=0, gid=0),
    "rootdir": {"file": F("rf\n", mode=0o644, uid=0, gid=0)},
}


def make_home(work):
    """HOME (the user's) with lower and a plain copy, both from LOWER_SPEC."""
    top = os.path.join(work, "t")
    home = os.path.join(top, "home")
    os.makedirs(home)
    os.chmod(top, 0o755)
    for name in ("lower", "plain"):
        d = os.path.join(home, name)
        os.mkdir(d)
        build(d, LOWER_SPEC)
    for name in ("upper", "mnt", "work"):
        os.mkdir(os.path.join(home, name))
    subprocess.run(["chown", "-R", "%d:%d" % (UID, GID), home], check=True)
    for base in ("lower", "plain"):
        b = os.path.join(home, base)
        os.chown(os.path.join(b, "rootonly"), 0, 0)
        os.chown(os.path.join(b, "rootdir"), 0, 0)
        os.chown(os.path.join(b, "rootdir", "file"), 0, 0)
        os.chmod(os.path.join(b, "ro"), 0o555)
    return top, home


def xattr_names(root):
    names = set()
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files + ["."]:
            p = os.path.join(dirpath, n)
            try:
                names.update(os.listxattr(p, follow_symlinks=False))
            except OSError:
                pass
    return names


def kernel_view(work, home):
    """The kernel overlayfs's read-only view of lower+upper in userxattr mode
    (as root, in a namespace of its own), for the kernel format."""
    mp = os.path.join(work, "kview")
    os.mkdir(mp)
    # rootless_user reads a config at import: give it a harmless one
    cfgs = json.dumps({"home": home, "ovlfs": OVLFS, "syntax": "mount",
                       "fmt": "kernel", "phase": "mount", "userns": False})
    code = r'''
import json, subprocess, sys
home, mp, cfgs = sys.argv[1:4]
sys.argv = ["rootless_user", cfgs]
sys.path.insert(0, %r)
import rootless_user
r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    "ro,userxattr,lowerdir=%%s/upper:%%s/lower" %% (home, home), mp])
if r.returncode:
    print(json.dumps(None))
    sys.exit(0)
try:
    print(json.dumps(rootless_user.snapshot(mp)))
finally:
    subprocess.run(["umount", mp])
''' % HERE
    r = run(["unshare", "-m", "--propagation", "private", PY, "-c", code,
             home, mp, cfgs], timeout=60)
    assert r.returncode == 0, r.err
    return json.loads(r.out)


def comparable(snap, ids=True):
    """Snapshot entries without owners (the kernel's view shows the host's)."""
    if ids:
        return snap
    return {k: v[:2] + v[4:] for k, v in snap.items()}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("userns", [False, True], ids=["user", "userns"])
@pytest.mark.parametrize("syntax", ["mount", "compat"])
@pytest.mark.parametrize("fmt", ["oci", "kernel"])
def test_rootless(work, fmt, syntax, userns):
    why = fuse_ok() or (userns and userns_ok())
    if why:
        pytest.skip(why)
    top, home = make_home(work)
    cfg = {"home": home, "ovlfs": OVLFS, "syntax": syntax, "fmt": fmt,
           "phase": "mount", "userns": userns}
    res = as_user(top, home, cfg, userns)
    assert res["euid"] == (0 if userns else UID)

    # every change, refusal and errno as on a plain directory, but where
    # the VFS refuses otherwise on FUSE (see USERNS_UNMAPPED)
    want = [[n, USERNS_UNMAPPED.get(n, v) if userns else v]
            for n, v in res["plain_ops"]]
    diff = [(a, b) for a, b in zip(res["ops"], want) if a != b]
    assert not diff and len(res["ops"]) == len(want)
    assert dict(res["ops"])["set trusted.k"] == "EPERM"
    assert dict(res["ops"])["read root's 0600 file"] == "EACCES"
    assert dict(res["ops"])["create in root's dir"] == "EACCES"
    assert res["snap"] == res["plain_snap"]
    # the user unmounted it, and it mounts again the same
    assert res["umount"][0] == 0 and res["unmounted"], res["umount"]
    assert res["umount2"][0] == 0 and res["unmounted2"], res["umount2"]
    assert res["snap_again"] == res["snap"]
    # persistent inode numbers survive the remount, copied-up ones too
    assert res["inos_again"] == res["inos"]
    assert len(res["inos"]) >= 10
    # passthrough needs CAP_SYS_ADMIN: off, said in the log, all else works
    assert "INFO passthrough off: it needs CAP_SYS_ADMIN" in res["log"], res["log"]
    assert ("user namespace" in res["log"]) == userns
    assert "ERROR" not in res["log"] and "WARNING" not in res["log"], res["log"]

    upper = os.path.join(home, "upper")
    names = xattr_names(upper)
    assert not [n for n in names if n.startswith("trusted.")], names
    if fmt == "kernel":
        st = os.lstat(os.path.join(upper, "gone"))
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert os.getxattr(os.path.join(upper, "e"), "user.overlay.opaque") == b"y"
        assert not os.path.exists(os.path.join(upper, ".wh.gone"))
        # the kernel's overlayfs reads the same upper (userxattr mode)
        kv = kernel_view(work, home)
        if kv is None:
            pytest.fail("mount -t overlay -o userxattr refused the upper")
        ours = comparable(res["snap"], ids=False)
        theirs = comparable(kv, ids=False)
        # root reads what the user may not
        for k in [k for k, v in ours.items() if "EACCES" in v]:
            theirs[k] = ours[k]
        assert theirs == ours
    else:
        assert os.path.isfile(os.path.join(upper, ".wh.gone"))
        assert os.path.isfile(os.path.join(upper, "e", ".wh..wh..opq"))

    # commit and discard, as the user
    cfg["phase"] = "finish"
    fin = as_user(top, home, cfg, userns)
    assert fin["diff"][0] == 0 and "gone" in fin["diff"][1], fin["diff"]
    assert fin["export"][0] == 0, fin["export"]
    with tarfile.open(os.path.join(home, "layer.tar")) as tf:
        assert ".wh.gone" in tf.getnames() and "e/.wh..wh..opq" in tf.getnames()
    assert fin["commit"][0] == 0, fin["commit"]
    assert fin["lower_snap"] == res["snap"]
    assert not fin["upper_left"]
    assert fin["umount"][0] == 0, fin["umount"]
    assert fin["discard"][0] == 0, fin["discard"]
    assert fin["after_discard"] == res["snap"]
    assert not fin["upper_after_discard"]


def test_userns_without_mount_namespace(work):
    """`unshare -Ur` alone: fusermount3 is not setuid in a user namespace
    and mount(2) needs a mount namespace owned by it; the refusal says so."""
    why = fuse_ok() or userns_ok()
    if why:
        pytest.skip(why)
    top, home = make_home(work)
    code = r'''
import subprocess, sys
r = subprocess.run([sys.argv[1], "mount", "--upper", sys.argv[2] + "/upper",
                    sys.argv[2] + "/lower", sys.argv[2] + "/mnt"],
                   stderr=subprocess.PIPE, timeout=60)
sys.stdout.write("%d\n%s" % (r.returncode, r.stderr.decode()))
'''
    cmd = ["setpriv", "--reuid=%d" % UID, "--regid=%d" % GID, "--clear-groups",
           "unshare", "-Ur", PY, "-c", code, OVLFS, home]
    try:
        r = run(["unshare", "-m", "--propagation", "private", PY, "-c",
                 WRAPPER, home] + cmd, timeout=120)
    finally:
        stuck = end_daemons(top)
    assert not stuck
    assert r.returncode == 0, r.err
    rc, err = r.out.split("\n", 1)
    assert rc == "1", r.out
    assert "a FUSE mount needs a mount namespace of its own" in err, err
    assert "unshare -Urm" in err
