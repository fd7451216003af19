"""podman with ovlfs as containers/storage's overlay `mount_program`.

Debian's podman (4.3), buildah and runc run containers whose root is an
ovlfs mount made the way containers/storage makes it:
`ovlfs -o lowerdir=...,upperdir=...,workdir=...,nodev,volatile MERGED`.
No registry is reachable, so every test imports a tiny image built from
busybox-static.

Each test has its own graphroot, runroot and libpod tmp_dir in its temp
directory, named in a storage.conf (CONTAINERS_STORAGE_CONF) and a
containers.conf (CONTAINERS_CONF); podman 4.3's --root/--runroot flags
would silently drop mount_program, so the config files are the only way,
and every test checks `podman info` names the ovlfs under test. runc, not
crun (crun fails on this machine kind's rlimits and cgroup mode);
cgroupfs and a file events log since there is no systemd; the container
rlimits are the host's own hard limits (podman's defaults are above them
and runc may not raise them). No `podman system reset`: it also removes
networks from the system-wide configuration. Cleanup is `podman rm -af`,
`podman rmi -af`, then unmounting whatever is left under the test's own
directory and ending the mount programs whose command line names it.

The rootless test runs the same checks as uid 4243 with a subordinate id
range, through files of its own bound over /dev/fuse and /etc's in a
private mount namespace (tests/rootless_podman.py). On this cgroup v1 host a
rootless container stays in its caller's cgroups (podman ignores resource
limits there; its cgroups="disabled" is for crun only, runc refuses it).
"""

import io
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import OVLFS, IS_ROOT, mounts_under, pids_naming, run
from rootless_podman import RootlessUser

PODMAN = shutil.which("podman")
BUSYBOX = "/bin/busybox"
MISSING = [n for n, p in (("podman", PODMAN), ("runc", shutil.which("runc")),
                          ("busybox-static", BUSYBOX if os.path.exists(BUSYBOX) else None),
                          ("cc", shutil.which("cc")))
           if p is None]

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root (podman as root; the rootless "
                       "test switches to a non-root user itself)"),
    pytest.mark.skipif(bool(MISSING), reason="needs %s (make deps)" % ", ".join(MISSING)),
    pytest.mark.timeout(120),
]

