"""Finalization: preserve, discard, commit and commit-atomic of an upper.

Method: build a lower, `cp -a` an oracle copy, mount the pair with
`ovlfs mount`, apply the same changes to the mount and to the oracle,
snapshot the merged view (the expected result, mtimes included),
`ovlfs umount`, then finalize through the CLI (`ovlfs commit [--atomic]`,
`ovlfs discard`) or, for preserve and for finishing a mounted handle, through
the library (a tiny C program linked against build/libovlfs.a, compiled once
per session).  After a commit the lower must equal the merged view byte for
byte (types, content, modes, owners, symlink targets, xattrs, mtimes of
everything but directories, hard-link grouping) and the upper must be gone.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from conftest import (BUILD, OVLFS, REPO, IS_ROOT, needs_root, Overlay, F, D, L,
                      Fifo, Dev, HL, build, cp_a, snapshot, diff_snapshots,
                      assert_same_tree, ovlfs, run, is_mounted, mounts_under,
                      _outcome, _LIVE, _LIVE_LOCK, wait_for)

WORKDIR = b".wh..wh.ovlfs-commit"
T0 = 1_600_000_000_000_000_000        # 2020-09-13, ns
T1 = 1_650_000_000_123_456_789
T2 = 1_700_000_000_987_654_321


def j(*p):
    return os.path.join(*p)


def jb(*p):
    return os.path.join(*map(os.fsencode, p))


# --------------------------------------------------------------------------
# the library helper (for preserve and for finishing a mounted handle)
# --------------------------------------------------------------------------

HELPER_C = r'''
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ovlfs.h"

/* helper LOWER UPPER|- MP|- ACTION MOUNT(0|1)
 * ACTION: preserve discard commit commit-atomic recover.
 * With MOUNT=1: mount, print "mounted MP", wait for a line on stdin, then
 * finish.  Prints "result N" and "mounted-after B"; the error on stderr. */
int main(int argc, char **argv)
{
	struct ovlfs *fs;
	const char *a;
	int action, r;
	char buf[64];

	if (argc != 6)
		return 2;
	fs = ovlfs_new(argv[1]);
	if (!fs)
		return 2;
	if (strcmp(argv[2], "-"))
		ovlfs_set_upper(fs, argv[2]);
	if (strcmp(argv[3], "-"))
		ovlfs_set_mount_point(fs, argv[3]);
	a = argv[4];
	action = !strcmp(a, "preserve") ? OVLFS_PRESERVE :
		 !strcmp(a, "discard") ? OVLFS_DISCARD :
		 !strcmp(a, "commit") ? OVLFS_COMMIT :
		 !strcmp(a, "commit-atomic") ? OVLFS_COMMIT_ATOMIC :
		 !strcmp(a, "recover") ? 100 : -1;
	if (action < 0)
		return 2;
	if (atoi(argv[5])) {
		r = ovlfs_mount(fs);
		if (r < 0) {
			fprintf(stderr, "mount: %s\n", ovlfs_error(fs));
			return 1;
		}
		printf("mounted %s\n", ovlfs_mount_point(fs));
		fflush(stdout);
		if (!fgets(buf, sizeof(buf), stdin))
			buf[0] = 0;
	}
	r = action == 100 ? ovlfs_recover(fs) : ovlfs_finish(fs, action);
	printf("result %d\nmounted-after %d\n", r, (int)ovlfs_is_mounted(fs));
	if (r < 0)
		fprintf(stderr, "%s\n", ovlfs_error(fs));
	fflush(stdout);
	ovlfs_free(fs);
	return r < 0;
}
'''


@pytest.fixture(scope="session")
def helper(session_root):
    src = j(session_root["root"], "finish_helper.c")
    exe = j(session_root["root"], "finish_helper")
    with open(src, "w") as f:
        f.write(HELPER_C)
    pc = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3", "libarchive", "nettle", "liburing"],
                        stdout=subprocess.PIPE, check=True).stdout.decode().split()
    lib = j(BUILD, "libovlfs.a")
    # a sanitizer build's library needs the sanitizer runtimes linked in
    # (libovlfs.a is a thin archive: ask meson how the build was set up)
    san = []
    try:
        with open(j(BUILD, "meson-info", "intro-buildoptions.json")) as f:
            opts = {o["name"]: o["value"] for o in json.load(f)}
        if opts.get("b_sanitize", "none") != "none":
            san = ["-fsanitize=" + opts["b_sanitize"]]
    except (OSError, ValueError, KeyError):
        pass
    r = subprocess.run(["gcc", "-O1"] + san + ["-o", exe, src, "-I", j(REPO, "include"),
                        lib] + pc + ["-lpthread"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        pytest.fail("cannot build the library helper:\n" + r.stdout.decode())
    return exe


def lib_finish(helper, lower, action, upper=None, mp=None):
    """Finish a never-mounted handle through the library."""
    r = run([helper, lower, upper or "-", mp or "-", action, "0"], timeout=120)
    return r


class LibMount:
    """A handle mounted by the helper, finished when told to."""

    def __init__(self, helper, lower, action, upper=None, mp=None):
        base = os.fsdecode(lower).rstrip("/")
        self.ovl = Overlay(lower, upper=upper, mp=mp)   # for cleanup only
        with _LIVE_LOCK:
            _LIVE.append(self.ovl)
        self.p = subprocess.Popen([helper, lower, upper or "-", mp or "-", action, "1"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        line = self.p.stdout.readline().decode()
        if not line.startswith("mounted "):
            out, err = self.p.communicate(timeout=30)
            raise AssertionError("helper did not mount: %r %r" % (line + out.decode(),
                                                                 err.decode()))
        self.mp = line[len("mounted "):].rstrip("\n")
        assert self.mp == (mp or base + ".mountpoint") or mp is None

    def finish(self):
        out, err = self.p.communicate(b"go\n", timeout=120)
        self.out, self.err = out.decode(), err.decode()
        return self.p.returncode


# --------------------------------------------------------------------------
# pairs: lower + oracle + upper made through a mount
# --------------------------------------------------------------------------

def restore_atimes(src, dst):
    """Give DST (a cp -a copy of SRC) SRC's times back, and SRC too (cp read
    it and so bumped its atimes)."""
    for rel in snapshot(dst, xattrs=False, content=False):
        s = jb(dst, rel) if rel else os.fsencode(dst)
        t = jb(src, rel) if rel else os.fsencode(src)
        st = os.lstat(s)
        os.utime(t, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def strip_dir_mtimes(snap):
    out = {}
    for k, v in snap.items():
        v = dict(v)
        if v["type"] == "dir":
            v.pop("mtime", None)
        out[k] = v
    return out


def link_groups(root):
    """Sorted list of groups (sorted rel paths) of non-directories sharing an
    inode, only groups of two or more."""
    root = os.fsencode(root)
    groups = {}

    def rec(rel):
        p = os.path.join(root, rel) if rel else root
        for n in sorted(os.listdir(p)):
            r = os.path.join(rel, n) if rel else n
            st = os.lstat(os.path.join(root, r))
            if stat.S_ISDIR(st.st_mode):
                rec(r)
            elif st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append(r)
    rec(b"")
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def markers(root):
    """Every path under ROOT whose name starts with .wh. (none may remain in
    a lower after a commit)."""
    return [k for k in snapshot(root, content=False, xattrs=False)
            if os.path.basename(k).startswith(b".wh.")]


class Pair:
    def __init__(self, work, spec, upper=None, lower=None):
        self.work = work
        self.lower = lower or j(work, "lower")
        if not os.path.isdir(self.lower):
            os.mkdir(self.lower)
        build(self.lower, spec)
        self.oracle = j(work, "oracle")
        cp_a(self.lower, self.oracle)
        restore_atimes(self.oracle, self.lower)
        self.ovl = Overlay(self.lower, upper=upper)
        self.upper = self.ovl.upper
        self.merged = None

    def upper_args(self):
        return ["--upper", self.upper] if self.ovl.given_upper else []

    def change(self, fn, umount=True):
        """Apply FN to the mount and to the oracle (outcomes must agree),
        record the merged view, unmount."""
        self.ovl.mount()
        if fn is not None:
            exp = _outcome(fn, self.oracle)
            got = _outcome(fn, self.ovl.mp)
            assert got == exp, "mount gave %r, plain directory gave %r" % (got, exp)
        # test sanity: the mount shows what the oracle has
        assert_same_tree(snapshot(self.ovl.mp), snapshot(self.oracle), "mount", "oracle")
        self.merged = snapshot(self.ovl.mp, mtime=True, hide_private=True)
        self.oracle_links = link_groups(self.oracle)
        if umount:
            self.ovl.umount()
            self.record()

    def record(self):
        self.lower_before = snapshot(self.lower, mtime=True, ctime=True, ino=True,
                                     nlink=True, root_attrs=True)
        self.lower_content = snapshot(self.lower, mtime=True)
        self.upper_before = snapshot(self.upper, mtime=True, ino=True, root_attrs=True)

    def commit(self, atomic=False, extra=()):
        args = ["commit"] + (["--atomic"] if atomic else []) + ["--quiet"] + \
            self.upper_args() + list(extra) + [self.lower]
        return ovlfs(*args, timeout=300)

    def discard(self):
        return ovlfs("discard", "--quiet", *self.upper_args(), self.lower, timeout=120)

    def check_committed(self):
        """The lower equals the merged view; the upper is gone; no markers."""
        now = snapshot(self.lower, mtime=True)
        assert_same_tree(strip_dir_mtimes(now), strip_dir_mtimes(self.merged),
                         "lower after commit", "merged view before")
        assert_same_tree(snapshot(self.lower), snapshot(self.oracle),
                         "lower after commit", "oracle")
        assert link_groups(self.lower) == self.oracle_links, "hard links differ"
        assert not os.path.lexists(self.upper), "upper still exists after commit"
        assert markers(self.lower) == [], "markers left in the lower"

    def check_lower_unchanged(self):
        assert_same_tree(snapshot(self.lower, mtime=True, ctime=True, ino=True,
                                  nlink=True, root_attrs=True),
                         self.lower_before, "lower now", "lower before")

    def check_upper_unchanged(self, hide_private=False):
        now = snapshot(self.upper, mtime=True, ino=True, root_attrs=True,
                       hide_private=hide_private)
        before = self.upper_before
        if hide_private:
            before = {k: dict(v, xattrs={n: x for n, x in v.get("xattrs", {}).items()
                                         if not n.startswith(("trusted.ovlfs.",
                                                              "user.ovlfs."))})
                      for k, v in before.items()}
        assert_same_tree(now, before, "upper now", "upper before")

    def check_remount_shows_changes(self):
        self.ovl.mount()
        try:
            assert_same_tree(snapshot(self.ovl.mp, mtime=True, hide_private=True),
                             self.merged, "remount", "merged before")
        finally:
            self.ovl.umount()


def ok(r, what="command"):
    assert r.returncode == 0, "%s failed (%d): %s%s" % (what, r.returncode, r.out, r.err)


# --------------------------------------------------------------------------
# the change catalogue: name -> (lower spec, change fn, extra check after commit)
# --------------------------------------------------------------------------

def w(path, data, mode=None):
    with open(path, "wb") as f:
        f.write(os.fsencode(data) if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)


def c_new_file(r):
    w(j(r, "new"), "new content\n")
    w(j(r, "d/new2"), "in a lower dir", 0o600)
    w(j(r, "empty"), b"")
    w(j(r, "big"), bytes(range(256)) * 4096)
    os.utime(j(r, "new"), ns=(T1, T1))


def c_changed_file(r):
    with open(j(r, "f"), "ab") as f:
        f.write(b" world")
    fd = os.open(j(r, "d/g"), os.O_WRONLY)
    os.pwrite(fd, b"MIDDLE", 5000)
    os.close(fd)
    os.truncate(j(r, "d/t"), 3)
    w(j(r, "d/replaced"), "entirely new")


def c_deleted_file(r):
    os.unlink(j(r, "f"))
    os.unlink(j(r, "d/g"))
    os.unlink(j(r, "d/sub/x"))


def c_new_dir(r):
    os.makedirs(j(r, "a/b/c"))
    w(j(r, "a/fa"), "a")
    w(j(r, "a/b/fb"), "b")
    w(j(r, "a/b/c/fc"), "c")
    os.mkdir(j(r, "empty"))
    os.mkdir(j(r, "d/inner"), 0o700)
    os.chmod(j(r, "d/inner"), 0o700)
    w(j(r, "d/inner/x"), "x")


def c_deleted_dir(r):
    shutil.rmtree(j(r, "big"))
    shutil.rmtree(j(r, "keep/gone"))


def c_symlinks(r):
    os.symlink("nowhere/dangling", j(r, "dangle"))
    os.symlink("/etc/passwd", j(r, "abs"))
    os.symlink("/nonexistent/abs/dangling", j(r, "absdangle"))
    os.unlink(j(r, "link"))
    os.symlink("target2", j(r, "link"))
    os.symlink("d", j(r, "dirlink"))
    os.unlink(j(r, "oldlink"))
    os.lchown(j(r, "abs"), 123, 456)
    os.utime(j(r, "dangle"), ns=(T1, T1), follow_symlinks=False)


def c_hardlinks(r):
    w(j(r, "n1"), "one inode")
    os.link(j(r, "n1"), j(r, "d/n2"))
    os.link(j(r, "n1"), j(r, "n3"))
    with open(j(r, "lower_a"), "ab") as f:       # lower hard link, copied up
        f.write(b" changed")
    os.unlink(j(r, "pair_y"))
    os.chmod(j(r, "meta_a"), 0o600)               # metadata-only, linked pair


def c_special(r):
    os.mkfifo(j(r, "fifo"), 0o640)
    os.mknod(j(r, "null2"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(j(r, "loop9"), stat.S_IFBLK | 0o660, os.makedev(7, 9))
    os.mknod(j(r, "sock"), stat.S_IFSOCK | 0o755)
    os.chmod(j(r, "oldfifo"), 0o600)
    os.unlink(j(r, "olddev"))
    os.mknod(j(r, "olddev"), stat.S_IFCHR | 0o600, os.makedev(1, 5))


def c_xattrs(r):
    os.setxattr(j(r, "f"), "user.a", b"changed")
    os.removexattr(j(r, "f"), "user.b")
    os.setxattr(j(r, "g"), "user.new", b"v" * 300)
    w(j(r, "h"), "h")
    os.setxattr(j(r, "h"), "user.h", b"\x00binary\xff")
    os.setxattr(j(r, "d"), "user.d2", b"dir")
    os.mkdir(j(r, "e"))
    os.setxattr(j(r, "e"), "user.e", b"e")


def c_opaque(r):
    shutil.rmtree(j(r, "d"))
    os.mkdir(j(r, "d"))
    w(j(r, "d/only"), "only")


def c_type_changes(r):
    os.unlink(j(r, "t"))
    os.mkdir(j(r, "t"))
    w(j(r, "t/inner"), "inner")
    shutil.rmtree(j(r, "u"))
    w(j(r, "u"), "now a file")
    os.unlink(j(r, "s"))
    os.mkdir(j(r, "s"))
    shutil.rmtree(j(r, "v"))
    os.symlink("t", j(r, "v"))
    os.unlink(j(r, "ff"))
    os.mkfifo(j(r, "ff"))


def c_readonly_dir(r):
    w(j(r, "ro/new"), "landed")
    os.mkdir(j(r, "nr"))
    w(j(r, "nr/f"), "f")
    os.chmod(j(r, "nr"), 0o555)
    os.mkdir(j(r, "ro/sub"))
    w(j(r, "ro/sub/g"), "g", 0o444)
    os.chmod(j(r, "ro/sub"), 0o500)


def c_mtime_only(r):
    os.utime(j(r, "same"), ns=(T1, T1))
    os.utime(j(r, "big"), ns=(T2, T2))


def c_same_size_same_mtime(r):
    fd = os.open(j(r, "f"), os.O_WRONLY)
    os.pwrite(fd, b"B", 2000)
    os.close(fd)
    os.utime(j(r, "f"), ns=(T0, T0))
    w(j(r, "g"), "HELLO WORLD")
    os.utime(j(r, "g"), ns=(T0, T0))


def c_perm_upper(r):
    os.mkdir(j(r, "locked"))
    w(j(r, "locked/f"), "f", 0o444)
    os.mkdir(j(r, "locked/sub"))
    w(j(r, "locked/sub/g"), "g", 0o400)
    os.chmod(j(r, "locked/sub"), 0)
    os.chmod(j(r, "locked"), 0)
    w(j(r, "rofile"), "ro", 0o444)
    os.unlink(j(r, "ld/x"))
    w(j(r, "ld/y"), "y", 0o000)
    os.chmod(j(r, "ld"), 0)


N255, N252, N251, N254 = "a" * 255, "b" * 252, "c" * 251, "e" * 254


def c_long_names(r):
    os.unlink(j(r, N255))
    os.unlink(j(r, N252))
    os.unlink(j(r, N251))
    os.unlink(j(r, "d", N255))
    w(j(r, "d", "n" * 255), "new long")
    os.rename(j(r, N254), j(r, "r" * 255))
    shutil.rmtree(j(r, "x" * 255))


def c_non_utf8(r):
    r = os.fsencode(r)
    os.unlink(jb(r, b"caf\xe9"))
    w(jb(r, b"new\xff\xfe"), "new")
    shutil.rmtree(jb(r, b"d\xff"))
    os.mkdir(jb(r, b"n\xc3\x28"))
    w(jb(r, b"n\xc3\x28", b"\x80\x81"), "x")
    w(jb(r, b"keep\x80"), "changed")
    os.symlink(b"tgt\xfe", jb(r, b"l\xfd"))


def c_owners_modes(r):
    os.chown(j(r, "f"), 1000, 1000)
    os.chmod(j(r, "x"), 0o4755)
    os.chmod(j(r, "d"), 0o1777)
    os.chown(j(r, "d"), 7, 7)
    w(j(r, "n"), "n", 0o640)
    os.chown(j(r, "n"), 4242, 4343)
    os.chmod(j(r, "g"), 0o2750)


def c_renames(r):
    os.rename(j(r, "h"), j(r, "h2"))
    os.rename(j(r, "a"), j(r, "b"))
    os.rename(j(r, "k"), j(r, "c/k"))
    os.rename(j(r, "c/m"), j(r, "m_over"))


def c_mixed(r):
    c_new_file(r)
    os.unlink(j(r, "f"))
    shutil.rmtree(j(r, "big2"))
    os.symlink("d/new2", j(r, "ln"))


def post_opaque(pair):
    assert os.listdir(j(pair.lower, "d")) == ["only"]


def post_readonly(pair):
    assert stat.S_IMODE(os.lstat(j(pair.lower, "ro")).st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(j(pair.lower, "nr")).st_mode) == 0o555
    assert open(j(pair.lower, "ro/new")).read() == "landed"


def post_mtime_only(pair):
    for name, t in (("same", T1), ("big", T2)):
        st = os.lstat(j(pair.lower, name))
        before = pair.lower_before[os.fsencode(name)]
        assert st.st_ino == before["ino"], \
            "%s was rewritten (inode %d -> %d) although its content is unchanged" % (
                name, before["ino"], st.st_ino)
        assert st.st_mtime_ns == t


def post_same_size(pair):
    assert open(j(pair.lower, "g")).read() == "HELLO WORLD"
    assert os.lstat(j(pair.lower, "g")).st_mtime_ns == T0
    data = open(j(pair.lower, "f"), "rb").read()
    assert data[2000:2001] == b"B" and len(data) == 4096


def post_hardlinks(pair):
    a, b = os.lstat(j(pair.lower, "lower_a")), os.lstat(j(pair.lower, "lower_b"))
    assert a.st_ino == b.st_ino, "lower hard links split by the commit"
    n1, n2 = os.lstat(j(pair.lower, "n1")), os.lstat(j(pair.lower, "d/n2"))
    assert n1.st_ino == n2.st_ino and n1.st_nlink == 3


def post_symlink_meta(pair):
    st = os.lstat(j(pair.lower, "abs"))
    assert (st.st_uid, st.st_gid) == (123, 456)


CASES = {
    "new_file": ({"d": {"old": "old"}}, c_new_file, None),
    "changed_file": ({"f": F("hello", mtime=T0 / 1e9),
                      "d": {"g": F(b"x" * 10000), "t": "truncate me",
                            "replaced": "old content"}}, c_changed_file, None),
    "deleted_file": ({"f": "f", "d": {"g": "g", "h": "h", "sub": {"x": "x"}}},
                     c_deleted_file, None),
    "new_dir": ({"d": {"old": "o"}}, c_new_dir, None),
    "deleted_dir": ({"big": {"x": {"y": {"z": "z"}, "f": "f"}, "l": L("x"),
                             "ff": Fifo()},
                     "keep": {"gone": {"a": {"b": "b"}}, "stay": "s"}},
                    c_deleted_dir, None),
    "symlinks": ({"link": L("target1"), "target1": "t", "target2": "t2", "d": {},
                  "oldlink": L("/usr")}, c_symlinks, post_symlink_meta),
    "hardlinks": ({"lower_a": "shared", "lower_b": HL("lower_a"), "d": {},
                   "pair_x": "px", "pair_y": HL("pair_x"),
                   "meta_a": "m", "meta_b": HL("meta_a")}, c_hardlinks, post_hardlinks),
    "special": ({"oldfifo": Fifo(), "olddev": Dev(1, 3)}, c_special, None),
    "xattrs": ({"f": F("f", xattrs={"user.a": "1", "user.b": "2"}), "g": F("g"),
                "d": D({}, xattrs={"user.d": "dd"})}, c_xattrs, None),
    "opaque_dir": ({"d": {"c1": "1", "c2": {"c3": "3"}, "c4": L("c1")}, "other": "o"},
                   c_opaque, post_opaque),
    "type_changes": ({"t": "file", "u": {"x": "x", "y": {"z": "z"}}, "s": L("t"),
                      "v": {"w": "w"}, "ff": "file"}, c_type_changes, None),
    "readonly_dir": ({"ro": D({"old": "o"}, mode=0o555)}, c_readonly_dir, post_readonly),
    "mtime_only": ({"same": F("same content " * 100, mtime=T0 / 1e9),
                    "big": F(b"z" * 300000, mtime=T0 / 1e9)}, c_mtime_only,
                   post_mtime_only),
    "same_size_same_mtime": ({"f": F(b"A" * 4096, mtime=T0 / 1e9),
                              "g": F("hello world", mtime=T0 / 1e9)},
                             c_same_size_same_mtime, post_same_size),
    "perm_upper": ({"ld": {"x": "x", "z": "z"}}, c_perm_upper, None),
    "long_names": ({N255: "a", N252: "b", N251: "c", N254: "e", "d": {N255: "a"},
                    "x" * 255: {"y" * 255: "deep"}}, c_long_names, None),
    "non_utf8": ({b"caf\xe9": "latin1", b"d\xff": {b"\xfe": "x"}, b"keep\x80": "k"},
                 c_non_utf8, None),
    "owners_modes": ({"f": F("f", mode=0o644), "x": F("#!", mode=0o755),
                      "d": D({}, mode=0o755), "g": F("g", mode=0o755)},
                     c_owners_modes, None),
    "renames": ({"h": "h", "a": {"f": "f", "s": {"g": "g"}}, "k": "k",
                 "c": {"m": "m"}}, c_renames, None),
    "mixed": ({"d": {"old": "old"}, "f": "f", "big2": {"x": {"y": "y"}}},
              c_mixed, None),
}

# (action, where the upper lives)
ACTIONS = [("preserve", "same-fs"), ("discard", "same-fs"), ("discard", "split-fs"),
           ("commit", "same-fs"), ("commit", "split-fs"),
           ("commit-atomic", "same-fs"), ("commit-atomic", "split-fs")]


@pytest.mark.parametrize("action,place", ACTIONS, ids=["-".join(a) for a in ACTIONS])
@pytest.mark.parametrize("case", sorted(CASES))
def test_action(work, alt_work, helper, case, action, place):
    spec, fn, post = CASES[case]
    if case == "special" and not IS_ROOT:
        pytest.skip("mknod needs root")
    upper = j(alt_work, "upper") if place == "split-fs" else None
    pair = Pair(work, spec, upper=upper)
    pair.change(fn)
    if action == "preserve":
        r = lib_finish(helper, pair.lower, "preserve", upper=pair.upper)
        ok(r, "ovlfs_finish(PRESERVE)")
        assert os.path.isdir(pair.upper)
        pair.check_upper_unchanged()
        pair.check_lower_unchanged()
        pair.check_remount_shows_changes()
    elif action == "discard":
        r = pair.discard()
        ok(r, "ovlfs discard")
        assert not os.path.lexists(pair.upper), "upper still exists after discard"
        pair.check_lower_unchanged()
    else:
        r = pair.commit(atomic=action == "commit-atomic")
        ok(r, "ovlfs " + action)
        pair.check_committed()
        assert not os.path.lexists(jb(pair.lower, WORKDIR))
        if post:
            post(pair)


# --------------------------------------------------------------------------
# directory metadata
# --------------------------------------------------------------------------

@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_dir_mtime_is_the_uppers(work, atomic):
    """Directories get their metadata after their contents: a changed
    directory ends up with the merged view's mtime."""
    pair = Pair(work, {"d": D({"x": "x"}, mode=0o750), "e": {"y": "y"}})

    def fn(r):
        w(j(r, "d/new"), "n")
        os.unlink(j(r, "e/y"))
        os.mkdir(j(r, "n"))
        w(j(r, "n/f"), "f")
        for p, t in (("d", T1), ("e", T2), ("n", T1)):
            os.utime(j(r, p), ns=(t, t))
    pair.change(fn)
    ok(pair.commit(atomic=atomic))
    pair.check_committed()
    for p, t in (("d", T1), ("e", T2), ("n", T1)):
        assert os.lstat(j(pair.lower, p)).st_mtime_ns == t, p
    assert stat.S_IMODE(os.lstat(j(pair.lower, "d")).st_mode) == 0o750


