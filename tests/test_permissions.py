"""Permission checks and ownership of new files for a non-root caller
(mounted with allow_other; the caller is a child process with uid 4242)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import CHILD_PRELUDE, F, D, IS_ROOT

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to switch users")

UID = 4242
GID = 4242

TREE = {
    "pub": D({"rootfile": F("root\n", mode=0o644), "secret": F("s\n", mode=0o600),
              "mine": F("mine\n", uid=UID, gid=GID, mode=0o644),
              "exe": F("#!/bin/sh\n", mode=0o700),
              "suid": F("suid\n", mode=0o6777), "suid2": F("suid2\n", mode=0o6777),
              "suid3": F("suid3\n", mode=0o4777)}, mode=0o777),
    "sticky": D({"rootown": F("r", mode=0o666), "userown": F("u", uid=UID, gid=GID)},
                mode=0o1777),
    "closed": D({"x": "x"}, mode=0o700),
    "ro_dir": D({"f": F("f", mode=0o666)}, mode=0o755),
    "sgid": D({}, mode=0o2777, gid=5678),
    "userdir": D({"inner": "i"}, uid=UID, gid=GID, mode=0o755),
}

CHILD = (CHILD_PRELUDE + r'''
t("read rootfile", lambda: open(P("pub/rootfile")).read())
t("read secret", lambda: open(P("pub/secret")).read())
t("write rootfile", lambda: write(P("pub/rootfile")))
t("truncate rootfile", lambda: os.truncate(P("pub/rootfile"), 0))
t("write mine", lambda: write(P("pub/mine")))
t("create new", lambda: (write(P("pub/new"), flags=os.O_CREAT | os.O_WRONLY), st(P("pub/new")))[1])
t("mkdir nd", lambda: (os.mkdir(P("pub/nd"), 0o777), st(P("pub/nd")))[1])
t("symlink", lambda: (os.symlink("x", P("pub/sl")), st(P("pub/sl")))[1])
t("mkfifo", lambda: (os.mkfifo(P("pub/ff"), 0o666), st(P("pub/ff")))[1])
t("chmod mine", lambda: (os.chmod(P("pub/mine"), 0o600), st(P("pub/mine")))[1])
t("chmod rootfile", lambda: os.chmod(P("pub/rootfile"), 0o777))
t("chown mine to root", lambda: os.chown(P("pub/mine"), 0, 0))
t("chown rootfile", lambda: os.chown(P("pub/rootfile"), %(uid)d, %(gid)d))
t("utime now rootfile", lambda: os.utime(P("pub/rootfile")))
t("utime set rootfile", lambda: os.utime(P("pub/rootfile"), (1, 1)))
t("utime now mine", lambda: os.utime(P("pub/mine")))
t("utime now ro_dir/f (writable)", lambda: os.utime(P("ro_dir/f")))
t("xattr rootfile", lambda: os.setxattr(P("pub/rootfile"), "user.x", b"1"))
t("xattr mine", lambda: os.setxattr(P("pub/mine"), "user.x", b"1"))
t("exec access", lambda: [os.access(P("pub/exe"), m) for m in (os.R_OK, os.W_OK, os.X_OK)])
t("access secret", lambda: [os.access(P("pub/secret"), m) for m in (os.F_OK, os.R_OK, os.W_OK)])
t("access mine", lambda: [os.access(P("pub/mine"), m) for m in (os.R_OK, os.W_OK, os.X_OK)])
t("access dir", lambda: [os.access(P("ro_dir"), m) for m in (os.R_OK, os.W_OK, os.X_OK)])
t("rename mine", lambda: os.rename(P("pub/mine"), P("pub/mine2")))
t("unlink rootfile in 777 dir", lambda: os.unlink(P("pub/rootfile")))
t("unlink sticky rootown", lambda: os.unlink(P("sticky/rootown")))
t("rename sticky rootown", lambda: os.rename(P("sticky/rootown"), P("sticky/z")))
t("unlink sticky userown", lambda: os.unlink(P("sticky/userown")))
t("list closed", lambda: os.listdir(P("closed")))
t("stat closed/x", lambda: st(P("closed/x")))
t("create in ro_dir", lambda: write(P("ro_dir/n"), flags=os.O_CREAT | os.O_WRONLY))
t("unlink in ro_dir", lambda: os.unlink(P("ro_dir/f")))
t("write ro_dir/f (0666)", lambda: write(P("ro_dir/f")))
t("mkdir in ro_dir", lambda: os.mkdir(P("ro_dir/d")))
t("rmdir closed", lambda: os.rmdir(P("closed")))
t("create in sgid", lambda: (write(P("sgid/f"), flags=os.O_CREAT | os.O_WRONLY), st(P("sgid/f")))[1])
t("mkdir in sgid", lambda: (os.mkdir(P("sgid/d"), 0o755), st(P("sgid/d")))[1])
t("create in userdir", lambda: (write(P("userdir/c"), flags=os.O_CREAT | os.O_WRONLY), st(P("userdir/c")))[1])
t("chmod userdir", lambda: os.chmod(P("userdir"), 0o700))
t("link rootfile-less", lambda: os.link(P("pub/secret"), P("pub/secret_link")))
t("write suid file", lambda: (write(P("pub/suid")), st(P("pub/suid")))[1])
t("truncate suid file", lambda: (os.truncate(P("pub/suid2"), 1), st(P("pub/suid2")))[1])
t("open O_TRUNC suid file", lambda: (write(P("pub/suid3"), flags=os.O_WRONLY | os.O_TRUNC), st(P("pub/suid3")))[1])
t("link own", lambda: os.link(P("pub/mine2"), P("pub/mine_link")))
print(json.dumps(res))
''') % {"uid": UID, "gid": GID}


def run_as_user(root):
    r = subprocess.run([sys.executable, "-c", CHILD, root], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_non_root_caller(scenario):
    sc = scenario(TREE, opts="allow_other")
    exp = run_as_user(sc.oracle)
    got = run_as_user(sc.mnt)
    diffs = ["%s: mount %r, plain directory %r" % (e[0], g[1:], e[1:])
             for g, e in zip(got, exp) if g != e]
    assert not diffs, "\n".join(diffs)
    sc.check()
    sc.remount()
    sc.check()


def test_root_create_in_sgid_dir(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: open(os.path.join(r, "sgid/rootnew"), "w").close())
    sc.both(lambda r: os.mkdir(os.path.join(r, "sgid/rootdir")))
    sc.both(lambda r: [(s.st_uid, s.st_gid, oct(s.st_mode)) for s in
                       (os.stat(os.path.join(r, "sgid/rootnew")),
                        os.stat(os.path.join(r, "sgid/rootdir")))])
    sc.check()
