/*
 * tar.c: an upper as an OCI image-layer tarball, and back (docs/tar.md).
 *
 * Export walks the upper as diff.c and finalize.c do, through directory
 * fds with O_NOFOLLOW, and writes a pax stream with libarchive: one entry
 * per upper object, whiteouts as empty `.wh.NAME` files, opaque
 * directories as `.wh..wh..opq`, whatever the upper's own format.
 *
 * Apply reads a tar with libarchive but writes with *at() calls of its own:
 * archive_write_disk works with path strings, and a layer must never make
 * ovlfs write through a symlink, whether the upper already had it or an
 * earlier entry of the same tar made it. Every path is walked one
 * component at a time with O_NOFOLLOW|O_DIRECTORY from the upper root.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "offline/offline.h"
#include "api/api.h"	/* until the public wrappers move to api/ */

#define TAR_BUFSZ (128 * 1024)

/* ---- a small table keyed by string ---- */

/* What apply did to a path. */
enum {
	R_ENTRY = 1 << 0,	/* an entry of this tar made it */
	R_DIR = 1 << 1,		/* ... and it is a directory */
	R_META = 1 << 2,	/* final mode and times below, from the tar */
	R_SAVED = 1 << 3,	/* times below, from before we touched it */
	R_LINK = 1 << 4,	/* (check pass) the entry is a symlink */
};

struct trec {
	char *key;
	unsigned flags;
	mode_t mode;
	struct timespec atime, mtime;
};

struct tmap {
	struct trec *recs;	/* open addressing; key NULL = free */
	size_t n, cap;
};

static size_t hash_str(const char *s)
{
	size_t h = 14695981039346656037ULL;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	return h;
}

static struct trec *tmap_find(const struct tmap *m, const char *key)
{
	if (!m->cap)
		return NULL;
	for (size_t i = hash_str(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->recs[i].key)
			return NULL;
		if (!strcmp(m->recs[i].key, key))
			return &m->recs[i];
	}
}

static int tmap_grow(struct tmap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 256;
	struct trec *recs = calloc(cap, sizeof(*recs));

	if (!recs)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		size_t j;

		if (!m->recs[i].key)
			continue;
		for (j = hash_str(m->recs[i].key) & (cap - 1); recs[j].key;
		     j = (j + 1) & (cap - 1))
			;
		recs[j] = m->recs[i];
	}
	free(m->recs);
	m->recs = recs;
	m->cap = cap;
	return 0;
}

/* The record for KEY, added (zeroed) if missing. */
static int tmap_get(struct tmap *m, const char *key, struct trec **out)
{
	struct trec *r = tmap_find(m, key);
	size_t i;

	if (!r) {
		if ((m->n + 1) * 2 > m->cap && tmap_grow(m) < 0)
			return -ENOMEM;
		for (i = hash_str(key) & (m->cap - 1); m->recs[i].key;
		     i = (i + 1) & (m->cap - 1))
			;
		r = &m->recs[i];
		r->key = strdup(key);
		if (!r->key)
			return -ENOMEM;
		m->n++;
	}
	*out = r;
	return 0;
}

static void tmap_free(struct tmap *m)
{
	for (size_t i = 0; i < m->cap; i++) {
		free(m->recs[i].key);
	}
	free(m->recs);
	memset(m, 0, sizeof(*m));
}

/* ---- shared helpers ---- */

/* Not ours to carry over: ovlfs's bookkeeping and the kernel's markers. */
static bool skip_xattr(const char *name)
{
	return ovl_xattr_is_private(name) ||
	       !strncmp(name, "trusted.overlay.", 16) ||
	       !strncmp(name, "user.overlay.", 13);
}

/*
 * The format of the upper at FD, as a mount reads it (docs/format.md),
 * also as the enum the walkers test. 0 or -errno with a message.
 */
static int upper_format(struct ovlfs *fs, int fd, const char *upper,
			struct ovl_fmt *mf, enum ovlfs_format *fmt)
{
	int err = ovl_check_upper_format(fs, fd, upper, false, mf);

	*fmt = mf->kernel ? OVLFS_FORMAT_KERNEL : OVLFS_FORMAT_OCI;
	return err;
}

static int open_locked(struct ovlfs *fs, const char *what, const char *path,
		       int *out)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int err;

	*out = -1;
	if (fd < 0)
		return ovl_set_error(fs, -errno, "%s %s: %s", what, path,
				     strerror(errno));
	err = ovl_flock_wait(fd, LOCK_EX);
	if (err) {
		close(fd);
		if (err == -EBUSY)
			return ovl_set_error(fs, err,
					     "%s %s is in use by an ovlfs mount; unmount it first",
					     what, path);
		return ovl_set_error(fs, err, "%s %s: cannot lock: %s", what,
				     path, strerror(-err));
	}
	*out = fd;
	return 0;
}

/*
 * A name for FD in messages: the path it was opened by, if it has one
 * (a tar given as a file), else what /proc says ("pipe:[...]").
 */
static void fd_name(int fd, char *buf, size_t len)
{
	char p[64];
	ssize_t n;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	n = readlink(p, buf, len - 1);
	if (n < 0 || (size_t)n >= len - 1)
		snprintf(buf, len, "the tar (fd %d)", fd);
	else
		buf[n] = '\0';
}

/* ---- export ---- */

struct xport {
	struct ovlfs *fs;
	const char *upper;		/* canonical, for messages */
	struct archive *a;
	struct archive_entry *e;
	enum ovlfs_format fmt;
	struct ovl_fmt mfmt;		/* the same, for whiteout.c */
	struct ovl_linkmap links;	/* linked files: first path */
	char *path;			/* "" or "dir/sub/" being walked */
	size_t len, cap;
	char *buf;			/* TAR_BUFSZ */
	char out[PATH_MAX];		/* what the tar goes to, for messages */
	dev_t out_dev;			/* ... and what it is, if a file */
	ino_t out_ino;
};

/* What one directory holds, as it goes into the tar. */
struct xitem {
	char *tarname;			/* last component in the tar */
	const char *name;		/* upper name; NULL for a whiteout */
};

static int xfail(struct xport *x, int err, const char *name)
{
	return ovl_set_error(x->fs, err, "export: %s/%s%s: %s", x->upper,
			     x->path, name ? name : "", strerror(-err));
}

static int xarchive_fail(struct xport *x, const char *name)
{
	int e = archive_errno(x->a);

	/* The system's reason (ENOSPC, EPIPE, ...) if there is one. */
	if (e > 0)
		return ovl_set_error(x->fs, -e, "export: cannot write %s: %s (at %s%s)",
				     x->out, strerror(e), x->path ? x->path : "",
				     name ? name : "");
	return ovl_set_error(x->fs, -EIO, "export: cannot write %s%s to %s: %s",
			     x->path ? x->path : "", name ? name : "", x->out,
			     archive_error_string(x->a) ? archive_error_string(x->a) :
							  "unknown error");
}

static int xpath_push(struct xport *x, const char *name, bool dir,
		      size_t *saved)
{
	size_t nlen = strlen(name), need = x->len + nlen + 2;

	*saved = x->len;
	if (need > x->cap) {
		size_t ncap = x->cap ? x->cap : 256;
		char *p;

		while (ncap < need)
			ncap *= 2;
		p = realloc(x->path, ncap);
		if (!p)
			return -ENOMEM;
		x->path = p;
		x->cap = ncap;
	}
	memcpy(x->path + x->len, name, nlen);
	x->len += nlen;
	if (dir)
		x->path[x->len++] = '/';
	x->path[x->len] = '\0';
	return 0;
}

static void xpath_pop(struct xport *x, size_t saved)
{
	x->len = saved;
	x->path[saved] = '\0';
}

