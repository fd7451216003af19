"""`meson install`: the installed tree, the shared library's exported API,
ovlfs.pc, and examples/quickstart.c built against the installed copy the
way a user would (`cc $(pkg-config --cflags --libs ovlfs)`).

The build directory is installed with --destdir into a temporary directory,
so the real prefix (/usr/local) is never touched and the build directory's
configuration is not changed.  Also the bash completion (completion/
ovlfs.bash), driven the way bash drives it: COMP_WORDS/COMP_CWORD set, the
function called, COMPREPLY read back.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import (BUILD, REPO, IS_ROOT, Overlay, _LIVE, _LIVE_LOCK,
                      is_fuse_mounted, ovlfs, run)

HEADER = os.path.join(REPO, "include", "ovlfs.h")
COMPLETION = os.path.join(REPO, "completion", "ovlfs.bash")

needs_fuse = pytest.mark.skipif(not (IS_ROOT and os.path.exists("/dev/fuse")),
                                reason="needs root and /dev/fuse")


def _intro(name):
    with open(os.path.join(BUILD, "meson-info", "intro-%s.json" % name)) as f:
        return json.load(f)


def build_options():
    return {o["name"]: o["value"] for o in _intro("buildoptions")}


def header_functions():
    """Names of the functions include/ovlfs.h declares, in its order."""
    with open(HEADER) as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)    # not the examples
    names = []
    for m in re.finditer(r"\b(ovlfs_\w+)\s*\(", text):
        if m.group(1) not in names:
            names.append(m.group(1))
    return names


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Install the build directory into a fresh DESTDIR; the paths."""
    dest = str(tmp_path_factory.mktemp("destdir"))
    r = run(["meson", "install", "-C", BUILD, "--no-rebuild", "--quiet",
             "--destdir", dest], timeout=120)
    assert r.returncode == 0, "meson install failed: %s%s" % (r.out, r.err)
    opts = build_options()
    prefix = dest + opts["prefix"]

    def p(opt, *rest):
        return os.path.join(prefix, opts[opt], *rest)

    version = _intro("projectinfo")["version"]
    return {
        "dest": dest,
        "prefix": prefix,
        "version": version,
        "bin": p("bindir", "ovlfs"),
        "libdir": p("libdir"),
        "lib": p("libdir", "libovlfs.so." + version),
        "header": p("includedir", "ovlfs.h"),
        "pc": p("libdir", "pkgconfig", "ovlfs.pc"),
        "man1": p("mandir", "man1", "ovlfs.1"),
        "man3": p("mandir", "man3", "ovlfs.3"),
        "completion": p("datadir", "bash-completion", "completions", "ovlfs"),
    }


def installed_env(inst):
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = inst["libdir"]
    # ovlfs.pc names the real prefix; the sysroot puts DESTDIR in front
    env["PKG_CONFIG_PATH"] = os.path.dirname(inst["pc"])
    env["PKG_CONFIG_SYSROOT_DIR"] = inst["dest"]
    return env


def sanitize_flags():
    """-fsanitize=... if the build is a sanitizer build (OVLFS_BUILD)."""
    san = build_options().get("b_sanitize", "none")
    return [] if san == "none" else ["-fsanitize=" + san]


# --------------------------------------------------------------------------
# the installed tree
# --------------------------------------------------------------------------

def test_installed_tree(installed):
    v = installed["version"]
    major = v.split(".")[0]
    for key in ("bin", "lib", "header", "pc", "man1", "man3", "completion"):
        assert os.path.isfile(installed[key]), "%s not installed at %s" % (
            key, installed[key])
    assert os.access(installed["bin"], os.X_OK)

    libdir = installed["libdir"]
    # the soname link and the development link, both relative
    assert os.readlink(os.path.join(libdir, "libovlfs.so." + major)) == \
        "libovlfs.so." + v
    assert os.path.realpath(os.path.join(libdir, "libovlfs.so")) == \
        os.path.realpath(installed["lib"])
    # the static library is for the in-tree unit tests only
    found = []
    for d, _, files in os.walk(installed["dest"]):
        found += [os.path.join(d, f) for f in files if f.endswith(".a")]
    assert not found, "static library installed: %s" % found

    for key, src in (("header", HEADER), ("completion", COMPLETION),
                     ("man1", os.path.join(REPO, "man", "ovlfs.1")),
                     ("man3", os.path.join(REPO, "man", "ovlfs.3"))):
        with open(src, "rb") as a, open(installed[key], "rb") as b:
            assert a.read() == b.read(), "%s differs from %s" % (
                installed[key], src)


