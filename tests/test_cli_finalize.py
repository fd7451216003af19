"""The finalization commands of the `ovlfs` tool: commit, discard, recover,
diff and run.

The first part (help and argument parsing) needs only the tool. The rest is
end to end and relies on ovlfs_finish/ovlfs_recover/ovlfs_diff in the
library; those tests are meant to fail, not skip, while the library still
answers "not implemented"."""

import json
import tarfile
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import (OVLFS, Overlay, _LIVE, _LIVE_LOCK, build, ovlfs, run,
                      is_mounted, mounts_under, snapshot, assert_same_tree,
                      wait_for, F)

NEW_COMMANDS = ["run", "diff", "commit", "discard", "recover"]

SUMMARY_RE = re.compile(
    r"^(\d+) added, (\d+) modified, (\d+) deleted; (\d+) bytes added or changed$")


def j(*p):
    return os.path.join(*p)


def lines(text):
    return [l for l in text.splitlines() if l.strip()]


def summary(text):
    """The (added, modified, deleted, bytes) of the summary line in TEXT."""
    for l in reversed(text.splitlines()):
        m = SUMMARY_RE.match(l.strip())
        if m:
            return tuple(int(x) for x in m.groups())
    raise AssertionError("no summary line in %r" % text)


# ---------------------------------------------------------------- help

def test_main_help_lists_new_commands():
    r = ovlfs("--help")
    assert r.returncode == 0, r.err
    for c in NEW_COMMANDS:
        assert re.search(r"^  %s\s" % c, r.out, re.M), "%s missing:\n%s" % (c, r.out)


HELP_MUST_NAME = {
    "run": ["--upper", "--inode-mode", "-o", "--on-exit", "ask", "preserve",
            "discard", "commit", "commit-atomic", "-- COMMAND"],
    "diff": ["--upper", "--json", "A /", "M /", "D /", "\\n", "\\\\", "\\xHH",
             "\\u00XX", "added, ", "content", "mode", "owner", "mtime", "xattr",
             "type", "file", "dir", "symlink", "fifo", "socket", "chardev",
             "blockdev"],
    "commit": ["--atomic", "--upper", "--quiet", "LOWER", "ovlfs recover"],
    "discard": ["--upper", "--quiet", "LOWER"],
    "recover": ["--quiet", "--upper", "LOWER", "nothing to recover"],
}


@pytest.mark.parametrize("cmd", NEW_COMMANDS)
def test_command_help(cmd):
    r = ovlfs(cmd, "--help")
    assert r.returncode == 0, r.err
    assert r.out.startswith("usage: ovlfs %s " % cmd), r.out
    for word in HELP_MUST_NAME[cmd]:
        assert word in r.out, "%r not in `ovlfs %s --help`:\n%s" % (word, cmd, r.out)
    r2 = ovlfs("help", cmd)
    assert r2.returncode == 0 and r2.out == r.out
    r3 = ovlfs(cmd, "-h")
    assert r3.returncode == 0 and r3.out == r.out


def test_help_command_options():
    """`ovlfs help` takes --help like every command; other options are
    usage errors; `help CMD` is `CMD --help`, `help` alone is `--help`."""
    for opt in ("--help", "-h"):
        r = ovlfs("help", opt)
        assert r.returncode == 0 and r.err == "", (opt, r.returncode, r.err)
        assert r.out.startswith("usage: ovlfs help [COMMAND]"), r.out
        assert r.out == ovlfs("help", "help").out == ovlfs("help", "--help").out
    assert ovlfs("help").out == ovlfs("--help").out
    r = ovlfs("help", "--bogus")
    assert r.returncode == 2 and "--bogus" in r.err and "unknown option" in r.err, r.err
    r = ovlfs("help", "mount", "diff")
    assert r.returncode == 2 and "too many arguments" in r.err, r.err


def test_help_wins_over_missing_arguments():
    # --help anywhere among the options, even with other errors after it
    r = ovlfs("run", "--help")
    assert r.returncode == 0 and "--on-exit" in r.out
    r = ovlfs("commit", "--atomic", "--help")
    assert r.returncode == 0 and "--atomic" in r.out


# ---------------------------------------------------------------- usage errors

