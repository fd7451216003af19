"""The man pages: they render without a warning, and they cannot drift
silently from the tool and the header: every command and option `ovlfs
help` lists is in ovlfs(1), every function, type and constant of
include/ovlfs.h is in ovlfs(3), whose SYNOPSIS follows the header's order.
"""

import os
import re

import pytest

from conftest import REPO, run
from test_install import header_functions, tool_commands, tool_options

MAN1 = os.path.join(REPO, "man", "ovlfs.1")
MAN3 = os.path.join(REPO, "man", "ovlfs.3")
HEADER = os.path.join(REPO, "include", "ovlfs.h")


def groff_warnings(path, cwd=None):
    r = run(["groff", "-man", "-Tutf8", "-ww", "-z", path], cwd=cwd)
    return r.returncode, r.err


def render(path):
    """Plain text of the page, one output line per input paragraph (lines
    so long that nothing is broken or hyphenated)."""
    r = run(["groff", "-man", "-Tascii", "-P-c", "-P-b", "-P-o", "-P-u",
             "-rLL=5000n", "-rHY=0", path], check=True)
    return r.out


def sections(text):
    """{section or subsection heading: its text}, headings as rendered."""
    out = {}
    cur = None
    for line in text.splitlines():
        if re.match(r"^[A-Z]", line) or re.match(r"^   \S", line):
            cur = line.strip()
            out[cur] = ""
        elif cur is not None:
            out[cur] += line + "\n"
    return out


def words(text):
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


@pytest.mark.parametrize("page", ["ovlfs.1", "ovlfs.3"])
def test_renders_without_warnings(page):
    rc, err = groff_warnings(os.path.join(REPO, "man", page))
    assert rc == 0 and err == "", "groff on %s:\n%s" % (page, err)
    r = run(["man", "--warnings", "-l", "-Tutf8", os.path.join(REPO, "man", page)],
            env=dict(os.environ, MANWIDTH="80"))
    assert r.returncode == 0 and r.err == "", "man --warnings on %s:\n%s" % (
        page, r.err)


def test_groff_catches_warnings(tmp_path):
    """The oracle above works: a page with a mistake does warn."""
    bad = tmp_path / "bad.1"
    bad.write_text(".TH BAD 1\n.SH NAME\nbad \\- bad\n.XY undefined macro\n"
                   ".B\n\\fBunclosed\n")
    rc, err = groff_warnings(str(bad))
    assert err != "", "groff -ww found nothing wrong in a broken page"


def test_every_command_in_ovlfs1():
    text = render(MAN1)
    secs = sections(text)
    synopsis = secs["SYNOPSIS"]
    cmds = tool_commands()
    assert len(cmds) >= 8
    for c in cmds:
        assert re.search(r"^\s*ovlfs %s\b" % c, synopsis, re.M), \
            "ovlfs %s missing from the SYNOPSIS of ovlfs.1" % c
        heads = [h for h in secs if h.startswith("ovlfs %s " % c) or
                 h == "ovlfs " + c]
        assert heads, "no subsection 'ovlfs %s ...' in ovlfs.1" % c


def test_every_option_in_ovlfs1():
    """Each option line of `ovlfs help CMD` ("-u, --upper DIR"): one of its
    spellings in the command's own subsection, all of them somewhere."""
    text = render(MAN1)
    secs = sections(text)
    everywhere = words(text)
    for c in tool_commands():
        usage = run_help(c)
        own = "".join(h + "\n" + body for h, body in secs.items()
                      if h.startswith("ovlfs %s " % c) or h == "ovlfs " + c)
        own_words = words(own)
        for group in option_groups(usage):
            lost = [o for o in group if o not in everywhere]
            assert not lost, "ovlfs %s: %s not in ovlfs.1" % (c, lost)
            if set(group) & {"-h", "--help"}:
                continue            # COMMON OPTIONS says it for all
            assert set(group) & own_words, \
                "ovlfs %s: %s not in its subsection of ovlfs.1" % (c, group)
    assert "--version" in everywhere


def run_help(cmd):
    return run([os.path.join(os.environ.get("OVLFS_BUILD",
                                            os.path.join(REPO, "build")), "ovlfs"),
                "help", cmd], check=True).out


def option_groups(usage):
    """[["-u", "--upper"], ["--json"], ...] from a usage text."""
    if "options:" not in usage:
        return []
    groups = []
    for line in usage.split("options:", 1)[1].splitlines():
        m = re.match(r"\s+(-\S.*?)(\s{2,}|$)", line)
        if m:
            groups.append(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)",
                                     m.group(1)))
    return groups


def test_option_groups_parse():
    """The parser the option test relies on sees the options (it would
    otherwise pass vacuously)."""
    groups = option_groups(run_help("mount"))
    assert ["-u", "--upper"] in groups and ["-h", "--help"] in groups
    assert sorted(tool_options("commit")) == sorted(
        o for g in option_groups(run_help("commit")) for o in g)


def header_names():
    with open(HEADER) as f:
        text = f.read()
    code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    consts = sorted(set(re.findall(r"\b(OVLFS_[A-Z0-9_]+)\b", code)) - {"OVLFS_H"})
    types = sorted(set(re.findall(r"\(\*(ovlfs_\w+)\)", code)) |
                   set(re.findall(r"\b(?:struct|enum)\s+(ovlfs_\w+)\s*\{", code)))
    return consts, types


def test_every_function_in_ovlfs3():
    text = render(MAN3)
    desc = text.split("\nDESCRIPTION\n", 1)[1]
    # the tags of the .TP entries: "ovlfs_new()", "ovlfs_lower(), ..."
    tags = set()
    for line in desc.splitlines():
        if re.match(r"^ {7}ovlfs_\w+\(\)(, ovlfs_\w+\(\))*$", line):
            tags |= set(re.findall(r"ovlfs_\w+\(\)", line))
    funcs = header_functions()
    assert len(funcs) >= 30 and "ovlfs_new" in funcs
    for f in funcs:
        assert f + "(" in text.split("\nDESCRIPTION\n", 1)[0], \
            "%s missing from the SYNOPSIS of ovlfs.3" % f
        assert f + "()" in tags, "%s() has no entry of its own in ovlfs.3" % f

    consts, types = header_names()
    assert "OVLFS_COMMIT_ATOMIC" in consts and "ovlfs_diff_fn" in types
    for name in consts + types:
        assert re.search(r"\b%s\b" % name, text), "%s missing from ovlfs.3" % name


def test_ovlfs3_synopsis_in_header_order():
    text = render(MAN3)
    synopsis = text.split("\nSYNOPSIS\n", 1)[1].split("\nDESCRIPTION\n", 1)[0]
    order = []
    for m in re.finditer(r"\b(ovlfs_\w+)\(", synopsis):
        if m.group(1) not in order:
            order.append(m.group(1))
    assert order == header_functions()