# --------------------------------------------------------------------------
# preserve / finish through the library and `ovlfs run`
# --------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["preserve", "discard", "commit", "commit-atomic"])
def test_finish_mounted_handle(work, helper, action):
    """ovlfs_finish on a mounted handle unmounts first, applies the action,
    and removes the mount point it created."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "f", "d": {"g": "g"}})
    before = snapshot(lower, mtime=True, ino=True)
    mp = lower + ".mountpoint"
    assert not os.path.exists(mp)
    m = LibMount(helper, lower, action)
    assert m.mp == mp and is_mounted(mp)
    w(j(mp, "new"), "new")
    os.unlink(j(mp, "f"))
    merged = snapshot(mp, mtime=True, hide_private=True)
    rc = m.finish()
    assert rc == 0, m.out + m.err
    assert "mounted-after 0" in m.out
    assert not is_mounted(mp)
    assert not os.path.exists(mp), "mount point created by ovlfs not removed"
    upper = lower + ".upper"
    if action == "preserve":
        assert os.path.isdir(upper)
        assert_same_tree(snapshot(lower, mtime=True, ino=True), before, "lower", "before")
        o = Overlay(lower)
        o.mount()
        assert_same_tree(strip_dir_mtimes(snapshot(mp, mtime=True, hide_private=True)),
                         strip_dir_mtimes(merged), "remount", "merged")
        o.umount()
    elif action == "discard":
        assert not os.path.exists(upper)
        assert_same_tree(snapshot(lower, mtime=True, ino=True), before, "lower", "before")
    else:
        assert not os.path.exists(upper)
        assert_same_tree(strip_dir_mtimes(snapshot(lower, mtime=True)),
                         strip_dir_mtimes(merged), "lower", "merged")


def test_finish_keeps_given_mount_point(work, helper):
    lower = j(work, "lower")
    os.mkdir(lower)
    mp = j(work, "mine")
    os.mkdir(mp)
    m = LibMount(helper, lower, "preserve", mp=mp)
    w(j(mp, "x"), "x")
    assert m.finish() == 0, m.err
    assert os.path.isdir(mp) and not is_mounted(mp)
    assert os.path.isfile(j(lower + ".upper", "x"))


def test_preserve_never_mounted_is_noop(work, helper):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "f"})
    r = lib_finish(helper, lower, "preserve")
    ok(r)
    assert os.listdir(work) == ["lower"] or sorted(os.listdir(work)) == ["lower"], \
        os.listdir(work)


@pytest.mark.parametrize("action", ["preserve", "discard", "commit", "commit-atomic"])
def test_run_on_exit(work, action):
    """`ovlfs run --on-exit ACTION LOWER -- CMD`."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "old", "gone": "g"})
    before = snapshot(lower, mtime=True, ino=True)
    r = ovlfs("run", "--on-exit", action, lower, "--",
              "sh", "-c", "echo new > n && echo changed > f && rm gone", timeout=120)
    ok(r, "ovlfs run")
    mp, upper = lower + ".mountpoint", lower + ".upper"
    assert not is_mounted(mp)
    assert not os.path.exists(mp), "mount point created by ovlfs run not removed"
    if action == "preserve":
        assert os.path.isdir(upper)
        assert_same_tree(snapshot(lower, mtime=True, ino=True), before, "lower", "before")
        o = Overlay(lower)
        o.mount()
        assert sorted(os.listdir(o.mp)) == ["f", "n"]
        assert open(j(o.mp, "f")).read() == "changed\n"
        o.umount()
    elif action == "discard":
        assert not os.path.exists(upper)
        assert_same_tree(snapshot(lower, mtime=True, ino=True), before, "lower", "before")
    else:
        assert not os.path.exists(upper)
        assert sorted(os.listdir(lower)) == ["f", "n"]
        assert open(j(lower, "f")).read() == "changed\n"
        assert open(j(lower, "n")).read() == "new\n"


