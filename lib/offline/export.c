/*
 * export.c: an upper as an OCI image-layer tarball (docs/tar.md), the
 * libarchive write side; apply.c is the way back.
 *
 * Export walks the upper as diff.c and finalize.c do, through directory
 * fds with O_NOFOLLOW, and writes a pax stream with libarchive: one entry
 * per upper object, whiteouts as empty `.wh.NAME` files, opaque
 * directories as `.wh..wh..opq`, whatever the upper's own format.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "offline/offline.h"

#define TAR_BUFSZ (128 * 1024)

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
	int lower_fd;			/* the lower's root, for renamed
					   directories; -1 if unreadable */
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
	size_t nlen = strlen(name);

	*saved = x->len;
	/* Room for "NAME/" and the terminating NUL. */
	if (ovl_grow((void **)&x->path, &x->cap, x->len + nlen + 1, 1, 256))
		return -ENOMEM;
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
		if (ovl_tar_skip_xattr(n))
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

static int export_dir(struct xport *x, int dfd, int ld, bool inside);

/*
 * The lower part of upper directory CFD, NAME in a directory whose lower
 * part is LD (-1: none): -1 if none, or an fd; *INSIDE set if it comes
 * from a redirect (a renamed directory, whose tree the tar must hold in
 * full: a layer has no renames).
 */
static int lower_part(struct xport *x, int cfd, int ld, const char *name,
		      bool *inside)
{
	char redir[OVL_REDIRECT_MAX + 1];
	int r, fd = -1;

	if (x->lower_fd < 0 || ovl_opaque_get(&x->mfmt, cfd) != 0)
		return -1;
	r = ovl_redirect_get(&x->mfmt, cfd, redir);
	if (r > 0) {
		*inside = true;
		fd = redir[0] == '/' ? ovl_open_dir_abs(x->lower_fd, redir) :
		     ld >= 0 ? openat(ld, redir, O_RDONLY | O_DIRECTORY |
				      O_NOFOLLOW | O_CLOEXEC) : -1;
	} else if (ld >= 0) {
		/* (Outside a renamed tree the lower part is not exported.) */
		fd = openat(ld, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			    O_CLOEXEC);
	}
	return fd < 0 ? -1 : fd;
}

/*
 * Object NAME of directory DFD as an entry, and its contents; LD is the
 * lower part of DFD (-1: none), INSIDE whether DFD is in a renamed tree.
 */
static int export_entry_in(struct xport *x, int dfd, const char *name,
			   int ld, bool inside)
{
	const char *first;
	struct stat st;
	size_t saved;
	int fd, data = -1, err;
	bool same;

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
		/* A metacopy file: its data is the lower's (metacopy.c). */
		err = ovl_metacopy_lower(&x->mfmt, x->lower_fd, dfd, ld, name,
					 &data, &same);
		if (err == -EIO)
			ovl_set_error(x->fs, err,
				      "export: %s/%s: metacopy file has no data in the lower",
				      x->upper, x->path);
		if (err < 0)
			goto pop;
	}
	/* X->path names the entry now: no NAME for the messages. */
	err = add_xattrs(x, fd, NULL);
	if (!err)
		err = write_header(x, NULL);
	if (!err && S_ISREG(st.st_mode))
		err = write_data(x, data >= 0 ? data : fd, NULL, st.st_size);
	if (!err && S_ISDIR(st.st_mode)) {
		int cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY |
				 O_NOFOLLOW | O_CLOEXEC), cld;
		bool cin = inside;

		if (cfd < 0) {
			err = -errno;
			goto pop;
		}
		cld = lower_part(x, cfd, ld, name, &cin);
		err = export_dir(x, cfd, cld, cin);
		if (cld >= 0)
			close(cld);
		close(cfd);
	}
pop:
	xpath_pop(x, saved);
	if (data >= 0)
		close(data);
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

static int cmp_dirent(const void *a, const void *b)
{
	return strcmp(((const struct ovl_dirent *)a)->name,
		      ((const struct ovl_dirent *)b)->name);
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

/*
 * The entries of lower directory LD that upper directory DFD (listed in
 * DL) shows and does not hold, in full: a renamed tree's lower part.
 */
static int export_lower_part(struct xport *x, int dfd,
			     const struct ovl_dirlist *dl, int ld)
{
	struct ovl_dirlist ll;
	int err = ovl_dirlist_read(ld, &ll);

	if (err)
		return xfail(x, err, NULL);
	qsort(ll.ents, ll.n, sizeof(*ll.ents), cmp_dirent);
	for (size_t i = 0; i < ll.n && !err; i++) {
		const char *name = ll.ents[i].name;

		if (ovl_is_wh_name(name) || has_name(dl, name))
			continue;
		err = x->fmt == OVLFS_FORMAT_KERNEL ? 0 :
		      ovl_wh_exists(&x->mfmt, dfd, name);
		if (err) {
			err = err < 0 ? xfail(x, err, name) : 0;
			continue;
		}
		err = export_entry_in(x, ld, name, -1, false);
	}
	ovl_dirlist_free(&ll);
	return err;
}

static int export_dir(struct xport *x, int dfd, int ld, bool inside)
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
	/* A renamed tree replaces whatever stood at its name: opaque. */
	if (inside && ld >= 0)
		opaque = true;
	/* Right after the directory's own entry, before any of its children. */
	if (opaque)
		err = write_marker(x, OVL_OPAQUE_NAME);
	for (size_t i = 0; i < n && !err; i++) {
		if (items[i].name)
			err = export_entry_in(x, dfd, items[i].name, ld, inside);
		else if (!(inside && ld >= 0))
			err = write_marker(x, items[i].tarname);
	}
	if (!err && inside && ld >= 0)
		err = export_lower_part(x, dfd, &dl, ld);
	for (size_t i = 0; i < n; i++)
		free(items[i].tarname);
	free(items);
	ovl_dirlist_free(&dl);
	return err;
}

int ovl_export_tar(struct ovlfs *fs, int fd, const char *lower,
		   const char *upper, bool upper_exists)
{
	struct xport x = { .fs = fs, .lower_fd = -1 };
	struct stat ost;
	int ufd = -1, err = 0;

	x.upper = upper;
	ovl_tar_fd_name(fd, x.out, sizeof(x.out));
	if (fstat(fd, &ost) == 0 && S_ISREG(ost.st_mode)) {
		x.out_dev = ost.st_dev;
		x.out_ino = ost.st_ino;
	}
	if (upper_exists) {
		err = ovl_tar_open_locked(fs, "upper", upper, &ufd);
		if (err)
			goto out;
		err = ovl_tar_upper_format(fs, ufd, upper, &x.mfmt, &x.fmt);
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
	if (ufd >= 0) {
		x.lower_fd = open(lower, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		err = export_dir(&x, ufd, x.lower_fd, false);
	}
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
	if (x.lower_fd >= 0)
		close(x.lower_fd);
	return err;
}
