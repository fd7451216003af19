"""What a container engine asks of its mount program (docs/containers.md):
`volatile` (no sync reaches the layers; an upper a volatile mount left
unclean is refused until discarded or accepted), the mount flags (suid as
root under the fuse-overlayfs syntax, nosuid,nodev for `ovlfs mount`) and
the mount's source field.

The fsync counting attaches strace to the daemon serving the mount (found
by its command line, which names the test's own lower): what it syncs is
what reaches the layers; the FUSE requests alone cost nothing on disk.
"""

import errno
import os
import signal
import subprocess
import time

import pytest

from conftest import (IS_ROOT, Overlay, mount_entry, needs_root, pids_naming,
                      traced, ovlfs, run, wait_for)
from test_compat import CompatOverlay, layers

MARK = "user.ovlfs.volatile"


def j(*p):
    return os.path.join(*p)


def make(kind, work, extra=(), source=None):
    """An overlay of the test's layers: `ovlfs mount` (kind "cli") or the
    fuse-overlayfs syntax ("compat"); EXTRA: --flags, or -o words."""
    lower, upper, wd, mp = (j(work, n) for n in ("lower", "upper", "work", "mnt"))
    if kind == "cli":
        return Overlay(lower, upper=upper, mp=mp, extra_args=list(extra))
    opts = ",".join(["lowerdir=" + lower, "upperdir=" + upper,
                     "workdir=" + wd] + list(extra))
    args = ([source] if source else []) + [mp, "-o", opts]
    return CompatOverlay(lower, upper, mp, args)


VOLATILE = {"cli": ["--volatile"], "compat": ["volatile"]}


def dirty(kind, what):
    return {"cli": ["--volatile-dirty=" + what],
            "compat": ["volatile_dirty=" + what]}[kind]


def server_pids(lower):
    """Pids of ovlfs processes whose command line names LOWER (ours)."""
    return pids_naming(lower)


def marked(upper):
    try:
        os.getxattr(upper, MARK)
        return True
    except OSError as e:
        assert e.errno == errno.ENODATA
        return False


def unmarked_soon(upper):
    """The daemon removes the mark as it lets go of the upper, a moment
    after the unmount has returned (as it lets go of the upper's lock)."""
    return wait_for(lambda: not marked(upper))


def kill_server(o):
    """kill -9 the daemon of O (ours), then detach its dead mount."""
    pids = server_pids(o.lower)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists("/proc/%d" % pids[0]) or
                    open("/proc/%d/stat" % pids[0]).read().split()[2] == "Z")
    run(["umount", "-l", o.mp], timeout=20)
    assert not o.mounted


# --------------------------------------------------------------------------
# volatile: no sync reaches the layers
# --------------------------------------------------------------------------

WORKLOAD = r'''
import os, sys
mp = sys.argv[1]
for i in range(10):
    fd = os.open(os.path.join(mp, "n%d" % i), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 4096)
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
fd = os.open(os.path.join(mp, "f"), os.O_WRONLY | os.O_APPEND)  # copy-up
os.write(fd, b"more\n")
os.fsync(fd)
os.close(fd)
fd = os.open(os.path.join(mp, "s"), os.O_WRONLY | os.O_CREAT | os.O_SYNC, 0o644)
os.write(fd, b"sync\n")
os.close(fd)
for d in (mp, os.path.join(mp, "d")):
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
os.sync()
'''


def traced_syncs(pid, mp):
    """Run WORKLOAD on MP with strace on PID: (sync calls, O_SYNC opens)."""
    lines = traced(pid, WORKLOAD, mp,
                   "fsync,fdatasync,syncfs,sync_file_range,sync,openat,open")
    syncs = [l for l in lines if any(c + "(" in l for c in (
        "fsync", "fdatasync", "syncfs", "sync_file_range", " sync"))]
    osync = [l for l in lines if "open" in l and ("O_SYNC" in l or "O_DSYNC" in l)]
    return syncs, osync


@pytest.mark.parametrize("passthrough", [True, False], ids=["pt", "nopt"])
@pytest.mark.parametrize("kind", ["cli", "compat"])
@pytest.mark.parametrize("volatile", [False, True], ids=["plain", "volatile"])
def test_fsync_reaches_the_layers_unless_volatile(work, kind, volatile,
                                                 passthrough):
    """With volatile no fsync, fdatasync or fsyncdir of the mount and no
    O_SYNC open reaches the layers (counted as the daemon's syscalls); without
    it they do. With passthrough the kernel still sends FSYNC to the daemon
    (Linux 6.18): it does not sync the backing file by itself."""
    if kind == "compat" and not passthrough:
        pytest.skip("the compat syntax has no --no-passthrough")
    layers(work)
    o = make(kind, work, (VOLATILE[kind] if volatile else []) +
             ([] if passthrough else ["--no-passthrough"]))
    o.mount()
    pids = server_pids(o.lower)
    assert len(pids) == 1, pids
    syncs, osync = traced_syncs(pids[0], o.mp)
    if volatile:
        assert syncs == [] and osync == [], (syncs, osync)
    else:
        assert len(syncs) >= 20, syncs       # 10 x (fsync + fdatasync), ...
        assert osync, "O_SYNC open not passed on"
    assert open(j(o.upper, "f")).read() == "lower f\nmore\n"
    assert open(j(o.upper, "s")).read() == "sync\n"
    o.umount()


