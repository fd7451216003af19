"""The library through examples/quickstart."""

import os

import pytest

from conftest import QUICKSTART, run, mounts_under, build


def j(*p):
    return os.path.join(*p)


def test_quickstart(work):
    if not os.path.exists(QUICKSTART):
        pytest.fail("quickstart not built at %s" % QUICKSTART)
    lower = j(work, "rootfs")
    os.mkdir(lower)
    build(lower, {"etc": {"hostname": "box\n"}})
    r = run([QUICKSTART, lower], timeout=60)
    assert r.returncode == 0, r.out + r.err
    assert open(j(lower + ".upper", "hello.txt")).read().rstrip("\n") == "world"
    assert not os.path.exists(j(lower, "hello.txt"))
    assert sorted(os.listdir(lower)) == ["etc"]
    assert not mounts_under(work), "quickstart left a mount behind"


def test_quickstart_twice_reuses_upper(work):
    lower = j(work, "rootfs")
    os.mkdir(lower)
    for _ in range(2):
        r = run([QUICKSTART, lower], timeout=60)
        assert r.returncode == 0, r.out + r.err
    assert open(j(lower + ".upper", "hello.txt")).read().rstrip("\n") == "world"
    assert not mounts_under(work)


def test_quickstart_bad_lower(work):
    lower = j(work, "missing")
    r = run([QUICKSTART, lower], timeout=60)
    assert r.returncode != 0
    assert "missing" in r.out + r.err
    assert not os.path.exists(lower + ".upper")
    assert not mounts_under(work)