static int write_header(struct xport *x, const char *name)
{
	int r = archive_write_header(x->a, x->e);

	return r < ARCHIVE_WARN ? xarchive_fail(x, name) : 0;
}

/* An empty regular file NAME in the current directory (a marker). */
static int write_marker(struct xport *x, const char *name)
{
	size_t saved;
	int err = xpath_push(x, name, false, &saved);

	if (err)
		return xfail(x, err, name);
	archive_entry_clear(x->e);
	archive_entry_copy_pathname(x->e, x->path);
	archive_entry_set_filetype(x->e, AE_IFREG);
	archive_entry_set_perm(x->e, 0644);
	archive_entry_set_size(x->e, 0);
	err = write_header(x, NULL);
	xpath_pop(x, saved);
	return err;
}

static int add_xattrs(struct xport *x, int fd, const char *name)
{
	ssize_t len = ovl_fd_listxattr(fd, NULL, 0), vlen;
	char *names, *val = NULL;
	int err = 0;

	if (len == -EOPNOTSUPP || len == 0)
		return 0;
	if (len < 0)
		return xfail(x, (int)len, name);
	names = malloc(len);
	if (!names)
		return xfail(x, -ENOMEM, name);
	len = ovl_fd_listxattr(fd, names, len);
	if (len < 0)
		err = (int)len;
	for (char *n = names; !err && n < names + len; n += strlen(n) + 1) {
		if (skip_xattr(n))
			continue;
		vlen = ovl_fd_getxattr(fd, n, NULL, 0);
		if (vlen == -ENODATA)
			continue;
		if (vlen < 0) {
			err = (int)vlen;
			break;
		}
		free(val);
		val = malloc(vlen + 1);
		if (!val) {
			err = -ENOMEM;
			break;
		}
		vlen = ovl_fd_getxattr(fd, n, val, vlen);
		if (vlen < 0) {
			err = vlen == -ENODATA ? 0 : (int)vlen;
			continue;
		}
		archive_entry_xattr_add_entry(x->e, n, val, vlen);
	}
	free(val);
	free(names);
	return err ? xfail(x, err, name) : 0;
}

static int write_data(struct xport *x, int fd, const char *name, off_t size)
{
	int rfd = ovl_reopen(fd, O_RDONLY);
	off_t done = 0;
	int err = 0;

	if (rfd < 0)
		return xfail(x, rfd, name);
	while (done < size) {
		size_t want = size - done > TAR_BUFSZ ? TAR_BUFSZ : size - done;
		ssize_t n = read(rfd, x->buf, want);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = xfail(x, -errno, name);
			break;
		}
		if (n == 0)
			break;	/* shrank meanwhile: libarchive pads it */
		if (archive_write_data(x->a, x->buf, n) < 0) {
			err = xarchive_fail(x, name);
			break;
		}
		done += n;
	}
	close(rfd);
	return err;
}

static int export_dir(struct xport *x, int dfd);

/* Upper object NAME of directory DFD as an entry, and its contents. */
static int export_entry(struct xport *x, int dfd, const char *name)
{
	const char *first;
	struct stat st;
	size_t saved;
	int fd, err;

	fd = ovl_open_child(dfd, name);
	if (fd < 0)
		return fd == -ENOENT ? 0 : xfail(x, fd, name);
	err = ovl_fstat(fd, &st);
	if (err)
		goto out;
	if (S_ISSOCK(st.st_mode))
		goto out;	/* tar has no sockets */
	/* A tar written into the upper itself must not hold itself. */
	if (st.st_dev == x->out_dev && st.st_ino == x->out_ino)
		goto out;
	err = xpath_push(x, name, S_ISDIR(st.st_mode), &saved);
	if (err)
		goto out;
	archive_entry_clear(x->e);
	archive_entry_copy_pathname(x->e, x->path);
	archive_entry_set_mode(x->e, st.st_mode);
	archive_entry_set_uid(x->e, st.st_uid);
	archive_entry_set_gid(x->e, st.st_gid);
	archive_entry_set_mtime(x->e, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
		/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): x->path stays X's, freed with it */
		err = ovl_linkmap_first(&x->links, st.st_dev, st.st_ino,
					x->path, &first);
		if (err)
			goto pop;
		if (first) {
			archive_entry_copy_hardlink(x->e, first);
			archive_entry_set_size(x->e, 0);
			err = write_header(x, NULL);
			goto pop;
		}
	}
	if (S_ISLNK(st.st_mode)) {
		ssize_t n = readlinkat(fd, "", x->buf, TAR_BUFSZ - 1);

		if (n < 0) {
			err = -errno;
			goto pop;
		}
		x->buf[n] = '\0';
		archive_entry_copy_symlink(x->e, x->buf);
	} else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
		archive_entry_set_rdev(x->e, st.st_rdev);
	} else if (S_ISREG(st.st_mode)) {
		archive_entry_set_size(x->e, st.st_size);
	}
	/* X->path names the entry now: no NAME for the messages. */
	err = add_xattrs(x, fd, NULL);
	if (!err)
		err = write_header(x, NULL);
	if (!err && S_ISREG(st.st_mode))
		err = write_data(x, fd, NULL, st.st_size);
	if (!err && S_ISDIR(st.st_mode)) {
		int cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY |
				 O_NOFOLLOW | O_CLOEXEC);

		if (cfd < 0) {
			err = -errno;
			goto pop;
		}
		err = export_dir(x, cfd);
		close(cfd);
	}
pop:
	xpath_pop(x, saved);
out:
	close(fd);
	if (err && !x->fs->err[0])
		xfail(x, err, name);
	return err;
}

static int cmp_item(const void *a, const void *b)
{
	return strcmp(((const struct xitem *)a)->tarname,
		      ((const struct xitem *)b)->tarname);
}

static bool has_name(const struct ovl_dirlist *dl, const char *name)
{
	for (size_t i = 0; i < dl->n; i++)
		if (!strcmp(dl->ents[i].name, name))
			return true;
	return false;
}

/*
 * Which entries directory DFD contributes, in the tar's terms: user
 * entries by name, whiteouts as ".wh.<hidden name>" (a long one spelled
 * out: tar has no NAME_MAX), sorted. *OPAQUE says whether the directory
 * hides its lower.
 */
static int list_items(struct xport *x, int dfd, const struct ovl_dirlist *dl,
		      struct xitem **out, size_t *nout, bool *opaque)
{
	char buf[NAME_MAX + 2];
	struct xitem *items = calloc(dl->n + 1, sizeof(*items));
	size_t n = 0;
	int err = 0;