def test_recover_nothing(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"f": "f", "d": {"g": "g"}})
    before = snapshot(lower, mtime=True, ctime=True, ino=True, root_attrs=True)
    r = ovlfs("recover", lower)
    ok(r, "ovlfs recover")
    assert "nothing to recover" in r.out + r.err
    assert_same_tree(snapshot(lower, mtime=True, ctime=True, ino=True, root_attrs=True),
                     before, "lower", "before")
    assert not os.path.exists(lower + ".upper")


@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_dir_under_opaque_dir_keeps_none_of_the_lowers(work, atomic):
    """rm -rf d/sub, then mkdir -p d/sub/in/deep: d/sub is opaque in the
    upper, its in/ and in/deep/ are not (a mount looks nothing up in the
    lower under an opaque directory). commit --atomic merged in/ with the
    lower's in/, and in/i and in/deep/d came back."""
    pair = Pair(work, {"d": {"sub": {"s": "s", "in": {"i": "i", "deep": {"d": "d"}}}}})

    def fn(r):
        shutil.rmtree(j(r, "d/sub"))
        os.makedirs(j(r, "d/sub/in/deep"))
        w(j(r, "d/sub/in/j"), "j")
    pair.change(fn)
    ok(pair.commit(atomic=atomic))
    pair.check_committed()
    assert not os.path.exists(j(pair.lower, "d/sub/in/i"))


