"""`ovlfs diff`: what committing the upper would change in the lower.

The exact semantics (whiteouts, opaque directories, type changes, content
versus metadata, ordering) are pinned by the C unit test
tests/unit/test_diff.c on hand-written uppers. These tests check the tool
end to end: changes made through a real mount, then `ovlfs diff LOWER`
(text and --json) after unmounting.

The output format is only assumed loosely: one change per line whose first
token starts with A, M or D and which holds the path as a token starting
with "/" (the test paths hold no spaces); for --json, a list of objects (or
one object per line, or a list under some key) with "path" and "change".
"""

import hashlib
import json
import os
import subprocess

import pytest

from conftest import OVLFS, Overlay, build, ovlfs, run, L


def _diff_available():
    try:
        r = subprocess.run([OVLFS, "diff", "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


pytestmark = pytest.mark.skipif(
    not _diff_available(),
    reason="`ovlfs diff` is not available yet (`%s diff --help` fails)" % OVLFS)


def j(*p):
    return os.path.join(*p)


def parse_text(out):
    """[(change, path bytes)] from the text output, in order."""
    res = []
    for line in out.splitlines():
        toks = line.split()
        if not toks or toks[0][:1] not in (b"A", b"M", b"D"):
            continue
        paths = [t for t in toks[1:] if t.startswith(b"/")]
        assert paths, "no path in diff line %r" % line
        res.append((toks[0][:1].decode(), unescape(paths[0])))
    return res


def unescape(p):
    """A non-UTF-8 name may be printed raw or escaped (\\xff or \\377)."""
    if b"\\" not in p:
        return p
    try:
        return p.decode("ascii").encode("latin-1").decode(
            "unicode_escape").encode("latin-1")
    except (UnicodeError, ValueError):
        return p


def _json_entries(doc):
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        if "path" in doc:
            return [doc]
        for v in doc.values():
            if isinstance(v, list):
                return v
    raise AssertionError("unexpected JSON document: %r" % (doc,))


def parse_json(out):
    """[(change, path str, entry dict)] from the --json output, in order."""
    text = out.decode()
    try:
        ents = _json_entries(json.loads(text)) if text.strip() else []
    except ValueError:
        ents = [json.loads(l) for l in text.splitlines() if l.strip()]
    res = []
    for e in ents:
        ch = str(e["change"])[:1].upper()
        assert ch in "AMD", "unknown change %r" % (e,)
        res.append((ch, e["path"], e))
    return res


def diff(lower, *extra):
    r = run([OVLFS, "diff"] + list(extra) + [lower], timeout=60)
    assert r.returncode == 0, "ovlfs diff failed (%d): %s" % (r.returncode, r.err)
    return r.stdout


def path_order(p):
    """Sort key of the promised order: per-directory bytewise, parent first."""
    return os.fsencode(p).split(b"/")


def check_order(paths):
    assert paths == sorted(paths, key=path_order), \
        "diff lines not in path order:\n%s" % "\n".join(map(repr, paths))


TREE = {
    "etc": {"hostname": "old\n", "passwd": "root:x:0:0\n", "untouched": "u\n"},
    "usr": {"bin": {"tool": "#!/bin/sh\n", "other": "o"},
            "share": {"doc": {"readme": "r"}}},
    "var": {"log": {"a": "1", "sub": {"b": "2"}}},
    "same": "abcd",
}


def make_changes(mp):
    with open(j(mp, "etc/hostname"), "w") as f:
        f.write("new\n")
    with open(j(mp, "etc/new.conf"), "w") as f:
        f.write("n\n")
    os.chmod(j(mp, "etc/passwd"), 0o600)
    os.unlink(j(mp, "usr/bin/tool"))
    subprocess.run(["rm", "-rf", j(mp, "var/log")], check=True)
    os.makedirs(j(mp, "opt/app"))
    with open(j(mp, "opt/app/f"), "w") as f:
        f.write("f")
    # Same size, and the old mtime put back: only the bytes tell.
    st = os.stat(j(mp, "same"))
    with open(j(mp, "same"), "r+") as f:
        f.write("abce")
    os.utime(j(mp, "same"), ns=(st.st_atime_ns, st.st_mtime_ns))


MUST = {
    ("M", "/etc/hostname"), ("A", "/etc/new.conf"), ("M", "/etc/passwd"),
    ("A", "/opt"), ("A", "/opt/app"), ("A", "/opt/app/f"),
    ("M", "/same"), ("D", "/usr/bin/tool"),
    ("D", "/var/log"), ("D", "/var/log/a"), ("D", "/var/log/sub"),
    ("D", "/var/log/sub/b"),
}
# Directories whose metadata (mtime) the changes above may touch.
MAY = {("M", "/"), ("M", "/etc"), ("M", "/usr"), ("M", "/usr/bin"),
       ("M", "/var")}


def test_diff_after_mount(overlay):
    o = overlay(TREE)
    make_changes(o.mp)
    o.umount()

    got = parse_text(diff(o.lower))
    got_s = {(c, os.fsdecode(p)) for c, p in got}
    assert MUST <= got_s, "missing: %r\ngot: %r" % (sorted(MUST - got_s), got)
    assert got_s <= MUST | MAY, "unexpected: %r" % sorted(got_s - MUST - MAY)
    assert len(got) == len(got_s), "a path reported twice: %r" % (got,)
    check_order([os.fsdecode(p) for _, p in got])

    js = parse_json(diff(o.lower, "--json"))
    assert [(c, p) for c, p, _ in js] == [(c, os.fsdecode(p)) for c, p in got], \
        "--json and text disagree"
    ent = {p: e for _, p, e in js}
    # Whatever shape "what" has, the same-size rewrite is a content change
    # and the chmod is a mode change, not a content one.
    for key in ("what", "changes", "changed"):
        if key in ent["/same"]:
            assert "content" in json.dumps(ent["/same"][key]).lower()
            assert "content" not in json.dumps(ent["/etc/passwd"][key]).lower()
            assert "mode" in json.dumps(ent["/etc/passwd"][key]).lower()


def test_diff_no_changes(overlay):
    o = overlay(TREE)
    # Reading copies nothing up; the upper gets only ovlfs's own stamp.
    for root, dirs, files in os.walk(o.mp):
        for f in files:
            with open(j(root, f), "rb") as fh:
                fh.read()
    o.umount()
    assert parse_text(diff(o.lower)) == []
    assert parse_json(diff(o.lower, "--json")) == []


def test_diff_never_mounted(work):
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, TREE)
    assert not os.path.exists(lower + ".upper")
    assert parse_text(diff(lower)) == []


def test_diff_missing_lower(work):
    lower = j(work, "nonexistent")
    r = ovlfs("diff", lower)
    assert r.returncode != 0
    assert lower in r.err, "error does not name the lower: %r" % r.err


def test_diff_hand_written_upper(work):
    """An upper written by hand: long-name whiteout, opaque directory, a
    lower symlink to /etc replaced by a directory, a non-UTF-8 name."""
    lower, upper = j(work, "lower"), j(work, "lower.upper")
    long_name = "l" * 253
    os.mkdir(lower)
    build(lower, {long_name: "x", "keep": "k", "e": L("/etc"),
                  "d": {"x": "1", "y": "2"}})
    os.mkdir(upper)
    build(upper, {"e": {"hostname": "h"},
                  "d": {".wh..wh..opq": "", "z": "3"},
                  b"\xff\xfe": "bin",
                  ".wh..wh.tmp.1.2": {"junk": "j"}})
    wh = ".wh..wh.lng." + hashlib.sha256(long_name.encode()).hexdigest()
    with open(j(upper, wh), "w") as f:
        f.write(long_name)
    # The merged directories keep the lower's times, as a copy-up does.
    st = os.stat(j(lower, "d"))
    os.utime(j(upper, "d"), ns=(st.st_atime_ns, st.st_mtime_ns))

    got = [(c, bytes(p)) for c, p in parse_text(diff(lower))]
    assert got == [
        ("D", b"/d/x"), ("D", b"/d/y"), ("A", b"/d/z"),
        ("M", b"/e"), ("A", b"/e/hostname"),
        ("D", b"/" + long_name.encode()),
        ("A", b"/\xff\xfe"),
    ], got