	if (!items)
		return -ENOMEM;
	*opaque = x->fmt == OVLFS_FORMAT_KERNEL &&
		  ovl_opaque_get(&x->mfmt, dfd) > 0;
	for (size_t i = 0; i < dl->n && !err; i++) {
		const struct ovl_dirent *de = &dl->ents[i];
		const char *hidden = NULL;
		struct stat st;

		if (ovl_is_wh_name(de->name)) {
			/* In kernel format, ".wh." names mean nothing: skip. */
			if (x->fmt != OVLFS_FORMAT_OCI)
				continue;
			if (!strcmp(de->name, OVL_OPAQUE_NAME)) {
				*opaque |= ovl_opaque_get(NULL, dfd) > 0;
				continue;
			}
			err = ovl_wh_target(dfd, de, buf, &hidden);
			if (err || !hidden)
				continue;
		} else if (x->fmt == OVLFS_FORMAT_KERNEL &&
			   (de->type == DT_CHR || de->type == DT_UNKNOWN) &&
			   fstatat(dfd, de->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			   ovl_is_kernel_wh(&st)) {
			hidden = de->name;
		}
		if (hidden) {
			/* An upper entry beats its whiteout (crash debris). */
			if (x->fmt == OVLFS_FORMAT_OCI && has_name(dl, hidden))
				continue;
			items[n].tarname = malloc(strlen(hidden) + OVL_WH_PREFIX_LEN + 1);
			if (!items[n].tarname) {
				err = -ENOMEM;
				break;
			}
			strcpy(items[n].tarname, OVL_WH_PREFIX);
			strcat(items[n].tarname, hidden);
			items[n].name = NULL;
		} else {
			items[n].tarname = strdup(de->name);
			if (!items[n].tarname) {
				err = -ENOMEM;
				break;
			}
			items[n].name = de->name;
		}
		n++;
	}
	if (err) {
		for (size_t i = 0; i < n; i++)
			free(items[i].tarname);
		free(items);
		return err;
	}
	qsort(items, n, sizeof(*items), cmp_item);
	*out = items;
	*nout = n;
	return 0;
}

static int export_dir(struct xport *x, int dfd)
{
	struct ovl_dirlist dl;
	struct xitem *items = NULL;
	size_t n = 0;
	bool opaque;
	int err;

	err = ovl_dirlist_read(dfd, &dl);
	if (err)
		return xfail(x, err, NULL);
	err = list_items(x, dfd, &dl, &items, &n, &opaque);
	if (err) {
		ovl_dirlist_free(&dl);
		return xfail(x, err, NULL);
	}
	/* Right after the directory's own entry, before any of its children. */
	if (opaque)
		err = write_marker(x, OVL_OPAQUE_NAME);
	for (size_t i = 0; i < n && !err; i++) {
		if (items[i].name)
			err = export_entry(x, dfd, items[i].name);
		else
			err = write_marker(x, items[i].tarname);
	}
	for (size_t i = 0; i < n; i++)
		free(items[i].tarname);
	free(items);
	ovl_dirlist_free(&dl);
	return err;
}

int ovlfs_export_tar(struct ovlfs *fs, int fd)
{
	char *lower = NULL, *upper = NULL;
	struct xport x = { .fs = fs };
	struct stat ost;
	bool upper_exists;
	int ufd = -1, err;

	fs->err[0] = '\0';
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "unmount %s first",
				     fs->mount_point);
	err = ovl_pair_paths(fs, false, &lower, &upper, &upper_exists);
	if (err)
		return err;
	err = ovl_refuse_pending_commit(fs, "export", lower, upper);
	if (!err)
		err = ovl_refuse_volatile_dirty(fs, "export", upper);
	if (err)
		goto out;
	x.upper = upper;
	fd_name(fd, x.out, sizeof(x.out));
	if (fstat(fd, &ost) == 0 && S_ISREG(ost.st_mode)) {
		x.out_dev = ost.st_dev;
		x.out_ino = ost.st_ino;
	}
	if (upper_exists) {
		err = open_locked(fs, "upper", upper, &ufd);
		if (err)
			goto out;
		err = upper_format(fs, ufd, upper, &x.mfmt, &x.fmt);
		if (err)
			goto out;
	}
	x.buf = malloc(TAR_BUFSZ);
	x.a = archive_write_new();
	x.e = archive_entry_new();
	if (!x.buf || !x.a || !x.e) {
		err = ovl_set_error(fs, -ENOMEM, "export: out of memory");
		goto out;
	}
	/* pax: nanosecond mtimes, long names; xattrs as GNU tar spells them. */
	if (archive_write_set_format_pax(x.a) != ARCHIVE_OK ||
	    archive_write_set_format_option(x.a, "pax", "xattrheader",
					    "SCHILY") < ARCHIVE_WARN ||
	    archive_write_open_fd(x.a, fd) != ARCHIVE_OK) {
		err = xarchive_fail(&x, NULL);
		goto out;
	}
	if (ufd >= 0)
		err = export_dir(&x, ufd);
	if (archive_write_close(x.a) != ARCHIVE_OK && !err)
		err = xarchive_fail(&x, NULL);
out:
	if (x.e)
		archive_entry_free(x.e);
	if (x.a)
		archive_write_free(x.a);
	ovl_linkmap_free(&x.links);
	free(x.path);
	free(x.buf);
	if (ufd >= 0)
		close(ufd);
	free(lower);
	free(upper);
	return err;
}

/* ---- apply ---- */

struct apply {
	struct ovlfs *fs;
	struct ovl_fs *ofs;		/* context for the shared helpers */
	const char *upper;		/* canonical, for messages */
	int lower_fd;			/* O_PATH root of the lower, or -1 */
	int upper_fd;			/* O_RDONLY|O_DIRECTORY, locked */
	enum ovlfs_format fmt;
	struct ovl_fmt mfmt;		/* the same, for whiteout.c */
	bool is_root;
	struct tmap recs;		/* relative path -> what we did */
	const char *entry;		/* the entry being applied */
	char *buf;			/* TAR_BUFSZ */
	bool stamped;			/* the upper's format is on its root */
	char tar[PATH_MAX];		/* what the tar comes from, for messages */
};

#define KERNEL_DEV_WHY \
	"a 0/0 character device, which the kernel format of the upper would read as a whiteout"

static int afail(struct apply *ap, int err, const char *why)
{
	const char *e = ap->entry ? ap->entry : "?";
	size_t len = strlen(e);

	/* A path may be longer than the message: keep both its ends. */
	if (len > 160)
		return ovl_set_error(ap->fs, err,
				     "apply to %s: entry \"%.100s...%s\" (%zu bytes): %s",
				     ap->upper, e, e + len - 50, len,
				     why ? why : strerror(-err));
	return ovl_set_error(ap->fs, err, "apply to %s: entry \"%s\": %s",
			     ap->upper, e, why ? why : strerror(-err));
}

/*
 * Normalise tar path IN into OUT (PATH_MAX): relative, no "." or empty
 * components, no trailing slash; "" is the root. -EINVAL for an absolute
 * path or a ".." component.
 */
static int norm_path(const char *in, char *out)
{
	size_t o = 0;

	if (in[0] == '/')
		return -EINVAL;
	while (*in) {
		const char *end = strchr(in, '/');
		size_t len = end ? (size_t)(end - in) : strlen(in);

		if (len == 2 && in[0] == '.' && in[1] == '.')
			return -EINVAL;
		if (len && !(len == 1 && in[0] == '.')) {
			if (o + len + 2 > PATH_MAX)
				return -ENAMETOOLONG;
			if (o)
				out[o++] = '/';
			memcpy(out + o, in, len);
			o += len;
		}
		in += len;
		if (*in == '/')
			in++;
	}
	out[o] = '\0';
	return 0;
}

