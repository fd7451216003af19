"""Security: permission checks for other users (allow_other, compared with
a plain directory), no access without allow_other, no escape from the
layers through symlinks (also while a path component is being swapped),
and mounting as an unprivileged user."""

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from conftest import (CHILD_PRELUDE, IS_ROOT, OVLFS, Overlay, F, D, L, build, cp_a, run, ovlfs,
                      snapshot, assert_same_tree, is_fuse_mounted, mounts_under,
                      wait_for, RENAME_EXCHANGE, renameat2)

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to switch users")

UID = GID = 4242
OTHER = 5555
AS_USER = ["setpriv", "--reuid=%d" % UID, "--regid=%d" % GID, "--clear-groups"]


def j(*p):
    return os.path.join(*p)


# --------------------------------------------------------------------------
# another user under allow_other: exactly what the modes allow
# --------------------------------------------------------------------------

TREE = {
    "cu": D({"root644": F("r\n", mode=0o644), "root600": F("s\n", mode=0o600),
             "root666": F("w\n", mode=0o666),
             "user600": F("u\n", mode=0o600, uid=UID, gid=GID),
             "usergrp": F("g\n", mode=0o664, uid=UID, gid=OTHER),
             "other": F("o\n", mode=0o644, uid=OTHER, gid=OTHER)}, mode=0o755),
    "wh": D({"gone": F("g\n", uid=UID, gid=GID), "gone2": "g2\n", "keep": "k\n",
             "sub": D({"x": "x"}, mode=0o777)}, mode=0o777),
    "whroot": D({"gone": "g\n", "keep": "k\n"}, mode=0o755),
    "sticky": D({"rootf": F("r", mode=0o666), "userf": F("u", uid=UID, gid=GID),
                 "otherf": F("o", uid=OTHER, gid=OTHER, mode=0o666),
                 "userdir": D({}, uid=UID, gid=GID)}, mode=0o1777),
    "sgid": D({"inner": D({}, mode=0o2777, gid=OTHER)}, mode=0o2777, gid=OTHER),
    "mine": D({"f": F("f", uid=UID, gid=GID)}, uid=UID, gid=GID, mode=0o755),
    "closed": D({"f": "f"}, mode=0o711),
}

PREP = [
    # copy-ups of every kind of file (metadata unchanged: utime to itself)
    "cu/root644", "cu/root600", "cu/root666", "cu/user600", "cu/usergrp", "cu/other",
    "sticky/rootf", "sticky/userf", "sticky/otherf", "mine/f", "closed/f",
]

