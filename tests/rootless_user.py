"""Run by tests/test_rootless.py as a non-root user (or as root of a user
namespace), never by pytest itself: mounts with `ovlfs mount` or the
fuse-overlayfs syntax, does the same changes through the mount and in a
plain directory, and prints what it saw as JSON on stdout.

argv[1] is a JSON config: ovlfs, home (lower, upper, mnt, plain, work and
the log live in it), syntax ("mount" or "compat"), fmt, phase ("mount" or
"finish"), userns (bool).
"""

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys

cfg = json.loads(sys.argv[1])
H = cfg["home"]
LOWER, UPPER, MNT = H + "/lower", H + "/upper", H + "/mnt"
PLAIN, WORK, LOG = H + "/plain", H + "/work", H + "/ovlfs.log"
OVLFS = cfg["ovlfs"]
PRIVATE = ("user.ovlfs.", "user.overlay.")


def sh(args):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    return [r.returncode, r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace")]


def mounted():
    want = MNT.encode()
    with open("/proc/self/mountinfo", "rb") as f:
        return any(l.split(b" ")[4] == want for l in f)


def mount():
    if cfg["syntax"] == "mount":
        args = [OVLFS, "mount", "--upper", UPPER, "--format", cfg["fmt"],
                "--inode-mode", "persistent", "--log", LOG, LOWER, MNT]
    else:
        args = [OVLFS, "-o", "lowerdir=%s,upperdir=%s,workdir=%s,format=%s,"
                "inode=persistent,log=%s" % (LOWER, UPPER, WORK, cfg["fmt"], LOG),
                MNT]
    r = sh(args)
    if r[0] != 0 or not mounted():
        raise SystemExit("mount failed: %r" % (r,))


def umount():
    r = sh([OVLFS, "umount", MNT])
    if mounted():
        # the fallbacks: fusermount3 is not setuid inside a user namespace
        sh(["fusermount3", "-u", "-z", MNT] if not cfg["userns"]
           else ["umount", "-l", MNT])
    return r


def errname(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def ops(root):
    """The same changes, by plain syscalls, on the merged view or the plain
    copy: each step's outcome ("ok", a value, or the errno's name)."""
    out = []

    def t(name, fn):
        try:
            v = fn()
            out.append([name, "ok" if v is None else v])
        except OSError as e:
            out.append([name, errname(e)])

    p = lambda *a: os.path.join(root, *a)

    def write(path, data, mode="w"):
        with open(path, mode) as f:
            f.write(data)

    def read(path):
        with open(path) as f:
            return f.read()

    t("read f", lambda: read(p("f")))
    t("append f", lambda: write(p("f"), "more\n", "a"))
    t("unlink gone", lambda: os.unlink(p("gone")))
    t("unlink e/z", lambda: os.unlink(p("e", "z")))
    t("rmdir e", lambda: os.rmdir(p("e")))
    t("mkdir e", lambda: os.mkdir(p("e"), 0o750))
    t("create e/new", lambda: write(p("e", "new"), "new\n"))
    t("rename d d2", lambda: os.rename(p("d"), p("d2")))
    t("rename d2/x x2", lambda: os.rename(p("d2", "x"), p("x2")))
    t("rename over", lambda: os.rename(p("x2"), p("f")))
    t("mkdir newdir", lambda: os.mkdir(p("newdir")))
    t("symlink", lambda: os.symlink("../f", p("newdir", "ln")))
    t("link", lambda: os.link(p("d2", "sub", "y"), p("newdir", "y2")))
    t("chmod y", lambda: os.chmod(p("d2", "sub", "y"), 0o600))
    t("chown f", lambda: os.chown(p("f"), 0, 0))
    # permissions: EACCES where a plain directory gives it
    t("create in 0555 dir", lambda: write(p("ro", "new"), "x"))
    t("unlink in 0555 dir", lambda: os.unlink(p("ro", "r")))
    t("read root's 0600 file", lambda: read(p("rootonly")))
    t("write root's 0644 file", lambda: write(p("rootdir", "file"), "x"))
    t("create in root's dir", lambda: write(p("rootdir", "new"), "x"))
    t("unlink in root's dir", lambda: os.unlink(p("rootdir", "file")))
    t("chmod root's file", lambda: os.chmod(p("rootdir", "file"), 0o777))
    # xattrs: user.* as on any file, trusted.* refused as on a plain dir
    t("set user.k", lambda: os.setxattr(p("d2", "sub", "y"), "user.k", b"v"))
    t("get user.k", lambda: os.getxattr(p("d2", "sub", "y"), "user.k").decode())
    t("get lower user.a", lambda: os.getxattr(p("xa"), "user.a").decode())
    t("remove lower user.a", lambda: os.removexattr(p("xa"), "user.a"))
    t("set user.dir", lambda: os.setxattr(p("e"), "user.dir", b"1"))
    t("set trusted.k", lambda: os.setxattr(p("newdir"), "trusted.k", b"v"))
    t("get trusted.k", lambda: os.getxattr(p("newdir"), "trusted.k"))
    t("set user on root's", lambda: os.setxattr(p("rootdir", "file"),
                                                "user.k", b"v"))
    t("list xa", lambda: sorted(os.listxattr(p("xa"))))
    big = hashlib.sha256(b"big").digest() * (1 << 15)
    t("write big", lambda: write(p("big"), big.hex()))
    t("read big", lambda: hashlib.sha256(read(p("big")).encode()).hexdigest()
      == hashlib.sha256(big.hex().encode()).hexdigest())
    return out


def snapshot(root):
    """Everything a user can see, but times and inode numbers."""
    res = {}
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            ent = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                   st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                try:
                    with open(path, "rb") as f:
                        ent.append(hashlib.sha256(f.read()).hexdigest())
                except OSError as e:
                    ent.append(errname(e))
            elif stat.S_ISLNK(st.st_mode):
                ent.append(os.readlink(path))
            if not stat.S_ISLNK(st.st_mode):
                try:
                    ent.append(sorted(
                        [x, os.getxattr(path, x, follow_symlinks=False).hex()]
                        for x in os.listxattr(path, follow_symlinks=False)
                        if not x.startswith(PRIVATE)))
                except OSError as e:
                    ent.append(errname(e))
            res[rel] = ent
    return res


INO_PATHS = ["f", "d2", "d2/sub", "d2/sub/y", "e", "xa", "ro", "ro/r",
             "rootdir", "rootdir/file", "newdir", "x2"]


def inos(root):
    res = {}
    for rel in INO_PATHS:
        try:
            res[rel] = os.lstat(os.path.join(root, rel)).st_ino
        except OSError:
            pass
    return res


def phase_mount():
    res = {"uid": os.getuid(), "euid": os.geteuid()}
    mount()
    try:
        res["ops"] = ops(MNT)
        res["plain_ops"] = ops(PLAIN)
        res["snap"] = snapshot(MNT)
        res["plain_snap"] = snapshot(PLAIN)
        res["inos"] = inos(MNT)
        res["umount"] = umount()
        res["unmounted"] = not mounted()
        mount()
        res["inos_again"] = inos(MNT)
        res["snap_again"] = snapshot(MNT)
    finally:
        res["umount2"] = umount()
        res["unmounted2"] = not mounted()
    with open(LOG) as f:
        res["log"] = f.read()
    return res


def phase_finish():
    """Commit (as the user) what phase_mount left, then discard a change."""
    res = {}
    res["diff"] = sh([OVLFS, "diff", "--upper", UPPER, LOWER])
    res["export"] = sh([OVLFS, "export", "--tar", H + "/layer.tar",
                        "--upper", UPPER, LOWER])
    args = [OVLFS, "commit", "--upper", UPPER, LOWER]
    if cfg["fmt"] == "kernel":
        args.insert(2, "--atomic")
    res["commit"] = sh(args)
    res["lower_snap"] = snapshot(LOWER)
    res["upper_left"] = os.path.exists(UPPER)
    os.makedirs(UPPER, exist_ok=True)
    mount()
    try:
        with open(os.path.join(MNT, "later"), "w") as f:
            f.write("later\n")
        os.unlink(os.path.join(MNT, "f"))
    finally:
        res["umount"] = umount()
    res["discard"] = sh([OVLFS, "discard", "--upper", UPPER, LOWER])
    res["after_discard"] = snapshot(LOWER)
    res["upper_after_discard"] = os.path.exists(UPPER)
    return res


if __name__ == "__main__":
    out = phase_mount() if cfg["phase"] == "mount" else phase_finish()
    json.dump(out, sys.stdout)