/* REL joined with NAME into BUF (PATH_MAX); -ENAMETOOLONG. */
static int join(const char *rel, const char *name, char *buf)
{
	int n = snprintf(buf, PATH_MAX, "%s%s%s", rel, *rel ? "/" : "", name);

	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* Remember directory REL's times before we change what is in it. */
static int touch_dir(struct apply *ap, int dfd, const char *rel)
{
	struct trec *r;
	struct stat st;
	int err = tmap_get(&ap->recs, rel, &r);

	if (err || (r->flags & (R_SAVED | R_META)))
		return err;
	err = ovl_fstat(dfd, &st);
	if (err)
		return err;
	r->flags |= R_SAVED;
	r->atime = st.st_atim;
	r->mtime = st.st_mtim;
	return 0;
}

/* Mark the upper directory DFD opaque, in the upper's format. */
static int set_opaque(struct apply *ap, int dfd)
{
	return ovl_opaque_set(&ap->mfmt, dfd);
}

/* Record the whiteout of NAME in DFD, in the upper's format. */
static int set_whiteout(struct apply *ap, int dfd, const char *name)
{
	int err = ovl_wh_create(&ap->mfmt, dfd, name);

	return err < 0 ? err : 0;
}

/* Is there a whiteout of NAME in DFD (in OCI format; kernel: see callers)? */
static int oci_whiteout(struct apply *ap, int dfd, const char *name)
{
	return ap->fmt == OVLFS_FORMAT_OCI ? ovl_wh_exists(&ap->mfmt, dfd, name) : 0;
}

/*
 * Put directory TMP of DFD, made whole, at NAME: in one step, over the
 * kernel whiteout or non-directory standing there if REPLACE (which then
 * goes), else where nothing stands. So an apply killed or failing at any
 * instant leaves the old entry (still hiding the lower) or the finished
 * directory, never a bare one that shows the lower's NAME again, which a
 * second run would take for an upper directory to merge with.
 */
static int put_dir(int dfd, const char *tmp, const char *name, bool replace)
{
	int err = 0;

	if (!replace) {
		if (renameat2(dfd, tmp, dfd, name, RENAME_NOREPLACE) < 0)
			err = -errno;
	} else if (renameat2(dfd, tmp, dfd, name, RENAME_EXCHANGE) == 0) {
		err = ovl_remove_tree(dfd, tmp);	/* the old entry */
		return err == -ENOENT ? 0 : err;
	} else if (errno == EINVAL) {
		/* No exchange on this filesystem: the old way, with a gap. */
		err = ovl_remove_tree(dfd, name);
		if (!err && renameat2(dfd, tmp, dfd, name, RENAME_NOREPLACE) < 0)
			err = -errno;
	} else {
		err = -errno;
	}
	if (err)
		ovl_remove_tree(dfd, tmp);
	return err;
}

/*
 * A directory the tar implies but does not list: as ovlfs's copy-up
 * would make it, with the lower directory's metadata if there is one,
 * opaque if the upper had deleted that name (REPLACE: with a kernel
 * whiteout at NAME). Built under a temporary name (put_dir).
 */
static int implicit_dir(struct apply *ap, int pfd, const char *name,
			const char *rel, bool opaque, bool replace)
{
	char tmp[64];
	struct stat st;
	int lfd = -1, fd, err;

	ovl_tmp_name(&ap->ofs->tmp_counter, tmp);
	if (mkdirat(pfd, tmp, 0755) < 0)
		return -errno;
	fd = openat(pfd, tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		ovl_remove_tree(pfd, tmp);
		return err;
	}
	/* The lower directory at REL, walked without following symlinks. */
	if (ap->lower_fd >= 0) {
		char comp[PATH_MAX];
		const char *p = rel;

		lfd = dup(ap->lower_fd);
		while (lfd >= 0 && *p) {
			const char *end = strchr(p, '/');
			size_t len = end ? (size_t)(end - p) : strlen(p);
			int nfd;

			memcpy(comp, p, len);
			comp[len] = '\0';
			nfd = openat(lfd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW |
				     O_CLOEXEC);
			close(lfd);
			lfd = nfd;
			p += len + (end ? 1 : 0);
		}
	}
	err = 0;
	if (lfd >= 0 && ovl_fstat(lfd, &st) == 0 && S_ISDIR(st.st_mode))
		err = ovl_copy_meta(ap->ofs->is_root, lfd, fd, &st, true);
	if (!err && opaque)
		err = set_opaque(ap, fd);
	if (lfd >= 0)
		close(lfd);
	if (!err)
		err = touch_dir(ap, fd, rel);
	close(fd);
	if (err) {
		ovl_remove_tree(pfd, tmp);
		return err;
	}
	return put_dir(pfd, tmp, name, replace);
}

/*
 * Open directory REL of the upper (O_RDONLY), one component at a time,
 * never following a symlink. With CREATE, directories missing on the way
 * are made (implicit_dir) and a kernel whiteout in the way is replaced.
 */
static int walk_dir(struct apply *ap, const char *rel, bool create, int *out)
{
	char sofar[PATH_MAX], parent[PATH_MAX], comp[NAME_MAX + 1];
	const char *p = rel;
	size_t slen = 0;
	int cur, err = 0;

	*out = -1;
	sofar[0] = '\0';
	cur = openat(ap->upper_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cur < 0)
		return -errno;
	while (*p) {
		const char *end = strchr(p, '/');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		struct stat st;
		int fd, wh;

		if (len > NAME_MAX) {
			err = -ENAMETOOLONG;
			break;
		}
		memcpy(comp, p, len);
		comp[len] = '\0';
		memcpy(parent, sofar, slen + 1);
		memcpy(sofar + slen, p - (slen ? 1 : 0), len + (slen ? 1 : 0));
		slen += len + (slen ? 1 : 0);
		sofar[slen] = '\0';
		p += len + (end ? 1 : 0);
		fd = openat(cur, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			    O_CLOEXEC);
		if (fd < 0 && create && errno == ENOENT) {
			wh = oci_whiteout(ap, cur, comp);
			err = wh < 0 ? wh : touch_dir(ap, cur, parent);
			if (!err)
				err = implicit_dir(ap, cur, comp, sofar, wh > 0,
						   false);
			if (!err && wh > 0)
				err = ovl_wh_remove(&ap->mfmt, cur, comp);
			if (err)
				break;
			fd = openat(cur, comp, O_RDONLY | O_DIRECTORY |
				    O_NOFOLLOW | O_CLOEXEC);
		} else if (fd < 0 && (errno == ENOTDIR || errno == ELOOP)) {
			if (fstatat(cur, comp, &st, AT_SYMLINK_NOFOLLOW) < 0) {
				err = -errno;
				break;
			}
			if (S_ISLNK(st.st_mode)) {
				err = -ELOOP;	/* never followed */
				break;
			}
			if (!create || ap->fmt != OVLFS_FORMAT_KERNEL ||
			    !ovl_is_kernel_wh(&st)) {
				err = -ENOTDIR;
				break;
			}
			err = touch_dir(ap, cur, parent);
			if (err)
				break;
			err = implicit_dir(ap, cur, comp, sofar, true, true);
			if (err)
				break;
			fd = openat(cur, comp, O_RDONLY | O_DIRECTORY |
				    O_NOFOLLOW | O_CLOEXEC);
		}
		if (fd < 0) {
			err = -errno;
			break;
		}
		close(cur);
		cur = fd;
	}
	if (err) {
		close(cur);
		return err;
	}
	*out = cur;
	return 0;
}

/*
 * Under opaque directory DFD (REL), remove what older layers put there:
 * everything but this tar's own entries (and, in those that are
 * directories, the same again).
 */
static int prune(struct apply *ap, int dfd, const char *rel)
{
	char key[PATH_MAX];
	struct ovl_dirlist dl;
	int err = touch_dir(ap, dfd, rel);

	if (!err)
		err = ovl_dirlist_read(dfd, &dl);
	if (err)
		return err;
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *name = dl.ents[i].name;
		struct trec *r;

		if (ap->fmt == OVLFS_FORMAT_OCI && !strcmp(name, OVL_OPAQUE_NAME))
			continue;
		err = join(rel, name, key);
		if (err)
			break;
		r = tmap_find(&ap->recs, key);
		if (r && (r->flags & R_ENTRY)) {
			int cfd;

			if (!(r->flags & R_DIR))
				continue;
			cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY |
				     O_NOFOLLOW | O_CLOEXEC);
			if (cfd < 0)
				continue;	/* replaced since: not a dir */
			err = prune(ap, cfd, key);
			close(cfd);
			continue;
		}
		err = ovl_remove_tree(dfd, name);
	}
	ovl_dirlist_free(&dl);
	return err;
}

/* Does the tar carry xattr NAME for entry E? */
static bool entry_has_xattr(struct archive_entry *e, const char *name)
{
	const char *n;
	const void *v;
	size_t sz;

	archive_entry_xattr_reset(e);
	while (archive_entry_xattr_next(e, &n, &v, &sz) == ARCHIVE_OK)
		if (!strcmp(n, name))
			return true;
	return false;
}

