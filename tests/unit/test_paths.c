/*
 * Path helpers: strip, default names, containment, and canonicalisation of
 * paths that may not exist yet (against a scratch tree in $TMPDIR).
 */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h> /* format.h uses struct statvfs */
#include <unistd.h>

#include "format/format.h"
#include "test.h"

static char tmpdir[PATH_MAX]; /* the scratch tree as created */
static char base[PATH_MAX];   /* its realpath: $TMPDIR may be a symlink */

static void check_strip(const char *in, const char *want)
{
	char *s = ovl_path_strip(in);

	T_STREQ(s, want);
	free(s);
}

static void check_suffix(const char *in, const char *suffix, const char *want)
{
	char *s;

	errno = 0;
	s = ovl_path_with_suffix(in, suffix);
	if (want) {
		T_STREQ(s, want);
	} else {
		T_ASSERT(s == NULL);
		T_INTEQ(errno, EINVAL);
	}
	free(s);
}

static void test_strip(void)
{
	check_strip("/a/b", "/a/b");
	check_strip("/a/b/", "/a/b");
	check_strip("/a/b///", "/a/b");
	check_strip("/a//b/", "/a//b"); /* only trailing slashes go */
	check_strip("/", "/");
	check_strip("///", "/");
	check_strip("a/", "a");
	check_strip("a", "a");
	check_strip(".//", ".");
	check_strip("", "");
}

static void test_suffix(void)
{
	check_suffix("/b/alpine-3.20/", ".upper", "/b/alpine-3.20.upper");
	check_suffix("/b/alpine-3.20", ".mountpoint",
		     "/b/alpine-3.20.mountpoint");
	check_suffix("/b/x///", ".upper", "/b/x.upper");
	check_suffix("rel/dir/", ".upper", "rel/dir.upper");
	check_suffix("/b/x", "", "/b/x");
	check_suffix("/", ".upper", NULL);
	check_suffix("///", ".upper", NULL);
	check_suffix("", ".upper", NULL);
}

static void test_run_name(void)
{
	T_ASSERT(ovl_is_run_name("d.partial-AbC123", "d", ".partial-"));
	T_ASSERT(ovl_is_run_name("up.removed-000042", "up", ".removed-"));
	T_ASSERT(!ovl_is_run_name("d.partial-toolong7", "d", ".partial-"));
	T_ASSERT(!ovl_is_run_name("d.partial-short", "d", ".partial-"));
	T_ASSERT(!ovl_is_run_name("d.partial-ab c!x", "d", ".partial-"));
	T_ASSERT(!ovl_is_run_name("e.partial-AbC123", "d", ".partial-"));
	T_ASSERT(!ovl_is_run_name("dx.partial-AbC12", "d", ".partial-"));
}

static void test_within(void)
{
	T_ASSERT(ovl_path_within("/a/b", "/a/b"));
	T_ASSERT(ovl_path_within("/a/b/c", "/a/b"));
	T_ASSERT(ovl_path_within("/a/b/c/d", "/a/b"));
	T_ASSERT(!ovl_path_within("/a/bc", "/a/b"));
	T_ASSERT(!ovl_path_within("/a/b", "/a/bc"));
	T_ASSERT(!ovl_path_within("/a", "/a/b"));
	T_ASSERT(!ovl_path_within("/x/b", "/a/b"));
	T_ASSERT(ovl_path_within("/", "/"));
	T_ASSERT(ovl_path_within("/a", "/"));
	T_ASSERT(ovl_path_within("/a/b/c", "/"));
	T_ASSERT(!ovl_path_within("/", "/a"));
	T_ASSERT(ovl_path_within("/a/b/c", "/a/b/")); /* tolerated */
	T_ASSERT(!ovl_path_within("a/b", "/"));	      /* not absolute */
}

/* "BASE" + SUFFIX, in a static buffer (one at a time is enough here). */
static const char *in_base(const char *suffix)
{
	static char buf[2 * PATH_MAX];

	snprintf(buf, sizeof(buf), "%s%s", base, suffix);
	return buf;
}

static const char *in_tmp(const char *suffix)
{
	static char buf[2 * PATH_MAX];

	snprintf(buf, sizeof(buf), "%s%s", tmpdir, suffix);
	return buf;
}