CHILD = (CHILD_PRELUDE + r'''
def read(p):
    with open(p, "rb") as f:
        return f.read().decode()
for n in ("root644", "root600", "root666", "user600", "usergrp", "other"):
    p = P("cu", n)
    t("read " + n, lambda: read(p))
    t("write " + n, lambda: write(p))
    t("truncate " + n, lambda: os.truncate(p, 1))
    t("chmod " + n, lambda: (os.chmod(p, 0o640), st(p))[1])
    t("chmod g+s " + n, lambda: (os.chmod(p, 0o2755), st(p))[1])
    t("chown self " + n, lambda: (os.chown(p, %(uid)d, -1), st(p))[1])
    t("chgrp own group " + n, lambda: (os.chown(p, -1, %(gid)d), st(p))[1])
    t("chgrp foreign group " + n, lambda: os.chown(p, -1, 0))
    t("chown root " + n, lambda: os.chown(p, 0, -1))
    t("setxattr user " + n, lambda: os.setxattr(p, "user.sec", b"1"))
    t("setxattr trusted " + n, lambda: os.setxattr(p, "trusted.sec", b"1"))
    t("setxattr security " + n, lambda: os.setxattr(p, "security.sec", b"1"))
    t("utime now " + n, lambda: os.utime(p))
    t("utime set " + n, lambda: os.utime(p, (5, 5)))
    t("access " + n, lambda: [os.access(p, m) for m in (os.R_OK, os.W_OK, os.X_OK)])
t("create in cu", lambda: write(P("cu", "new"), flags=os.O_CREAT | os.O_WRONLY))
t("unlink in cu", lambda: os.unlink(P("cu", "root644")))
t("rename in cu", lambda: os.rename(P("cu", "user600"), P("cu", "moved")))
# directories with whiteouts
t("list wh", lambda: sorted(os.listdir(P("wh"))))
t("stat wh/gone", lambda: st(P("wh", "gone")))
t("open wh/gone", lambda: read(P("wh", "gone")))
t("recreate wh/gone", lambda: (write(P("wh", "gone"), b"again", os.O_CREAT | os.O_EXCL | os.O_WRONLY), st(P("wh", "gone")))[1])
t("mkdir over whiteout", lambda: (os.mkdir(P("wh", "gone2")), os.listdir(P("wh", "gone2")))[1])
t("rename keep over whiteout", lambda: os.rename(P("wh", "keep"), P("wh", "sub")))
t("rename into deleted dir", lambda: os.rename(P("wh", "gone"), P("wh", "sub", "x")))
t("list wh after", lambda: sorted(os.listdir(P("wh"))))
t("list whroot", lambda: sorted(os.listdir(P("whroot"))))
t("recreate whroot/gone", lambda: write(P("whroot", "gone"), b"x", os.O_CREAT | os.O_WRONLY))
t("unlink whroot/keep", lambda: os.unlink(P("whroot", "keep")))
# sticky
t("sticky unlink rootf", lambda: os.unlink(P("sticky", "rootf")))
t("sticky unlink otherf", lambda: os.unlink(P("sticky", "otherf")))
t("sticky write otherf", lambda: write(P("sticky", "otherf")))
t("sticky rename otherf", lambda: os.rename(P("sticky", "otherf"), P("sticky", "stolen")))
t("sticky rename own over rootf", lambda: os.rename(P("sticky", "userf"), P("sticky", "rootf")))
t("sticky rename own", lambda: os.rename(P("sticky", "userf"), P("sticky", "userf2")))
t("sticky rmdir own", lambda: os.rmdir(P("sticky", "userdir")))
t("sticky create", lambda: (write(P("sticky", "mynew"), flags=os.O_CREAT | os.O_WRONLY), st(P("sticky", "mynew")))[1])
t("sticky unlink own new", lambda: os.unlink(P("sticky", "mynew")))
t("sticky chmod dir", lambda: os.chmod(P("sticky"), 0o777))
t("sticky move otherf out", lambda: os.rename(P("sticky", "otherf"), P("wh", "otherf")))
# setgid
t("sgid create", lambda: (write(P("sgid", "f"), flags=os.O_CREAT | os.O_WRONLY), st(P("sgid", "f")))[1])
t("sgid mkdir", lambda: (os.mkdir(P("sgid", "d"), 0o755), st(P("sgid", "d")))[1])
t("sgid nested create", lambda: (write(P("sgid", "inner", "f"), flags=os.O_CREAT | os.O_WRONLY), st(P("sgid", "inner", "f")))[1])
t("sgid chmod g+s own", lambda: (os.chmod(P("sgid", "f"), 0o2755), st(P("sgid", "f")))[1])
t("sgid chgrp own to own group", lambda: (os.chown(P("sgid", "f"), -1, %(gid)d), st(P("sgid", "f")))[1])
t("sgid mkfifo", lambda: (os.mkfifo(P("sgid", "ff")), st(P("sgid", "ff")))[1])
t("sgid symlink", lambda: (os.symlink("t", P("sgid", "sl")), st(P("sgid", "sl")))[1])
# own dir, closed dir
t("mine chmod", lambda: (os.chmod(P("mine"), 0o700), st(P("mine")))[1])
t("mine f setxattr", lambda: (os.setxattr(P("mine", "f"), "user.k", b"v"), os.getxattr(P("mine", "f"), "user.k").decode())[1])
t("mine f removexattr", lambda: os.removexattr(P("mine", "f"), "user.k"))
t("closed list", lambda: os.listdir(P("closed")))
t("closed read f", lambda: read(P("closed", "f")))
t("closed stat f", lambda: st(P("closed", "f")))
t("closed create", lambda: write(P("closed", "n"), flags=os.O_CREAT | os.O_WRONLY))
t("link root600", lambda: os.link(P("cu", "root600"), P("wh", "hard")))
t("link own", lambda: os.link(P("mine", "f"), P("wh", "hard2")))
print(json.dumps(res))
''') % {"uid": UID, "gid": GID}