# --------------------------------------------------------------------------
# symlinks in the lower are never followed
# --------------------------------------------------------------------------

@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_lower_symlink_replaced_by_dir_via_mount(work, atomic):
    outside = j(work, "outside")
    os.mkdir(outside)
    build(outside, {"keep": "keep", "sub": {"g": "g"}})
    out_before = snapshot(outside, mtime=True, ctime=True, ino=True, root_attrs=True)
    pair = Pair(work, {"x": L(outside), "y": L(j(outside, "sub"))})

    def fn(r):
        os.unlink(j(r, "x"))
        os.mkdir(j(r, "x"))
        w(j(r, "x/f"), "f")
        w(j(r, "x/keep"), "mine")
        os.unlink(j(r, "y"))
        os.makedirs(j(r, "y/sub"))
        w(j(r, "y/sub/g"), "mine")
    pair.change(fn)
    r = pair.commit(atomic=atomic)
    assert_same_tree(snapshot(outside, mtime=True, ctime=True, ino=True, root_attrs=True),
                     out_before, "outside now", "outside before")
    ok(r)
    pair.check_committed()
    assert stat.S_ISDIR(os.lstat(j(pair.lower, "x")).st_mode)


@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_lower_symlink_under_hand_made_upper_dir(work, atomic):
    """Upper made by hand: a plain (non-opaque) directory `x/` over a lower
    symlink `x -> outside`: a type change, nothing written through it."""
    outside = j(work, "outside")
    os.mkdir(outside)
    build(outside, {"keep": "keep", "sub": {"g": "g"}})
    out_before = snapshot(outside, mtime=True, ctime=True, ino=True, root_attrs=True)
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"x": L(outside), "z": L(outside)})
    upper = lower + ".upper"
    os.mkdir(upper)
    build(upper, {"x": {"f": "f", "keep": "mine", "sub": {"g": "mine", "h": "h"}},
                  "z": {".wh.keep": "", "n": "n"}})
    r = ovlfs("commit", *(["--atomic"] if atomic else []), "--quiet", lower, timeout=120)
    assert_same_tree(snapshot(outside, mtime=True, ctime=True, ino=True, root_attrs=True),
                     out_before, "outside now", "outside before")
    ok(r)
    assert not os.path.exists(upper)
    assert os.path.isdir(j(outside, "sub"))
    got = snapshot(lower)
    assert got[b"x"]["type"] == "dir" and got[b"z"]["type"] == "dir"
    assert sorted(os.listdir(j(lower, "x"))) == ["f", "keep", "sub"]
    assert open(j(lower, "x/keep")).read() == "mine"
    assert sorted(os.listdir(j(lower, "x/sub"))) == ["g", "h"]
    assert os.listdir(j(lower, "z")) == ["n"]


