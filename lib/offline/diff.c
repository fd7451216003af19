/*
 * diff.c: what committing the upper would change in the lower.
 *
 * The merged view is compared with the lower as it is on disk, one
 * directory pair at a time, in bytewise name order with a directory's own
 * line before its contents. The merged view is computed as lookup.c does
 * it: an upper entry beats a whiteout, a whiteout (a regular file, a long
 * one only if its content hashes to its name) hides a lower name, an upper
 * directory merges with a lower directory of the same name unless it is
 * opaque or its parent does not show its own lower, and ".wh.*" names are
 * never entries in either layer. A renamed directory (one with a redirect,
 * docs/format.md) takes its lower part from where the redirect points, not
 * from the lower's same name: as a commit makes it one rename in the lower,
 * it is reported as one OVLFS_RENAMED (with the old path), then compared
 * with that source; what the lower has at its new path (if anything, and
 * not itself a renamed directory's source) is deleted first. A source is
 * not reported deleted where its old name is whited out or hidden: it was
 * moved, not deleted.
 *
 * Both trees are walked only through directory fds with O_NOFOLLOW /
 * AT_SYMLINK_NOFOLLOW, so a symlink in a layer is an entry like any other
 * and nothing outside the layers is ever read. The path strings built here
 * are only for the callback and error messages.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "offline/offline.h"

#define DIFF_BUFSZ (64 * 1024)

struct diff_ctx {
	struct ovlfs *fs;
	ovlfs_diff_fn fn;
	void *arg;
	char *path;		/* "" for the root, then "/a/b" */
	size_t len, cap;
	char *buf[2];		/* content comparison, DIFF_BUFSZ each */
	struct ovl_fmt fmt;	/* the upper's markers */
	int lower_root;		/* for absolute redirects */
	struct diff_src *src;	/* the renamed directories' sources */
	size_t nsrc, srccap;
};

/* A renamed directory's source in the lower: its identity and path. */
struct diff_src {
	dev_t dev;
	ino_t ino;
	char *from;		/* "/a/b" */
};

/* A directory's entries, sorted, with the layer's ".wh.*" names split off. */
struct diff_list {
	struct ovl_dirlist dl;
	struct ovl_dirent **ents;	/* user entries, sorted */
	size_t n;
	const char **wh;		/* whited-out names, sorted */
	size_t nwh;
	char **owned;			/* long whiteout targets we allocated */
	size_t nowned;
};

static int fail(struct diff_ctx *c, int err, const char *layer,
		const char *name)
{
	return ovl_set_error(c->fs, err, "diff: %s %s%s%s%s: %s", layer,
			     layer[0] == 'l' ? c->fs->lower : c->fs->upper,
			     c->path, name ? "/" : "", name ? name : "",
			     strerror(-err));
}

static int path_push(struct diff_ctx *c, const char *name)
{
	size_t nlen = strlen(name);

	/* Room for "/NAME" and the terminating NUL. */
	if (ovl_grow((void **)&c->path, &c->cap, c->len + nlen + 1, 1, 256))
		return ovl_set_error(c->fs, -ENOMEM, "diff: out of memory");
	c->path[c->len++] = '/';
	memcpy(c->path + c->len, name, nlen + 1);
	c->len += nlen;
	return 0;
}

static void path_pop(struct diff_ctx *c, size_t len)
{
	c->len = len;
	c->path[len] = '\0';
}

static int report(struct diff_ctx *c, enum ovlfs_change change, unsigned what,
		  const struct stat *st)
{
	struct ovlfs_diff_entry e = {
		.path = c->len ? c->path : "/",
		.change = change,
		.what = what,
		.mode = st->st_mode,
		/* Directory sizes depend on the filesystem: not a change. */
		/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult): assumes -errno >= 0 */
		.size = S_ISREG(st->st_mode) || S_ISLNK(st->st_mode) ?
			(uint64_t)st->st_size : 0,
	};

	return c->fn(&e, c->arg);
}