IMAGE = "localhost/ovlfs-bb:latest"
# Not root-owned and not in /etc/passwd of the image on purpose: runc
# accepts a numeric user.
USER = "1000:1000"
# A setuid-root program in the image prints its effective uid.
EUID_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("euid=%d\n", (int)geteuid()); return 0; }
"""


def _nproc_limit():
    # runc fails "setting rlimit type 6" here even at the host's hard
    # RLIMIT_NPROC; a small value is enough for a test container.
    return 4096


def make_rootfs(root, extra=None):
    """busybox-static as /bin/busybox with a link per applet, /etc/passwd."""
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], stdout=subprocess.PIPE,
                             check=True).stdout.decode().split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", a))
    for d in ("etc", "tmp", "proc", "sys", "dev", "root", "data/sub/deep"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
        "etc/group": "root:x:0:\n",
        "etc/motd": "image motd\n",
        "data/a.txt": "image a\n",
        "data/b.txt": "image b\n",
        "data/sub/c.txt": "image c\n",
        "data/sub/deep/d.txt": "image d\n",
    }
    files.update(extra or {})
    for rel, text in files.items():
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)


class Podman:
    """podman with its own graphroot, runroot and configuration in BASE."""

    def __init__(self, base, mount_program=OVLFS, user=None):
        self.base = base
        self.user = user            # RootlessUser, None for root
        self.mount_program = mount_program
        os.makedirs(base, exist_ok=True)
        # conmon's sockets are in the runroot and libpod's tmp_dir: under a
        # long test directory name a run takes 20 s longer (socket paths
        # are limited to 108 bytes), so those are in a short directory.
        self.short = tempfile.mkdtemp(prefix="ovlfs-pm-", dir="/tmp")
        for d in ("graph", "tmp", "home", "ctx"):
            os.makedirs(self.p(d), exist_ok=True)
        for d in ("run", "libpod", "xdg"):
            os.makedirs(self.s(d), exist_ok=True)
        os.chmod(self.s("xdg"), 0o700)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        with open(self.p("storage.conf"), "w") as f:
            f.write('[storage]\ndriver = "overlay"\n'
                    'graphroot = "%s"\nrunroot = "%s"\n'
                    # rootless containers/storage reads this one instead
                    'rootless_storage_path = "%s"\n'
                    '[storage.options.overlay]\nmountopt = "nodev"\n'
                    % (self.p("graph"), self.s("run"), self.p("graph")))
            if mount_program:
                f.write('mount_program = "%s"\n' % mount_program)
        with open(self.p("containers.conf"), "w") as f:
            f.write('[containers]\n'
                    'default_ulimits = ["nofile=%d:%d", "nproc=%d:%d"]\n'
                    'netns = "none"\n'
                    '[engine]\ncgroup_manager = "cgroupfs"\n'
                    'events_logger = "file"\nruntime = "runc"\n'
                    'tmp_dir = "%s"\n'
                    % (nofile, nofile, _nproc_limit(), _nproc_limit(),
                       self.s("libpod")))
        if user is not None:
            user.prepare(self.p("rootless"), self.p("home"))
            subprocess.run(["chown", "-R", "%d:%d" % (user.pw_uid, user.pw_gid),
                            base, self.short], check=True)
            for d in (self.p("home"), self.s("xdg")):
                os.chmod(d, 0o700)
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": self.p("home"),
            "TMPDIR": self.p("tmp"),
            "CONTAINERS_STORAGE_CONF": self.p("storage.conf"),
            "CONTAINERS_CONF": self.p("containers.conf"),
            "XDG_RUNTIME_DIR": self.s("xdg"),
            "XDG_CONFIG_HOME": self.p("home/.config"),
            "XDG_DATA_HOME": self.p("home/.local/share"),
        }
        if user is not None:
            self.env.update(USER=user.pw_name, LOGNAME=user.pw_name)

    def p(self, *parts):
        return os.path.join(self.base, *parts)

    def s(self, *parts):
        return os.path.join(self.short, *parts)

    def _argv(self, args):
        argv = [PODMAN] + [os.fspath(a) for a in args]
        if self.user is not None:
            argv = self.user.wrap(argv)
        return argv

    def write(self, rel, text):
        """A file in the test directory that the user (if rootless) owns."""
        with open(self.p(rel), "w") as f:
            f.write(text)
        if self.user is not None:
            os.chown(self.p(rel), self.user.pw_uid, self.user.pw_gid)

    def __call__(self, *args, check=True, timeout=90):
        r = run(self._argv(args), timeout=timeout, env=self.env, cwd=self.base)
        if check and r.returncode != 0:
            raise AssertionError("podman %s failed (%d):\n%s%s" % (
                " ".join(map(str, args)), r.returncode, r.out, r.err))
        return r

    def sh(self, image, script, *opts, check=True):
        """`podman run --rm` of a shell script; its stdout."""
        return self("run", "--rm", *opts, image, "/bin/sh", "-c", script,
                    check=check).out

    def check_info(self):
        r = self("info", "--format", "json")
        info = json.loads(r.out)
        opts = info["store"]["graphOptions"]
        got = opts.get("overlay.mount_program", {}).get("Executable")
        assert got == self.mount_program, \
            "podman info shows mount_program %r, not %r: %s" % (got, self.mount_program, opts)
        if self.user is None:
            assert info["store"]["graphRoot"] == self.p("graph")
        return info

    def import_image(self, extra=None, mode_fix=None):
        rootfs = self.p("rootfs")
        make_rootfs(rootfs, extra)
        if mode_fix:
            mode_fix(rootfs)
        tar = self.p("rootfs.tar")
        subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "--owner=0",
                        "--group=0", "-cf", tar, "."], check=True)
        if self.user is not None:
            os.chown(tar, self.user.pw_uid, self.user.pw_gid)
        self("import", tar, IMAGE)

    def cleanup(self):
        problems = []
        for args in (("rm", "-af", "-t", "0"), ("rmi", "-af")):
            try:
                r = self(*args, check=False, timeout=60)
                if r.returncode != 0:
                    problems.append("podman %s: %s" % (" ".join(args), r.err.strip()))
            except subprocess.TimeoutExpired:
                problems.append("podman %s timed out" % " ".join(args))
        # Rootless podman keeps a pause process holding its user namespace.
        for pidfile in (self.s("libpod", "pause.pid"), self.s("xdg", "libpod", "tmp", "pause.pid")):
            try:
                with open(pidfile) as f:
                    os.kill(int(f.read().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        # The mount programs serving our containers: their command line names
        # our directory, which no other process's does. podman 4.3 as root
        # bind-mounts graph/overlay onto itself; that one is expected.
        for d in (self.base, self.short):
            for mp in sorted(mounts_under(d), key=len, reverse=True):
                if mp != os.fsencode(self.p("graph", "overlay")):
                    problems.append("left mounted: %s" % os.fsdecode(mp))
                subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
            for pid in _pids_naming(os.fsencode(d)):
                problems.append("left running: pid %d" % pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.short, ignore_errors=True)
        return problems


def _pids_naming(path):
    return pids_naming(path, (b"ovlfs", b"conmon"))


@pytest.fixture
def podman(work):
    made = []

    def make(**kw):
        pm = Podman(os.path.join(work, "podman%d" % len(made)), **kw)
        made.append(pm)
        return pm

    yield make
    problems = []
    for pm in made:
        problems += pm.cleanup()
    assert not problems, "cleanup: %s" % problems


@pytest.fixture
def engine(podman):
    pm = podman()
    pm.check_info()
    pm.import_image()
    return pm


# --------------------------------------------------------------------------
# layer tarballs
# --------------------------------------------------------------------------

def save_layers(pm, image):
    """`podman save` as docker-archive; the layer tarballs, bottom first, as
    lists of (name, TarInfo, data)."""
    out = pm.p("saved.tar")
    if os.path.exists(out):
        os.unlink(out)
    pm("save", "--format", "docker-archive", "-o", out, image)
    layers = []
    with tarfile.open(out) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for name in manifest[0]["Layers"]:
            data = outer.extractfile(name).read()
            members = []
            with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                for ti in inner.getmembers():
                    n = ti.name
                    while n.startswith("./"):
                        n = n[2:]
                    n = n.rstrip("/")
                    if not n or n == ".":
                        continue
                    body = inner.extractfile(ti).read() if ti.isfile() else None
                    members.append((n, ti, body))
            layers.append(members)
    return layers


def apply_layers(layers):
    """The image's tree, applying OCI whiteouts: {path: (kind, data)}."""
    tree = {}
    for layer in layers:
        for name, ti, body in layer:
            d, base = os.path.split(name)
            if base == ".wh..wh..opq":
                for k in [k for k in tree if k.startswith(d + "/")]:
                    del tree[k]
            elif base.startswith(".wh."):
                gone = os.path.join(d, base[4:])
                for k in [k for k in tree if k == gone or k.startswith(gone + "/")]:
                    del tree[k]
        for name, ti, body in layer:
            base = os.path.basename(name)
            if base.startswith(".wh."):
                continue
            if name in tree and tree[name][0] == "dir" and not ti.isdir():
                for k in [k for k in tree if k.startswith(name + "/")]:
                    del tree[k]
            kind = "dir" if ti.isdir() else "file" if ti.isfile() else \
                "link" if ti.issym() else "hard" if ti.islnk() else "other"
            tree[name] = (kind, body if ti.isfile() else ti.linkname, ti.mode)
    return tree