# --------------------------------------------------------------------------
# volatile: the mark, and the refusal after a mount that did not end cleanly
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cli", "compat"])
def test_clean_unmount_leaves_no_mark(work, kind):
    layers(work)
    o = make(kind, work, VOLATILE[kind])
    o.mount()
    assert marked(o.upper)          # set at mount, before any write
    with open(j(o.mp, "new"), "w") as f:
        f.write("new\n")
    o.umount()
    assert unmarked_soon(o.upper)
    # and the upper mounts again, volatile or not
    p = make(kind, work)
    p.mount()
    assert not marked(o.upper)
    assert open(j(p.mp, "new")).read() == "new\n"
    p.umount()


def test_plain_mount_sets_no_mark(work):
    layers(work)
    o = make("cli", work)
    o.mount()
    assert not marked(o.upper)
    o.umount()


@pytest.mark.parametrize("kind", ["cli", "compat"])
def test_killed_volatile_mount_is_refused(work, kind):
    """kill -9 of a volatile mount's daemon leaves the mark: the next mount
    (volatile or not) is refused, saying why and what to do; commit, diff,
    export and convert refuse too; --volatile-dirty=keep takes the upper as
    it is, and a clean unmount of that removes the mark."""
    lower = layers(work)[0]
    o = make(kind, work, VOLATILE[kind])
    o.mount()
    with open(j(o.mp, "kept"), "w") as f:
        f.write("kept\n")
    kill_server(o)
    assert marked(o.upper)
    for extra in ([], VOLATILE[kind]):
        p = make(kind, work, extra)
        r = p.mount(check=False)
        assert r.returncode == 1, (r.out, r.err)
        assert not p.mounted
        assert o.upper in r.err and "volatile" in r.err, r.err
        assert "not cleanly unmounted" in r.err, r.err
        assert "--volatile-dirty=keep" in r.err and "discard" in r.err, r.err
    up = ["--upper", o.upper]
    for args in (["diff"] + up + [lower], ["commit"] + up + [lower],
                 ["export", "--tar", j(work, "x.tar")] + up + [lower],
                 ["convert", "--to", "kernel"] + up + [lower]):
        r = ovlfs(*args)
        assert r.returncode == 1, (args, r.out, r.err)
        assert "not cleanly unmounted" in r.err, (args, r.err)
    assert not os.path.exists(j(lower, "kept"))
    assert not os.path.exists(j(work, "x.tar"))

    k = make(kind, work, dirty(kind, "keep"))
    k.mount()
    assert open(j(k.mp, "kept")).read() == "kept\n"
    assert not marked(o.upper)      # accepted, and not volatile now
    k.umount()
    r = ovlfs("diff", "--upper", o.upper, lower)
    assert r.returncode == 0 and "kept" in r.out, (r.out, r.err)


@pytest.mark.parametrize("kind", ["cli", "compat"])
def test_volatile_dirty_discard(work, kind):
    layers(work)
    o = make(kind, work, VOLATILE[kind])
    o.mount()
    os.unlink(j(o.mp, "f"))
    os.mkdir(j(o.mp, "newdir"))
    with open(j(o.mp, "newdir", "x"), "w") as f:
        f.write("x\n")
    kill_server(o)
    p = make(kind, work, VOLATILE[kind] + dirty(kind, "discard"))
    p.mount()
    assert sorted(os.listdir(p.mp)) == ["d", "f"]   # the lower, as it was
    assert os.listdir(o.upper) == []
    assert marked(o.upper)          # volatile again
    p.umount()
    assert unmarked_soon(o.upper)


def test_discard_of_an_unclean_upper(work):
    lower = layers(work)[0]
    o = make("cli", work, ["--volatile"])
    o.mount()
    with open(j(o.mp, "new"), "w") as f:
        f.write("new\n")
    kill_server(o)
    r = ovlfs("discard", "--upper", o.upper, lower)
    assert r.returncode == 0, r.err
    assert not os.path.exists(o.upper)
    p = make("cli", work)
    p.mount()
    assert sorted(os.listdir(p.mp)) == ["d", "f"]
    p.umount()


def test_bad_volatile_dirty(work):
    layers(work)
    r = make("cli", work, ["--volatile-dirty=maybe"]).mount(check=False)
    assert r.returncode == 2 and "'maybe'" in r.err, r.err
    assert "refuse, discard or keep" in r.err, r.err
    r = make("compat", work, ["volatile_dirty=maybe"]).mount(check=False)
    assert r.returncode == 2 and "'maybe'" in r.err, r.err
    assert "refuse, discard or keep" in r.err, r.err


# --------------------------------------------------------------------------
# mount flags and the source field
# --------------------------------------------------------------------------

def flags(mp):
    return set(mount_entry(mp)["opts"].split(","))