static int cmp_dirent(const void *a, const void *b)
{
	return strcmp((*(struct ovl_dirent *const *)a)->name,
		      (*(struct ovl_dirent *const *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void list_free(struct diff_list *l)
{
	for (size_t i = 0; i < l->nowned; i++)
		/* NOLINTNEXTLINE(clang-analyzer-core.CallAndMessage): assumes -errno >= 0 */
		free(l->owned[i]);
	free(l->owned);
	free(l->wh);
	free(l->ents);
	ovl_dirlist_free(&l->dl);
}

/*
 * Read directory DFD of LAYER into L, sorted. Whiteouts are collected only
 * if WANT_WH (an upper directory whose lower shows through).
 */
static int list_read(struct diff_ctx *c, int dfd, const char *layer,
		     bool want_wh, struct diff_list *l)
{
	char buf[NAME_MAX + 2];
	int err;

	memset(l, 0, sizeof(*l));
	err = ovl_dirlist_read(dfd, &l->dl);
	if (err)
		return fail(c, err, layer, NULL);
	/* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
	l->ents = malloc((l->dl.n + 1) * sizeof(*l->ents));
	l->wh = malloc((l->dl.n + 1) * sizeof(*l->wh));
	l->owned = malloc((l->dl.n + 1) * sizeof(*l->owned));
	if (!l->ents || !l->wh || !l->owned)
		goto out_nomem;
	for (size_t i = 0; i < l->dl.n; i++) {
		struct ovl_dirent *de = &l->dl.ents[i];
		const char *t;

		err = ovl_marker(&c->fmt, dfd, de, buf, &t);
		if (err < 0)
			return fail(c, err, layer, de->name);
		if (!err) {
			l->ents[l->n++] = de;
			continue;
		}
		if (!want_wh)
			continue;
		if (!t)
			continue;
		if (t == buf) {
			t = l->owned[l->nowned] = strdup(buf);
			if (!t)
				goto out_nomem;
			l->nowned++;
		}
		l->wh[l->nwh++] = t;
	}
	/* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
	qsort(l->ents, l->n, sizeof(*l->ents), cmp_dirent);
	qsort(l->wh, l->nwh, sizeof(*l->wh), cmp_str);
	return 0;

out_nomem:
	return ovl_set_error(c->fs, -ENOMEM, "diff: out of memory");
}

static bool list_whited_out(const struct diff_list *l, const char *name)
{
	return l->nwh && bsearch(&name, l->wh, l->nwh, sizeof(*l->wh),
				 cmp_str);
}

/* Open NAME of DFD without following it, and stat it. */
static int open_stat(struct diff_ctx *c, int dfd, const char *name,
		     const char *layer, struct stat *st)
{
	int fd = ovl_open_child(dfd, name);
	int err;

	if (fd < 0)
		return fail(c, fd, layer, name);
	err = ovl_fstat(fd, st);
	if (err) {
		close(fd);
		return fail(c, err, layer, name);
	}
	return fd;
}

/* The source that lower directory ST is, or NULL. */
static const struct diff_src *find_src(const struct diff_ctx *c,
				       const struct stat *st)
{
	/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult): assumes -errno >= 0 */
	if (!S_ISDIR(st->st_mode))
		return NULL;
	for (size_t i = 0; i < c->nsrc; i++)
		if (c->src[i].dev == st->st_dev && c->src[i].ino == st->st_ino)
			return &c->src[i];
	return NULL;
}

/* Is lower entry NAME of DFD a renamed directory's source (moved away)? */
static bool moved_away(const struct diff_ctx *c, int dfd, const char *name)
{
	struct stat st;

	return c->nsrc && fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	       find_src(c, &st);
}

/*
 * Report CHANGE for every entry inside directory DFD of LAYER, recursively
 * (what an added or deleted directory brings or takes along).
 */
static int walk_all(struct diff_ctx *c, int dfd, const char *layer,
		    enum ovlfs_change change)
{
	struct diff_list l;
	size_t len = c->len;
	int err;

	err = list_read(c, dfd, layer, false, &l);
	for (size_t i = 0; i < l.n && !err; i++) {
		/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): assumes -errno >= 0 */
		const char *name = l.ents[i]->name;
		struct stat st;
		int fd;

		fd = open_stat(c, dfd, name, layer, &st);
		if (fd < 0) {
			err = fd;
			break;
		}
		err = path_push(c, name);
		if (!err)
			err = report(c, change, 0, &st);
		if (!err && S_ISDIR(st.st_mode))
			err = walk_all(c, fd, layer, change);
		close(fd);
		path_pop(c, len);
	}
	list_free(&l);
	return err;
}

/* Byte-compare two regular files of equal SIZE: 1 if they differ. */
static int content_differs(struct diff_ctx *c, int ufd, int lfd, off_t size)
{
	int fds[2] = { -1, -1 }, src[2] = { ufd, lfd };
	off_t off = 0;
	int ret = 0;

	for (int i = 0; i < 2; i++) {
		/* Reading must not touch the lower's (or upper's) atimes. */
		fds[i] = ovl_reopen(src[i], O_RDONLY | O_NOATIME);
		if (fds[i] == -EPERM)
			fds[i] = ovl_reopen(src[i], O_RDONLY);
		if (fds[i] < 0) {
			ret = fail(c, fds[i], i ? "lower" : "upper", NULL);
			goto out_close;
		}
	}
	while (off < size) {
		size_t want = size - off < DIFF_BUFSZ ? size - off : DIFF_BUFSZ;
		ssize_t n[2];

		for (int i = 0; i < 2; i++) {
			n[i] = pread(fds[i], c->buf[i], want, off);
			if (n[i] < 0) {
				ret = fail(c, -errno, i ? "lower" : "upper",
					   NULL);
				goto out_close;
			}
		}
		/* A short read means the file changed under us: differs. */
		if (n[0] != n[1] || !n[0] || memcmp(c->buf[0], c->buf[1], n[0])) {
			ret = 1;
			break;
		}
		off += n[0];
	}
out_close:
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return ret;
}

/* The user-visible xattr names of FD, sorted: count or -errno. */
static int xattr_names(int fd, char **bufp, char ***namesp)
{
	char *buf = NULL, **names;
	ssize_t len;
	int n = 0;

	for (;;) {
		len = ovl_fd_listxattr(fd, NULL, 0);
		/* Symlinks and special files may not support xattrs at all. */
		/* NOLINTNEXTLINE(misc-redundant-expression): equal on Linux, not on every system */
		if (len == -ENOTSUP || len == -EOPNOTSUPP)
			len = 0;
		if (len < 0) {
			free(buf);
			return len;
		}
		free(buf);
		buf = malloc(len + 1);
		if (!buf)
			return -ENOMEM;
		if (!len)
			break;
		len = ovl_fd_listxattr(fd, buf, len);
		if (len >= 0)
			break;
		if (len != -ERANGE) {
			free(buf);
			return len;
		}
	}
	names = malloc((len + 1) * sizeof(*names));
	if (!names) {
		free(buf);
		return -ENOMEM;
	}
	for (char *p = buf; p < buf + len; p += strlen(p) + 1)
		if (!ovl_xattr_is_private(p))
			names[n++] = p;
	qsort(names, n, sizeof(*names), cmp_str);
	*bufp = buf;
	*namesp = names;
	return n;
}

/* The value of xattr NAME of FD in a new buffer: length or -errno. */
static ssize_t xattr_value(int fd, const char *name, char **out)
{
	ssize_t len;

	for (;;) {
		len = ovl_fd_getxattr(fd, name, NULL, 0);
		if (len < 0)
			return len;
		*out = malloc(len + 1);
		if (!*out)
			return -ENOMEM;
		len = ovl_fd_getxattr(fd, name, *out, len);
		if (len != -ERANGE)
			break;
		free(*out);
	}
	if (len < 0)
		free(*out);
	return len;
}

/* Do the user-visible xattrs of UFD and LFD differ? 1, 0 or -errno. */
static int xattrs_differ(int ufd, int lfd)
{
	char *buf[2] = { NULL, NULL }, **names[2] = { NULL, NULL };
	int n[2] = { 0, 0 }, fds[2] = { ufd, lfd }, ret = 0;

	for (int i = 0; i < 2 && !ret; i++) {
		n[i] = xattr_names(fds[i], &buf[i], &names[i]);
		if (n[i] < 0)
			ret = n[i];
	}
	if (!ret && n[0] != n[1])
		ret = 1;
	for (int i = 0; !ret && i < n[0]; i++) {
		char *v[2] = { NULL, NULL };
		ssize_t vl[2];

		if (strcmp(names[0][i], names[1][i])) {
			ret = 1;
			break;
		}
		for (int j = 0; j < 2 && !ret; j++) {
			vl[j] = xattr_value(fds[j], names[0][i], &v[j]);
			if (vl[j] < 0)
				ret = vl[j];
		}
		if (!ret && (vl[0] != vl[1] || memcmp(v[0], v[1], vl[0])))
			ret = 1;
		free(v[0]);
		free(v[1]);
	}
	for (int i = 0; i < 2; i++) {
		free(names[i]);
		free(buf[i]);
	}
	return ret;
}

/*
 * What differs between upper object UFD and lower object LFD of the same
 * type (OVLFS_DIFF_* bits, or -errno). The root's mtime is not compared:
 * every create in it changes the upper root's.
 */
static int compare(struct diff_ctx *c, int ufd, int lfd,
		   const struct stat *ust, const struct stat *lst, bool root)
{
	unsigned what = 0;
	int err;

	/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult): assumes -errno >= 0 */
	if ((ust->st_mode ^ lst->st_mode) & 07777)
		what |= OVLFS_DIFF_MODE;
	if (ust->st_uid != lst->st_uid || ust->st_gid != lst->st_gid)
		what |= OVLFS_DIFF_OWNER;
	if (!root && (ust->st_mtim.tv_sec != lst->st_mtim.tv_sec ||
		      ust->st_mtim.tv_nsec != lst->st_mtim.tv_nsec))
		what |= OVLFS_DIFF_MTIME;

	if (S_ISREG(ust->st_mode)) {
		/*
		 * Equal size and mtime prove nothing: compare the bytes. A
		 * metacopy file's are the lower's by definition.
		 */
		err = ovl_metacopy_get(&c->fmt, ufd, "");
		err = err > 0 ? 0 : ust->st_size != lst->st_size ? 1 :
		      content_differs(c, ufd, lfd, ust->st_size);
		if (err < 0)
			return err;
		if (err)
			what |= OVLFS_DIFF_CONTENT;
	} else if (S_ISLNK(ust->st_mode)) {
		char t[2][PATH_MAX + 1];
		ssize_t n[2];
		int fds[2] = { ufd, lfd };

		for (int i = 0; i < 2; i++) {
			n[i] = readlinkat(fds[i], "", t[i], PATH_MAX + 1);
			if (n[i] < 0)
				return fail(c, -errno, i ? "lower" : "upper",
					    NULL);
		}
		if (n[0] != n[1] || memcmp(t[0], t[1], n[0]))
			what |= OVLFS_DIFF_CONTENT;
	} else if (S_ISCHR(ust->st_mode) || S_ISBLK(ust->st_mode)) {
		if (ust->st_rdev != lst->st_rdev)
			what |= OVLFS_DIFF_CONTENT;
	}

	err = xattrs_differ(ufd, lfd);
	if (err < 0)
		return ovl_set_error(c->fs, err, "diff: cannot read xattrs of %s: %s",
				     c->len ? c->path : "/", strerror(-err));
	if (err)
		what |= OVLFS_DIFF_XATTR;
	return what;
}

static int diff_dir(struct diff_ctx *c, int ufd, int lfd, bool lower_shows);
static int diff_added(struct diff_ctx *c, int ufd, int lfd, const char *name,
		      bool lower_shows);
static int diff_renamed(struct diff_ctx *c, int ucfd, int sfd, int lcfd,
			const struct stat *ust);
static int diff_one(struct diff_ctx *c, int dfd, const char *name,
		    const char *layer, enum ovlfs_change change);

/*
 * Where the merged view of upper directory UCFD takes its lower entries
 * from, given that its parent takes them from PSFD (-1: nowhere) under
 * NAME: its redirect's target if it has one (*REDIRECTED set), else
 * PSFD's NAME, else nowhere (-1); none if it is opaque. An fd, -1, or
 * -errno.
 */
static int lower_source(struct diff_ctx *c, int ucfd, int psfd,
			const char *name, bool *redirected)
{
	char redir[OVL_REDIRECT_MAX + 1];
	int r, fd;

	*redirected = false;
	r = ovl_opaque_get(&c->fmt, ucfd);
	if (r)
		return r < 0 ? fail(c, r, "upper", NULL) : -1;
	r = ovl_redirect_get(&c->fmt, ucfd, redir);
	if (r < 0)
		return fail(c, r, "upper", NULL);
	if (r) {
		*redirected = true;
		if (redir[0] == '/')
			fd = ovl_open_dir_abs(c->lower_root, redir);
		else
			fd = psfd < 0 ? -ENOENT :
			     openat(psfd, redir, O_RDONLY | O_DIRECTORY |
				    O_NOFOLLOW | O_CLOEXEC);
	} else {
		fd = psfd < 0 ? -ENOENT :
		     openat(psfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			    O_CLOEXEC);
	}
	/* A target gone from the lower shows nothing, as for lookup. */
	return fd < 0 ? -1 : fd;
}

/*
 * Report CHANGE for everything merged upper directory UFD shows: its own
 * entries and, where SFD >= 0, the lower entries of SFD it does not hide
 * (what a renamed directory brings to its new path).
 */
static int walk_merged(struct diff_ctx *c, int ufd, int sfd,
		       enum ovlfs_change change)
{
	struct diff_list ul, sl;
	size_t i = 0, j = 0, len = c->len;
	int err;

	/* Even with no lower part, a child may have one (a redirect). */
	memset(&sl, 0, sizeof(sl));
	err = list_read(c, ufd, "upper", sfd >= 0, &ul);
	if (err)
		goto out_free_upper;
	if (sfd >= 0)
		err = list_read(c, sfd, "lower", false, &sl);
	while (!err && (i < ul.n || j < sl.n)) {
		const char *name;
		struct stat st;
		int cmp, fd, csfd;
		bool redirected;

		if (i == ul.n)
			cmp = 1;
		else if (j == sl.n)
			cmp = -1;
		else
			/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): assumes -errno >= 0 */
			cmp = strcmp(ul.ents[i]->name, sl.ents[j]->name);
		/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): assumes -errno >= 0 */
		name = cmp <= 0 ? ul.ents[i]->name : sl.ents[j]->name;
		if (cmp > 0 && list_whited_out(&ul, name)) {
			j++;
			continue;
		}
		err = path_push(c, name);
		if (err)
			break;
		if (cmp > 0) {
			err = diff_one(c, sfd, name, "lower", change);
		} else {
			fd = open_stat(c, ufd, name, "upper", &st);
			csfd = -1;
			redirected = false;
			err = fd < 0 ? fd : 0;
			/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult): assumes -errno >= 0 */
			if (!err && S_ISDIR(st.st_mode)) {
				csfd = lower_source(c, fd, cmp == 0 ? sfd : -1,
						    name, &redirected);
				err = csfd < -1 ? csfd : 0;
			}
			/* A renamed directory in an added tree: a rename. */
			if (!err && redirected)
				err = diff_renamed(c, fd, csfd, -1, &st);
			if (err > 0) {
				err = 0;
			} else if (!err) {
				err = report(c, change, 0, &st);
				if (!err && S_ISDIR(st.st_mode))
					err = walk_merged(c, fd, csfd, change);
			}
			if (csfd >= 0)
				close(csfd);
			if (fd >= 0)
				close(fd);
		}
		path_pop(c, len);
		if (cmp <= 0)
			i++;
		if (cmp >= 0)
			j++;
	}
	list_free(&sl);