def names(layer):
    return {n for n, _, _ in layer}


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

def test_info_names_ovlfs(podman):
    """The storage.conf reaches containers/storage (the --root flag would not)."""
    pm = podman()
    info = pm.check_info()
    assert info["store"]["graphDriverName"] == "overlay"
    assert info["store"]["runRoot"] == pm.s("run")


def test_run_rm_changes_and_image_untouched(engine):
    check_run_rm(engine)


def check_run_rm(pm):
    out = pm.sh(IMAGE, r"""
        set -e
        grep -q fuse /proc/self/mountinfo && head -n1 /proc/self/mountinfo | grep -q ' - fuse'
        echo new > /data/new.txt
        echo more >> /data/a.txt
        rm /data/b.txt
        rm -rf /data/sub/deep
        mv /data/sub /data/moved
        mv /etc/motd /etc/motd.old
        mkdir -p /made/x && echo y > /made/x/y
        rm -rf /bin/vi
        rm -rf /data/moved/c.txt && mkdir /data/moved/c.txt && echo z > /data/moved/c.txt/z
        ls -a /data /data/moved /data/moved/c.txt | tr '\n' ' '; echo
        cat /data/a.txt /data/new.txt /etc/motd.old /made/x/y /data/moved/c.txt/z
        test ! -e /data/b.txt && test ! -e /data/sub && test ! -e /bin/vi && test ! -e /etc/motd
        test ! -e /data/moved/deep
        echo ok
    """)
    lines = out.split("\n")
    assert "b.txt" not in lines[0] and "deep" not in lines[0], out
    assert lines[1:] == ["image a", "more", "new", "image motd", "y", "z", "ok", ""], out
    # --rm: the next container sees the image as it was
    out = pm.sh(IMAGE, "cat /data/a.txt /data/b.txt /data/sub/c.txt /data/sub/deep/d.txt "
                "/etc/motd; test -e /bin/vi && echo vi; ls /")
    assert out.split("\n")[:6] == ["image a", "image b", "image c", "image d",
                                   "image motd", "vi"], out
    assert "made" not in out.split() and pm("ps", "-aq").out.strip() == ""


