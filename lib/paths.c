/*
 * Pure path logic: default layer names and the checks made on the paths a
 * user gives before mounting (does the upper lie inside the lower, ...).
 *
 * These paths are only compared and reported, never used to reach files
 * inside a layer (that is done with fds relative to the layer roots), so a
 * race between canonicalising and using them cannot escape a layer.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovlfs_i.h"

/* Length of PATH without its trailing slashes; "/" keeps its slash. */
static size_t path_stripped_len(const char *path)
{
	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	size_t len = strlen(path);

	while (len > 1 && path[len - 1] == '/')
		len--;
	return len;
}

char *ovl_path_strip(const char *path)
{
	return strndup(path, path_stripped_len(path));
}

char *ovl_path_with_suffix(const char *path, const char *suffix)
{
	size_t len = path_stripped_len(path);
	size_t slen = strlen(suffix);
	char *res;

	/*
	 * "/" has no last component to append to, and "" would give a
	 * relative name that depends on the cwd: neither is a sensible
	 * default, so the caller has to be told rather than guess.
	 */
	if (len == 0 || (len == 1 && path[0] == '/')) {
		errno = EINVAL;
		return NULL;
	}

	res = malloc(len + slen + 1);
	if (!res)
		return NULL;
	memcpy(res, path, len);
	memcpy(res + len, suffix, slen + 1);
	return res;
}

bool ovl_path_within(const char *a, const char *b)
{
	size_t blen;

	if (a[0] != '/' || b[0] != '/')
		return false;

	/* Tolerate a trailing slash on B so "/a/" still means "/a". */
	blen = path_stripped_len(b);
	if (blen == 1)
		return true; /* everything absolute is within "/" */

	/* A prefix match must end at a component boundary: "/a/bc" vs "/a/b". */
	return strncmp(a, b, blen) == 0 && (a[blen] == '\0' || a[blen] == '/');
}

/* PATH made absolute against the cwd, as a new writable string. */
static int path_absolute(const char *path, char **out)
{
	char *cwd, *abs;
	size_t clen, plen;

	if (path[0] == '/') {
		abs = strdup(path);
		if (!abs)
			return -ENOMEM;
		*out = abs;
		return 0;
	}

	cwd = getcwd(NULL, 0);
	if (!cwd)
		return -errno;
	clen = strlen(cwd);
	plen = strlen(path);
	abs = malloc(clen + 1 + plen + 1);
	if (!abs) {
		free(cwd);
		return -ENOMEM;
	}
	/* A doubled slash when cwd is "/" is harmless: components are split. */
	memcpy(abs, cwd, clen);
	abs[clen] = '/';
	memcpy(abs + clen + 1, path, plen + 1);
	free(cwd);
	*out = abs;
	return 0;
}

/*
 * realpath() of the first LEN bytes of ABS (the root if LEN is 0). Returns
 * 1 with the result in *RES, 0 if the last component of that prefix does
 * not exist (so a shorter prefix must be tried), or -errno.
 */
static int path_try_prefix(char *abs, size_t len, char **res)
{
	struct stat st;
	char save;
	int ret;

	if (len == 0) {
		*res = realpath("/", NULL);
		return *res ? 1 : -errno;
	}

	save = abs[len];
	abs[len] = '\0';
	*res = realpath(abs, NULL);
	if (*res) {
		ret = 1;
	} else if (errno != ENOENT) {
		/* ENOTDIR, EACCES, ELOOP...: a shorter prefix won't fix it. */
		ret = -errno;
	} else if (lstat(abs, &st) == 0) {
		/*
		 * The name exists but does not resolve: a dangling symlink.
		 * Treating it as absent would hide that creating the path
		 * there must fail, and where it points is unknown.
		 */
		ret = -ENOENT;
	} else {
		ret = errno == ENOENT ? 0 : -errno;
	}
	abs[len] = save;
	return ret;
}

int ovl_path_canonical(const char *path, char **out)
{
	char *abs = NULL, *base = NULL, *res, *p;
	size_t end, blen, rlen;
	int ret;

	*out = NULL;
	if (!path || !path[0])
		return -EINVAL;

	ret = path_absolute(path, &abs);
	if (ret < 0)
		return ret;

	/*
	 * Walk back from the whole path, one component at a time, until a
	 * prefix exists. END is where the prefix ends (0 stands for "/").
	 */
	end = path_stripped_len(abs);
	for (;;) {
		ret = path_try_prefix(abs, end, &base);
		if (ret < 0)
			goto out;
		if (ret == 1)
			break;
		while (end > 0 && abs[end - 1] != '/')
			end--;
		while (end > 0 && abs[end - 1] == '/')
			end--;
	}

	/*
	 * Append what does not exist yet. Those components cannot be
	 * resolved, so "." and ".." in them would be guesses: refuse them.
	 */
	blen = strlen(base);
	res = malloc(blen + strlen(abs + end) + 2);
	if (!res) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(res, base, blen + 1);
	rlen = blen;
	p = abs + end;
	for (;;) {
		size_t clen;

		while (*p == '/')
			p++;
		if (!*p)
			break;
		clen = strcspn(p, "/");
		if ((clen == 1 && p[0] == '.') ||
		    (clen == 2 && p[0] == '.' && p[1] == '.')) {
			free(res);
			ret = -EINVAL;
			goto out;
		}
		if (clen > NAME_MAX) {
			free(res);
			ret = -ENAMETOOLONG;
			goto out;
		}
		if (rlen > 1) /* the root already ends in a slash */
			res[rlen++] = '/';
		memcpy(res + rlen, p, clen);
		rlen += clen;
		res[rlen] = '\0';
		p += clen;
	}

	if (rlen >= PATH_MAX) {
		free(res);
		ret = -ENAMETOOLONG;
		goto out;
	}
	*out = res;
	ret = 0;
out:
	free(base);
	free(abs);
	return ret;
}