def run_as_user(root):
    r = subprocess.run([sys.executable, "-c", CHILD, root], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_other_user_allow_other(scenario):
    sc = scenario(TREE, opts="allow_other")
    # as root: copy everything in PREP up (a no-op utime), delete some
    # entries so directories carry whiteouts
    for rel in PREP:
        sc.both(lambda r: os.utime(j(r, rel), ns=(os.stat(j(r, rel)).st_atime_ns,
                                                  os.stat(j(r, rel)).st_mtime_ns)))
    for rel in ("wh/gone", "wh/gone2", "whroot/gone", "wh/sub/x"):
        sc.both(lambda r: os.unlink(j(r, rel)))
    sc.both(lambda r: os.rmdir(j(r, "wh/sub")))
    sc.both(lambda r: os.mkdir(j(r, "wh/sub"), 0o777))
    sc.both(lambda r: os.chmod(j(r, "wh/sub"), 0o777))
    assert [n for n in os.listdir(sc.u("wh")) if n.startswith(".wh.")]
    exp = run_as_user(sc.oracle)
    got = run_as_user(sc.mnt)
    assert [g[0] for g in got] == [e[0] for e in exp]
    diffs = ["%s: mount %r, plain directory %r" % (e[0], g[1:], e[1:])
             for g, e in zip(got, exp) if g != e]
    assert not diffs, "\n".join(diffs)
    sc.check()
    sc.remount()
    sc.check()


def test_no_allow_other_keeps_others_out(overlay):
    o = overlay({"pub": F("p\n", mode=0o644), "d": D({"x": "x"}, mode=0o777)})
    os.chmod(o.mp, 0o755)
    code = r'''
import errno, os, sys
os.setgroups([]); os.setgid(%d); os.setuid(%d)
mp = sys.argv[1]
out = []
for fn, a in ((os.stat, mp), (os.listdir, mp), (os.stat, mp + "/pub"),
              (lambda p: open(p).read(), mp + "/pub"),
              (lambda p: open(p, "w").close(), mp + "/d/new"),
              (os.chdir, mp)):  # statfs: the kernel answers a stub itself
    try:
        fn(a)
        out.append("ok")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
print(" ".join(out))
''' % (GID, UID)
    r = subprocess.run([sys.executable, "-c", code, o.mp], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    res = r.stdout.decode().split()
    assert all(x in ("EACCES", "EPERM") for x in res), res
    assert not os.path.exists(j(o.upper, "d", "new"))


# --------------------------------------------------------------------------
# no escape from the layers
# --------------------------------------------------------------------------

class Canary:
    """A directory outside both layers, with a file; /etc is watched too."""

    def __init__(self, work):
        self.dir = j(work, "canary")
        os.mkdir(self.dir)
        build(self.dir, {"file": F("canary\n", mode=0o640), "sub": {"deep": "deep\n"},
                         "x": {"upfile": "canary upfile\n"}})
        os.setxattr(j(self.dir, "file"), "user.canary", b"1")
        self.before = snapshot(self.dir, mtime=True, ctime=True, atime=False,
                               root_attrs=True)
        self.etc = os.stat("/etc")
        self.work = work
        self.work_names = None

    def check(self, what=""):
        assert_same_tree(snapshot(self.dir, mtime=True, ctime=True, root_attrs=True),
                         self.before, "canary after %s" % what, "canary before")
        st = os.stat("/etc")
        assert (st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid) == \
            (self.etc.st_mtime_ns, self.etc.st_ctime_ns, self.etc.st_mode,
             self.etc.st_uid), "/etc changed after %s" % what


LINK_NAMES = ["up", "root", "etc", "canabs", "canrel", "canfile"]


def escape_lower(work, canary):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"plain": "p\n"})
    targets = {"up": "..", "root": "/", "etc": "/etc", "canabs": canary.dir,
               "canrel": "../canary", "canfile": j(canary.dir, "file")}
    for n, t in targets.items():
        os.symlink(t, j(lower, n))
        os.symlink(t, j(lower, "l_" + n))          # without an upper twin
    os.mkdir(j(lower, "deep"))
    os.symlink("../../canary", j(lower, "deep", "c"))
    return lower