def test_installed_tool_runs(installed):
    env = installed_env(installed)
    r = run([installed["bin"], "--version"], env=env)
    assert r.returncode == 0, r.err
    assert r.out.strip() == "ovlfs " + installed["version"]
    r = run([installed["bin"], "help"], env=env)
    assert r.returncode == 0 and "mount" in r.out and "commit" in r.out, r.out + r.err
    # it uses the installed shared library, not a copy linked in
    r = run(["ldd", installed["bin"]], env=env, check=True)
    m = re.search(r"libovlfs\.so\.0 => (\S+)", r.out)
    assert m, "ovlfs does not link libovlfs.so.0:\n" + r.out
    assert os.path.realpath(m.group(1)) == os.path.realpath(installed["lib"])


def test_build_tree_links_shared_library():
    """build/ovlfs and build/quickstart run from the build tree (meson's
    build rpath) against build/libovlfs.so.0."""
    for exe in ("ovlfs", "quickstart"):
        path = os.path.join(BUILD, exe)
        r = run(["readelf", "-d", path], check=True)
        assert "[libovlfs.so.0]" in r.out, "%s: not linked to libovlfs.so.0" % exe
        r = run(["ldd", path], check=True, env={"PATH": os.environ["PATH"]})
        m = re.search(r"libovlfs\.so\.0 => (\S+)", r.out)
        assert m and os.path.realpath(m.group(1)) == os.path.realpath(
            os.path.join(BUILD, "libovlfs.so.0")), r.out
    r = run([os.path.join(BUILD, "ovlfs"), "--version"],
            env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0 and r.out.startswith("ovlfs "), r.out + r.err


# --------------------------------------------------------------------------
# the shared library
# --------------------------------------------------------------------------

def test_soname(installed):
    r = run(["objdump", "-p", installed["lib"]], check=True)
    m = re.search(r"^\s*SONAME\s+(\S+)", r.out, re.M)
    assert m, "no SONAME in %s" % installed["lib"]
    assert m.group(1) == "libovlfs.so." + installed["version"].split(".")[0]


def test_exports_only_public_api(installed):
    r = run(["nm", "-D", "--defined-only", installed["lib"]], check=True)
    syms = {}
    for line in r.out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = parts[1]
    assert syms, "nm found no dynamic symbols"
    version_nodes = [s for s, t in syms.items() if t == "A"]
    assert version_nodes == ["OVLFS_0.1"], version_nodes

    public = set(header_functions())
    exported = {}
    for s, t in syms.items():
        if t == "A":
            continue
        name, _, ver = s.partition("@")
        assert ver.lstrip("@") == "OVLFS_0.1", "%s has no OVLFS_0.1 version" % s
        exported[name] = t
    leaked = sorted(n for n in exported if n not in public)
    assert not leaked, "exported but not declared in ovlfs.h: %s" % leaked
    assert all(t == "T" for t in exported.values()), exported
    # the core of the API is there (the rest may still be in progress)
    for name in ("ovlfs_new", "ovlfs_mount", "ovlfs_umount", "ovlfs_free",
                 "ovlfs_error", "ovlfs_finish", "ovlfs_diff"):
        assert name in exported, "%s not exported" % name

    # the same check with objdump, which lists versions separately
    r = run(["objdump", "-T", installed["lib"]], check=True)
    dyn = [l.split() for l in r.out.splitlines() if " DF .text" in l]
    assert dyn and all(l[-1].startswith("ovlfs_") and l[-2] == "OVLFS_0.1"
                       for l in dyn), r.out


def test_private_symbols_are_hidden(installed):
    """ovl_* functions exist in the library but only as local symbols."""
    static = run(["nm", "--defined-only", os.path.join(BUILD, "libovlfs.a")],
                 check=True).out
    private = set(re.findall(r" T (ovl_\w+)$", static, re.M))
    assert private, "no global ovl_* functions in libovlfs.a to check"
    dynamic = run(["nm", "-D", installed["lib"]], check=True).out
    assert not set(re.findall(r"\b(ovl_\w+)", dynamic)) & private


# --------------------------------------------------------------------------
# pkg-config and the quick start
# --------------------------------------------------------------------------

def test_pkg_config(installed):
    env = installed_env(installed)
    r = run(["pkg-config", "--modversion", "ovlfs"], env=env, check=True)
    assert r.out.strip() == installed["version"]
    r = run(["pkg-config", "--print-requires-private", "ovlfs"], env=env,
            check=True)
    assert "fuse3" in r.out.split()
    r = run(["pkg-config", "--libs", "ovlfs"], env=env, check=True)
    assert "-lovlfs" in r.out.split()
    assert "-L" + installed["libdir"] in r.out.split()
    r = run(["pkg-config", "--cflags", "ovlfs"], env=env, check=True)
    assert "-I" + os.path.dirname(installed["header"]) in r.out.split()


@needs_fuse
def test_quickstart_against_install(installed, work, tmp_path):
    env = installed_env(installed)
    flags = run(["pkg-config", "--cflags", "--libs", "ovlfs"], env=env,
                check=True).out.split()
    exe = str(tmp_path / "quickstart")
    r = run(["cc", "-Wall", "-Werror"] + sanitize_flags() +
            ["-o", exe, os.path.join(REPO, "examples", "quickstart.c")] + flags,
            env=env, timeout=120)
    assert r.returncode == 0, "cannot build quickstart:\n" + r.out + r.err
    assert "[libovlfs.so.0]" in run(["readelf", "-d", exe], check=True).out

    lower = os.path.join(work, "lower")
    os.makedirs(os.path.join(lower, "dir"))
    with open(os.path.join(lower, "dir", "file"), "w") as f:
        f.write("hello\n")
    mp = lower + ".mountpoint"
    upper = lower + ".upper"
    with _LIVE_LOCK:                  # unmounted by conftest if it crashes
        _LIVE.append(Overlay(lower))

    r = run([exe, lower], env=env, timeout=60)
    assert r.returncode == 0, "quickstart failed (%d):\n%s%s" % (
        r.returncode, r.out, r.err)
    lines = r.out.splitlines()
    assert lines[0] == "mounted %s at %s (changes go to %s)" % (lower, mp, upper)
    assert lines[1] == 'wrote "world" to %s/hello.txt' % mp
    assert lines[2] == "read it back: world"
    assert lines[3].startswith("unmounted;")
    assert not is_fuse_mounted(mp)
    with open(os.path.join(upper, "hello.txt")) as f:
        assert f.read() == "world\n"
    assert sorted(os.listdir(lower)) == ["dir"], "the lower was modified"
    assert os.listdir(mp) == []


# --------------------------------------------------------------------------
# bash completion
# --------------------------------------------------------------------------

def tool_commands():
    """The commands `ovlfs help` lists."""
    r = ovlfs("help", check=True)
    # The command list ends at the first blank line.
    body = r.out.split("commands:", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for m in re.finditer(r"^  (\S+)\s", body, re.M)]


def tool_options(cmd):
    """The option spellings of `ovlfs help CMD` ("-u", "--upper", ...)."""
    r = ovlfs("help", cmd, check=True)
    if "options:" not in r.out:
        return []
    body = r.out.split("options:", 1)[1]
    opts = []
    for line in body.splitlines():
        m = re.match(r"\s+(-\S.*?)(\s{2,}|$)", line)
        if m:
            opts += re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", m.group(1))
    return opts


def complete(tmp_path, *cases):
    """Run the completion for each CASE (a list of words, the last one being
    completed) in TMP_PATH; the list of COMPREPLY lists."""
    script = ["set -u", "source %s" % shlex_quote(COMPLETION),
              "complete -p ovlfs >/dev/null || exit 3"]
    for words in cases:
        arr = " ".join(shlex_quote(w) for w in words)
        script += [
            "COMP_WORDS=(%s); COMP_CWORD=%d; COMPREPLY=()" % (arr, len(words) - 1),
            "COMP_LINE=%s; COMP_POINT=${#COMP_LINE}" % shlex_quote(" ".join(words)),
            "_ovlfs ovlfs %s %s" % (shlex_quote(words[-1]),
                                    shlex_quote(words[-2] if len(words) > 1 else "")),
            "printf '%s\\n' \"${COMPREPLY[@]}\"; echo '@@end'",
        ]
    r = run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
            cwd=str(tmp_path))
    assert r.returncode == 0, "bash failed (%d): %s" % (r.returncode, r.err)
    assert r.err == "", r.err
    out = r.out.split("@@end\n")
    assert out[-1] == "" and len(out) == len(cases) + 1, r.out
    return [sorted(x for x in o.split("\n") if x) for o in out[:-1]]