/* Remove FD's xattrs the tar does not give (never private or markers). */
static int drop_xattrs(int fd, struct archive_entry *e)
{
	ssize_t len = ovl_fd_listxattr(fd, NULL, 0);
	char *names;
	int err = 0;

	if (len <= 0)
		return 0;
	names = malloc(len);
	if (!names)
		return -ENOMEM;
	len = ovl_fd_listxattr(fd, names, len);
	for (char *n = names; len > 0 && n < names + len && !err;
	     n += strlen(n) + 1) {
		if (skip_xattr(n) || entry_has_xattr(e, n))
			continue;
		err = ovl_fd_removexattr(fd, n);
		if (err == -ENODATA)
			err = 0;
	}
	free(names);
	return err;
}

/* Owner, mode (not of a directory: later), xattrs and times from E. */
static int set_meta(struct apply *ap, int fd, struct archive_entry *e,
		    bool is_dir, bool merged)
{
	const char *n;
	const void *v;
	size_t sz;
	mode_t type = archive_entry_filetype(e);
	int err = 0;

	if (ap->is_root &&
	    fchownat(fd, "", archive_entry_uid(e), archive_entry_gid(e),
		     AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	/* After the chown, which clears set-id bits. */
	if (!is_dir && type != AE_IFLNK) {
		err = ovl_fchmod_any(fd, archive_entry_perm(e));
		if (err)
			return err;
	}
	if (merged) {
		err = drop_xattrs(fd, e);
		if (err)
			return err;
	}
	archive_entry_xattr_reset(e);
	while (!err && archive_entry_xattr_next(e, &n, &v, &sz) == ARCHIVE_OK) {
		/* A layer must not forge ovlfs's bookkeeping or markers. */
		if (skip_xattr(n))
			continue;
		err = ovl_fd_setxattr(fd, n, v, sz, 0);
	}
	if (!err && !is_dir) {
		struct timespec ts[2] = {
			{ archive_entry_mtime(e), archive_entry_mtime_nsec(e) },
			{ archive_entry_mtime(e), archive_entry_mtime_nsec(e) },
		};

		if (archive_entry_atime_is_set(e)) {
			ts[0].tv_sec = archive_entry_atime(e);
			ts[0].tv_nsec = archive_entry_atime_nsec(e);
		}
		if (utimensat(fd, "", ts, AT_EMPTY_PATH) < 0)
			err = -errno;
	}
	return err;
}

static int write_file(struct apply *ap, struct archive *a, int dfd,
		      const char *name, struct archive_entry *e)
{
	int fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
			O_CLOEXEC, 0600);
	const void *buf;
	size_t size;
	la_int64_t off;
	int r, err = 0;

	if (fd < 0)
		return -errno;
	while ((r = archive_read_data_block(a, &buf, &size, &off)) == ARCHIVE_OK) {
		const char *p = buf;

		while (size > 0) {
			ssize_t n = pwrite(fd, p, size, off);

			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				err = -errno;
				goto out;
			}
			p += n;
			off += n;
			size -= n;
		}
	}
	if (r != ARCHIVE_EOF) {
		err = afail(ap, -EIO, archive_error_string(a));
		goto out;
	}
	/* A sparse file may end in a hole. */
	if (ftruncate(fd, archive_entry_size(e)) < 0)
		err = -errno;
out:
	if (close(fd) < 0 && !err)
		err = -errno;
	return err;
}

/* A hard link NAME in DFD to TARGET, an earlier entry of this tar. */
static int make_link(struct apply *ap, int dfd, const char *name,
		     const char *target)
{
	char rel[PATH_MAX], *slash;
	struct trec *r;
	int tfd, err;

	if (norm_path(target, rel) < 0 || !rel[0])
		return afail(ap, -EINVAL, "hard link target outside the layer");
	r = tmap_find(&ap->recs, rel);
	if (!r || !(r->flags & R_ENTRY) || (r->flags & R_DIR))
		return afail(ap, -ENOENT,
			     "hard link target is not a file extracted before it");
	slash = strrchr(rel, '/');
	if (slash)
		*slash = '\0';
	err = walk_dir(ap, slash ? rel : "", false, &tfd);
	if (err)
		return err;
	if (linkat(tfd, slash ? slash + 1 : rel, dfd, name, 0) < 0)
		err = -errno;
	close(tfd);
	return err;
}

/* Whiteout of NAME in directory DFD (REL) of the upper. */
static int apply_whiteout(struct apply *ap, int dfd, const char *rel,
			  const char *name)
{
	char key[PATH_MAX];
	struct trec *r;
	int err = join(rel, name, key), cfd;

	if (err)
		return err;
	r = tmap_find(&ap->recs, key);
	if (r && (r->flags & R_ENTRY)) {
		/*
		 * A whiteout hides the lower layers only, never an entry of
		 * its own layer: deleted below and present here, a directory
		 * no longer merges with what was below.
		 */
		if (!(r->flags & R_DIR))
			return 0;
		cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			     O_CLOEXEC);
		if (cfd < 0)
			return -errno;
		err = set_opaque(ap, cfd);
		if (!err)
			err = prune(ap, cfd, key);
		close(cfd);
		return err;
	}
	err = touch_dir(ap, dfd, rel);
	if (err)
		return err;
	/*
	 * An OCI whiteout goes in first, as ovlfs does it: an upper entry
	 * beats its whiteout, so no instant shows the lower's NAME. A
	 * kernel one takes the entry's own name and can only follow it.
	 */
	if (ap->fmt == OVLFS_FORMAT_OCI) {
		err = set_whiteout(ap, dfd, name);
		if (!err)
			err = ovl_remove_tree(dfd, name);
		return err;
	}
	err = ovl_remove_tree(dfd, name);
	if (!err)
		err = set_whiteout(ap, dfd, name);
	return err;
}

/*
 * Directory NAME of DFD where the upper hid the lower's NAME (a whiteout,
 * or a non-directory if OLD): made opaque before it is put in place.
 */
static int new_opaque_dir(struct apply *ap, int dfd, const char *name,
			  bool old)
{
	char tmp[64];
	int fd, err;

	ovl_tmp_name(&ap->ofs->tmp_counter, tmp);
	if (mkdirat(dfd, tmp, 0700) < 0)
		return -errno;
	fd = ovl_open_child(dfd, tmp);
	err = fd < 0 ? fd : set_opaque(ap, fd);
	if (fd >= 0)
		close(fd);
	if (err) {
		ovl_remove_tree(dfd, tmp);
		return err;
	}
	return put_dir(dfd, tmp, name, old);
}

