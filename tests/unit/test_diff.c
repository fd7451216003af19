/*
 * ovlfs_diff() (lib/diff.c) on lower/upper pairs written by hand in the
 * format of docs/format.md: the exact sequence of callbacks.
 *
 * Each callback becomes one line "C T W PATH": change (A/M/D), type of the
 * reported object (f d l p c b s), what differs for M (c=content T=type
 * m=mode o=owner t=mtime x=xattr, "-" for none) and the path.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "offline/offline.h"
#include "test.h"

static char base[128];
static int ncase;

struct pair {
	char dir[256], lower[300], upper[300];
};

struct rec {
	char out[16384];
	size_t len;
	int calls, stop_at;
	mode_t last_mode;
	uint64_t last_size;
};

/* ROOT/REL in one of a few rotating buffers. */
static const char *at(const char *root, const char *rel)
{
	static char bufs[8][PATH_MAX];
	static int i;
	char *b = bufs[i++ % 8];

	snprintf(b, PATH_MAX, "%s/%s", root, rel);
	return b;
}

static void pair_new(struct pair *p)
{
	snprintf(p->dir, sizeof(p->dir), "%s/%d", base, ncase++);
	T_ASSERT(mkdir(p->dir, 0755) == 0);
	snprintf(p->lower, sizeof(p->lower), "%s/lower", p->dir);
	snprintf(p->upper, sizeof(p->upper), "%s/upper", p->dir);
	T_ASSERT(mkdir(p->lower, 0755) == 0 && chmod(p->lower, 0755) == 0);
	T_ASSERT(mkdir(p->upper, 0755) == 0 && chmod(p->upper, 0755) == 0);
	/* The upper root's own bookkeeping is private: never a change. */
	T_ASSERT(setxattr(p->upper, OVL_XATTR_FORMAT, "1", 1, 0) == 0);
}

static void file(const char *root, const char *rel, const char *data)
{
	int fd = open(at(root, rel), O_WRONLY | O_CREAT | O_TRUNC, 0644);

	T_ASSERT(fd >= 0);
	T_ASSERT(write(fd, data, strlen(data)) == (ssize_t)strlen(data));
	T_ASSERT(fchmod(fd, 0644) == 0);
	close(fd);
}

static void dir(const char *root, const char *rel)
{
	T_ASSERT(mkdir(at(root, rel), 0755) == 0);
	T_ASSERT(chmod(at(root, rel), 0755) == 0);
}

static void lnk(const char *root, const char *rel, const char *target)
{
	T_ASSERT(symlink(target, at(root, rel)) == 0);
}

/* The whiteout of NAME in directory REL ("." for the root) of UPPER. */
static void whiteout(const char *upper, const char *rel, const char *name)
{
	char wh[NAME_MAX + 1], path[PATH_MAX];
	bool is_long = ovl_wh_name(name, wh);
	int fd;

	snprintf(path, sizeof(path), "%s/%s/%s", upper, rel, wh);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0);
	T_ASSERT(fd >= 0);
	if (is_long)
		T_ASSERT(write(fd, name, strlen(name)) == (ssize_t)strlen(name));
	close(fd);
}

static int set_t0(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	struct timespec ts[2] = { { 1000000000, 500 }, { 1000000000, 500 } };

	(void)st; (void)flag; (void)ftw;
	return utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
}

/* Same atime and mtime on everything under ROOT, as a faithful copy-up. */
static void fix_times(const char *root)
{
	T_ASSERT(nftw(root, set_t0, 16, FTW_PHYS) == 0);
}

static void set_mtime(const char *path, long sec, long nsec)
{
	struct timespec ts[2] = { { 0, UTIME_OMIT }, { sec, nsec } };

	T_ASSERT(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) == 0);
}

static char type_char(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFREG: return 'f';
	case S_IFDIR: return 'd';
	case S_IFLNK: return 'l';
	case S_IFIFO: return 'p';
	case S_IFCHR: return 'c';
	case S_IFBLK: return 'b';
	case S_IFSOCK: return 's';
	}
	return '?';
}