def test_no_escape_through_mount(work):
    canary = Canary(work)
    lower = escape_lower(work, canary)
    upper = j(work, "upper")
    os.mkdir(upper)
    # upper directories with the same names as the lower symlinks
    for n in LINK_NAMES + ["x"]:
        os.mkdir(j(upper, n))
        with open(j(upper, n, "upfile"), "w") as f:
            f.write("upper %s\n" % n)
    o = Overlay(lower, upper=upper, mp=j(work, "mnt"))
    o.mount()
    m = o.mp
    for n in LINK_NAMES:
        d = j(m, n)
        # an upper directory over a lower symlink: only the upper's children
        assert stat.S_ISDIR(os.lstat(d).st_mode), n
        assert sorted(os.listdir(d)) == ["upfile"], (n, os.listdir(d))
        p = j(d, "upfile")
        with open(p, "a") as f:
            f.write("more\n")
        os.chmod(p, 0o600)
        os.chown(p, 1234, 1234)
        os.setxattr(p, "user.t", b"1")
        os.truncate(p, 3)
        os.utime(p, (7, 7))
        with open(j(d, "file"), "w") as f:        # canary has "file"
            f.write("new\n")
        os.mkdir(j(d, "sub"))                      # canary has "sub"
        os.unlink(j(d, "file"))
        os.rmdir(j(d, "sub"))
        os.rename(p, j(d, "renamed"))
        os.chmod(d, 0o700)
        os.utime(d, (8, 8))
        os.setxattr(d, "user.d", b"1")
        canary.check("ops in %s/" % n)
    # the lower symlinks without an upper twin: metadata ops on the link
    # itself (no following) copy up the link, never its target
    for n in LINK_NAMES:
        p = j(m, "l_" + n)
        assert os.readlink(p) == os.readlink(j(lower, "l_" + n))
        os.chown(p, 1234, 1234, follow_symlinks=False)
        try:
            os.setxattr(p, "trusted.t", b"1", follow_symlinks=False)
        except OSError as e:
            assert e.errno in (errno.EPERM, errno.ENOTSUP), e
        os.utime(p, (9, 9), follow_symlinks=False)
        os.rename(p, j(m, "moved_" + n))
        assert os.readlink(j(m, "moved_" + n)) == os.readlink(j(lower, "l_" + n))
        os.unlink(j(m, "moved_" + n))
        canary.check("ops on link l_%s" % n)
    # a lower directory and an upper symlink with the same name: the
    # merged entry is the symlink; lower children never show through it
    os.symlink(canary.dir, j(upper, "deepx"))
    # relative symlink inside a lower directory
    assert os.readlink(j(m, "deep", "c")) == "../../canary"
    os.chown(j(m, "deep", "c"), 1, 1, follow_symlinks=False)
    canary.check("ops on deep/c")
    o.umount()
    # commit and discard of this upper never write outside
    r = ovlfs("diff", "--upper", upper, lower)
    assert r.returncode == 0, r.err
    canary.check("diff")
    r = ovlfs("commit", "--quiet", "--upper", upper, lower)
    assert r.returncode == 0, r.err
    canary.check("commit")
    for n in LINK_NAMES:
        assert stat.S_ISDIR(os.lstat(j(lower, n)).st_mode), n   # type change
        assert sorted(os.listdir(j(lower, n))) == ["renamed"], n