/* A non-marker entry E at NAME of directory DFD (REL), replacing. */
static int apply_entry(struct apply *ap, struct archive *a, int dfd,
		       const char *rel, const char *name, struct archive_entry *e)
{
	char key[PATH_MAX];
	const char *hardlink = archive_entry_hardlink(e);
	mode_t type = archive_entry_filetype(e);
	bool is_dir = !hardlink && type == AE_IFDIR;
	bool merged = false, opaque = false, old = false;
	struct trec *r;
	struct stat st;
	int err, fd, wh;

	err = join(rel, name, key);
	if (!err)
		err = touch_dir(ap, dfd, rel);
	if (err)
		return err;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		if (is_dir && S_ISDIR(st.st_mode)) {
			merged = true;
		} else {
			/* What the upper had hid the lower: so must a new dir. */
			opaque = true;
			old = true;
		}
	} else if (errno != ENOENT) {
		err = -errno;
	}
	wh = err ? 0 : oci_whiteout(ap, dfd, name);
	if (wh < 0)
		err = wh;
	if (wh > 0)
		opaque = true;
	if (!err && is_dir && !merged && opaque)
		err = new_opaque_dir(ap, dfd, name, old);
	else if (!err && old)
		err = ovl_remove_tree(dfd, name);
	if (err)
		return err;

	if (hardlink) {
		err = make_link(ap, dfd, name, hardlink);
	} else {
		switch (type) {
		case AE_IFREG:
			err = write_file(ap, a, dfd, name, e);
			break;
		case AE_IFDIR:
			if (!merged && !opaque && mkdirat(dfd, name, 0700) < 0)
				err = -errno;
			break;
		case AE_IFLNK:
			if (!archive_entry_symlink(e))
				return afail(ap, -EINVAL, "symlink without a target");
			if (symlinkat(archive_entry_symlink(e), dfd, name) < 0)
				err = -errno;
			break;
		case AE_IFCHR:
			/* The kernel format, or a scan of an unstamped upper, reads it as a whiteout. */
			if (archive_entry_rdev(e) == 0 &&
			    ap->fmt == OVLFS_FORMAT_KERNEL)
				return afail(ap, -EINVAL, KERNEL_DEV_WHY);
			if (archive_entry_rdev(e) == 0 && !ap->stamped)
				return afail(ap, -EOPNOTSUPP,
					     "a 0/0 character device, which needs the upper's format stamp (user.ovlfs.format) its filesystem cannot hold");
			/* fall through */
		case AE_IFIFO:
		case AE_IFBLK:
		case AE_IFSOCK:
			if (mknodat(dfd, name, type | 0600,
				    archive_entry_rdev(e)) < 0)
				err = -errno;
			break;
		default:
			return afail(ap, -EINVAL, "unknown entry type");
		}
	}
	/* Only now: the new entry beats the whiteout, no gap shows the lower. */
	if (!err && wh > 0)
		err = ovl_wh_remove(&ap->mfmt, dfd, name);
	if (err)
		return err;
	err = tmap_get(&ap->recs, key, &r);
	if (err)
		return err;
	r->flags |= R_ENTRY | (is_dir ? R_DIR : 0);
	if (hardlink)
		return 0;	/* one inode: its metadata came with the first */
	if (is_dir) {
		r->flags |= R_META;
		r->mode = archive_entry_perm(e);
		r->mtime.tv_sec = archive_entry_mtime(e);
		r->mtime.tv_nsec = archive_entry_mtime_nsec(e);
		r->atime = r->mtime;
		if (archive_entry_atime_is_set(e)) {
			r->atime.tv_sec = archive_entry_atime(e);
			r->atime.tv_nsec = archive_entry_atime_nsec(e);
		}
	}
	fd = ovl_open_child(dfd, name);
	if (fd < 0)
		return fd;
	err = set_meta(ap, fd, e, is_dir, merged);
	if (!err && is_dir && opaque)
		err = set_opaque(ap, fd);
	close(fd);
	return err;
}

/* The upper root itself ("./" in the tar): metadata only. */
static int apply_root(struct apply *ap, struct archive_entry *e)
{
	struct trec *r;
	int err;

	if (archive_entry_hardlink(e) || archive_entry_filetype(e) != AE_IFDIR)
		return afail(ap, -EINVAL, "the root must be a directory");
	err = tmap_get(&ap->recs, "", &r);
	if (err)
		return err;
	r->flags |= R_ENTRY | R_DIR | R_META;
	r->mode = archive_entry_perm(e);
	r->mtime.tv_sec = archive_entry_mtime(e);
	r->mtime.tv_nsec = archive_entry_mtime_nsec(e);
	r->atime = r->mtime;
	return set_meta(ap, ap->upper_fd, e, true, true);
}

/* Refuse names a layer must not hold; "" if fine, else why. */
static const char *bad_name(const char *rel, const char *last)
{
	const char *p = rel;

	while (p < last) {
		const char *end = strchr(p, '/');

		if (ovl_is_wh_name(p))
			return "a directory of the path has a reserved .wh. name";
		if (!end)
			break;
		if (end - p > NAME_MAX)
			return "a directory name of the path is longer than NAME_MAX (255 bytes)";
		p = end + 1;
	}
	if (!ovl_is_wh_name(last))
		return strlen(last) > NAME_MAX ?
			       "name longer than NAME_MAX (255 bytes)" : NULL;
	if (!strcmp(last, OVL_OPAQUE_NAME))
		return NULL;
	if (!strncmp(last, OVL_META_PREFIX, OVL_META_PREFIX_LEN))
		return "reserved .wh..wh. name";
	last += OVL_WH_PREFIX_LEN;
	if (!*last || !strcmp(last, ".") || !strcmp(last, ".."))
		return "whiteout of an invalid name";
	if (strlen(last) > NAME_MAX)
		return "whiteout of a name longer than NAME_MAX (255 bytes)";
	return NULL;
}

/*
 * Entry E's path, normalised into REL (PATH_MAX), its last component at
 * *LAST and the slash before it at *SLASH (NULL: in the root; REL "": the
 * root itself); refused, with the reason, if a layer must not hold it.
 */
static int entry_path(struct apply *ap, struct archive_entry *e, char *rel,
		      char **last, char **slash)
{
	const char *why;
	int err;

	rel[0] = '\0';
	*slash = NULL;
	*last = rel;
	ap->entry = archive_entry_pathname(e);
	if (!ap->entry)
		return afail(ap, -EINVAL, "no path");
	err = norm_path(ap->entry, rel);
	if (err == -EINVAL)
		return afail(ap, err, "absolute path or \"..\": outside the layer");
	if (err == -ENAMETOOLONG)
		return afail(ap, err, "path longer than PATH_MAX (4096 bytes)");
	if (err)
		return afail(ap, err, NULL);
	*slash = strrchr(rel, '/');
	*last = *slash ? *slash + 1 : rel;
	why = rel[0] ? bad_name(rel, *last) : NULL;
	return why ? afail(ap, -EINVAL, why) : 0;
}

static int apply_one(struct apply *ap, struct archive *a,
		     struct archive_entry *e)
{
	char rel[PATH_MAX], *last, *slash;
	int dfd, err;

	err = entry_path(ap, e, rel, &last, &slash);
	if (err)
		return err;
	if (!rel[0])
		return apply_root(ap, e);
	if (slash)
		*slash = '\0';
	err = walk_dir(ap, slash ? rel : "", true, &dfd);
	if (err == -ELOOP)
		return afail(ap, err, "a directory of the path is a symlink");
	if (err)
		return afail(ap, err, NULL);
	if (!strcmp(last, OVL_OPAQUE_NAME)) {
		err = set_opaque(ap, dfd);
		if (!err)
			err = prune(ap, dfd, slash ? rel : "");
	} else if (ovl_is_wh_name(last)) {
		err = apply_whiteout(ap, dfd, slash ? rel : "",
				     last + OVL_WH_PREFIX_LEN);
	} else {
		err = apply_entry(ap, a, dfd, slash ? rel : "", last, e);
	}
	close(dfd);
	if (err && !ap->fs->err[0])
		afail(ap, err, NULL);
	return err;
}

/*
 * Directory modes and times last: adding entries changed the times, and
 * a read-only mode would have stopped us adding them. Directories the tar
 * did not list get back the times they had.
 */
static int fix_dirs(struct apply *ap)
{
	int first = 0;

	for (size_t i = 0; i < ap->recs.cap; i++) {
		struct trec *r = &ap->recs.recs[i];
		struct timespec ts[2];
		int fd, err = 0;

		if (!r->key || !(r->flags & (R_META | R_SAVED)))
			continue;
		if (walk_dir(ap, r->key, false, &fd) < 0)
			continue;	/* removed or replaced since */
		ts[0] = r->atime;
		ts[1] = r->mtime;
		if (r->flags & R_META)
			err = ovl_fchmod_any(fd, r->mode);
		if (!err && utimensat(fd, "", ts, AT_EMPTY_PATH) < 0)
			err = -errno;
		close(fd);
		if (err && !first) {
			first = err;
			ap->entry = r->key;
		}
	}
	return first;
}