# --------------------------------------------------------------------------
# lower that is a mount point, named with a dot
# --------------------------------------------------------------------------

def _mount(args):
    subprocess.run(["mount"] + args, check=True)


def _umount(path):
    if is_mounted(path):
        subprocess.run(["umount", path])
        if is_mounted(path):
            subprocess.run(["umount", "-l", path])


@needs_root
@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
@pytest.mark.parametrize("place", ["other-fs", "same-sb-bind"])
def test_lower_is_mount_point(work, atomic, place):
    """LOWER is a tmpfs mount point named alpine-3.20.  other-fs: the default
    upper alpine-3.20.upper on the test tmpfs.  same-sb-bind: the lower is a
    bind mount of a directory of a tmpfs that also holds the upper (same
    st_dev, but rename/link between the two mounts fail with EXDEV)."""
    lower = j(work, "alpine-3.20")
    os.mkdir(lower)
    mounts = []
    try:
        if place == "other-fs":
            _mount(["-t", "tmpfs", "-o", "size=64m", "lowerfs", lower])
            mounts.append(lower)
            upper = None
        else:
            fs = j(work, "fs")
            os.mkdir(fs)
            _mount(["-t", "tmpfs", "-o", "size=64m", "lowerfs", fs])
            mounts.append(fs)
            os.mkdir(j(fs, "alpine-3.20"))
            _mount(["--bind", j(fs, "alpine-3.20"), lower])
            mounts.insert(0, lower)
            upper = j(fs, "upper")
        pair = Pair(work, {"etc": {"os-release": "alpine 3.20\n", "hosts": "h"},
                           "bin": {"sh": F("#!", mode=0o755)}, "gone": {"x": "x"}},
                    upper=upper, lower=lower)
        assert os.path.ismount(lower)

        def fn(r):
            w(j(r, "etc/os-release"), "alpine 3.21\n")
            w(j(r, "etc/new"), "new")
            shutil.rmtree(j(r, "gone"))
            os.makedirs(j(r, "var/lib"))
            w(j(r, "var/lib/db"), "db")
            os.link(j(r, "var/lib/db"), j(r, "var/lib/db2"))
        pair.change(fn)
        assert pair.upper.endswith("alpine-3.20.upper") or upper
        r = pair.commit(atomic=atomic)
        ok(r)
        pair.check_committed()
        assert not os.path.lexists(jb(lower, WORKDIR))
        assert os.path.ismount(lower)
    finally:
        for m in mounts:
            _umount(m)