USAGE_ERRORS = [
    ["commit"],
    ["commit", "a", "b"],
    ["commit", "--json", "l"],
    ["commit", "--upper"],
    ["commit", "--bogus", "l"],
    ["discard"],
    ["discard", "--atomic", "l"],
    ["discard", "a", "b"],
    ["discard", "-u"],
    ["recover"],
    ["recover", "--atomic", "l"],
    ["recover", "a", "b"],
    ["diff"],
    ["diff", "--atomic", "l"],
    ["diff", "a", "b"],
    ["diff", "--upper"],
    ["run"],
    ["run", "l"],                       # no -- COMMAND
    ["run", "l", "--"],                 # no COMMAND
    ["run", "--", "true"],              # no LOWER
    ["run", "a", "b", "--", "true"],
    ["run", "--on-exit", "bogus", "l", "--", "true"],
    ["run", "--on-exit"],
    ["run", "--inode-mode", "bogus", "l", "--", "true"],
    ["run", "--json", "l", "--", "true"],
    ["run", "l", "true"],               # COMMAND without --
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a) or "-")
def test_usage_errors(work, args):
    args = [j(work, a) if a in ("l", "a", "b", "u") else a for a in args]
    os.mkdir(j(work, "l"))
    marker = j(work, "ran")
    args = [a if a != "true" else "touch" for a in args]
    if args[-1] == "touch":
        args.append(marker)
    before = sorted(os.listdir(work))
    r = ovlfs(*args, timeout=30)
    assert r.returncode == 2, (r.returncode, r.out, r.err)
    assert r.err.startswith("ovlfs: "), r.err
    cmd = args[0]
    assert "try 'ovlfs %s --help'" % cmd in r.err, r.err
    assert r.out == ""
    assert sorted(os.listdir(work)) == before
    assert not mounts_under(work)


# ---------------------------------------------------------------- helpers

TREE = {
    "keep": "keep\n",
    "mod": "old content\n",
    "gone": "bye\n",
    "chmod": F("x", mode=0o644),
    "dir": {"inner": "inner\n", "sub": {"deep": "deep\n"}},
    "rmdir": {"a": "a", "b": "b"},
}


def change(mp):
    """The same set of changes, applied through mount point MP."""
    with open(j(mp, "mod"), "w") as f:
        f.write("new content, longer\n")              # 20 bytes
    os.unlink(j(mp, "gone"))
    os.chmod(j(mp, "chmod"), 0o600)
    with open(j(mp, "added"), "w") as f:
        f.write("0123456789")                          # 10 bytes
    os.mkdir(j(mp, "dir", "newdir"))
    with open(j(mp, "dir", "newdir", "f"), "w") as f:
        f.write("abc")                                 # 3 bytes
    for n in ("a", "b"):
        os.unlink(j(mp, "rmdir", n))
    os.rmdir(j(mp, "rmdir"))


def expected_after(work):
    """A plain directory looking like the lower after committing change()."""
    exp = j(work, "expected")
    os.mkdir(exp)
    build(exp, TREE)
    change(exp)
    return exp


