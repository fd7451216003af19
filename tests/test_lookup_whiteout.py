"""Whiteouts and opaque directories: what lands in the upper, what the mount
shows, and that a remount (re-reading the on-disk format) shows the same."""

import errno
import hashlib
import os
import stat

import pytest

from conftest import (F, D, L, Overlay, build, snapshot, assert_same_tree, cp_a,
                      run, upper_listing, IS_ROOT)


def j(*p):
    return os.path.join(*p)


def assert_enoent(path):
    with pytest.raises(FileNotFoundError):
        os.lstat(path)


def is_whiteout_file(path):
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


TREE = {
    "f": "lower f\n",
    "d": {"x": "x\n", "y": {"deep": "deep\n"}, "z": "z\n"},
    "keep": "keep\n",
}


def test_delete_lower_file_whiteout(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.unlink(j(r, "f")))
    wh = sc.u(".wh.f")
    assert os.path.lexists(wh), upper_listing(sc.upper)
    assert is_whiteout_file(wh)
    assert not os.path.lexists(sc.u("f"))
    assert_enoent(sc.m("f"))
    assert "f" not in os.listdir(sc.mnt)
    assert ".wh.f" not in os.listdir(sc.mnt)
    assert_enoent(sc.m(".wh.f"))
    sc.check()
    sc.remount()
    assert_enoent(sc.m("f"))
    sc.check()


def test_delete_nested_lower_file(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.unlink(j(r, "d/y/deep")))
    assert is_whiteout_file(sc.u("d/y/.wh.deep"))
    assert sorted(os.listdir(sc.m("d/y"))) == []
    sc.check()
    sc.remount()
    sc.check()


def test_recreate_after_delete(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.unlink(j(r, "f")))
    sc.both(lambda r: open(j(r, "f"), "w").write("new f\n"))
    sc.both(lambda r: open(j(r, "f")).read())
    sc.check()
    sc.remount()
    sc.check()
    sc.both(lambda r: os.unlink(j(r, "f")))
    sc.check()
    sc.remount()
    sc.check()


def test_recreate_file_as_dir_and_back(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.unlink(j(r, "f")))
    sc.both(lambda r: os.mkdir(j(r, "f")))
    sc.both(lambda r: open(j(r, "f/inner"), "w").write("i"))
    sc.check()
    sc.remount()
    sc.check()
    sc.both(lambda r: os.unlink(j(r, "f/inner")))
    sc.both(lambda r: os.rmdir(j(r, "f")))
    sc.both(lambda r: os.symlink("keep", j(r, "f")))
    sc.check()
    sc.remount()
    sc.check()


def rm_rf(path):
    for rootdir, dirs, files in os.walk(path, topdown=False):
        for n in files:
            os.unlink(j(rootdir, n))
        for n in dirs:
            p = j(rootdir, n)
            if os.path.islink(p):
                os.unlink(p)
            else:
                os.rmdir(p)
    os.rmdir(path)


def test_rmdir_then_mkdir_is_opaque(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: rm_rf(j(r, "d")))
    assert_enoent(sc.m("d"))
    assert "d" not in os.listdir(sc.mnt)
    sc.check()
    sc.both(lambda r: os.mkdir(j(r, "d"), 0o705))
    # new dir is empty in every way
    assert os.listdir(sc.m("d")) == []
    for n in ("x", "y", "z", "y/deep"):
        assert_enoent(sc.m("d", n))
    assert os.path.lexists(sc.u("d", ".wh..wh..opq")), upper_listing(sc.upper)
    assert is_whiteout_file(sc.u("d", ".wh..wh..opq"))
    assert ".wh..wh..opq" not in os.listdir(sc.m("d"))
    assert_enoent(sc.m("d", ".wh..wh..opq"))
    sc.check()
    # creating a name that existed in the lower dir gives a fresh file
    sc.both(lambda r: open(j(r, "d/x"), "w").write("fresh"))
    sc.both(lambda r: sorted(os.listdir(j(r, "d"))))
    sc.check()
    sc.remount()
    assert sorted(os.listdir(sc.m("d"))) == ["x"]
    assert_enoent(sc.m("d/y"))
    sc.check()
    sc.both(lambda r: os.unlink(j(r, "d/x")))
    # rmdir of the opaque dir succeeds though lower d still has children
    sc.both(lambda r: os.rmdir(j(r, "d")))
    sc.check()
    sc.remount()
    sc.check()


def test_opaque_dir_survives_remount_and_rmdir(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: rm_rf(j(r, "d")))
    sc.both(lambda r: os.mkdir(j(r, "d")))
    sc.remount()
    assert os.listdir(sc.m("d")) == []
    for n in ("x", "y", "z"):
        assert_enoent(sc.m("d", n))
    sc.both(lambda r: os.rmdir(j(r, "d")))
    assert_enoent(sc.m("d"))
    sc.check()
    sc.remount()
    sc.check()