# --------------------------------------------------------------------------
# refusals while mounted
# --------------------------------------------------------------------------

BUSY_WORDS = ("busy", "in use", "mounted")


def _busy(r):
    assert r.returncode != 0, "succeeded while mounted: %s%s" % (r.out, r.err)
    msg = r.err.lower()
    assert any(b in msg for b in BUSY_WORDS), "not an EBUSY-style message: %r" % r.err


@pytest.mark.parametrize("cmd", ["commit", "commit-atomic", "discard"])
def test_refused_while_mounted(work, cmd):
    pair = Pair(work, {"f": "f", "d": {"g": "g"}})

    def fn(r):
        w(j(r, "n"), "n")
        os.unlink(j(r, "f"))
    pair.change(fn, umount=False)
    pair.record()
    if cmd == "discard":
        r = pair.discard()
    else:
        r = pair.commit(atomic=cmd == "commit-atomic")
    _busy(r)
    assert pair.lower in r.err or pair.upper in r.err, "message names no path: %r" % r.err
    assert pair.ovl.mounted
    pair.check_lower_unchanged()
    pair.check_upper_unchanged()
    assert sorted(os.listdir(pair.ovl.mp)) == ["d", "n"]
    pair.ovl.umount()
    r = pair.commit() if cmd != "discard" else pair.discard()
    ok(r)