def shlex_quote(s):
    import shlex
    return shlex.quote(s)


@pytest.fixture
def comp_dir(tmp_path):
    for d in ("alpha", "alps", "beta"):
        os.mkdir(tmp_path / d)
    (tmp_path / "alfile").write_text("x")
    return tmp_path


def test_completion_commands_and_options(comp_dir):
    cmds = tool_commands()
    assert "mount" in cmds and "commit" in cmds
    cases = [["ovlfs", ""], ["ovlfs", "co"], ["ovlfs", "help", "di"]]
    cases += [["ovlfs", c, "--"] for c in cmds]
    cases += [["ovlfs", c, "-"] for c in cmds]
    res = complete(comp_dir, *cases)
    top, co, helpdi = res[:3]
    missing = set(cmds) - set(top)
    assert not missing, "commands not completed: %s" % sorted(missing)
    for planned in ("flatten", "convert", "export", "apply"):
        assert planned in top
    assert co == ["commit", "convert"]
    assert helpdi == ["diff", "discard"]
    longs = res[3:3 + len(cmds)]
    alls = res[3 + len(cmds):]
    for c, got_long, got_all in zip(cmds, longs, alls):
        want = tool_options(c)
        got = {o.rstrip("=") for o in got_long + got_all}
        lost = [o for o in want if o not in got]
        assert not lost, "ovlfs %s: options not completed: %s" % (c, lost)
        assert all(o.startswith("--") for o in got_long), got_long