out_free_upper:
	list_free(&ul);
	return err;
}

/*
 * Upper directory UFD (at c->path) takes its lower entries from SFD (-1:
 * none), lower path LP: record the sources of the renamed directories in
 * it (a redirect naming a path other than the directory's own).
 */
static int collect_sources(struct diff_ctx *c, int ufd, int sfd, const char *lp)
{
	char redir[OVL_REDIRECT_MAX + 1];
	struct ovl_dirlist dl;
	size_t len = c->len;
	int err;

	err = ovl_dirlist_read(ufd, &dl);
	if (err)
		return fail(c, err, "upper", NULL);
	for (size_t i = 0; !err && i < dl.n; i++) {
		const char *name = dl.ents[i].name;
		char *clp = NULL;
		struct stat st;
		bool redirected;
		int cfd, csfd;

		if (ovl_is_wh_name(name) || (dl.ents[i].type != DT_DIR &&
					     dl.ents[i].type != DT_UNKNOWN))
			continue;
		cfd = openat(ufd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			     O_CLOEXEC);
		if (cfd < 0)
			continue;	/* not a directory */
		err = path_push(c, name);
		csfd = err ? -1 : lower_source(c, cfd, sfd, name, &redirected);
		if (csfd < -1)
			err = csfd;
		if (!err && csfd >= 0) {
			redirected = redirected && ovl_redirect_get(&c->fmt, cfd, redir) > 0;
			if (asprintf(&clp, "%s%s%s", redirected && redir[0] == '/' ? "" : lp,
				     redirected && redir[0] == '/' ? "" : "/",
				     redirected ? redir : name) < 0) {
				clp = NULL;
				err = ovl_set_error(c->fs, -ENOMEM, "diff: out of memory");
			}
		}
		if (!err && csfd >= 0 && redirected && clp && strcmp(clp, c->path) &&
		    fstat(csfd, &st) == 0) {
			if (ovl_grow((void **)&c->src, &c->srccap, c->nsrc + 1,
				     sizeof(*c->src), 8))
				err = ovl_set_error(c->fs, -ENOMEM, "diff: out of memory");
			else
				c->src[c->nsrc++] = (struct diff_src){
					st.st_dev, st.st_ino, clp };
			if (!err)
				clp = NULL;
		}
		if (!err)
			err = collect_sources(c, cfd, csfd, clp ? clp : "");
		free(clp);
		path_pop(c, len);
		if (csfd >= 0)
			close(csfd);
		close(cfd);
	}
	ovl_dirlist_free(&dl);
	return err;
}