def commit_escape_pair(work, canary):
    """A lower full of symlinks out, an upper that deletes, makes opaque,
    and writes below each of their names."""
    lower = escape_lower(work, canary)
    upper = j(work, "upper")
    os.mkdir(upper)
    for n in LINK_NAMES:
        os.mkdir(j(upper, n))
        with open(j(upper, n, "file"), "w") as f:        # canary has "file"
            f.write("upper\n")
        os.mkdir(j(upper, n, "sub"))                      # and "sub"
        with open(j(upper, n, ".wh.deep"), "w"):
            pass
    for n in LINK_NAMES:
        open(j(upper, ".wh.l_" + n), "w").close()        # delete the links
    os.mkdir(j(upper, "deep"))
    open(j(upper, "deep", ".wh..wh..opq"), "w").close()  # opaque over deep/c
    with open(j(upper, "deep", "c"), "w") as f:
        f.write("not a link\n")
    return lower, upper


@pytest.mark.parametrize("atomic", [False, True])
def test_no_escape_commit(work, atomic):
    canary = Canary(work)
    lower, upper = commit_escape_pair(work, canary)
    args = ["commit", "--quiet"] + (["--atomic"] if atomic else []) + \
        ["--upper", upper, lower]
    r = ovlfs(*args)
    assert r.returncode == 0, r.err
    canary.check("commit")
    for n in LINK_NAMES:
        assert not os.path.lexists(j(lower, "l_" + n))
        assert sorted(os.listdir(j(lower, n))) == ["file", "sub"]
    assert open(j(lower, "deep", "c")).read() == "not a link\n"


def test_no_escape_discard(work):
    canary = Canary(work)
    lower = j(work, "lower")
    os.mkdir(lower)
    upper = j(work, "upper")
    os.mkdir(upper)
    for n, t in (("up", ".."), ("root", "/"), ("etc", "/etc"), ("can", canary.dir),
                 ("canfile", j(canary.dir, "file"))):
        os.symlink(t, j(upper, n))
    os.mkdir(j(upper, "ro"))
    os.symlink(canary.dir, j(upper, "ro", "in"))
    os.symlink(j(canary.dir, "file"), j(upper, "ro", "f"))
    os.chmod(j(upper, "ro"), 0o500)                 # discard has to chmod it
    os.chmod(upper, 0o500)
    r = ovlfs("discard", "--quiet", "--upper", upper, lower)
    assert r.returncode == 0, r.err
    assert not os.path.lexists(upper)
    canary.check("discard")
    assert os.path.isdir(lower)


# --------------------------------------------------------------------------
# races: a path component swapped between a directory and a symlink out
# --------------------------------------------------------------------------

