/*
 * Path logic: default layer names and the checks made on the paths a
 * user gives before mounting (does the upper lie inside the lower, ...),
 * by spelling and by identity (see "where a directory is" below).
 *
 * These paths are only compared and reported, never used to reach files
 * inside a layer (that is done with fds relative to the layer roots), so a
 * race between canonicalising and using them cannot escape a layer.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "format/format.h"

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

bool ovl_is_run_name(const char *name, const char *base, const char *suffix)
{
	size_t b = strlen(base), s = strlen(suffix);

	if (strncmp(name, base, b) || strncmp(name + b, suffix, s) ||
	    strlen(name + b + s) != 6)
		return false;
	for (const char *c = name + b + s; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9')))
			return false;
	return true;
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

/* ovl_path_canonical(), and in *ELEN how much of *OUT exists. */
static int path_canonical(const char *path, char **out, size_t *elen)
{
	char *abs = NULL, *base = NULL, *res, *p;
	size_t end, blen, rlen;
	int ret;

	*out = NULL;
	if (!path || !path[0])
		return -EINVAL;

	ret = path_absolute(path, &abs);
	if (ret < 0 || !abs)	/* (!abs: for the analyzer, errno may be 0) */
		return ret < 0 ? ret : -ENOMEM;

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
	*elen = blen;
	ret = 0;
out:
	free(base);
	free(abs);
	return ret;
}

int ovl_path_canonical(const char *path, char **out)
{
	size_t elen;

	return path_canonical(path, out, &elen);
}

/* ---- where a directory is, by identity ---- */

/*
 * Why spelling is not enough: realpath() sees through symlinks and "..",
 * but not through a bind mount. /x/up may be lower/sub mounted a second
 * time: the same directory, with no path in common with the lower.
 * Walking up from /x/up with ".." does not find the lower either: at the
 * root of a mount ".." leads to where the mount sits (/x), never to the
 * directory above lower/sub in its own filesystem, which is the one that
 * matters. And comparing (st_dev, st_ino) catches only the very same
 * directory, not one inside the other.
 *
 * The mount table does see through it: each line of
 * /proc/self/mountinfo names a mount's filesystem (the superblock's
 * major:minor) and the directory of that filesystem it shows (its root
 * field). A path, on the mount statx() says it lies on, becomes that root
 * plus the rest of the path below the mount point: its path within the
 * filesystem, the same through whichever mount it is reached. Two
 * directories of one filesystem overlap exactly when one such path is a
 * prefix of the other, as the kernel's overlayfs decides by walking the
 * dentries' parents.
 *
 * The spelled (canonical) paths are compared as well: a layer may hold
 * the mount point of another filesystem, which no path within a
 * filesystem shows. So is (st_dev, st_ino), which still tells the very
 * same directory where the mount table does not list a mount (in a chroot
 * below the root of a mount). These checks catch mistakes before
 * anything is made; a mount made between the check and the use is not
 * seen, and the layers are reached through fds from then on.
 */

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void mountinfo_unescape(char *s)
{
	char *o = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' &&
		    s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*o++ = (char)(((s[1] - '0') << 6) | ((s[2] - '0') << 3) |
				      (s[3] - '0'));
			s += 3;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
}

int ovl_mountinfo_walk(int (*fn)(const struct ovl_mount_ent *m, void *arg),
		       void *arg)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int ret = 0;

	if (!f)
		return -errno;
	while (!ret && getline(&line, &cap, f) > 0) {
		struct ovl_mount_ent m;
		unsigned long long id;
		unsigned maj, mnr;
		int r0 = -1, r1 = -1, p0 = -1, p1 = -1;

		int t0 = -1, t1 = -1;
		char *sep;

		if (sscanf(line, "%llu %*u %u:%u %n%*s%n %n%*s%n", &id, &maj,
			   &mnr, &r0, &r1, &p0, &p1) != 3 || p1 < 0)
			continue;
		/* After the optional fields: " - TYPE SOURCE SUPER-OPTIONS". */
		sep = strstr(line + p1, " - ");
		if (sep && sscanf(sep + 3, "%n%*s%n", &t0, &t1) >= 0 && t1 > 0) {
			m.fstype = sep + 3 + t0;
			m.fsopts = sep + 3 + t1 + (sep[3 + t1] ? 1 : 0);
			sep[3 + t1] = '\0';
		} else {
			m.fstype = m.fsopts = (char *)"";
		}
		line[r1] = line[p1] = '\0';
		m.id = id;
		m.fs = makedev(maj, mnr);
		m.root = line + r0;
		m.point = line + p0;
		mountinfo_unescape(m.root);
		mountinfo_unescape(m.point);
		ret = fn(&m, arg);
	}
	free(line);
	fclose(f);
	return ret < 0 ? ret : 0;
}