CONTAINERFILE = """\
FROM %s
RUN rm /etc/motd && mkdir -p /data/keep /data/gone && echo k > /data/keep/f && \\
    echo g > /data/gone/f && echo old > /data/old && echo a2 > /data/a.txt
RUN rm -rf /data/gone /bin/vi /data/sub/deep && mv /data/old /data/new && \\
    rm -rf /data/keep && mkdir /data/keep && echo n > /data/keep/g && \\
    rm /data/b.txt && mkdir /data/b.txt && echo d > /data/b.txt/inside
RUN rm -rf /data/sub && echo file > /data/sub
""" % IMAGE


def test_build_save_layers(engine):
    check_build_save(engine)


def check_build_save(pm):
    pm.write("ctx/Containerfile", CONTAINERFILE)
    pm("build", "--pull=never", "--network", "none", "-t", "localhost/built",
       "-f", pm.p("ctx", "Containerfile"), pm.p("ctx"), timeout=120)
    layers = save_layers(pm, "localhost/built")
    assert len(layers) == 4, [sorted(names(l))[:10] for l in layers]
    base, l1, l2, l3 = layers

    assert {"bin/busybox", "data/b.txt", "data/sub/deep/d.txt", "etc/motd"} <= names(base)
    assert not any(os.path.basename(n).startswith(".wh.") for n in names(base))

    n1 = names(l1)
    assert {"etc/.wh.motd", "data/keep/f", "data/gone/f", "data/old", "data/a.txt"} <= n1, n1
    assert "etc/passwd" not in n1 and "bin/busybox" not in n1, n1

    n2 = names(l2)
    assert {"data/.wh.gone", "bin/.wh.vi", "data/sub/.wh.deep", "data/.wh.old",
            "data/new", "data/keep/g", "data/b.txt/inside"} <= n2, n2
    # a directory deleted and made again hides what was in it: an opaque
    # marker, a whiteout of the old directory or of each old entry (ovlfs)
    assert {"data/keep/.wh..wh..opq", "data/.wh.keep", "data/keep/.wh.f"} & n2, \
        " ".join(sorted(n2))
    assert not {"data/gone/f", "data/keep/f", "data/old"} & n2, n2

    n3 = names(l3)
    assert "data/sub" in n3 and not any(n.startswith("data/sub/") for n in n3), n3

    tree = apply_layers(layers)
    data = {k: v for k, v in tree.items() if k.startswith("data")}
    assert data == {
        "data": ("dir", "", data["data"][2]),
        "data/a.txt": ("file", b"a2\n", data["data/a.txt"][2]),
        "data/new": ("file", b"old\n", data["data/new"][2]),
        "data/keep": ("dir", "", data["data/keep"][2]),
        "data/keep/g": ("file", b"n\n", data["data/keep/g"][2]),
        "data/b.txt": ("dir", "", data["data/b.txt"][2]),
        "data/b.txt/inside": ("file", b"d\n", data["data/b.txt/inside"][2]),
        "data/sub": ("file", b"file\n", data["data/sub"][2]),
    }, sorted(data)
    assert "etc/motd" not in tree and "bin/vi" not in tree and "bin/sh" in tree

    # the built image as a container sees it
    out = pm.sh("localhost/built", "cd /data && find . | sort | tr '\n' ' '; echo; "
                "cat a.txt new keep/g b.txt/inside sub; test -e /bin/vi || echo novi")
    assert out.split("\n")[0].split() == [
        ".", "./a.txt", "./b.txt", "./b.txt/inside", "./keep", "./keep/g",
        "./new", "./sub"], out
    assert out.split("\n")[1:] == ["a2", "old", "n", "d", "file", "novi", ""], out