/*
 * Upper directory UCFD (stat UST) at the current path, whose lower part
 * comes from SFD: if it is a renamed directory, report it renamed (what
 * it replaces, LCFD unless -1 or itself a source, deleted first) and what
 * changed in it since; 1 then, 0 if it is none, -errno.
 */
static int diff_renamed(struct diff_ctx *c, int ucfd, int sfd, int lcfd,
			const struct stat *ust)
{
	struct ovlfs_diff_entry e = {
		.path = c->len ? c->path : "/",
		.change = OVLFS_RENAMED,
		.mode = ust->st_mode,
	};
	const struct diff_src *src;
	struct stat sst, lst;
	int err = 0, what;

	if (sfd < 0 || fstat(sfd, &sst) < 0 || !(src = find_src(c, &sst)))
		return 0;
	if (lcfd >= 0 && fstat(lcfd, &lst) == 0 && !find_src(c, &lst)) {
		err = report(c, OVLFS_DELETED, 0, &lst);
		if (!err && S_ISDIR(lst.st_mode))
			err = walk_all(c, lcfd, "lower", OVLFS_DELETED);
	}
	what = err ? err : compare(c, ucfd, sfd, ust, &sst, false);
	if (what < 0)
		return what;
	e.what = what;
	e.from = src->from;
	err = c->fn(&e, c->arg);
	if (!err) {
		/* As lookup: a renamed directory merges with its source. */
		err = diff_dir(c, ucfd, sfd, true);
	}
	return err ? err : 1;
}