def prepared(work, upper=None):
    """A lower with TREE, changed through a mount and unmounted again:
    returns (Overlay, lower snapshot before)."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    before = snapshot(lower)
    o = Overlay(lower, upper=upper)
    o.mount()
    change(o.mp)
    o.umount()
    assert os.path.isdir(o.upper)
    return o, before


def content_view(root):
    return snapshot(root, xattrs=False)


# ---------------------------------------------------------------- commit

@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_commit(work, atomic):
    o, _ = prepared(work)
    exp = expected_after(work)
    args = ["commit"] + (["--atomic"] if atomic else []) + [o.lower]
    r = ovlfs(*args, timeout=120)
    assert r.returncode == 0, r.err
    assert r.err == "", "progress or noise on a non-terminal stderr: %r" % r.err
    assert not os.path.exists(o.upper), "upper left after commit"
    assert_same_tree(content_view(o.lower), content_view(exp), "lower", "expected")
    # a fresh mount of the committed lower shows the same
    o2 = Overlay(o.lower, upper=j(work, "up2"), mp=j(work, "mp2"))
    o2.mount()
    assert open(j(o2.mp, "mod")).read() == "new content, longer\n"
    assert not os.path.exists(j(o2.mp, "gone"))


def test_commit_explicit_upper_quiet(work):
    o, _ = prepared(work, upper=j(work, "changes"))
    exp = expected_after(work)
    r = ovlfs("commit", "--quiet", "--upper", o.upper, o.lower, timeout=120)
    assert r.returncode == 0, r.err
    assert r.out == "" and r.err == ""
    assert not os.path.exists(o.upper)
    assert_same_tree(content_view(o.lower), content_view(exp), "lower", "expected")


def test_commit_refused_while_mounted(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    before = snapshot(lower)
    o = Overlay(lower)
    o.mount()
    open(j(o.mp, "new"), "w").write("new")
    r = ovlfs("commit", lower, timeout=60)
    assert r.returncode == 1, (r.returncode, r.err)
    errs = lines(r.err)
    assert len(errs) == 1 and errs[0].startswith("ovlfs: "), r.err
    assert "not implemented" not in r.err, r.err
    assert o.mounted
    assert open(j(o.upper, "new")).read() == "new"
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def test_commit_missing_lower(work):
    lower = j(work, "nothere")
    r = ovlfs("commit", lower)
    assert r.returncode == 1
    assert r.err.startswith("ovlfs: ") and "nothere" in r.err, r.err
    assert "not implemented" not in r.err, r.err


@pytest.mark.parametrize("args", [["commit"], ["commit", "--atomic"], ["discard"]],
                         ids=["commit", "atomic", "discard"])
def test_no_upper_nothing_to_do(work, args):
    """No upper (never mounted): nothing to do, said on stderr, exit 0,
    nothing created or changed; --quiet says nothing."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    before = snapshot(lower, mtime=True, ctime=True)
    verb = args[0]
    r = ovlfs(*(args + [lower]))
    assert r.returncode == 0, r.err
    assert r.out == ""
    assert r.err == "ovlfs: %s: no upper %s.upper: nothing to %s\n" % (
        verb, lower, verb), r.err
    r = ovlfs(*(args + ["--quiet", lower]))
    assert r.returncode == 0 and r.out == "" and r.err == "", r.err
    assert sorted(os.listdir(work)) == ["lower"]
    assert_same_tree(snapshot(lower, mtime=True, ctime=True), before, "after", "before")