def test_commit_refused_while_lower_mounted_with_other_upper(work):
    pair = Pair(work, {"f": "f"})
    pair.change(lambda r: w(j(r, "n"), "n"))
    other = Overlay(pair.lower, upper=j(work, "other.upper"), mp=j(work, "other.mp"))
    other.mount()
    for atomic in (False, True):
        r = pair.commit(atomic=atomic)
        _busy(r)
        pair.check_lower_unchanged()
        pair.check_upper_unchanged()
    # discard only needs the upper: allowed while the lower is mounted
    r = pair.discard()
    ok(r, "discard of an unused upper while the lower is mounted elsewhere")
    assert not os.path.exists(pair.upper)
    assert os.listdir(other.mp) == ["f"]
    other.umount()


# --------------------------------------------------------------------------
# failures: the upper stays, the merged view is unchanged, a retry succeeds
# --------------------------------------------------------------------------

FAIL_SPEC = {"a": {"f": "a", "g": "g"}, "m": {"locked": "L", "other": "o"},
             "z": {"f": "z", "y": "y"}}


def fail_changes(r):
    w(j(r, "a/new"), "new")
    w(j(r, "a/f"), "changed")
    os.unlink(j(r, "a/g"))
    os.unlink(j(r, "m/locked"))
    w(j(r, "m/new"), "m new")
    w(j(r, "z/new"), "z new")
    os.unlink(j(r, "z/f"))
    w(j(r, "zz"), "zz")


def chattr(flag, path):
    subprocess.run(["chattr", flag, path], check=True)


def merged_now(pair):
    pair.ovl.mount()
    try:
        return snapshot(pair.ovl.mp, mtime=True, hide_private=True)
    finally:
        pair.ovl.umount()


@needs_root
@pytest.mark.parametrize("place", ["same-fs", "split-fs"])
def test_commit_failure_midway_keeps_upper(work, alt_work, place):
    """An immutable lower file the upper deletes stops the commit midway;
    the upper stays, the merged view is unchanged, a retry finishes."""
    pair = Pair(work, FAIL_SPEC, upper=j(alt_work, "up") if place == "split-fs" else None)
    pair.change(fail_changes)
    locked = j(pair.lower, "m/locked")
    chattr("+i", locked)
    try:
        r = pair.commit()
        assert r.returncode != 0, "commit succeeded over an immutable file"
        assert "m/locked" in r.err or pair.lower + "/m:" in r.err, \
            "message does not name the path: %r" % r.err
        assert os.path.isdir(pair.upper), "upper removed after a failed commit"
        assert_same_tree(strip_dir_mtimes(merged_now(pair)), strip_dir_mtimes(pair.merged),
                         "merged view after failure", "merged view before")
    finally:
        chattr("-i", locked)
    ok(pair.commit(), "second commit")
    pair.check_committed()