/* NAME is in upper directory UFD and lower directory LFD: what changed? */
static int diff_both(struct diff_ctx *c, int ufd, int lfd, const char *name,
		     bool lower_shows)
{
	struct stat ust, lst;
	int ucfd, lcfd, what, err, sfd = -1;
	bool redirected = false;

	ucfd = open_stat(c, ufd, name, "upper", &ust);
	if (ucfd < 0)
		return ucfd;
	lcfd = open_stat(c, lfd, name, "lower", &lst);
	if (lcfd < 0) {
		err = lcfd;
		goto out_close_upper;
	}
	if (find_src(c, &lst)) {
		/* Moved away by a rename: nothing is there to compare with. */
		close(lcfd);
		close(ucfd);
		return diff_added(c, ufd, lfd, name, lower_shows);
	}
	/* A directory's lower part: the same name, or a redirect's target. */
	/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult): assumes -errno >= 0 */
	if (S_ISDIR(ust.st_mode)) {
		sfd = lower_source(c, ucfd, lfd, name, &redirected);
		if (sfd < -1) {
			err = sfd;
			goto out_close;
		}
	}
	if (redirected) {
		err = diff_renamed(c, ucfd, sfd, lcfd, &ust);
		if (err) {
			err = err < 0 ? err : 0;
			goto out_close;
		}
	}
	/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult): assumes -errno >= 0 */
	if ((ust.st_mode ^ lst.st_mode) & S_IFMT) {
		/* Only one side can be a directory: no interleaving. */
		err = report(c, OVLFS_MODIFIED, OVLFS_DIFF_TYPE, &ust);
		if (!err && S_ISDIR(ust.st_mode))
			err = walk_merged(c, ucfd, sfd, OVLFS_ADDED);
		if (!err && S_ISDIR(lst.st_mode))
			err = walk_all(c, lcfd, "lower", OVLFS_DELETED);
		goto out_close;
	}
	if (redirected && sfd >= 0) {
		/* Its own path again (renamed back): merged as ever. */
		close(lcfd);
		lcfd = sfd;
		sfd = -1;
	} else if (redirected) {
		/* A redirect to nothing: it shows its upper entries only. */
		err = report(c, OVLFS_MODIFIED, 0, &ust);
		if (!err)
			err = walk_all(c, lcfd, "lower", OVLFS_DELETED);
		if (!err)
			err = walk_merged(c, ucfd, -1, OVLFS_ADDED);
		goto out_close;
	}
	err = what = compare(c, ucfd, lcfd, &ust, &lst, false);
	if (what > 0)
		err = report(c, OVLFS_MODIFIED, what, &ust);
	if (!err && S_ISDIR(ust.st_mode)) {
		/* As lookup: the lower merges in only through a merged parent. */
		err = ovl_opaque_get(&c->fmt, ucfd);
		if (err < 0)
			err = fail(c, err, "upper", NULL);
		else
			err = diff_dir(c, ucfd, lcfd, lower_shows && !err);
	}