/*
 * Make UPPER as a fresh upper of LOWER: with the lower root's metadata, so
 * that committing it changes the root only where the tar says so.
 */
static int make_upper(struct ovlfs *fs, const char *lower, const char *upper,
		      bool exists)
{
	struct ovl_fs *ofs = calloc(1, sizeof(*ofs));
	struct stat st;
	int lfd = -1, ufd = -1, err = 0;

	if (!ofs)
		return ovl_set_error(fs, -ENOMEM, "apply: out of memory");
	ofs->is_root = geteuid() == 0;
	if (!exists && mkdir(upper, 0700) < 0)
		err = -errno;
	if (!err) {
		lfd = open(lower, O_PATH | O_DIRECTORY | O_CLOEXEC);
		ufd = open(upper, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (lfd < 0 || ufd < 0)
			err = -errno;
	}
	if (!err)
		err = ovl_fstat(lfd, &st);
	if (!err)
		err = ovl_copy_meta(ofs->is_root, lfd, ufd, &st, true);
	if (lfd >= 0)
		close(lfd);
	if (ufd >= 0)
		close(ufd);
	free(ofs);
	if (err)
		return ovl_set_error(fs, err, "upper %s: cannot create: %s",
				     upper, strerror(-err));
	return 0;
}

/* The tar could not be read: why, in the system's words if it has some. */
static int read_fail(struct apply *ap, struct archive *a)
{
	int e = archive_errno(a);
	const char *why = archive_error_string(a);

	/* libarchive's own "errnos" for a bad format (EILSEQ, EINVAL). */
	if (e > 0 && e != EILSEQ && e != EINVAL)
		why = strerror(e);
	return ovl_set_error(ap->fs, e > 0 ? -e : -EINVAL,
			     "apply: cannot read the tar %s%s%s: %s", ap->tar,
			     ap->entry ? " after entry " : "",
			     ap->entry ? ap->entry : "", why ? why : "unknown error");
}

static int open_tar(struct apply *ap, int fd, struct archive **out)
{
	struct archive *a = archive_read_new();

	*out = NULL;
	if (!a)
		return ovl_set_error(ap->fs, -ENOMEM, "apply: out of memory");
	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	archive_read_support_format_gnutar(a);
	archive_read_support_format_empty(a);
	if (archive_read_open_fd(a, fd, 64 * 1024) != ARCHIVE_OK) {
		int err = read_fail(ap, a);

		archive_read_free(a);
		return err;
	}
	*out = a;
	return 0;
}

/*
 * The tar on FD, readable twice: FD itself if it is a regular file (*START
 * its offset), else a copy of the stream in an unlinked file in DIR. *OUT
 * is FD or an fd to close. 0 or -errno with a message.
 */
static int rereadable(struct apply *ap, int fd, const char *dir, int *out,
		      off_t *start)
{
	char *tmp = NULL;
	struct stat st;
	int tfd, err = 0;

	*out = -1;
	if (fstat(fd, &st) < 0 || S_ISDIR(st.st_mode)) {
		err = S_ISDIR(st.st_mode) ? -EISDIR : -errno;
		return ovl_set_error(ap->fs, err, "apply: cannot read %s: %s",
				     ap->tar, strerror(-err));
	}
	*start = S_ISREG(st.st_mode) ? lseek(fd, 0, SEEK_CUR) : -1;
	if (*start >= 0) {
		*out = fd;
		return 0;
	}
	*start = 0;
	tfd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (tfd < 0 && (tmp = malloc(strlen(dir) + 32))) {
		sprintf(tmp, "%s/.ovlfs-apply-XXXXXX", dir);
		tfd = mkostemp(tmp, O_CLOEXEC);
		if (tfd >= 0)
			unlink(tmp);
		free(tmp);
	}
	if (tfd < 0)
		err = -errno;
	while (!err) {
		char buf[64 * 1024];
		ssize_t n = read(fd, buf, sizeof(buf)), w;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? -errno : 0;
			break;
		}
		for (char *p = buf; n > 0 && !err; p += w, n -= w) {
			w = write(tfd, p, n);
			if (w < 0 && errno != EINTR)
				err = -errno;
			if (w < 0)
				w = 0;
		}
	}
	if (!err && lseek(tfd, 0, SEEK_SET) < 0)
		err = -errno;
	if (err) {
		if (tfd >= 0)
			close(tfd);
		return ovl_set_error(ap->fs, err,
				     "apply: cannot keep a copy of the tar %s in %s: %s",
				     ap->tar, dir, strerror(-err));
	}
	*out = tfd;
	return 0;
}

/*
 * Entry E in the check pass: refused as apply would refuse it, for what
 * the tar alone says. VM holds this tar's paths so far.
 */
static int check_entry(struct apply *ap, struct tmap *vm,
		       struct archive_entry *e)
{
	char rel[PATH_MAX], target[PATH_MAX], *last, *slash, *p;
	const char *hardlink = archive_entry_hardlink(e);
	mode_t type = archive_entry_filetype(e);
	struct trec *r;
	int err = entry_path(ap, e, rel, &last, &slash);

	if (err)
		return err;
	if (!rel[0])
		return hardlink || type != AE_IFDIR ?
			       afail(ap, -EINVAL, "the root must be a directory") : 0;
	/* Through a non-directory this same tar put there. */
	for (p = strchr(rel, '/'); p; p = strchr(p + 1, '/')) {
		*p = '\0';
		r = tmap_find(vm, rel);
		*p = '/';
		if (r && (r->flags & R_LINK))
			return afail(ap, -ELOOP, "a directory of the path is a symlink");
		if (r && !(r->flags & R_DIR))
			return afail(ap, -ENOTDIR, NULL);
	}
	if (ovl_is_wh_name(last))
		return 0;	/* hides older layers, never this tar's entries */
	if (hardlink) {
		if (norm_path(hardlink, target) < 0 || !target[0])
			return afail(ap, -EINVAL, "hard link target outside the layer");
		r = tmap_find(vm, target);
		if (!r || (r->flags & R_DIR))
			return afail(ap, -ENOENT,
				     "hard link target is not a file extracted before it");
	} else if (type == AE_IFCHR && archive_entry_rdev(e) == 0 &&
		   ap->fmt == OVLFS_FORMAT_KERNEL) {
		return afail(ap, -EINVAL, KERNEL_DEV_WHY);
	}
	err = tmap_get(vm, rel, &r);
	if (err)
		return afail(ap, err, NULL);
	r->flags = R_ENTRY;
	if (!hardlink && type == AE_IFDIR)
		r->flags |= R_DIR;
	if (!hardlink && type == AE_IFLNK)
		r->flags |= R_LINK;
	return 0;
}

/*
 * Read the whole tar once without writing, so that a layer refused for
 * what it holds (docs/tar.md) changes nothing at all. What depends on the
 * upper (a symlink it already has in the way) is found only when applying.
 */
static int check_tar(struct apply *ap, int fd)
{
	struct tmap vm = { 0 };
	struct archive_entry *e;
	struct archive *a;
	int err, r;

	err = open_tar(ap, fd, &a);
	while (!err) {
		r = archive_read_next_header(a, &e);
		if (r == ARCHIVE_EOF)
			break;
		err = r < ARCHIVE_WARN ? read_fail(ap, a) : check_entry(ap, &vm, e);
	}
	if (a)
		archive_read_free(a);
	tmap_free(&vm);
	ap->entry = NULL;
	return err;
}

/*
 * As a mount does: the upper keeps the format it was read in, so what
 * apply writes is never read in the other one (a user's 0/0 device in an
 * OCI upper is no whiteout). False if the filesystem cannot hold it.
 */