class Swapper:
    """Exchange A (a directory) and B (a symlink to the canary) in a loop."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.stop = threading.Event()
        self.count = 0
        self.t = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.is_set():
            try:
                renameat2(self.a, self.b, RENAME_EXCHANGE)
                self.count += 1
            except OSError:
                time.sleep(0.001)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(10)
        # leave the directory at A
        if os.path.islink(self.a):
            renameat2(self.a, self.b, RENAME_EXCHANGE)


N_RACE = 60


def race_canary(work):
    c = Canary(work)
    return c


def fill_race_dir(d, tag):
    os.mkdir(d)
    for i in range(N_RACE):
        with open(j(d, "f%02d" % i), "w") as f:
            f.write("%s %d\n" % (tag, i))


def canary_with_race_names(work):
    c = Canary.__new__(Canary)
    c.dir = j(work, "canary")
    os.mkdir(c.dir)
    for i in range(N_RACE):
        with open(j(c.dir, "f%02d" % i), "w") as f:
            f.write("canary %d\n" % i)
        os.chmod(j(c.dir, "f%02d" % i), 0o640)
    c.before = snapshot(c.dir, mtime=True, ctime=True, root_attrs=True)
    c.etc = os.stat("/etc")
    return c


def deep_mount_point(work):
    """The swapped symlinks are relative (../canary): inside a layer they
    reach WORK/canary, but seen through the mount (when the swap shows
    the merged `d` as a symlink and the kernel follows it for the caller,
    which is legitimate) they reach a decoy at WORK/m/n/canary."""
    os.makedirs(j(work, "m", "n", "canary"))
    for i in range(N_RACE):
        with open(j(work, "m", "n", "canary", "f%02d" % i), "w") as f:
            f.write("decoy\n")
    return j(work, "m", "n", "mnt")


def test_race_lower_component_during_copyup(work):
    canary = canary_with_race_names(work)
    lower = j(work, "lower")
    os.mkdir(lower)
    fill_race_dir(j(lower, "d"), "lower")
    os.symlink("../canary", j(lower, "alt"))
    o = Overlay(lower, upper=j(work, "upper"), mp=deep_mount_point(work))
    o.mount()
    with Swapper(j(lower, "d"), j(lower, "alt")) as sw:
        for i in range(N_RACE):
            p = j(o.mp, "d", "f%02d" % i)
            for fn in (lambda: open(p, "a").write("x"),
                       lambda: os.chmod(p, 0o600),
                       lambda: os.setxattr(p, "user.r", b"1"),
                       lambda: os.truncate(p, 1)):
                try:
                    fn()
                except OSError:
                    pass            # the lower changes under the mount: any errno
        assert sw.count > 0
    canary.check("copy-ups while swapping lower/d")


def test_race_upper_component_during_writes(work):
    canary = canary_with_race_names(work)
    lower = j(work, "lower")
    os.mkdir(lower)
    fill_race_dir(j(lower, "d"), "lower")
    upper = j(work, "upper")
    os.mkdir(upper)
    fill_race_dir(j(upper, "d"), "upper")
    os.symlink("../canary", j(upper, "alt"))
    o = Overlay(lower, upper=upper, mp=deep_mount_point(work))
    o.mount()
    with Swapper(j(upper, "d"), j(upper, "alt")) as sw:
        for i in range(N_RACE):
            p = j(o.mp, "d", "f%02d" % i)
            for fn in (lambda: open(p, "a").write("x"),
                       lambda: os.chmod(p, 0o600),
                       lambda: os.unlink(p),
                       lambda: open(p, "w").write("new")):
                try:
                    fn()
                except OSError:
                    pass
        assert sw.count > 0
    canary.check("writes while swapping upper/d")


@pytest.mark.parametrize("which", ["commit-lower", "commit-upper", "discard-upper"])
def test_race_finalize(work, which):
    canary = canary_with_race_names(work)
    lower = j(work, "lower")
    os.mkdir(lower)
    fill_race_dir(j(lower, "d"), "lower")
    upper = j(work, "upper")
    os.mkdir(upper)
    fill_race_dir(j(upper, "d"), "upper")
    for i in range(0, N_RACE, 3):
        os.unlink(j(upper, "d", "f%02d" % i))
        open(j(upper, "d", ".wh.f%02d" % i), "w").close()
    side = upper if which.endswith("upper") else lower
    os.symlink(canary.dir, j(side, "alt"))
    cmd = ["discard"] if which.startswith("discard") else ["commit"]
    with Swapper(j(side, "d"), j(side, "alt")) as sw:
        time.sleep(0.01)
        r = ovlfs(*cmd, "--quiet", "--upper", upper, lower, timeout=60)
    canary.check("%s while swapping %s/d (exit %d: %s)" % (
        cmd[0], side, r.returncode, r.err.strip()))


# --------------------------------------------------------------------------
# mounting as an unprivileged user
# --------------------------------------------------------------------------

@pytest.fixture
def named_user():
    """fusermount3 needs a name for the user: create one if uid 4242 has
    none (removed again afterwards)."""
    import pwd
    try:
        pwd.getpwuid(UID)
        yield
        return
    except KeyError:
        pass
    r = subprocess.run(["useradd", "-u", str(UID), "-M", "-N", "-d", "/nonexistent",
                        "-s", "/usr/sbin/nologin", "ovlfstest4242"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        pytest.skip("cannot create a user for uid %d: %s" % (UID, r.stdout.decode()))
    try:
        yield
    finally:
        subprocess.run(["userdel", "ovlfstest4242"])


def test_unprivileged_mount(work, named_user):
    home = j(work, "home")
    os.mkdir(home)
    lower = j(home, "lower")
    os.mkdir(lower)
    build(lower, {"mine": "m\n", "shared": F("s\n", mode=0o644),
                  "nomode": F("n\n", mode=0o000), "d": {"x": "x\n"}})
    upper = j(home, "upper")
    mp = j(home, "mnt")
    subprocess.run(["chown", "-R", "%d:%d" % (UID, GID), home], check=True)
    os.chown(j(lower, "shared"), 0, 0)
    lower_before = snapshot(lower, mtime=True, ctime=True)
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    o = Overlay(lower, upper=upper, mp=mp)
    try:
        r = run(AS_USER + [OVLFS, "mount", "--upper", upper, lower, mp], timeout=60)
        if r.returncode != 0 and ("fusermount" in r.err or "Operation not permitted"
                                  in r.err):
            pytest.skip("fusermount3 refuses an unprivileged mount here: %s" % r.err)
        assert r.returncode == 0, r.err
        with __import__("conftest")._LIVE_LOCK:
            __import__("conftest")._LIVE.append(o)
        assert is_fuse_mounted(mp)
        code = r'''
import errno, os, sys
mp = sys.argv[1]
out = {}
def t(name, fn):
    try:
        out[name] = ["ok", fn()]
    except OSError as e:
        out[name] = [errno.errorcode[e.errno]]
t("read mine", lambda: open(mp + "/mine").read())
t("append mine", lambda: open(mp + "/mine", "a").write("more\n"))
t("read shared", lambda: open(mp + "/shared").read())
t("write shared", lambda: open(mp + "/shared", "a").write("x"))
t("read nomode", lambda: open(mp + "/nomode").read())
t("create", lambda: open(mp + "/d/new", "w").write("new\n"))
t("unlink x", lambda: os.unlink(mp + "/d/x"))
t("chown root", lambda: os.chown(mp + "/mine", 0, 0))
t("stat new", lambda: [os.stat(mp + "/d/new").st_uid, os.stat(mp + "/d/new").st_gid])
import json
print(json.dumps(out))
'''
        r2 = run(AS_USER + [sys.executable, "-c", code, mp], timeout=60)
        assert r2.returncode == 0, r2.err
        res = json.loads(r2.out)
        exp = {"read mine": ["ok", "m\n"], "append mine": ["ok", 5],
               "read shared": ["ok", "s\n"], "write shared": ["EACCES"],
               "read nomode": ["EACCES"], "create": ["ok", 4],
               "unlink x": ["ok", None], "chown root": ["EPERM"],
               "stat new": ["ok", [UID, GID]]}
        assert res == exp
        # root cannot see into a mount made without allow_other? (root is
        # let in by FUSE only with allow_other) -- not asserted; the
        # user unmounts through fusermount3
        r3 = run(AS_USER + [OVLFS, "umount", mp], timeout=60)
        assert r3.returncode == 0, r3.err
        assert not is_fuse_mounted(mp)
    finally:
        os.chmod("/dev/fuse", fuse_mode)
        o.cleanup()
    assert open(j(upper, "mine")).read() == "m\nmore\n"
    assert open(j(upper, "d", "new")).read() == "new\n"
    assert os.path.exists(j(upper, "d", ".wh.x"))
    st = os.stat(j(upper, "d", "new"))
    assert (st.st_uid, st.st_gid) == (UID, GID)
    assert_same_tree(snapshot(lower, mtime=True, ctime=True), lower_before,
                     "lower after", "lower before")
