"""rename(2) and renameat2(2) in all layer combinations."""

import errno
import os

import pytest

from conftest import (F, D, L, renameat2, RENAME_NOREPLACE, RENAME_EXCHANGE,
                      upper_listing)


def j(*p):
    return os.path.join(*p)


TREE = {
    "a": "lower a\n",
    "b": "lower b\n",
    "c": F("lower c\n", mode=0o600, xattrs={"user.c": "c"}),
    "d": {"x": "x\n", "y": {"deep": "deep\n", "deeper": {"z": "z\n"}}, "w": "w\n"},
    "e": {},
    "e2": {},
    "full": {"k": "k\n"},
    "ln": L("a"),
    "sub": {"s1": "s1\n"},
}


def assert_enoent(path):
    with pytest.raises(FileNotFoundError):
        os.lstat(path)


def test_rename_file_over_file(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "a"), j(r, "b")))            # lower over lower
    sc.both(lambda r: open(j(r, "b")).read())
    assert_enoent(sc.m("a"))
    sc.both(lambda r: open(j(r, "new"), "w").write("new\n"))
    sc.both(lambda r: os.rename(j(r, "new"), j(r, "c")))          # upper over lower
    sc.both(lambda r: os.rename(j(r, "b"), j(r, "sub/s1")))        # cross dir
    sc.both(lambda r: open(j(r, "n2"), "w").write("n2\n"))
    sc.both(lambda r: os.rename(j(r, "sub/s1"), j(r, "n2")))       # lower over upper
    sc.both(lambda r: os.rename(j(r, "ln"), j(r, "ln2")))          # symlink
    sc.check()
    sc.remount()
    sc.check()


def test_rename_to_same_name_and_missing(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "a"), j(r, "a")))
    sc.both(lambda r: os.rename(j(r, "nope"), j(r, "a")))
    sc.both(lambda r: os.rename(j(r, "a"), j(r, "nodir/a")))
    sc.both(lambda r: os.rename(j(r, "a"), j(r, "d")))            # EISDIR
    sc.both(lambda r: os.rename(j(r, "d"), j(r, "a")))            # ENOTDIR
    sc.both(lambda r: os.rename(j(r, "d"), j(r, "d/y/inside")))   # EINVAL
    sc.check()


def test_rename_lower_dir_with_children(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "d"), j(r, "moved")))
    assert_enoent(sc.m("d"))
    assert "d" not in os.listdir(sc.mnt)
    sc.both(lambda r: sorted(os.listdir(j(r, "moved"))))
    sc.both(lambda r: sorted(os.listdir(j(r, "moved/y"))))
    sc.both(lambda r: open(j(r, "moved/y/deeper/z")).read())
    sc.both(lambda r: os.stat(j(r, "d/x")))
    sc.check()
    sc.remount()
    assert_enoent(sc.m("d"))
    sc.check()
    # the old name is free for a new, empty directory
    sc.both(lambda r: os.mkdir(j(r, "d")))
    sc.both(lambda r: os.listdir(j(r, "d")))
    sc.both(lambda r: os.stat(j(r, "d/x")))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_lower_dir_and_modify_children(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "d"), j(r, "e/moved")))
    sc.both(lambda r: open(j(r, "e/moved/x"), "a").write("more"))
    sc.both(lambda r: os.unlink(j(r, "e/moved/w")))
    sc.both(lambda r: os.rename(j(r, "e/moved/y"), j(r, "y2")))
    sc.both(lambda r: os.rename(j(r, "y2/deeper"), j(r, "e/moved/deeper")))
    sc.check()
    sc.remount()
    sc.check()
    sc.both(lambda r: os.rename(j(r, "e/moved"), j(r, "d")))     # back home
    sc.check()
    sc.remount()
    sc.check()


def test_rename_dir_over_empty_lower_dir(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "d"), j(r, "e")))
    sc.both(lambda r: sorted(os.listdir(j(r, "e"))))
    assert_enoent(sc.m("d"))
    sc.both(lambda r: os.mkdir(j(r, "nd")))
    sc.both(lambda r: os.rename(j(r, "nd"), j(r, "e2")))          # upper dir over lower
    sc.both(lambda r: os.listdir(j(r, "e2")))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_dir_over_nonempty_dir(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "e"), j(r, "full")))         # only lower child
    sc.both(lambda r: os.unlink(j(r, "full/k")))
    sc.both(lambda r: os.rename(j(r, "e"), j(r, "full")))         # now empty
    sc.both(lambda r: os.listdir(j(r, "full")))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_noreplace(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: renameat2(j(r, "a"), j(r, "b"), RENAME_NOREPLACE))
    sc.both(lambda r: renameat2(j(r, "a"), j(r, "fresh"), RENAME_NOREPLACE))
    sc.both(lambda r: renameat2(j(r, "d"), j(r, "e"), RENAME_NOREPLACE))
    sc.both(lambda r: os.unlink(j(r, "b")))
    sc.both(lambda r: renameat2(j(r, "fresh"), j(r, "b"), RENAME_NOREPLACE))  # whited out
    sc.check()
    sc.remount()
    sc.check()


def test_rename_exchange_files(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: renameat2(j(r, "a"), j(r, "c"), RENAME_EXCHANGE))
    sc.both(lambda r: (open(j(r, "a")).read(), open(j(r, "c")).read()))
    sc.both(lambda r: renameat2(j(r, "a"), j(r, "missing"), RENAME_EXCHANGE))
    sc.both(lambda r: open(j(r, "up"), "w").write("up"))
    sc.both(lambda r: renameat2(j(r, "up"), j(r, "sub/s1"), RENAME_EXCHANGE))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_exchange_file_and_dir(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: renameat2(j(r, "b"), j(r, "d"), RENAME_EXCHANGE))
    sc.both(lambda r: sorted(os.listdir(j(r, "b"))))
    sc.both(lambda r: open(j(r, "d")).read())
    sc.both(lambda r: open(j(r, "b/y/deep")).read())
    sc.check()
    sc.remount()
    sc.check()


def test_rename_exchange_dirs(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: renameat2(j(r, "d"), j(r, "sub"), RENAME_EXCHANGE))
    sc.both(lambda r: (sorted(os.listdir(j(r, "d"))), sorted(os.listdir(j(r, "sub")))))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_then_recreate_source(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "a"), j(r, "a.bak")))
    sc.both(lambda r: open(j(r, "a"), "w").write("replacement"))
    sc.both(lambda r: os.rename(j(r, "sub"), j(r, "sub.bak")))
    sc.both(lambda r: os.mkdir(j(r, "sub")))
    sc.both(lambda r: os.listdir(j(r, "sub")))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_chain_and_swap_back(scenario):
    sc = scenario(TREE)
    sc.both(lambda r: os.rename(j(r, "a"), j(r, "tmp")))
    sc.both(lambda r: os.rename(j(r, "b"), j(r, "a")))
    sc.both(lambda r: os.rename(j(r, "tmp"), j(r, "b")))
    sc.both(lambda r: os.rename(j(r, "d/x"), j(r, "d/y/x")))
    sc.both(lambda r: os.rename(j(r, "d/y/x"), j(r, "d/x")))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_keeps_open_fd_working(scenario):
    sc = scenario(TREE)

    def fn(r):
        fd = os.open(j(r, "c"), os.O_RDWR)
        try:
            os.rename(j(r, "c"), j(r, "d/c2"))
            os.pwrite(fd, b"XY", 0)
            return os.pread(fd, 100, 0), open(j(r, "d/c2"), "rb").read()
        finally:
            os.close(fd)
    sc.both(fn)
    sc.check()