def test_commit_and_run(engine):
    check_commit(engine)


def check_commit(pm):
    pm("run", "--name", "c1", IMAGE, "/bin/sh", "-c",
       "echo c > /data/committed && rm /data/a.txt && rm -rf /data/sub && "
       "mkdir /data/sub && echo s > /data/sub/s && mv /etc/motd /etc/motd2")
    # `podman container diff`, not `podman diff`: the latter looks "c1" up
    # as an image first, and "c1" is a prefix of an image ID one build in
    # 64 (a 2-hex-digit prefix, 4 images): it then listed that image's
    # changes (CI25, CI33, CI36 and stop 21's CI: the base image, or one
    # of the built layers), the flake that was taken for a race with
    # conmon's cleanup.
    want = {"/data/committed", "/data/a.txt", "/etc/motd", "/etc/motd2"}
    diff = json.loads(pm("container", "diff", "--format", "json", "c1").out)
    assert want <= set(sum(diff.values(), [])), diff
    pm("commit", "c1", "localhost/committed")
    pm("rm", "c1")
    out = pm.sh("localhost/committed",
                "cat /data/committed /data/sub/s /etc/motd2 /data/b.txt; "
                "ls /data/sub; test -e /data/a.txt || echo noa; "
                "test -e /etc/motd || echo nomotd")
    assert out.split("\n") == ["c", "s", "image motd", "image b", "s", "noa",
                               "nomotd", ""], out
    layers = save_layers(pm, "localhost/committed")
    top = names(layers[-1])
    assert {"data/.wh.a.txt", "etc/.wh.motd", "data/committed", "etc/motd2",
            "data/sub/s"} <= top, top
    assert "data/sub/.wh..wh..opq" in top or "data/.wh.sub" in top or \
        {"data/sub/.wh.c.txt", "data/sub/.wh.deep"} <= top, " ".join(sorted(top))
    assert "data/sub/c.txt" not in top


def _compile_euid(dst):
    src = dst + ".c"
    with open(src, "w") as f:
        f.write(EUID_C)
    subprocess.run(["cc", "-static", "-O1", "-o", dst, src], check=True)
    os.unlink(src)


def add_euid(rootfs):
    exe = os.path.join(rootfs, "bin", "euid")
    _compile_euid(exe)
    os.chmod(exe, 0o4755)


def test_setuid_binary_in_container(podman):
    pm = podman()
    pm.check_info()
    pm.import_image(mode_fix=add_euid)
    check_setuid(pm)