@needs_root
@pytest.mark.parametrize("place", ["same-fs", "split-fs"])
def test_atomic_failure_in_apply_is_all_or_nothing(work, alt_work, place):
    """Same obstacle with --atomic (it can only show in the apply phase,
    after the commit point): the lower must be the old one when the command
    has returned (or once `ovlfs recover` has run), never a mix; the upper
    stays; after the cause is fixed a retry yields the new lower."""
    pair = Pair(work, FAIL_SPEC, upper=j(alt_work, "up") if place == "split-fs" else None)
    pair.change(fail_changes)
    locked = j(pair.lower, "m/locked")
    chattr("+i", locked)
    try:
        r = pair.commit(atomic=True)
        assert r.returncode != 0, "commit succeeded over an immutable file"
        assert "m/locked" in r.err or pair.lower + "/m:" in r.err, \
            "message does not name the path: %r" % r.err
        assert os.path.isdir(pair.upper), "upper removed after a failed commit"
        pair.check_upper_unchanged(hide_private=True)
        state = snapshot(pair.lower, mtime=True)
        state.pop(WORKDIR, None)
        state = {k: v for k, v in state.items() if not k.startswith(WORKDIR + b"/")}
        if state.get(b"", {}).get("names") is not None:
            state[b""] = dict(state[b""])
            state[b""]["names"] = [n for n in state[b""]["names"]
                                   if n != WORKDIR.decode()]
        d = diff_snapshots(strip_dir_mtimes(state), strip_dir_mtimes(pair.lower_content),
                           "lower after failed atomic commit", "old lower")
        assert not d, "failed atomic commit left a mix:\n  " + "\n  ".join(d)
    finally:
        chattr("-i", locked)
    ok(pair.commit(atomic=True), "second atomic commit")
    pair.check_committed()
    assert not os.path.lexists(jb(pair.lower, WORKDIR))


@needs_root
@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_commit_readonly_lower_fs(work, atomic):
    """The lower's filesystem remounted read-only: the commit fails naming
    the path, nothing changes; after remounting rw a retry succeeds."""
    lower = j(work, "lower")
    os.mkdir(lower)
    _mount(["-t", "tmpfs", "-o", "size=64m", "lowerfs", lower])
    try:
        pair = Pair(work, FAIL_SPEC, lower=lower)
        pair.change(fail_changes)
        _mount(["-o", "remount,ro", lower])
        r = pair.commit(atomic=atomic)
        assert r.returncode != 0
        assert pair.lower in r.err, "message does not name the lower: %r" % r.err
        pair.check_upper_unchanged()
        pair.check_lower_unchanged()
        _mount(["-o", "remount,rw", lower])
        ok(pair.commit(atomic=atomic), "commit after remount rw")
        pair.check_committed()
        assert not os.path.lexists(jb(lower, WORKDIR))
    finally:
        _umount(lower)


@needs_root
@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_commit_enospc(work, alt_work, atomic):
    """The lower's filesystem is too small for the change (upper on another
    fs, so the data must be copied): the commit fails, the upper stays, the
    merged view is unchanged (an atomic commit leaves the old lower and no
    work directory); after growing the fs a retry succeeds."""
    lower = j(work, "lower")
    os.mkdir(lower)
    _mount(["-t", "tmpfs", "-o", "size=2m", "lowerfs", lower])
    try:
        pair = Pair(work, {"a": {"f": "f"}, "small": "s"}, lower=lower,
                    upper=j(alt_work, "up"))

        def fn(r):
            w(j(r, "a/aa"), "first")
            w(j(r, "big"), b"\1" * (3 << 20))
            w(j(r, "small"), "changed")
        pair.change(fn)
        r = pair.commit(atomic=atomic)
        assert r.returncode != 0, "commit of 3 MiB into a 2 MiB tmpfs succeeded"
        assert "space" in r.err.lower() or "ENOSPC" in r.err, r.err
        assert os.path.isdir(pair.upper)
        if atomic:
            pair.check_upper_unchanged()
            assert not os.path.lexists(jb(lower, WORKDIR)), "work dir left behind"
            assert_same_tree(strip_dir_mtimes(snapshot(lower, mtime=True)),
                             strip_dir_mtimes(pair.lower_content), "lower", "old lower")
        assert_same_tree(strip_dir_mtimes(merged_now(pair)), strip_dir_mtimes(pair.merged),
                         "merged view after failure", "merged view before")
        _mount(["-o", "remount,size=64m", lower])
        ok(pair.commit(atomic=atomic), "commit after growing the fs")
        pair.check_committed()
    finally:
        _umount(lower)


@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_commit_twice_second_has_no_upper(work, atomic):
    """After a commit the upper is gone; committing again must not damage
    the lower (either a no-op or an error naming the missing upper)."""
    pair = Pair(work, {"f": "f"})
    pair.change(lambda r: w(j(r, "n"), "n"))
    ok(pair.commit(atomic=atomic))
    after = snapshot(pair.lower, mtime=True, ino=True)
    r = pair.commit(atomic=atomic)
    if r.returncode != 0:
        assert pair.upper in r.err or "upper" in r.err.lower(), r.err
    assert_same_tree(snapshot(pair.lower, mtime=True, ino=True), after, "lower", "before")


@needs_root
@pytest.mark.parametrize("atomic", [False, True], ids=["commit", "atomic"])
def test_failed_commit_leaves_upper_xattrs_intact(work, atomic):
    """After a failed commit, every object still in the upper keeps all its
    xattrs, ovlfs's private ones included (trusted.ovlfs.origin gives a
    copied-up file its persistent inode number)."""
    pair = Pair(work, FAIL_SPEC)
    pair.change(fail_changes)
    locked = j(pair.lower, "m/locked")
    chattr("+i", locked)
    try:
        r = pair.commit(atomic=atomic)
        assert r.returncode != 0
        now = snapshot(pair.upper)
        lost = ["%r: %r -> %r" % (k, pair.upper_before[k].get("xattrs"), v.get("xattrs"))
                for k, v in now.items() if k and k in pair.upper_before and
                v.get("xattrs") != pair.upper_before[k].get("xattrs")]
        assert not lost, "xattrs of upper objects changed by the failed commit:\n  " + \
            "\n  ".join(lost)
    finally:
        chattr("-i", locked)
    ok(pair.commit(atomic=atomic))
    pair.check_committed()