out_close:
	if (sfd >= 0)
		close(sfd);
	close(lcfd);
out_close_upper:
	close(ucfd);
	return err;
}

/* NAME exists in only one layer (directory DFD): CHANGE it all. */
static int diff_one(struct diff_ctx *c, int dfd, const char *name,
		    const char *layer, enum ovlfs_change change)
{
	struct stat st;
	int fd, err;

	fd = open_stat(c, dfd, name, layer, &st);
	if (fd < 0)
		return fd;
	err = report(c, change, 0, &st);
	if (!err && S_ISDIR(st.st_mode))
		err = walk_all(c, fd, layer, change);
	close(fd);
	return err;
}

/*
 * NAME is only in upper directory UFD (the lower's LFD, merged if
 * LOWER_SHOWS, lacks it): added, with what it shows (a renamed directory
 * brings its lower part along).
 */
static int diff_added(struct diff_ctx *c, int ufd, int lfd, const char *name,
		      bool lower_shows)
{
	struct stat st;
	bool redirected;
	int fd, sfd, err;

	fd = open_stat(c, ufd, name, "upper", &st);
	if (fd < 0)
		return fd;
	/* NOLINTNEXTLINE(clang-analyzer-core.UndefinedBinaryOperatorResult): assumes -errno >= 0 */
	if (!S_ISDIR(st.st_mode)) {
		close(fd);
		return diff_one(c, ufd, name, "upper", OVLFS_ADDED);
	}
	sfd = lower_source(c, fd, lower_shows ? lfd : -1, name, &redirected);
	err = sfd < -1 ? sfd : redirected ? diff_renamed(c, fd, sfd, -1, &st) : 0;
	if (err) {
		err = err < 0 ? err : 0;
	} else {
		err = report(c, OVLFS_ADDED, 0, &st);
		if (!err)
			err = walk_merged(c, fd, sfd, OVLFS_ADDED);
	}
	if (sfd >= 0)
		close(sfd);
	close(fd);
	return err;
}