def test_no_upper_diff_and_export_are_empty(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    r = ovlfs("diff", lower)
    assert r.returncode == 0 and r.err == "", r.err
    assert r.out == "0 added, 0 modified, 0 deleted; 0 bytes added or changed\n"
    tar = j(work, "layer.tar")
    r = ovlfs("export", "--tar", tar, lower)
    assert r.returncode == 0 and r.err == "", r.err
    with tarfile.open(tar) as t:
        assert t.getnames() == []
    assert sorted(os.listdir(work)) == ["layer.tar", "lower"]


# ---------------------------------------------------------------- discard

def test_discard(work):
    o, before = prepared(work)
    r = ovlfs("discard", o.lower, timeout=60)
    assert r.returncode == 0, r.err
    assert r.err == "" and r.out == ""
    assert not os.path.exists(o.upper)
    assert_same_tree(snapshot(o.lower), before, "lower now", "lower before")


def test_discard_unwritable_upper_modes(work):
    o, before = prepared(work, upper=j(work, "up"))
    os.chmod(j(o.upper, "dir"), 0o500)
    r = ovlfs("discard", "-q", "-u", o.upper, o.lower, timeout=60)
    assert r.returncode == 0, r.err
    assert not os.path.exists(o.upper)
    assert_same_tree(snapshot(o.lower), before, "lower now", "lower before")


# ---------------------------------------------------------------- recover

def test_recover_nothing(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    before = snapshot(lower)
    r = ovlfs("recover", lower)
    assert r.returncode == 0, r.err
    assert r.out == "nothing to recover\n", r.out
    r = ovlfs("recover", "--quiet", lower)
    assert r.returncode == 0, r.err
    assert r.out == "" and r.err == ""
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def _finished_commit_state(lower, upper):
    """The work directory an atomic commit leaves if killed after `done`:
    recovery only has to clean up, and remove the upper it names."""
    wd = j(lower, ".wh..wh.ovlfs-commit")
    for d in ("", "stage", "trash"):
        os.makedirs(j(wd, d), exist_ok=True)
    with open(j(wd, "journal"), "w") as f:
        f.write("ovlfs-journal 1\nupper %s\nend\n" % upper)
    open(j(wd, "done"), "w").close()


@pytest.mark.parametrize("name_it", [True, False], ids=["named", "not-named"])
def test_recover_removes_only_the_named_upper(work, name_it):
    lower, upper = j(work, "lower"), j(work, "elsewhere-upper")
    os.mkdir(lower)
    build(lower, TREE)
    os.mkdir(upper)
    _finished_commit_state(lower, upper)
    args = ["--upper", upper] if name_it else []
    r = ovlfs("recover", *args, lower)
    assert r.returncode == 0, r.err
    assert r.out.startswith("recovered"), r.out
    assert not os.path.lexists(j(lower, ".wh..wh.ovlfs-commit"))
    # the journal is read from the lower: it is trusted with an upper only
    # when the caller names the same one
    assert os.path.lexists(upper) != name_it


# ---------------------------------------------------------------- diff

def test_diff_text(work):
    o, before = prepared(work)
    r = ovlfs("diff", o.lower, timeout=60)
    assert r.returncode == 0, r.err
    out = r.out.splitlines()
    assert SUMMARY_RE.match(out[-1]), out
    body = out[:-1]
    by_path = {}
    for l in body:
        m = re.match(r"^([AMD]) (/\S*)(?: \(([a-z, ]+)\))?$", l)
        assert m, "bad diff line %r" % l
        by_path[m.group(2)] = (m.group(1), m.group(3))
    paths = [re.match(r"^. (/\S*)", l).group(1) for l in body]
    assert paths == sorted(paths, key=os.fsencode), "not in path order: %r" % paths
    assert by_path["/added"][0] == "A"
    assert by_path["/dir/newdir"][0] == "A"
    assert by_path["/dir/newdir/f"][0] == "A"
    assert by_path["/gone"][0] == "D"
    assert by_path["/rmdir"][0] == "D"
    assert by_path["/rmdir/a"][0] == "D" and by_path["/rmdir/b"][0] == "D"
    kind, what = by_path["/mod"]
    assert kind == "M" and "content" in what.split(", "), by_path["/mod"]
    kind, what = by_path["/chmod"]
    assert kind == "M" and "mode" in what.split(", "), by_path["/chmod"]
    assert "content" not in what.split(", "), by_path["/chmod"]
    for p in ("/keep", "/dir/inner", "/dir/sub", "/dir/sub/deep"):
        assert p not in by_path, "unchanged %s listed" % p
    added, modified, deleted, nbytes = summary(r.out)
    assert added == sum(1 for k, _ in by_path.values() if k == "A")
    assert modified == sum(1 for k, _ in by_path.values() if k == "M")
    assert deleted == sum(1 for k, _ in by_path.values() if k == "D")
    assert nbytes == 10 + 3 + 20
    # diff changes nothing
    assert_same_tree(snapshot(o.lower), before, "lower now", "lower before")
    assert os.path.isdir(o.upper)


def test_diff_json(work):
    o, _ = prepared(work)
    r = ovlfs("diff", "--json", o.lower, timeout=60)
    assert r.returncode == 0, r.err
    doc = json.loads(r.stdout)
    assert set(doc) == {"changes", "summary"}
    ch = {c["path"]: c for c in doc["changes"]}
    for c in doc["changes"]:
        assert set(c) == {"path", "change", "what", "type", "size"}, c
        assert c["change"] in ("A", "M", "D")
        assert c["type"] in ("file", "dir", "symlink", "fifo", "socket",
                             "chardev", "blockdev")
        if c["change"] != "M":
            assert c["what"] == []
    assert ch["/added"]["change"] == "A" and ch["/added"]["type"] == "file"
    assert ch["/added"]["size"] == 10
    assert ch["/dir/newdir"]["type"] == "dir"
    assert ch["/gone"]["change"] == "D" and ch["/gone"]["size"] == 4
    assert ch["/rmdir"]["change"] == "D" and ch["/rmdir"]["type"] == "dir"
    assert ch["/mod"]["change"] == "M" and "content" in ch["/mod"]["what"]
    assert ch["/mod"]["size"] == 20
    assert "mode" in ch["/chmod"]["what"]
    s = doc["summary"]
    n = {k: sum(1 for c in doc["changes"] if c["change"] == k) for k in "AMD"}
    assert s == {"added": n["A"], "modified": n["M"], "deleted": n["D"],
                 "renamed": 0, "bytes": 33}, s
    assert (n["A"], n["D"]) == (3, 4), n
    assert n["M"] >= 2          # directories whose mtime changed may count too
    # the text form agrees
    t = ovlfs("diff", o.lower, timeout=60)
    assert summary(t.out) == (s["added"], s["modified"], s["deleted"], 33)


def test_diff_no_changes(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    o = Overlay(lower)
    o.mount()
    os.listdir(o.mp)
    open(j(o.mp, "keep")).read()
    o.umount()
    r = ovlfs("diff", lower)
    assert r.returncode == 0, r.err
    assert r.out == "0 added, 0 modified, 0 deleted; 0 bytes added or changed\n"
    r = ovlfs("diff", "--json", lower)
    assert r.returncode == 0, r.err
    assert json.loads(r.stdout) == {"changes": [], "summary": {
        "added": 0, "modified": 0, "deleted": 0, "renamed": 0, "bytes": 0}}


def test_diff_while_mounted_with_upper(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    o = Overlay(lower, upper=j(work, "up"), mp=j(work, "mp"))
    o.mount()
    open(j(o.mp, "fresh"), "w").write("12345")
    r = ovlfs("diff", "--upper", o.upper, lower)
    assert r.returncode == 0, r.err
    body = r.out.splitlines()[:-1]
    assert [l for l in body if not l.startswith("M ")] == ["A /fresh"], r.out
    assert summary(r.out)[0::3] == (1, 5)      # added, bytes
    assert o.mounted


ODD_NAMES = {
    b"new\nline": b"/new\\nline",
    b"back\\slash": b"/back\\\\slash",
    b"lat1-\xe9\xff": b"/lat1-\\xe9\\xff",
    b"utf8-\xc3\xa9\xe2\x82\xac": b"/utf8-\xc3\xa9\xe2\x82\xac",
    b"tab\tcr\r": b"/tab\\x09cr\\x0d",
    b"spaces and \"quotes\" 'x' (y)": b"/spaces and \"quotes\" 'x' (y)",
    b"esc\x1b[31m": b"/esc\\x1b[31m",
}


def test_diff_odd_names(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    o = Overlay(lower)
    o.mount()
    for name in ODD_NAMES:
        with open(os.path.join(os.fsencode(o.mp), name), "wb") as f:
            f.write(b"x")
    o.umount()

    r = ovlfs("diff", lower)
    assert r.returncode == 0, r.err
    out = r.stdout.split(b"\n")
    assert out[-1] == b""
    body = [l for l in out[:-2] if not l.startswith(b"M ")]  # "M /" (mtime)
    assert len(body) == len(ODD_NAMES), body
    assert sorted(body) == sorted(b"A " + v for v in ODD_NAMES.values()), body
    assert summary(r.out)[0::3] == (len(ODD_NAMES), len(ODD_NAMES))

    r = ovlfs("diff", "--json", lower)
    assert r.returncode == 0, r.err
    r.stdout.decode("utf-8")              # the JSON text itself is valid UTF-8
    doc = json.loads(r.stdout)
    got = sorted(c["path"] for c in doc["changes"] if c["change"] == "A")
    # bytes that are not UTF-8 come back as U+00XX (\u00XX in the text)
    want = sorted("/" + n.decode("utf-8", "surrogateescape").translate(
        {0xdc00 + b: b for b in range(0x80, 0x100)}) for n in ODD_NAMES)
    assert got == want
    assert b"\\u00e9\\u00ff" in r.stdout
    assert "é€".encode() in r.stdout      # valid UTF-8 written as it is


def test_diff_json_failing_midway_prints_no_json(work):
    """A diff that fails after some changes were found prints no JSON at
    all (not the start of a document), the reason on stderr, exit 1."""
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, {"a": "a\n"})
    upper = j(work, "lower.upper")
    build(work, {"lower.upper": {"a_new": "n\n", "z": {"in": {"x": "x\n"}}}})
    os.chmod(j(upper, "z", "in"), 0)        # unreadable for a non-root user
    user = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"]
    for args in (["--json"], []):
        r = run(user + [OVLFS, "diff"] + args + [lower])
        assert r.returncode == 1, (r.returncode, r.out, r.err)
        assert j(upper, "z", "in") in r.err or "z/in" in r.err, r.err
        assert "Permission denied" in r.err, r.err
        if args:
            assert r.out == "", "partial JSON on stdout: %r" % r.out
        else:
            assert "A /a_new" in r.out      # text: the lines found so far


def test_diff_missing_lower(work):
    r = ovlfs("diff", j(work, "nothere"))
    assert r.returncode == 1
    assert r.err.startswith("ovlfs: ") and "nothere" in r.err, r.err
    assert "not implemented" not in r.err
    assert r.out == ""


# ---------------------------------------------------------------- run

def run_tool(work, args, lower=None, timeout=90, other_mounts=(), **kw):
    """`ovlfs run ...`, with its mount registered for cleanup if it hangs."""
    lower = lower or j(work, "lower")
    guard = Overlay(lower)
    with _LIVE_LOCK:
        _LIVE.append(guard)
    kw.setdefault("stdin", subprocess.DEVNULL)
    r = run([OVLFS, "run"] + args, timeout=timeout, **kw)
    assert not is_mounted(guard.mp), "ovlfs run left %s mounted" % guard.mp
    left = [m for m in mounts_under(work) if m not in other_mounts]
    assert not left, left
    return r


def make_lower(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    return lower, snapshot(lower)


def test_run_exit_status_and_cwd(work):
    lower, before = make_lower(work)
    out = j(work, "pwd.txt")
    r = run_tool(work, ["--on-exit", "discard", lower, "--", "sh", "-c",
                        'pwd -P > "$1"; cat keep > /dev/null; exit 7', "sh", out])
    assert r.returncode == 7, r.err
    assert open(out).read().strip() == lower + ".mountpoint"
    assert "not implemented" not in r.err, r.err
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def test_run_killed_by_signal(work):
    lower, _ = make_lower(work)
    r = run_tool(work, ["--on-exit", "discard", lower, "--",
                        "sh", "-c", "kill -KILL $$"])
    assert r.returncode == 128 + signal.SIGKILL, r.err
    assert not os.path.exists(lower + ".upper")


def test_run_command_not_found(work):
    lower, before = make_lower(work)
    r = run_tool(work, ["--on-exit", "discard", lower, "--", j(work, "no-such-cmd")])
    assert r.returncode == 127, r.err
    assert "no-such-cmd" in r.err
    assert not os.path.exists(lower + ".upper")
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def test_run_preserve(work):
    lower, before = make_lower(work)
    r = run_tool(work, ["--on-exit", "preserve", lower, "--",
                        "sh", "-c", "echo hello > new; rm gone"])
    assert r.returncode == 0, r.err
    added, _, deleted, nbytes = summary(r.err)
    assert (added, deleted, nbytes) == (1, 1, 6), r.err
    upper = lower + ".upper"
    assert open(j(upper, "new")).read() == "hello\n"
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")
    assert not os.path.exists(lower + ".mountpoint"), "mount point left behind"
    # the preserved upper shows the changes again
    o = Overlay(lower)
    o.mount()
    assert open(j(o.mp, "new")).read() == "hello\n"
    assert not os.path.exists(j(o.mp, "gone"))


def test_run_default_non_tty_is_preserve(work):
    lower, before = make_lower(work)
    r = run_tool(work, [lower, "--", "sh", "-c", "echo hi > made"])
    assert r.returncode == 0, r.err
    assert "[p]reserve" not in r.err, "asked without a terminal: %r" % r.err
    assert open(j(lower + ".upper", "made")).read() == "hi\n"
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def test_run_discard(work):
    lower, before = make_lower(work)
    r = run_tool(work, ["--on-exit", "discard", lower, "--",
                        "sh", "-c", "echo x > new; echo y >> mod; rm -r rmdir"])
    assert r.returncode == 0, r.err
    added, modified, deleted, _ = summary(r.err)
    assert (added, deleted) == (1, 3) and modified >= 1, r.err
    assert not os.path.exists(lower + ".upper")
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


@pytest.mark.parametrize("action", ["commit", "commit-atomic"])
def test_run_commit(work, action):
    lower, _ = make_lower(work)
    upper = j(work, "myupper")
    r = run_tool(work, ["--on-exit", action, "--upper", upper,
                        "--inode-mode", "persistent", lower, "--",
                        "sh", "-c", "echo hello > new; rm gone; exit 3"])
    assert r.returncode == 3, r.err
    assert open(j(lower, "new")).read() == "hello\n"
    assert not os.path.exists(j(lower, "gone"))
    assert open(j(lower, "keep")).read() == "keep\n"
    assert not os.path.exists(upper)


def test_run_options_after_dashes_go_to_command(work):
    lower, _ = make_lower(work)
    out = j(work, "args.txt")
    r = run_tool(work, ["--on-exit", "discard", lower, "--", "sh", "-c",
                        'printf "%s\\n" "$@" > "$0"', out, "--upper", "-o",
                        "--on-exit", "--help", "--"])
    assert r.returncode == 0, r.err
    assert open(out).read().split("\n")[:-1] == ["--upper", "-o", "--on-exit",
                                                 "--help", "--"]


def test_run_ask_reads_stdin(work):
    # --on-exit ask explicitly, answered through a pipe
    lower, before = make_lower(work)
    r = run_tool(work, ["--on-exit", "ask", lower, "--", "sh", "-c",
                        "echo x > new"], input=b"what?\nd\n", stdin=None)
    assert r.returncode == 0, r.err
    assert r.err.count("[p]reserve, [d]iscard, [c]ommit, commit-[a]tomic?") == 2, r.err
    assert not os.path.exists(lower + ".upper")
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def test_run_ask_eof_preserves(work):
    lower, before = make_lower(work)
    r = run_tool(work, ["--on-exit", "ask", lower, "--", "sh", "-c",
                        "echo x > new"])
    assert r.returncode == 0, r.err
    assert "[p]reserve" in r.err
    assert open(j(lower + ".upper", "new")).read() == "x\n"
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def test_run_sigterm_is_passed_on_and_unmounts(work):
    lower, before = make_lower(work)
    started = j(work, "started")
    guard = Overlay(lower)
    with _LIVE_LOCK:
        _LIVE.append(guard)
    p = subprocess.Popen([OVLFS, "run", "--on-exit", "preserve", lower, "--",
                          "sh", "-c", 'echo x > new; touch "$0"; exec sleep 60',
                          started],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: os.path.exists(started) or p.poll() is not None, 30)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert not is_mounted(guard.mp)
    assert open(j(lower + ".upper", "new")).read() == "x\n"
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")


def test_run_sigint_to_group_only_ends_command(work):
    # Ctrl-C at a terminal goes to the whole process group: the command
    # dies of it, ovlfs ignores it, unmounts and finishes
    lower, _ = make_lower(work)
    started = j(work, "started")
    guard = Overlay(lower)
    with _LIVE_LOCK:
        _LIVE.append(guard)
    p = subprocess.Popen([OVLFS, "run", "--on-exit", "discard", lower, "--",
                          "sh", "-c", 'touch "$0"; exec sleep 60', started],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert wait_for(lambda: os.path.exists(started) or p.poll() is not None, 30)
        assert p.poll() is None, p.communicate()
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGINT, err
    assert not is_mounted(guard.mp)
    assert not os.path.exists(lower + ".upper")


def test_run_mount_failure(work):
    lower = j(work, "nothere")
    marker = j(work, "ran")
    r = run_tool(work, ["--on-exit", "commit", lower, "--", "touch", marker],
                 lower=lower)
    assert r.returncode == 1
    assert r.err.startswith("ovlfs: ") and "nothere" in r.err, r.err
    assert not os.path.exists(marker)
    assert not os.path.exists(lower + ".upper")


def test_run_finish_failure_keeps_upper(work):
    # committing needs the lower writable: a read-only bind mount refuses it
    lower, before = make_lower(work)
    ro = j(work, "ro")
    os.mkdir(ro)
    if run(["mount", "--bind", "-o", "ro", lower, ro]).returncode != 0:
        pytest.skip("cannot make a read-only bind mount")
    try:
        r = run_tool(work, ["--on-exit", "commit", "--upper", j(work, "up"), ro,
                            "--", "sh", "-c", "echo x > new"], lower=ro,
                     other_mounts=[os.fsencode(ro)])
    finally:
        run(["umount", ro])
    assert r.returncode == 1, r.err
    assert "ovlfs: " in r.err and "not implemented" not in r.err, r.err
    assert open(j(work, "up", "new")).read() == "x\n"
    assert_same_tree(snapshot(lower), before, "lower now", "lower before")