static int collect(const struct ovlfs_diff_entry *e, void *arg)
{
	static const struct { unsigned bit; char c; } bits[] = {
		{ OVLFS_DIFF_CONTENT, 'c' }, { OVLFS_DIFF_TYPE, 'T' },
		{ OVLFS_DIFF_MODE, 'm' }, { OVLFS_DIFF_OWNER, 'o' },
		{ OVLFS_DIFF_MTIME, 't' }, { OVLFS_DIFF_XATTR, 'x' },
	};
	struct rec *r = arg;
	char what[8];
	size_t n = 0;

	for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++)
		if (e->what & bits[i].bit)
			what[n++] = bits[i].c;
	if (!n)
		what[n++] = '-';
	what[n] = '\0';
	T_ASSERT(e->change == OVLFS_MODIFIED || e->what == 0);
	T_ASSERT(e->change != OVLFS_MODIFIED || e->what != 0);
	r->len += snprintf(r->out + r->len, sizeof(r->out) - r->len,
			   "%c %c %s %s\n", e->change, type_char(e->mode),
			   what, e->path);
	T_ASSERT(r->len < sizeof(r->out));
	r->last_mode = e->mode;
	r->last_size = e->size;
	if (++r->calls == r->stop_at)
		return 7;
	return 0;
}

static int run_diff(const struct pair *p, struct rec *r)
{
	struct ovlfs *fs = ovlfs_new(p->lower);
	int err;

	T_ASSERT(fs);
	T_ASSERT(ovlfs_set_upper(fs, p->upper) == 0);
	memset(r->out, 0, sizeof(r->out));
	r->len = 0;
	r->calls = 0;
	err = ovlfs_diff(fs, collect, r);
	if (err < 0 && err != -7)
		fprintf(stderr, "ovlfs_diff: %s\n", ovlfs_error(fs));
	ovlfs_free(fs);
	return err;
}

static void expect(const struct pair *p, const char *want)
{
	struct rec r = { .stop_at = -1 };

	T_INTEQ(run_diff(p, &r), 0);
	T_STREQ(r.out, want);
}

static void test_added(void)
{
	struct pair p;

	pair_new(&p);
	file(p.lower, "a", "x");
	file(p.upper, "a", "x");
	file(p.upper, "newf", "n");
	dir(p.upper, "newd");
	file(p.upper, "newd/f", "1");
	dir(p.upper, "newd/sub");
	whiteout(p.upper, "newd", "ghost");	/* marker: never an entry */
	lnk(p.upper, "newl", "target");
	T_ASSERT(mkfifo(at(p.upper, "newp"), 0644) == 0);
	fix_times(p.lower);
	fix_times(p.upper);
	expect(&p, "A d - /newd\n"
		   "A f - /newd/f\n"
		   "A d - /newd/sub\n"
		   "A f - /newf\n"
		   "A l - /newl\n"
		   "A p - /newp\n");
}

static void test_deleted(void)
{
	struct pair p;
	struct rec r = { .stop_at = -1 };

	pair_new(&p);
	file(p.lower, "f", "hello");
	dir(p.lower, "d");
	file(p.lower, "d/a", "1");
	dir(p.lower, "d/b");
	file(p.lower, "d/b/c", "2");
	file(p.lower, "d/.wh.hidden", "");	/* hidden in the lower too */
	file(p.lower, "keep", "k");
	file(p.lower, "g", "old");
	whiteout(p.upper, ".", "f");
	whiteout(p.upper, ".", "d");
	whiteout(p.upper, ".", "nothere");
	/* An upper entry beats a whiteout of the same name. */
	whiteout(p.upper, ".", "g");
	file(p.upper, "g", "new");
	/* Debris of a crash, whatever it holds, is ignored. */
	dir(p.upper, ".wh..wh.tmp.1.2");
	file(p.upper, ".wh..wh.tmp.1.2/junk", "j");
	file(p.upper, ".wh..wh.tmp.3.4", "j");
	fix_times(p.lower);
	fix_times(p.upper);
	expect(&p, "D d - /d\n"
		   "D f - /d/a\n"
		   "D d - /d/b\n"
		   "D f - /d/b/c\n"
		   "D f - /f\n"
		   "M f c /g\n");

	/* A deletion reports the old type, mode and size. */
	r.stop_at = 5;
	T_INTEQ(run_diff(&p, &r), 7);
	T_INTEQ(r.calls, 5);
	T_INTEQ(r.last_mode, S_IFREG | 0644);
	T_INTEQ(r.last_size, 5);
}

