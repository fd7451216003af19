/*
 * apply.c: an OCI image-layer tarball applied to an upper, or through a
 * fresh upper committed into the lower (docs/tar.md), the libarchive read
 * side; export.c is the way there. What one entry does to the upper is in
 * apply_entry.c.
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
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "offline/offline.h"

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
static int entry_path(struct ovl_apply *ap, struct archive_entry *e, char *rel,
		      char **last, char **slash)
{
	const char *why;
	int err;

	rel[0] = '\0';
	*slash = NULL;
	*last = rel;
	ap->entry = archive_entry_pathname(e);
	if (!ap->entry)
		return ovl_apply_fail(ap, -EINVAL, "no path");
	err = ovl_tar_norm_path(ap->entry, rel);
	if (err == -EINVAL)
		return ovl_apply_fail(ap, err,
				      "absolute path or \"..\": outside the layer");
	if (err == -ENAMETOOLONG)
		return ovl_apply_fail(ap, err,
				      "path longer than PATH_MAX (4096 bytes)");
	if (err)
		return ovl_apply_fail(ap, err, NULL);
	*slash = strrchr(rel, '/');
	*last = *slash ? *slash + 1 : rel;
	why = rel[0] ? bad_name(rel, *last) : NULL;
	return why ? ovl_apply_fail(ap, -EINVAL, why) : 0;
}

static int apply_one(struct ovl_apply *ap, struct archive *a,
		     struct archive_entry *e)
{
	char rel[PATH_MAX], *last, *slash;
	int dfd, err;

	err = entry_path(ap, e, rel, &last, &slash);
	if (err)
		return err;
	if (!rel[0])
		return ovl_apply_root(ap, e);
	if (slash)
		*slash = '\0';
	err = ovl_apply_walk_dir(ap, slash ? rel : "", true, &dfd);
	if (err == -ELOOP)
		return ovl_apply_fail(ap, err,
				      "a directory of the path is a symlink");
	if (err)
		return ovl_apply_fail(ap, err, NULL);
	if (!strcmp(last, OVL_OPAQUE_NAME)) {
		err = ovl_apply_set_opaque(ap, dfd);
		if (!err)
			err = ovl_apply_prune(ap, dfd, slash ? rel : "");
	} else if (ovl_is_wh_name(last)) {
		err = ovl_apply_whiteout(ap, dfd, slash ? rel : "",
					 last + OVL_WH_PREFIX_LEN);
	} else {
		err = ovl_apply_entry(ap, a, dfd, slash ? rel : "", last, e);
	}
	close(dfd);
	if (err && !ap->fs->err[0])
		ovl_apply_fail(ap, err, NULL);
	return err;
}

/*
 * Directory modes and times last: adding entries changed the times, and
 * a read-only mode would have stopped us adding them. Directories the tar
 * did not list get back the times they had.
 */