static bool stamp_format(int ufd, enum ovlfs_format fmt)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d%s", OVL_FORMAT_VERSION,
			 fmt == OVLFS_FORMAT_KERNEL ? " kernel" : "");
	int err = ovl_fd_setxattr(ufd, OVL_XATTR_FORMAT, buf, n, XATTR_CREATE);

	return !err || err == -EEXIST;
}

/*
 * Apply the tar on FD to UPPER, over LOWER. CHECK: read it through first
 * (check_tar), refusing before anything is written; CREATE: UPPER does not
 * exist yet, and is made (as a mount makes it) only once the check passed.
 */
static int apply_to(struct ovlfs *fs, int fd, const char *lower,
		    const char *upper, bool check, bool create)
{
	struct apply ap = { .fs = fs, .lower_fd = -1, .upper_fd = -1 };
	struct archive *a = NULL;
	struct archive_entry *e;
	int err, fix, r, in = fd;
	off_t start = 0;

	ap.upper = upper;
	ap.is_root = geteuid() == 0;
	fd_name(fd, ap.tar, sizeof(ap.tar));
	ap.ofs = calloc(1, sizeof(*ap.ofs));
	if (!ap.ofs)
		return ovl_set_error(fs, -ENOMEM, "apply: out of memory");
	ap.ofs->is_root = ap.is_root;
	if (create) {
		ap.fmt = fs->format == OVLFS_FORMAT_KERNEL ? OVLFS_FORMAT_KERNEL :
							     OVLFS_FORMAT_OCI;
		ap.mfmt = ovl_fmt_of(ap.fmt == OVLFS_FORMAT_KERNEL);
	} else {
		err = open_locked(fs, "upper", upper, &ap.upper_fd);
		if (!err)
			err = upper_format(fs, ap.upper_fd, upper, &ap.mfmt, &ap.fmt);
		if (err)
			goto out;
	}
	if (check) {
		char *dir = strdup(upper);

		err = dir ? rereadable(&ap, fd, dirname(dir), &in, &start) :
			    ovl_set_error(fs, -ENOMEM, "apply: out of memory");
		free(dir);
		if (!err)
			err = check_tar(&ap, in);
		if (!err && lseek(in, start, SEEK_SET) < 0)
			err = ovl_set_error(fs, -errno, "apply: cannot read the tar %s: %s",
					    ap.tar, strerror(errno));
		if (err)
			goto out;
	}
	if (create) {
		err = make_upper(fs, lower, upper, false);
		if (!err)
			err = open_locked(fs, "upper", upper, &ap.upper_fd);
		if (err)
			goto out;
	}
	ap.stamped = stamp_format(ap.upper_fd, ap.fmt);
	ap.lower_fd = open(lower, O_PATH | O_DIRECTORY | O_CLOEXEC);
	err = open_tar(&ap, in, &a);
	while (!err) {
		r = archive_read_next_header(a, &e);
		if (r == ARCHIVE_EOF)
			break;
		err = r < ARCHIVE_WARN ? read_fail(&ap, a) : apply_one(&ap, a, e);
	}
	/* Even after a failure: no directory is left at mode 0700. */
	fix = fix_dirs(&ap);
	if (fix && !err)
		err = afail(&ap, fix, NULL);
out:
	if (a)
		archive_read_free(a);
	if (in != fd)
		close(in);
	tmap_free(&ap.recs);
	if (ap.lower_fd >= 0)
		close(ap.lower_fd);
	if (ap.upper_fd >= 0)
		close(ap.upper_fd);
	free(ap.ofs);
	return err;
}

/* Remove directory PATH (ours, made for this apply) and all in it. */
static void remove_dir(const char *path)
{
	char *copy = strdup(path);
	int pfd;

	if (!copy)
		return;
	pfd = open(dirname(copy), O_PATH | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	copy = strdup(path);
	if (pfd >= 0 && copy)
		ovl_remove_tree(pfd, basename(copy));
	if (pfd >= 0)
		close(pfd);
	free(copy);
}

/*
 * OVLFS_APPLY_COMMIT: apply into a fresh OCI upper next to LOWER, then
 * commit that as ovlfs_finish() does (same checks, same guarantees).
 */
static int apply_commit(struct ovlfs *fs, int fd, const char *lower)
{
	char *tmp, *copy;
	struct ovlfs *h;
	int lfd, err;

	/* Before reading the tar: a busy lower fails at once. */
	err = open_locked(fs, "lower", lower, &lfd);
	if (err)
		return err;
	close(lfd);
	if (!strcmp(lower, "/"))
		return ovl_set_error(fs, -EINVAL,
				     "apply --commit: the lower cannot be /");
	copy = strdup(lower);
	tmp = malloc(strlen(lower) + 32);
	if (!copy || !tmp) {
		free(copy);
		free(tmp);
		return ovl_set_error(fs, -ENOMEM, "apply: out of memory");
	}
	/* Next to LOWER (a link or rename away) and never inside it. */
	sprintf(tmp, "%s/.%s.apply-XXXXXX", dirname(copy),
		strrchr(lower, '/') + 1);
	free(copy);
	if (!mkdtemp(tmp)) {
		err = ovl_set_error(fs, -errno, "apply: cannot create %s: %s",
				    tmp, strerror(errno));
		free(tmp);
		return err;
	}
	err = make_upper(fs, lower, tmp, true);
	/* Unchecked: a refused tar only ever reaches this upper, removed. */
	if (!err)
		err = apply_to(fs, fd, lower, tmp, false, false);
	if (err) {
		char why[OVL_ERRLEN];

		remove_dir(tmp);
		snprintf(why, sizeof(why), "%s", fs->err);
		ovl_set_error(fs, err, "%s (nothing was committed to %s)",
			      why, lower);
		free(tmp);
		return err;
	}
	h = ovlfs_new(lower);
	err = h ? ovlfs_set_upper(h, tmp) : -errno;
	if (!err) {
		ovlfs_set_progress(h, fs->progress, fs->progress_arg);
		err = ovlfs_finish(h, OVLFS_COMMIT);
	}
	if (err) {
		/* The commit keeps its upper on failure: say where it is. */
		ovl_set_error(fs, err,
			      "%s; the layer stays applied in %s (retry with: ovlfs commit -u %s %s)",
			      h && ovlfs_error(h)[0] ? ovlfs_error(h) : strerror(-err),
			      tmp, tmp, lower);
	}
	ovlfs_free(h);
	free(tmp);
	return err;
}

int ovlfs_apply_tar(struct ovlfs *fs, int fd, unsigned flags)
{
	char *lower = NULL, *upper = NULL;
	bool upper_exists, named;
	int err;

	fs->err[0] = '\0';
	if (flags & ~OVLFS_APPLY_COMMIT)
		return ovl_set_error(fs, -EINVAL, "apply: unknown flags %#x",
				     flags);
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "unmount %s first",
				     fs->mount_point);
	/* A missing upper, named or not, is made as a mount makes it. */
	named = fs->upper_set;
	fs->upper_set = false;
	err = ovl_pair_paths(fs, false, &lower, &upper, &upper_exists);
	fs->upper_set = named;
	if (err)
		return err;
	/*
	 * --commit writes the lower: it recovers first, as commit does (and
	 * with the upper the interrupted commit was for, which it may
	 * remove). Into the upper, it would write what recovery may delete.
	 */
	if (flags & OVLFS_APPLY_COMMIT) {
		err = ovl_recover_lower(fs, lower, upper);
		if (err >= 0)
			err = apply_commit(fs, fd, lower);
	} else {
		err = ovl_refuse_pending_commit(fs, "apply", lower, upper);
		if (!err)
			err = apply_to(fs, fd, lower, upper, true, !upper_exists);
	}
	free(lower);
	free(upper);
	return err;
}