static void test_long_whiteout(void)
{
	char n252[253], n253[254], n254[255], wh[NAME_MAX + 1];
	char want[1024];
	struct pair p;
	int fd;

	memset(n252, 'a', 252);
	n252[252] = '\0';
	memset(n253, 'b', 253);
	n253[253] = '\0';
	memset(n254, 'c', 254);
	n254[254] = '\0';
	pair_new(&p);
	file(p.lower, n252, "x");
	file(p.lower, n253, "x");
	file(p.lower, n254, "x");
	whiteout(p.upper, ".", n252);
	/* A marker whose content does not hash to its name hides nothing. */
	ovl_wh_name(n253, wh);
	fd = open(at(p.upper, wh), O_WRONLY | O_CREAT, 0);
	T_ASSERT(fd >= 0);
	T_ASSERT(write(fd, n254, 254) == 254);
	close(fd);
	fix_times(p.lower);
	fix_times(p.upper);
	snprintf(want, sizeof(want), "D f - /%s\n", n252);
	expect(&p, want);
}

static void test_opaque(void)
{
	struct pair p;

	pair_new(&p);
	dir(p.lower, "d");
	file(p.lower, "d/x", "1");
	file(p.lower, "d/y", "2");
	dir(p.lower, "d/sub");
	file(p.lower, "d/sub/z", "3");
	file(p.lower, "d/sub/same", "s");
	dir(p.upper, "d");
	file(p.upper, "d/" OVL_OPAQUE_NAME, "");
	file(p.upper, "d/y", "2");
	dir(p.upper, "d/sub");
	file(p.upper, "d/sub/w", "4");
	file(p.upper, "d/sub/same", "s");
	/* Whiteouts mean nothing where the lower does not show anyway. */
	whiteout(p.upper, "d/sub", "same");
	fix_times(p.lower);
	fix_times(p.upper);
	/*
	 * d/sub is not opaque itself, but its parent is: it replaces the
	 * lower d/sub, it does not merge with it.
	 */
	expect(&p, "A f - /d/sub/w\n"
		   "D f - /d/sub/z\n"
		   "D f - /d/x\n");

	/* An opaque root hides the whole lower. */
	pair_new(&p);
	file(p.lower, "a", "1");
	file(p.lower, "b", "2");
	file(p.upper, OVL_OPAQUE_NAME, "");
	file(p.upper, "b", "2");
	fix_times(p.lower);
	fix_times(p.upper);
	expect(&p, "D f - /a\n");
}

static void test_merged_nested(void)
{
	struct pair p;

	pair_new(&p);
	dir(p.lower, "d");
	file(p.lower, "d/a", "1");
	file(p.lower, "d/b", "2");
	dir(p.lower, "d/e");
	file(p.lower, "d/e/f", "3");
	dir(p.upper, "d");
	whiteout(p.upper, "d", "a");
	dir(p.upper, "d/e");
	file(p.upper, "d/e/g", "4");
	/* Not a regular file: lookup ignores it, so must diff. */
	dir(p.upper, "d/.wh.b");
	fix_times(p.lower);
	fix_times(p.upper);
	expect(&p, "D f - /d/a\n"
		   "A f - /d/e/g\n");
	/* A directory's own change comes before its contents. */
	T_ASSERT(chmod(at(p.upper, "d"), 0700) == 0);
	set_mtime(at(p.upper, "d/e"), 5, 0);
	expect(&p, "M d m /d\n"
		   "D f - /d/a\n"
		   "M d t /d/e\n"
		   "A f - /d/e/g\n");
}