@needs_root
def test_compat_flags_as_fuse_overlayfs(work):
    """As root the fuse-overlayfs syntax mounts without nosuid and with nodev,
    as fuse-overlayfs does; 'dev'/'nosuid' change that."""
    layers(work)
    o = make("compat", work)
    o.mount()
    fl = flags(o.mp)
    assert "nosuid" not in fl and "nodev" in fl, fl
    assert mount_entry(o.mp)["source"] == b"ovlfs"
    o.umount()
    o = make("compat", work, ["nosuid", "dev"])
    o.mount()
    fl = flags(o.mp)
    assert "nosuid" in fl and "nodev" not in fl, fl
    o.umount()


def test_compat_source_field(work):
    layers(work)
    o = make("compat", work, source="my,rootfs")
    o.mount()
    assert mount_entry(o.mp)["source"] == b"my,rootfs"
    o.umount()
    o = make("compat", work, ["fsname=given"], source="src")
    o.mount()
    assert mount_entry(o.mp)["source"] == b"given"
    o.umount()


def test_ovlfs_mount_defaults(work):
    """`ovlfs mount`: nosuid,nodev unless -o suid,dev (root only); the source
    field is 'ovlfs', not the lower's path."""
    layers(work)
    o = make("cli", work)
    o.mount()
    fl = flags(o.mp)
    assert {"nosuid", "nodev"} <= fl, fl
    assert mount_entry(o.mp)["source"] == b"ovlfs"
    o.umount()
    if IS_ROOT:
        o = Overlay(o.lower, upper=o.upper, mp=o.mp, opts="suid,dev")
        o.mount()
        fl = flags(o.mp)
        assert "nosuid" not in fl and "nodev" not in fl, fl
        o.umount()


SETUID_C = r'''
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("%d %d\n", (int)getuid(), (int)geteuid()); return 0; }
'''


@needs_root
@pytest.mark.parametrize("kind", ["compat", "cli"])
def test_setuid_binary(work, kind):
    """A setuid-root program of the image, run as nobody through the mount:
    root under the fuse-overlayfs syntax (as in a container), not under
    `ovlfs mount`'s default nosuid."""
    lower = layers(work)[0]
    src = j(work, "euid.c")
    with open(src, "w") as f:
        f.write(SETUID_C)
    prog = j(lower, "euid")
    r = run(["cc", "-o", prog, src])
    assert r.returncode == 0, r.err
    os.chown(prog, 0, 0)
    os.chmod(prog, 0o4755)
    o = make(kind, work)
    if kind == "cli":
        o.opts = "allow_other"      # nobody may use it, as in a container
    o.mount()
    r = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             j(o.mp, "euid")])
    assert r.returncode == 0, r.err
    assert r.out.split() == (["65534", "0"] if kind == "compat" else
                             ["65534", "65534"]), r.out
    o.umount()


# --------------------------------------------------------------------------
# the library's setters
# --------------------------------------------------------------------------

def test_library_volatile_setters(work):
    """ovlfs_set_volatile and ovlfs_set_volatile_dirty as ovlfs.h has them:
    0, -EINVAL for an unknown action; a handle with volatile set marks its
    upper at mount and unmarks it at ovlfs_umount."""
    import ctypes
    from conftest import BUILD
    so = os.path.join(BUILD, "libovlfs.so.0")
    # A sanitizer's runtime must come first in a process: loaded into
    # this (plain) python, an instrumented library aborts the whole run.
    needed = subprocess.run(["ldd", so], capture_output=True, text=True).stdout
    if any(rt in needed for rt in ("libasan", "libtsan", "libubsan")):
        pytest.skip("the library is a sanitizer build; this test loads it into python")
    lib = ctypes.CDLL(so)
    lib.ovlfs_new.restype = ctypes.c_void_p
    lib.ovlfs_new.argtypes = [ctypes.c_char_p]
    for f in ("ovlfs_set_volatile", "ovlfs_set_volatile_dirty"):
        getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_int]
    for f in ("ovlfs_mount", "ovlfs_umount"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.ovlfs_free.argtypes = [ctypes.c_void_p]
    lib.ovlfs_set_upper.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ovlfs_set_mount_point.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lower, upper, wd, mp = layers(work)
    fs = lib.ovlfs_new(lower.encode())
    try:
        assert lib.ovlfs_set_volatile_dirty(fs, 7) == -errno.EINVAL
        for what in (0, 1, 2):
            assert lib.ovlfs_set_volatile_dirty(fs, what) == 0
        assert lib.ovlfs_set_volatile(fs, 1) == 0
        assert lib.ovlfs_set_upper(fs, upper.encode()) == 0
        assert lib.ovlfs_set_mount_point(fs, mp.encode()) == 0
        assert lib.ovlfs_mount(fs) == 0
        try:
            assert marked(upper)
            assert lib.ovlfs_set_volatile(fs, 0) == -errno.EBUSY
        finally:
            lib.ovlfs_umount(fs)
        assert not marked(upper)
    finally:
        lib.ovlfs_free(fs)