def check_setuid(pm):
    out = pm.sh(IMAGE, "ls -ln /bin/euid; /bin/euid; id -u; "
                "head -n1 /proc/self/mountinfo", "--user", USER)
    lines = out.split("\n")
    assert lines[0].startswith("-rwsr-xr-x"), out
    assert lines[2] == "1000", out
    root_opts = lines[3].split()[5].split(",")
    assert "nosuid" not in root_opts, "container root mounted nosuid: %s" % lines[3]
    assert lines[1] == "euid=0", "setuid-root program ran as %s" % lines[1]


# --------------------------------------------------------------------------
# rootless
# --------------------------------------------------------------------------

# /dev/fuse is 0600 here and the machine's /etc names no user with a
# subordinate id range: see tests/rootless_podman.py for how the rootless
# user is made without changing the host.


def _as_user(user, argv, **kw):
    return run(["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid,
                "--clear-groups"] + argv, **kw)


def _rootless_blocker(user):
    """None if rootless podman can run here the way the test sets it up,
    else why not."""
    for tool, pkg in (("setpriv", "util-linux"), ("unshare", "util-linux"),
                      ("newuidmap", "uidmap"), ("newgidmap", "uidmap")):
        path = shutil.which(tool)
        if path is None:
            return "needs %s (%s)" % (tool, pkg)
        st = os.stat(path)
        if tool.startswith("new") and not (st.st_mode & stat.S_ISUID and st.st_uid == 0):
            return "%s is not setuid root: it cannot map a subordinate id range" % path
    if not os.path.exists("/dev/fuse") or not stat.S_ISCHR(os.stat("/dev/fuse").st_mode):
        return "no /dev/fuse"
    r = _as_user(user, ["unshare", "-Ur", "true"])
    if r.returncode != 0:
        return "user namespaces unavailable to a non-root user: %s" % r.err.strip()
    return None


@pytest.mark.timeout(400)
def test_rootless_run_and_build(podman):
    """The root tests' run, build and save, commit and setuid program, as a
    non-root user: containers/storage runs ovlfs as root of podman's user
    namespace, which maps the user to 0 and its subordinate range to 1.."""
    user = RootlessUser("ovlfspm", 4243, 300000)
    why = _rootless_blocker(user)
    if why:
        pytest.skip("rootless podman: " + why)
    pm = podman(user=user)
    info = pm.check_info()
    assert info["host"]["security"]["rootless"] is True
    maps = info["host"]["idMappings"]
    assert {"container_id": 1, "host_id": user.subid[0], "size": user.subid[1]} in \
        maps["uidmap"], maps
    assert info["store"]["graphRoot"] == pm.p("graph")
    pm.import_image(mode_fix=add_euid)
    out = pm.sh(IMAGE, "id -u; head -n1 /proc/self/mountinfo; cat /proc/self/uid_map")
    lines = out.split("\n")
    assert lines[0] == "0" and " - fuse.ovlfs " in lines[1], out
    assert lines[2].split() == ["0", str(user.pw_uid), "1"], out
    check_run_rm(pm)
    check_build_save(pm)
    check_commit(pm)
    # the container's uid 1000 is the host's 300999; the setuid-root
    # program runs as the container's root, the user
    check_setuid(pm)
    # what a container makes belongs on the host to the user (container
    # root) and to its range (other container users)
    first = user.subid[0]
    for name, opts, script, want in (
            ("own0", [], "echo r > /tmp/f && echo c > /tmp/g && chown 1000:1000 /tmp/g",
             {"f": (user.pw_uid, user.pw_gid), "g": (first + 999, first + 999)}),
            ("own1000", ["--user", USER], "echo u > /tmp/f",
             {"f": (first + 999, first + 999)})):
        pm("run", "--name", name, *opts, IMAGE, "/bin/sh", "-c", script)
        upper = pm("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}",
                   name).out.strip()
        assert upper.startswith(pm.p("graph")), upper
        got = {}
        for n in want:
            st = os.lstat(os.path.join(upper, "tmp", n))
            got[n] = (st.st_uid, st.st_gid)
        assert got == want, (name, got)
        pm("rm", name)