def test_completion_values(comp_dir):
    res = complete(
        comp_dir,
        ["ovlfs", "mount", "--inode-mode", ""],
        ["ovlfs", "mount", "-i", "p"],
        ["ovlfs", "mount", "--inode-mode=v"],
        ["ovlfs", "mount", "--format", ""],
        ["ovlfs", "diff", "--format", "=", "k"],      # split at '=' by bash
        ["ovlfs", "convert", "--to", ""],
        ["ovlfs", "run", "--on-exit", ""],
        ["ovlfs", "run", "--on-exit", "commit"],
        ["ovlfs", "run", "--on-exit=d"],
        ["ovlfs", "mount", "--inode-mode", "x"],
        ["ovlfs", "mount", "--in"],
    )
    assert res[0] == ["persistent", "virtual"]
    assert res[1] == ["persistent"]
    assert res[2] == ["--inode-mode=virtual"]
    assert res[3] == ["kernel", "oci"]
    assert res[4] == ["kernel"]
    assert res[5] == ["kernel", "oci"]
    assert res[6] == ["ask", "commit", "commit-atomic", "discard", "preserve"]
    assert res[7] == ["commit", "commit-atomic"]
    assert res[8] == ["--on-exit=discard"]
    assert res[9] == []
    assert res[10] == ["--inode-mode="]


def test_completion_directories(comp_dir):
    res = complete(
        comp_dir,
        ["ovlfs", "mount", "al"],                  # LOWER: directories only
        ["ovlfs", "mount", "-u", "a"],
        ["ovlfs", "commit", "--into", "b"],
        ["ovlfs", "mount", "--lower", "beta:al"],  # one word (no wordbreaks)
        ["ovlfs", "mount", "--lower", "beta", ":", "al"],  # as bash splits it
        ["ovlfs", "umount", ""],
        ["ovlfs", "export", "--tar", "al"],        # a file
        ["ovlfs", "run", "beta", "--", "bas"],     # a command
        ["ovlfs", "run", "beta", "--", "ls", "al"],
        ["ovlfs", "flatten", "--lower", "alpha", "b"],
    )
    assert res[0] == ["alpha", "alps"]
    assert res[1] == ["alpha", "alps"]
    assert res[2] == ["beta"]
    assert res[3] == ["beta:alpha", "beta:alps"]
    assert res[4] == ["alpha", "alps"]
    assert res[5] == ["alpha", "alps", "beta"]
    assert res[6] == ["alfile", "alpha", "alps"]
    assert "bash" in res[7]
    assert res[8] == ["alfile", "alpha", "alps"]
    assert res[9] == ["beta"]