def test_rmdir_merged_dir_after_deleting_children(scenario):
    sc = scenario({"d": {"a": "1", "b": "2"}, "e": {}})
    sc.both(lambda r: os.unlink(j(r, "d/a")))
    sc.both(lambda r: open(j(r, "d/c"), "w").write("3"))
    sc.both(lambda r: os.rmdir(j(r, "d")))           # ENOTEMPTY: b (lower), c
    sc.both(lambda r: os.unlink(j(r, "d/b")))
    sc.both(lambda r: os.rmdir(j(r, "d")))           # ENOTEMPTY: c
    sc.both(lambda r: os.unlink(j(r, "d/c")))
    sc.both(lambda r: os.rmdir(j(r, "d")))           # whiteouts don't count
    assert is_whiteout_file(sc.u(".wh.d"))
    sc.check()
    sc.remount()
    sc.check()


def test_upper_only_dir_rmdir_leaves_nothing(scenario):
    sc = scenario({})
    sc.both(lambda r: os.mkdir(j(r, "n")))
    sc.both(lambda r: open(j(r, "n/f"), "w").close())
    sc.both(lambda r: os.unlink(j(r, "n/f")))
    sc.both(lambda r: os.rmdir(j(r, "n")))
    assert not os.path.lexists(sc.u("n"))
    sc.check()


def test_whiteout_names_hidden_and_unreachable(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.unlink(j(r, "f")))
    sc.both(lambda r: rm_rf(j(r, "d")))
    sc.both(lambda r: os.mkdir(j(r, "d")))
    for n in (".wh.f", ".wh.d", ".wh..wh..opq", "d/.wh..wh..opq", ".wh."):
        assert_enoent(sc.m(n))
    for dirpath, dirs, files in os.walk(sc.mnt):
        for n in dirs + files:
            assert not n.startswith(".wh."), j(dirpath, n)
    sc.check()


def test_premade_upper_markers_are_honoured(work):
    """An upper written offline in the documented format is read correctly."""
    lower = j(work, "lower")
    upper = j(work, "lower.upper")
    os.mkdir(lower)
    build(lower, {"gone": "g", "d": {"old": "o"}, "stay": "s",
                  "e": {"e1": "1", "e2": "2"}})
    os.mkdir(upper)
    build(upper, {".wh.gone": "", "d": {".wh..wh..opq": "", "new": "n"},
                  "e": {".wh.e1": ""}, "added": "a"})
    o = Overlay(lower)
    o.mount()
    assert sorted(os.listdir(o.mp)) == ["added", "d", "e", "stay"]
    assert sorted(os.listdir(j(o.mp, "d"))) == ["new"]
    assert sorted(os.listdir(j(o.mp, "e"))) == ["e2"]
    assert_enoent(j(o.mp, "gone"))
    assert_enoent(j(o.mp, "d/old"))
    assert_enoent(j(o.mp, "e/e1"))
    assert open(j(o.mp, "added")).read() == "a"
    assert open(j(o.mp, "e/e2")).read() == "2"


def test_lower_names_with_wh_prefix_hidden(overlay):
    o = overlay({".wh.sneaky": "s", "ok": "o"})
    assert sorted(os.listdir(o.mp)) == ["ok"]
    assert_enoent(j(o.mp, ".wh.sneaky"))


def test_kernel_overlay_agrees(work):
    """Same sequence on ovlfs and on the kernel's overlayfs: same merged view."""
    if not IS_ROOT:
        pytest.skip("kernel overlayfs needs root")
    spec = {"f": "f", "g": "g", "d": {"a": "a", "s": {"b": "b"}}, "e": {"x": "x"},
            "l": L("f")}
    lower = j(work, "lower")
    os.mkdir(lower)
    build(lower, spec)
    k = {n: j(work, "k" + n) for n in ("upper", "work", "mnt")}
    for p in k.values():
        os.mkdir(p)
    r = run(["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir=%s,upperdir=%s,workdir=%s" % (lower, k["upper"], k["work"]),
             k["mnt"]])
    if r.returncode != 0:
        pytest.skip("kernel overlayfs mount failed: " + r.err.strip())
    try:
        o = Overlay(lower)
        o.mount()

        def ops(root):
            os.unlink(j(root, "f"))
            open(j(root, "f"), "w").write("new")
            os.unlink(j(root, "g"))
            os.unlink(j(root, "d/s/b"))
            os.rmdir(j(root, "d/s"))
            os.mkdir(j(root, "d/s"))
            open(j(root, "d/s/c"), "w").write("c")
            os.unlink(j(root, "e/x"))
            os.rmdir(j(root, "e"))
            os.chmod(j(root, "d/a"), 0o600)
            os.setxattr(j(root, "d/a"), "user.q", b"1")
            os.rename(j(root, "d/a"), j(root, "a2"))
            os.symlink("a2", j(root, "l2"))
        ops(k["mnt"])
        ops(o.mp)
        assert_same_tree(snapshot(o.mp), snapshot(k["mnt"]), "ovlfs", "kernel overlay")
        o.remount()
        assert_same_tree(snapshot(o.mp), snapshot(k["mnt"]), "ovlfs", "kernel overlay")
    finally:
        run(["umount", k["mnt"]])