/* A followed by the components of B, one slash between; NULL: ENOMEM. */
static char *path_join(const char *a, const char *b)
{
	size_t alen = path_stripped_len(a);
	char *r;

	while (*b == '/')
		b++;
	if (!*b)
		return strndup(a, alen);
	if (alen == 1 && a[0] == '/')
		alen = 0;
	r = malloc(alen + strlen(b) + 2);
	if (!r)
		return NULL;
	memcpy(r, a, alen);
	r[alen] = '/';
	strcpy(r + alen + 1, b);
	return r;
}

struct place_find {
	uint64_t id;		/* the mount sought */
	struct ovl_place *pl;
	const char *base;	/* the existing part of pl->path */
	size_t blen;
	int found;
};

static int place_mount(const struct ovl_mount_ent *m, void *arg)
{
	struct place_find *pf = arg;
	size_t plen = path_stripped_len(m->point);
	const char *rel;
	char *in;

	if (m->id != pf->id)
		return 0;
	pf->found = 1;
	/* Not a path (a pseudo filesystem's name), or a deleted root. */
	if (m->root[0] != '/' || strstr(m->root, "//deleted"))
		return 1;
	if (plen == 1)
		rel = pf->base;
	else if (!strncmp(pf->base, m->point, plen) &&
		 (plen == pf->blen || pf->base[plen] == '/'))
		rel = pf->base + plen;
	else
		return 1;	/* listed elsewhere than we reached it: unknown */
	in = path_join(m->root, rel);
	if (!in)
		return -ENOMEM;
	pf->pl->fspath = path_join(in, pf->pl->path + pf->blen);
	free(in);
	if (!pf->pl->fspath)
		return -ENOMEM;
	pf->pl->fs = m->fs;
	return 1;
}

void ovl_place_free(struct ovl_place *pl)
{
	free(pl->path);
	free(pl->fspath);
	memset(pl, 0, sizeof(*pl));
}

int ovl_place_get(const char *path, struct ovl_place *pl)
{
	struct place_find pf = { .pl = pl };
	struct statx stx;
	char *base = NULL;
	int err;

	memset(pl, 0, sizeof(*pl));
	err = path_canonical(path, &pl->path, &pf.blen);
	if (err)
		return err;
	base = strndup(pl->path, pf.blen);
	if (!base) {
		err = -ENOMEM;
		goto out;
	}
	if (statx(AT_FDCWD, base, AT_SYMLINK_NOFOLLOW,
		  STATX_INO | STATX_MNT_ID, &stx) < 0) {
		err = -errno;
		goto out;
	}
	pl->exists = pl->path[pf.blen] == '\0';
	pl->dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
	pl->ino = stx.stx_ino;
	if (stx.stx_mask & STATX_MNT_ID) {
		pf.id = stx.stx_mnt_id;
		pf.base = base;
		/* No mount table (no /proc): the spelling and inode remain. */
		err = ovl_mountinfo_walk(place_mount, &pf);
		if (err != -ENOMEM)
			err = 0;
	}
out:
	free(base);
	if (err)
		ovl_place_free(pl);
	return err;
}

/* OUTER's spelling of INNER, which lies inside it (by fspath). */
static char *alias_path(const struct ovl_place *inner,
			const struct ovl_place *outer)
{
	size_t olen = path_stripped_len(outer->fspath);

	return path_join(outer->path, olen == 1 ? inner->fspath :
				      inner->fspath + olen);
}

enum ovl_overlap ovl_place_overlap(const struct ovl_place *a,
				   const struct ovl_place *b, char **via)
{
	*via = NULL;
	if (!strcmp(a->path, b->path) ||
	    (a->exists && b->exists && a->dev == b->dev && a->ino == b->ino))
		return OVL_SAME;
	if (ovl_path_within(a->path, b->path))
		return OVL_A_IN_B;
	if (ovl_path_within(b->path, a->path))
		return OVL_B_IN_A;
	if (!a->fspath || !b->fspath || a->fs != b->fs)
		return OVL_APART;
	if (!strcmp(a->fspath, b->fspath))
		return OVL_SAME;
	if (ovl_path_within(a->fspath, b->fspath)) {
		*via = alias_path(a, b);
		return OVL_A_IN_B;
	}
	if (ovl_path_within(b->fspath, a->fspath)) {
		*via = alias_path(b, a);
		return OVL_B_IN_A;
	}
	return OVL_APART;
}
