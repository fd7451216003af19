"""Unusual names: unicode, non-UTF-8 bytes, 251-256 byte names (hashed long
whiteouts), and the reserved `.wh.` prefix."""

import errno
import hashlib
import os
import stat

import pytest

from conftest import F, D, L, upper_listing, renameat2, RENAME_NOREPLACE


def j(*p):
    return os.path.join(*[os.fsencode(x) for x in p])


def long_wh(name):
    return b".wh..wh.lng." + hashlib.sha256(name).hexdigest().encode()


def assert_errno(e, fn, *a, **kw):
    with pytest.raises(OSError) as ei:
        fn(*a, **kw)
    assert ei.value.errno == e, "expected %s, got %r" % (errno.errorcode[e], ei.value)


def test_unicode_names(scenario):
    sc = scenario({"héllo wörld": "h", "日本語": {"ファイル": "f"}, "emoji 🎉": "e",
                   "spaces  and\ttab": "s", "-dash": "d", "new\nline": "n"})
    sc.both(lambda r: sorted(os.listdir(r)))
    sc.both(lambda r: open(j(r, "日本語/ファイル")).read())
    sc.both(lambda r: os.unlink(j(r, "héllo wörld")))
    sc.both(lambda r: open(j(r, "Ωμέγα"), "w").write("o"))
    sc.both(lambda r: os.rename(j(r, "emoji 🎉"), j(r, "日本語/🎉")))
    sc.both(lambda r: os.mkdir(j(r, "каталог")))
    sc.both(lambda r: os.unlink(j(r, "new\nline")))
    assert os.path.exists(os.path.join(sc.upper, ".wh.héllo wörld"))
    sc.check()
    sc.remount()
    sc.check()


BAD = b"bad\xff\xfename"
BADDIR = b"dir\x80"


def test_non_utf8_names(scenario):
    sc = scenario({BAD: "bad", BADDIR: {b"in\xc3\x28": "x", b"keep": "k"}})
    sc.both(lambda r: sorted(os.listdir(os.fsencode(r))))
    sc.both(lambda r: sorted(os.listdir(j(r, BADDIR))))
    sc.both(lambda r: open(j(r, BAD), "rb").read())
    sc.both(lambda r: os.unlink(j(r, BADDIR, b"in\xc3\x28")))
    assert os.path.lexists(j(sc.upper, BADDIR, b".wh.in\xc3\x28"))
    sc.both(lambda r: open(j(r, b"new\xfe"), "wb").write(b"n"))
    sc.both(lambda r: os.rename(j(r, BAD), j(r, BADDIR, b"moved\xff")))
    sc.both(lambda r: os.mkdir(j(r, b"\xe9t\xe9")))
    sc.both(lambda r: os.symlink(b"\xff\xfe", j(r, b"sym\xff")))
    sc.both(lambda r: os.readlink(j(r, b"sym\xff")))
    sc.check()
    sc.remount()
    sc.check()


def test_create_255_byte_name(scenario):
    sc = scenario({})
    n = b"a" * 255
    d = b"d" * 255
    sc.both(lambda r: open(j(r, n), "wb").write(b"long"))
    sc.both(lambda r: os.mkdir(j(r, d)))
    sc.both(lambda r: open(j(r, d, n), "wb").write(b"deeper"))
    sc.both(lambda r: os.stat(j(r, n)).st_size)
    sc.both(lambda r: sorted(os.listdir(os.fsencode(r))))
    assert os.path.isfile(j(sc.upper, n))
    sc.check()
    sc.remount()
    sc.check()
    sc.both(lambda r: os.unlink(j(r, d, n)))
    sc.both(lambda r: os.rmdir(j(r, d)))
    sc.both(lambda r: os.unlink(j(r, n)))
    sc.check()


@pytest.mark.parametrize("length", [250, 251, 252, 253, 254, 255])
def test_delete_lower_long_name(scenario, length):
    name = (b"L%03d" % length) + b"x" * (length - 4)
    assert len(name) == length
    dname = (b"D%03d" % length) + b"y" * (length - 4)
    sc = scenario({name: "lower", dname: {"child": "c"}, "other": "o"})
    sc.both(lambda r: os.unlink(j(r, name)))
    sc.both(lambda r: os.unlink(j(r, dname, "child")))
    sc.both(lambda r: os.rmdir(j(r, dname)))
    up = set(os.listdir(os.fsencode(sc.upper)))
    for n in (name, dname):
        if len(n) <= 251:
            assert b".wh." + n in up, up
        else:
            wh = long_wh(n)
            assert wh in up, "hashed whiteout %r missing; upper has %r" % (wh, up)
            p = j(sc.upper, wh)
            assert stat.S_ISREG(os.lstat(p).st_mode)
            assert open(p, "rb").read() == n
    sc.both(lambda r: os.stat(j(r, name)))
    sc.both(lambda r: sorted(os.listdir(os.fsencode(r))))
    sc.check()
    sc.remount()
    sc.both(lambda r: os.stat(j(r, name)))
    sc.check()
    # the name can be used again
    sc.both(lambda r: open(j(r, name), "wb").write(b"again"))
    sc.both(lambda r: os.mkdir(j(r, dname)))
    sc.both(lambda r: os.listdir(j(r, dname)))
    sc.check()
    sc.remount()
    sc.check()