static int fix_dirs(struct ovl_apply *ap)
{
	int first = 0;

	for (size_t i = 0; i < ap->recs.cap; i++) {
		struct ovl_trec *r = &ap->recs.recs[i];
		struct timespec ts[2];
		int fd, err = 0;

		if (!r->key || !(r->flags & (OVL_R_META | OVL_R_SAVED)))
			continue;
		if (ovl_apply_walk_dir(ap, r->key, false, &fd) < 0)
			continue;	/* removed or replaced since */
		ts[0] = r->atime;
		ts[1] = r->mtime;
		if (r->flags & OVL_R_META)
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
	bool is_root = geteuid() == 0;
	struct stat st;
	int lfd = -1, ufd = -1, err = 0;

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
		err = ovl_copy_meta(is_root, lfd, ufd, &st, true);
	if (lfd >= 0)
		close(lfd);
	if (ufd >= 0)
		close(ufd);
	if (err)
		return ovl_set_error(fs, err, "upper %s: cannot create: %s",
				     upper, strerror(-err));
	return 0;
}

/* The tar could not be read: why, in the system's words if it has some. */
static int read_fail(struct ovl_apply *ap, struct archive *a)
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

static int open_tar(struct ovl_apply *ap, int fd, struct archive **out)
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
static int rereadable(struct ovl_apply *ap, int fd, const char *dir, int *out,
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
static int check_entry(struct ovl_apply *ap, struct ovl_tmap *vm,
		       struct archive_entry *e)
{
	char rel[PATH_MAX], target[PATH_MAX], *last, *slash, *p;
	const char *hardlink = archive_entry_hardlink(e);
	mode_t type = archive_entry_filetype(e);
	struct ovl_trec *r;
	int err = entry_path(ap, e, rel, &last, &slash);

	if (err)
		return err;
	if (!rel[0])
		return hardlink || type != AE_IFDIR ?
			       ovl_apply_fail(ap, -EINVAL,
					      "the root must be a directory") : 0;
	/* Through a non-directory this same tar put there. */
	for (p = strchr(rel, '/'); p; p = strchr(p + 1, '/')) {
		*p = '\0';
		r = ovl_tmap_find(vm, rel);
		*p = '/';
		if (r && (r->flags & OVL_R_LINK))
			return ovl_apply_fail(ap, -ELOOP,
					      "a directory of the path is a symlink");
		if (r && !(r->flags & OVL_R_DIR))
			return ovl_apply_fail(ap, -ENOTDIR, NULL);
	}
	if (ovl_is_wh_name(last))
		return 0;	/* hides older layers, never this tar's entries */
	if (hardlink) {
		if (ovl_tar_norm_path(hardlink, target) < 0 || !target[0])
			return ovl_apply_fail(ap, -EINVAL,
					      "hard link target outside the layer");
		r = ovl_tmap_find(vm, target);
		if (!r || (r->flags & OVL_R_DIR))
			return ovl_apply_fail(ap, -ENOENT,
					      "hard link target is not a file extracted before it");
	} else if (type == AE_IFCHR && archive_entry_rdev(e) == 0 &&
		   ap->fmt == OVLFS_FORMAT_KERNEL) {
		return ovl_apply_fail(ap, -EINVAL, OVL_KERNEL_DEV_WHY);
	}
	err = ovl_tmap_get(vm, rel, &r);
	if (err)
		return ovl_apply_fail(ap, err, NULL);
	r->flags = OVL_R_ENTRY;
	if (!hardlink && type == AE_IFDIR)
		r->flags |= OVL_R_DIR;
	if (!hardlink && type == AE_IFLNK)
		r->flags |= OVL_R_LINK;
	return 0;
}

/*
 * Read the whole tar once without writing, so that a layer refused for
 * what it holds (docs/tar.md) changes nothing at all. What depends on the
 * upper (a symlink it already has in the way) is found only when applying.
 */
static int check_tar(struct ovl_apply *ap, int fd)
{
	struct ovl_tmap vm = { 0 };
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
	ovl_tmap_free(&vm);
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

int ovl_apply_tar(struct ovlfs *fs, int fd, const char *lower,
		  const char *upper, bool check, bool create)
{
	struct ovl_apply ap = { .fs = fs, .lower_fd = -1, .upper_fd = -1 };
	struct archive *a = NULL;
	struct archive_entry *e;
	int err, fix, r, in = fd;
	off_t start = 0;

	ap.upper = upper;
	ap.is_root = geteuid() == 0;
	ovl_tar_fd_name(fd, ap.tar, sizeof(ap.tar));
	if (create) {
		ap.fmt = fs->format == OVLFS_FORMAT_KERNEL ? OVLFS_FORMAT_KERNEL :
							     OVLFS_FORMAT_OCI;
		ap.mfmt = ovl_fmt_of(ap.fmt == OVLFS_FORMAT_KERNEL);
	} else {
		err = ovl_tar_open_locked(fs, "upper", upper, &ap.upper_fd);
		if (!err)
			err = ovl_tar_upper_format(fs, ap.upper_fd, upper,
						   &ap.mfmt, &ap.fmt);
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
			err = ovl_tar_open_locked(fs, "upper", upper,
						  &ap.upper_fd);
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
		err = ovl_apply_fail(&ap, fix, NULL);
out:
	if (a)
		archive_read_free(a);
	if (in != fd)
		close(in);
	ovl_tmap_free(&ap.recs);
	if (ap.lower_fd >= 0)
		close(ap.lower_fd);
	if (ap.upper_fd >= 0)
		close(ap.upper_fd);
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

static void mark_retry(const char *upper)
{
	int fd = open(upper, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	/* Unmarkable (no user xattrs): the debris stays, as before. */
	if (fd >= 0) {
		ovl_fd_setxattr(fd, XATTR_COMMITTING, "1", 1, 0);
		close(fd);
	}
}

int ovl_apply_tar_next_to(struct ovlfs *fs, int fd, const char *lower,
			  char **upper)
{
	char *tmp, *copy;
	int lfd, err;

	*upper = NULL;
	/* Before reading the tar: a busy lower fails at once. */
	err = ovl_tar_open_locked(fs, "lower", lower, &lfd);
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
		err = ovl_apply_tar(fs, fd, lower, tmp, false, false);
	/*
	 * A killed apply --commit may have left temporary copies in the
	 * lower, and its retry commits a fresh upper, which would not know:
	 * marked as a plain commit's retry, the commit removes them from the
	 * directories it walks (the same ones: the layer is the same).
	 */
	if (!err)
		mark_retry(tmp);
	if (err) {
		char why[OVL_ERRLEN];

		remove_dir(tmp);
		snprintf(why, sizeof(why), "%s", fs->err);
		ovl_set_error(fs, err, "%s (nothing was committed to %s)",
			      why, lower);
		free(tmp);
		return err;
	}
	*upper = tmp;
	return 0;
}