/*
 * Compare upper directory UFD with lower directory LFD at the current path.
 * LOWER_SHOWS: the lower's children show through (merged); if not, every
 * lower child the upper lacks is deleted.
 */
static int diff_dir(struct diff_ctx *c, int ufd, int lfd, bool lower_shows)
{
	struct diff_list ul, ll;
	size_t i = 0, j = 0, len = c->len;
	int err;

	err = list_read(c, ufd, "upper", lower_shows, &ul);
	if (err)
		goto out_free_upper;
	err = list_read(c, lfd, "lower", false, &ll);
	while (!err && (i < ul.n || j < ll.n)) {
		const char *name;
		int cmp;

		if (i == ul.n)
			cmp = 1;
		else if (j == ll.n)
			cmp = -1;
		else
			/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): assumes -errno >= 0 */
			cmp = strcmp(ul.ents[i]->name, ll.ents[j]->name);
		/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): assumes -errno >= 0 */
		name = cmp <= 0 ? ul.ents[i]->name : ll.ents[j]->name;
		err = path_push(c, name);
		if (err)
			break;
		if (cmp < 0)
			err = diff_added(c, ufd, lfd, name, lower_shows);
		else if (cmp == 0)
			err = diff_both(c, ufd, lfd, name, lower_shows);
		else if ((!lower_shows || list_whited_out(&ul, name)) &&
			 !moved_away(c, lfd, name))
			err = diff_one(c, lfd, name, "lower", OVLFS_DELETED);
		/* else: a lower entry showing as it is, unchanged */
		path_pop(c, len);
		if (cmp <= 0)
			i++;
		if (cmp >= 0)
			j++;
	}
	list_free(&ll);