static void test_type_change(void)
{
	struct pair p;

	pair_new(&p);
	file(p.lower, "f", "x");
	dir(p.lower, "d");
	file(p.lower, "d/a", "1");
	dir(p.lower, "d/s");
	dir(p.upper, "f");
	file(p.upper, "f/n", "2");
	file(p.upper, "d", "now a file");
	lnk(p.lower, "l", "x");
	T_ASSERT(mkfifo(at(p.upper, "l"), 0644) == 0);
	fix_times(p.lower);
	fix_times(p.upper);
	expect(&p, "M f T /d\n"
		   "D f - /d/a\n"
		   "D d - /d/s\n"
		   "M d T /f\n"
		   "A f - /f/n\n"
		   "M p T /l\n");
}

static void test_content_and_meta(void)
{
	struct pair p;

	pair_new(&p);
	/* Same size, same mtime, other bytes: still a content change. */
	file(p.lower, "c", "abcd");
	file(p.upper, "c", "abce");
	file(p.lower, "size", "abcd");
	file(p.upper, "size", "abcdef");
	/* Same bytes, other mtime: only the mtime. */
	file(p.lower, "m", "same");
	file(p.upper, "m", "same");
	file(p.lower, "mode", "x");
	file(p.upper, "mode", "x");
	file(p.lower, "own", "x");
	file(p.upper, "own", "x");
	file(p.lower, "xa", "x");
	file(p.upper, "xa", "x");
	file(p.lower, "xv", "x");
	file(p.upper, "xv", "x");
	/* A copied-up file that did not change, origin xattr and all. */
	file(p.lower, "unchanged", "u");
	file(p.upper, "unchanged", "u");
	lnk(p.lower, "s", "a");
	lnk(p.upper, "s", "b");
	lnk(p.lower, "s2", "same");
	lnk(p.upper, "s2", "same");
	T_ASSERT(mknod(at(p.lower, "dev"), S_IFCHR | 0644, makedev(1, 3)) == 0);
	T_ASSERT(mknod(at(p.upper, "dev"), S_IFCHR | 0644, makedev(1, 5)) == 0);
	T_ASSERT(mknod(at(p.lower, "dev2"), S_IFCHR | 0644, makedev(1, 3)) == 0);
	T_ASSERT(mknod(at(p.upper, "dev2"), S_IFCHR | 0644, makedev(1, 3)) == 0);
	fix_times(p.lower);
	fix_times(p.upper);

	set_mtime(at(p.upper, "m"), 1000000000, 501);
	T_ASSERT(chmod(at(p.upper, "mode"), 04755) == 0);
	T_ASSERT(chown(at(p.upper, "own"), 1000, 1000) == 0);
	T_ASSERT(setxattr(at(p.upper, "xa"), "user.new", "v", 1, 0) == 0);
	T_ASSERT(setxattr(at(p.lower, "xv"), "user.k", "v1", 2, 0) == 0);
	T_ASSERT(setxattr(at(p.upper, "xv"), "user.k", "v2", 2, 0) == 0);
	T_ASSERT(setxattr(at(p.upper, "unchanged"), OVL_XATTR_ORIGIN_TRUSTED,
			  "abc", 3, 0) == 0);
	T_ASSERT(setxattr(at(p.upper, "unchanged"), OVL_XATTR_ORIGIN_USER,
			  "abc", 3, 0) == 0);
	expect(&p, "M f c /c\n"
		   "M c c /dev\n"
		   "M f t /m\n"
		   "M f m /mode\n"
		   "M f o /own\n"
		   "M l c /s\n"
		   "M f c /size\n"
		   "M f x /xa\n"
		   "M f x /xv\n");
}

static void test_names_and_order(void)
{
	struct pair p;

	pair_new(&p);
	file(p.upper, "B", "");
	file(p.upper, "a", "");
	file(p.upper, "\xff\xfe", "");
	file(p.upper, "Z", "");
	file(p.upper, "_", "");
	/* A directory's contents come right after it: /a-b after /dir/x. */
	dir(p.upper, "dir");
	file(p.upper, "dir/x", "");
	file(p.upper, "dir-b", "");
	fix_times(p.upper);
	expect(&p, "A f - /B\n"
		   "A f - /Z\n"
		   "A f - /_\n"
		   "A f - /a\n"
		   "A d - /dir\n"
		   "A f - /dir/x\n"
		   "A f - /dir-b\n"
		   "A f - /\xff\xfe\n");
}