def test_rename_lower_253_byte_name(scenario):
    name = b"r" * 253
    sc = scenario({name: "content253", "d": {}})
    sc.both(lambda r: os.rename(j(r, name), j(r, "d/short")))
    sc.both(lambda r: os.stat(j(r, name)))
    sc.both(lambda r: open(j(r, "d/short"), "rb").read())
    assert long_wh(name) in os.listdir(os.fsencode(sc.upper))
    sc.check()
    sc.remount()
    sc.check()
    sc.both(lambda r: os.rename(j(r, "d/short"), j(r, name)))     # and back
    sc.both(lambda r: open(j(r, name), "rb").read())
    sc.check()
    sc.remount()
    sc.check()


def test_rename_to_long_name_over_lower(scenario):
    a = b"A" * 255
    b = b"B" * 254
    sc = scenario({a: "a", b: "b"})
    sc.both(lambda r: os.rename(j(r, a), j(r, b)))
    sc.both(lambda r: renameat2(j(r, b), j(r, a), RENAME_NOREPLACE))
    sc.check()
    sc.remount()
    sc.check()


def test_name_too_long(scenario):
    sc = scenario({"d": {}, "f": "f"})
    n = b"z" * 256
    sc.both(lambda r: open(j(r, n), "wb"))
    sc.both(lambda r: os.mkdir(j(r, "d", n)))
    sc.both(lambda r: os.symlink("f", j(r, n)))
    sc.both(lambda r: os.mkfifo(j(r, n)))
    sc.both(lambda r: os.link(j(r, "f"), j(r, n)))
    sc.both(lambda r: os.rename(j(r, "f"), j(r, n)))
    sc.both(lambda r: os.stat(j(r, n)))
    sc.both(lambda r: os.stat(j(r, b"y" * 300)))
    sc.check()
    assert upper_listing(sc.upper).keys() <= {b"", b"d"}, upper_listing(sc.upper)


RESERVED = [".wh.foo", ".wh..wh..opq", ".wh.", ".wh..wh.lng.abc", ".wh..wh.tmp.1"]


@pytest.mark.parametrize("name", RESERVED)
def test_wh_prefix_rejected(scenario, name):
    sc = scenario({"f": "f", "d": {"x": "x"}, "foo": "foo"})
    before = upper_listing(sc.upper)
    m = sc.mnt
    assert_errno(errno.EINVAL, os.open, j(m, name), os.O_CREAT | os.O_WRONLY, 0o644)
    assert_errno(errno.EINVAL, os.open, j(m, "d", name), os.O_CREAT | os.O_WRONLY, 0o644)
    assert_errno(errno.EINVAL, os.mkdir, j(m, name))
    assert_errno(errno.EINVAL, os.symlink, "f", j(m, name))
    assert_errno(errno.EINVAL, os.mkfifo, j(m, name))
    assert_errno(errno.EINVAL, os.link, j(m, "f"), j(m, name))
    assert_errno(errno.EINVAL, os.rename, j(m, "f"), j(m, name))
    assert_errno(errno.EINVAL, os.rename, j(m, "d/x"), j(m, "d", name))
    assert_errno(errno.EINVAL, os.rename, j(m, "d"), j(m, name))
    assert_errno(errno.EINVAL, renameat2, j(m, "f"), j(m, name), RENAME_NOREPLACE)
    with pytest.raises(FileNotFoundError):
        os.lstat(j(m, name))
    assert name not in os.listdir(m)
    # nothing happened: f, d/x still there, the whiteout for foo not touched
    assert sorted(os.listdir(m)) == ["d", "f", "foo"]
    assert os.listdir(j(m, "d")) == [b"x"]
    new = set(upper_listing(sc.upper)) - set(before)
    assert not [k for k in new if os.path.basename(k) == os.fsencode(name)], new
    sc.check()


def test_wh_like_names_are_fine(scenario):
    sc = scenario({})
    for n in ("a.wh.b", ".whx", "wh.x", ".wh", "..wh.", ".WH.x"):
        sc.both(lambda r: open(j(r, n), "w").write(n))
    sc.check()
    sc.remount()
    sc.check()