/* Canonicalise IN and expect WANT (a string) or, if WANT is NULL, ERR. */
static void check_canon(const char *in, const char *want, int err)
{
	char *out = (char *)"poison";
	char inbuf[2 * PATH_MAX], wantbuf[2 * PATH_MAX];
	int ret;

	/* Copies: IN and WANT may both come from in_base()/in_tmp(). */
	snprintf(inbuf, sizeof(inbuf), "%s", in);
	if (want)
		snprintf(wantbuf, sizeof(wantbuf), "%s", want);
	ret = ovl_path_canonical(inbuf, &out);
	if (want) {
		if (ret != 0)
			fprintf(stderr, "canonical(\"%s\") failed: %s\n", inbuf,
				strerror(-ret));
		T_INTEQ(ret, 0);
		T_STREQ(out, wantbuf);
		free(out);
	} else {
		if (ret == 0)
			fprintf(stderr, "canonical(\"%s\") gave \"%s\"\n",
				inbuf, out);
		T_INTEQ(ret, err);
		T_ASSERT(out == NULL);
	}
}

static int rm_one(const char *path, const struct stat *st, int flag,
		  struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void cleanup(void)
{
	if (tmpdir[0])
		nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_tree(void)
{
	const char *t = getenv("TMPDIR");
	FILE *f;

	snprintf(tmpdir, sizeof(tmpdir), "%s/ovlfs-test-paths.XXXXXX",
		 t && *t ? t : "/tmp");
	T_ASSERT(mkdtemp(tmpdir) != NULL);
	atexit(cleanup);
	T_ASSERT(realpath(tmpdir, base) != NULL);

	/*
	 * real/dir      a directory
	 * link -> real  a symlinked prefix
	 * dangle        a symlink to nothing
	 * loop -> loop  a symlink loop
	 * file          a regular file
	 */
	T_ASSERT(mkdir(in_base("/real"), 0755) == 0);
	T_ASSERT(mkdir(in_base("/real/dir"), 0755) == 0);
	T_ASSERT(symlink("real", in_base("/link")) == 0);
	T_ASSERT(symlink("nothere", in_base("/dangle")) == 0);
	T_ASSERT(symlink("loop", in_base("/loop")) == 0);
	f = fopen(in_base("/file"), "w");
	T_ASSERT(f != NULL);
	fclose(f);
}

static void test_canonical_absolute(void)
{
	char want[PATH_MAX];

	/* Existing paths. */
	check_canon("/", "/", 0);
	check_canon("///", "/", 0);
	check_canon(in_tmp("/real/dir"), in_base("/real/dir"), 0);
	check_canon(in_tmp("//real///dir//"), in_base("/real/dir"), 0);
	check_canon(in_tmp("/real/./dir/."), in_base("/real/dir"), 0);
	check_canon(in_tmp("/real/dir/.."), in_base("/real"), 0);
	check_canon(in_tmp("/file"), in_base("/file"), 0);

	/* Symlinked prefix, existing or not. */
	check_canon(in_tmp("/link"), in_base("/real"), 0);
	check_canon(in_tmp("/link/dir/"), in_base("/real/dir"), 0);
	check_canon(in_tmp("/link/new"), in_base("/real/new"), 0);
	check_canon(in_tmp("/link/new/deeper/"), in_base("/real/new/deeper"),
		    0);
	/* ".." of a symlinked dir is the target's parent, as for the kernel. */
	check_canon(in_tmp("/link/dir/../new"), in_base("/real/new"), 0);

	/* Non-existing tails. */
	check_canon(in_tmp("/real/new"), in_base("/real/new"), 0);
	check_canon(in_tmp("/real/new//deeper///"), in_base("/real/new/deeper"),
		    0);
	check_canon(in_tmp("/new.upper"), in_base("/new.upper"), 0);

	/* "." and ".." in the non-existing tail are refused. */
	check_canon(in_tmp("/real/new/../dir"), NULL, -EINVAL);
	check_canon(in_tmp("/real/new/.."), NULL, -EINVAL);
	check_canon(in_tmp("/real/new/./x"), NULL, -EINVAL);
	check_canon(in_tmp("/real/new/."), NULL, -EINVAL);
	check_canon(in_tmp("/real/new/x/../../dir"), NULL, -EINVAL);

	/* Things that can never be created there. */
	check_canon(in_tmp("/file/x"), NULL, -ENOTDIR);
	check_canon(in_tmp("/dangle"), NULL, -ENOENT);
	check_canon(in_tmp("/dangle/x"), NULL, -ENOENT);
	check_canon(in_tmp("/loop/x"), NULL, -ELOOP);

	/* A non-existing name right under "/" gets exactly one slash. */
	snprintf(want, sizeof(want), "/ovlfs-test-no-such-dir-%ld",
		 (long)getpid());
	if (access(want, F_OK) != 0) {
		char in[PATH_MAX + 2];

		snprintf(in, sizeof(in), "/%s/", want);
		check_canon(in, want, 0);
	}

	check_canon("", NULL, -EINVAL);
}

static void test_canonical_relative(void)
{
	char saved[PATH_MAX];

	T_ASSERT(getcwd(saved, sizeof(saved)) != NULL);

	T_ASSERT(chdir(in_base("/real")) == 0);
	check_canon("dir", in_base("/real/dir"), 0);
	check_canon("./dir/", in_base("/real/dir"), 0);
	check_canon(".", in_base("/real"), 0);
	check_canon("..", base, 0);
	check_canon("../link/dir", in_base("/real/dir"), 0);
	check_canon("new/x", in_base("/real/new/x"), 0);
	check_canon("new/../x", NULL, -EINVAL);

	/* Through a symlinked cwd: getcwd() already gives the real path. */
	T_ASSERT(chdir(in_base("/link")) == 0);
	check_canon("new", in_base("/real/new"), 0);

	/* From "/", where joining must not produce "//". */
	T_ASSERT(chdir("/") == 0);
	check_canon(base + 1, base, 0);
	check_canon(in_base("/real/new") + 1, in_base("/real/new"), 0);

	T_ASSERT(chdir(saved) == 0);
}

/*
 * Append "/xxx..." components to the LEN bytes in BUF until they are
 * exactly TARGET bytes long (TARGET - LEN must be at least 2).
 */
static void fill_to(char *buf, size_t len, size_t target)
{
	while (len < target) {
		size_t n = target - len - 1; /* room after a slash */

		if (n > 100)
			n = 100;
		if (n == 0) {
			/* One byte left: lengthen the last name instead. */
			buf[len++] = 'y';
			break;
		}
		buf[len++] = '/';
		memset(buf + len, 'x', n);
		len += n;
	}
	buf[len] = '\0';
}

#define BUFLEN (2 * PATH_MAX)

static void test_canonical_long(void)
{
	char name[NAME_MAX + 2], saved[PATH_MAX];
	char *in, *deep, *p;
	size_t blen = strlen(base), len;

	/* A non-existing component longer than NAME_MAX, last or not. */
	memset(name, 'n', NAME_MAX + 1);
	name[NAME_MAX + 1] = '\0';
	in = malloc(BUFLEN);
	deep = malloc(BUFLEN);
	T_ASSERT(in != NULL && deep != NULL);
	snprintf(in, BUFLEN, "%s/%s", base, name);
	check_canon(in, NULL, -ENAMETOOLONG);
	snprintf(in, BUFLEN, "%s/new/%s", base, name);
	check_canon(in, NULL, -ENAMETOOLONG);
	snprintf(in, BUFLEN, "%s/new/%s/x", base, name);
	check_canon(in, NULL, -ENAMETOOLONG);
	/* NAME_MAX itself is fine. */
	name[NAME_MAX] = '\0';
	snprintf(in, BUFLEN, "%s/new/%s", base, name);
	check_canon(in, in, 0);

	T_ASSERT(blen + 400 < PATH_MAX);

	/* Given as such: PATH_MAX - 1 bytes are accepted, PATH_MAX are not. */
	strcpy(in, base);
	fill_to(in, blen, PATH_MAX - 1);
	T_INTEQ(strlen(in), PATH_MAX - 1);
	check_canon(in, in, 0);
	strcat(in, "z");
	check_canon(in, NULL, -ENAMETOOLONG);

	/*
	 * A short path that only grows too long once resolved: a symlink to
	 * a deep existing directory, then a non-existing tail.
	 */
	strcpy(deep, base);
	fill_to(deep, blen, PATH_MAX - 300);
	for (p = strchr(deep + blen + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = '\0';
		T_ASSERT(mkdir(deep, 0755) == 0);
		*p = '/';
	}
	T_ASSERT(mkdir(deep, 0755) == 0);
	T_ASSERT(symlink(deep, in_base("/deep")) == 0);

	len = strlen(deep);
	fill_to(deep, len, PATH_MAX - 1); /* the expected result */
	snprintf(in, BUFLEN, "%s/deep%s", base, deep + len);
	T_ASSERT(strlen(in) < 400);
	check_canon(in, deep, 0);
	strcat(in, "z");
	check_canon(in, NULL, -ENAMETOOLONG);

	/* The same through a deep cwd and a relative path. */
	deep[len] = '\0';
	T_ASSERT(getcwd(saved, sizeof(saved)) != NULL);
	T_ASSERT(chdir(deep) == 0);
	fill_to(deep, len, PATH_MAX - 1);
	check_canon(deep + len + 1, deep, 0);
	strcpy(in, deep + len + 1);
	strcat(in, "z");
	check_canon(in, NULL, -ENAMETOOLONG);
	T_ASSERT(chdir(saved) == 0);
	free(deep);
	free(in);
}

int main(void)
{
	test_strip();
	test_suffix();
	test_within();
	test_run_name();
	make_tree();
	test_canonical_absolute();
	test_canonical_relative();
	test_canonical_long();
	printf("paths: all checks passed\n");
	return 0;
}