static void test_symlink_not_followed(void)
{
	char outside[300];
	struct pair p;

	pair_new(&p);
	snprintf(outside, sizeof(outside), "%s/outside", p.dir);
	T_ASSERT(mkdir(outside, 0755) == 0);
	file(outside, "a", "secret");
	file(outside, "s", "x");
	/* Lower x -> outside dir; the upper made x a directory. */
	lnk(p.lower, "x", outside);
	dir(p.upper, "x");
	file(p.upper, "x/a", "secret");
	whiteout(p.upper, "x", "s");
	/* Upper z -> outside replaces a lower directory. */
	dir(p.lower, "z");
	file(p.lower, "z/in", "1");
	lnk(p.upper, "z", outside);
	/* Lower e -> /etc, upper e/ with a file. */
	lnk(p.lower, "e", "/etc");
	dir(p.upper, "e");
	file(p.upper, "e/hostname", "h");
	fix_times(p.lower);
	fix_times(p.upper);
	expect(&p, "M d T /e\n"
		   "A f - /e/hostname\n"
		   "M d T /x\n"
		   "A f - /x/a\n"
		   "M l T /z\n"
		   "D f - /z/in\n");
}

static void test_root_and_errors(void)
{
	struct rec r = { .stop_at = -1 };
	struct ovlfs *fs;
	struct pair p;
	char path[PATH_MAX];

	pair_new(&p);
	file(p.lower, "a", "1");
	file(p.upper, "b", "2");
	fix_times(p.lower);
	fix_times(p.upper);
	/* The upper root's mtime moves with every create: not a change. */
	set_mtime(p.upper, 5, 0);
	T_ASSERT(chmod(p.upper, 0700) == 0);
	expect(&p, "M d m /\n"
		   "A f - /b\n");
	T_ASSERT(setxattr(p.upper, "user.r", "1", 1, 0) == 0);
	expect(&p, "M d mx /\n"
		   "A f - /b\n");

	/* Stopping: the callback's value comes back as it is. */
	r.stop_at = 1;
	T_INTEQ(run_diff(&p, &r), 7);
	T_INTEQ(r.calls, 1);

	/*
	 * Missing upper: the default one (never mounted) means nothing
	 * changed; one the caller named is an error naming it.
	 */
	pair_new(&p);
	file(p.lower, "a", "1");
	T_ASSERT(rmdir(p.upper) == 0);
	fs = ovlfs_new(p.lower);
	T_ASSERT(fs);
	memset(&r, 0, sizeof(r));
	r.stop_at = -1;
	T_INTEQ(ovlfs_diff(fs, collect, &r), 0);
	T_INTEQ(r.calls, 0);
	T_INTEQ(ovlfs_set_upper(fs, p.upper), 0);
	T_INTEQ(ovlfs_diff(fs, collect, &r), -ENOENT);
	T_ASSERT(strstr(ovlfs_error(fs), p.upper));
	ovlfs_free(fs);

	/* Missing lower: -ENOENT, and the message names it. */
	snprintf(path, sizeof(path), "%s/nonexistent", base);
	fs = ovlfs_new(path);
	T_ASSERT(fs);
	T_INTEQ(ovlfs_diff(fs, collect, &r), -ENOENT);
	T_ASSERT(strstr(ovlfs_error(fs), path));
	ovlfs_free(fs);
}

static int rm(const char *path, const struct stat *st, int flag,
	      struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

int main(void)
{
	char tmpl[] = "/tmp/ovlfs-unit-diff.XXXXXX";

	if (geteuid() != 0) {
		/* chown, mknod and trusted.* need root. */
		fprintf(stderr, "test_diff: needs root, skipped\n");
		return 77;
	}
	T_ASSERT(mkdtemp(tmpl));
	snprintf(base, sizeof(base), "%s", tmpl);
	test_added();
	test_deleted();
	test_long_whiteout();
	test_opaque();
	test_merged_nested();
	test_type_change();
	test_content_and_meta();
	test_names_and_order();
	test_symlink_not_followed();
	test_root_and_errors();
	nftw(base, rm, 16, FTW_PHYS | FTW_DEPTH);
	printf("test_diff: ok\n");
	return 0;
}