out_free_upper:
	list_free(&ul);
	return err;
}

/* Open a layer root (the path as the user gave it): fd or -errno. */
static int open_root(const char *path, struct stat *st)
{
	int fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	int err;

	if (fd < 0)
		return -errno;
	err = ovl_fstat(fd, st);
	if (err)
		close(fd);
	return err ? err : fd;
}

int ovl_diff(struct ovlfs *fs, const char *lower, const char *upper,
	     bool upper_exists, ovlfs_diff_fn fn, void *arg)
{
	struct diff_ctx c = { .fs = fs, .fn = fn, .arg = arg };
	struct stat ust, lst;
	int ufd = -1, lfd, err, what;

	lfd = open_root(lower, &lst);
	if (lfd < 0)
		return ovl_set_error(fs, lfd, "lower %s: %s", lower,
				     strerror(-lfd));
	ufd = upper_exists ? open_root(upper, &ust) : -ENOENT;
	if (ufd == -ENOENT) {
		err = 0;	/* never mounted: nothing changed */
		goto out_close_lower;
	}
	if (ufd < 0) {
		err = ovl_set_error(fs, ufd, "upper %s: %s", upper,
				    strerror(-ufd));
		goto out_close_lower;
	}
	/* A foreign upper would be reported wrongly, markers as files. */
	err = ovl_check_upper_format(fs, ufd, upper, false, &c.fmt);
	if (err)
		goto out_free;
	c.path = malloc(256);
	c.buf[0] = malloc(DIFF_BUFSZ);
	c.buf[1] = malloc(DIFF_BUFSZ);
	if (!c.path || !c.buf[0] || !c.buf[1]) {
		err = ovl_set_error(fs, -ENOMEM, "diff: out of memory");
		goto out_free;
	}
	c.cap = 256;
	c.path[0] = '\0';
	c.lower_root = lfd;
	err = ovl_opaque_get(&c.fmt, ufd);
	if (err < 0)
		err = fail(&c, err, "upper", NULL);
	else
		err = collect_sources(&c, ufd, err ? -1 : lfd, "");
	path_pop(&c, 0);
	if (err)
		goto out_free;

	err = what = compare(&c, ufd, lfd, &ust, &lst, true);
	if (what > 0)
		err = report(&c, OVLFS_MODIFIED, what, &ust);
	if (!err) {
		err = ovl_opaque_get(&c.fmt, ufd);
		if (err < 0)
			err = fail(&c, err, "upper", NULL);
		else
			err = diff_dir(&c, ufd, lfd, !err);
	}
out_free:
	for (size_t i = 0; i < c.nsrc; i++)
		free(c.src[i].from);
	free(c.src);
	free(c.buf[0]);
	free(c.buf[1]);
	free(c.path);
	close(ufd);
out_close_lower:
	close(lfd);
	return err;
}
