/*
 * apply_entry.c: what one entry of an OCI layer tar does to the upper
 * (docs/tar.md): walking to its directory without following a symlink,
 * the directories the tar implies, whiteouts and opaque directories in
 * the upper's format, the entry itself with its metadata. apply.c reads
 * the tar and drives this; its own file to keep each under ~1,000 lines.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "offline/offline.h"

int ovl_apply_fail(struct ovl_apply *ap, int err, const char *why)
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

/* REL joined with NAME into BUF (PATH_MAX); -ENAMETOOLONG. */
static int join(const char *rel, const char *name, char *buf)
{
	int n = snprintf(buf, PATH_MAX, "%s%s%s", rel, *rel ? "/" : "", name);

	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* Remember directory REL's times before we change what is in it. */
static int touch_dir(struct ovl_apply *ap, int dfd, const char *rel)
{
	struct ovl_trec *r;
	struct stat st;
	int err = ovl_tmap_get(&ap->recs, rel, &r);

	if (err || (r->flags & (OVL_R_SAVED | OVL_R_META)))
		return err;
	err = ovl_fstat(dfd, &st);
	if (err)
		return err;
	r->flags |= OVL_R_SAVED;
	r->atime = st.st_atim;
	r->mtime = st.st_mtim;
	return 0;
}

int ovl_apply_set_opaque(struct ovl_apply *ap, int dfd)
{
	return ovl_opaque_set(&ap->mfmt, dfd);
}

/* Record the whiteout of NAME in DFD, in the upper's format. */
static int set_whiteout(struct ovl_apply *ap, int dfd, const char *name)
{
	int err = ovl_wh_create(&ap->mfmt, dfd, name);

	return err < 0 ? err : 0;
}

/* Is there a whiteout of NAME in DFD (in OCI format; kernel: see callers)? */
static int oci_whiteout(struct ovl_apply *ap, int dfd, const char *name)
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
static int implicit_dir(struct ovl_apply *ap, int pfd, const char *name,
			const char *rel, bool opaque, bool replace)
{
	char tmp[64];
	struct stat st;
	int lfd = -1, fd, err;

	ovl_tmp_name(&ap->tmp_counter, tmp);
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
		err = ovl_copy_meta(ap->is_root, lfd, fd, &st, true);
	if (!err && opaque)
		err = ovl_apply_set_opaque(ap, fd);
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

int ovl_apply_walk_dir(struct ovl_apply *ap, const char *rel, bool create,
		       int *out)
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

int ovl_apply_prune(struct ovl_apply *ap, int dfd, const char *rel)
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
		struct ovl_trec *r;

		if (ap->fmt == OVLFS_FORMAT_OCI && !strcmp(name, OVL_OPAQUE_NAME))
			continue;
		err = join(rel, name, key);
		if (err)
			break;
		r = ovl_tmap_find(&ap->recs, key);
		if (r && (r->flags & OVL_R_ENTRY)) {
			int cfd;

			if (!(r->flags & OVL_R_DIR))
				continue;
			cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY |
				     O_NOFOLLOW | O_CLOEXEC);
			if (cfd < 0)
				continue;	/* replaced since: not a dir */
			err = ovl_apply_prune(ap, cfd, key);
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
		if (ovl_tar_skip_xattr(n) || entry_has_xattr(e, n))
			continue;
		err = ovl_fd_removexattr(fd, n);
		if (err == -ENODATA)
			err = 0;
	}
	free(names);
	return err;
}

/* Owner, mode (not of a directory: later), xattrs and times from E. */
static int set_meta(struct ovl_apply *ap, int fd, struct archive_entry *e,
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
	if (merged) {
		err = drop_xattrs(fd, e);
		if (err)
			return err;
	}
	archive_entry_xattr_reset(e);
	while (!err && archive_entry_xattr_next(e, &n, &v, &sz) == ARCHIVE_OK) {
		/* A layer must not forge ovlfs's bookkeeping or markers. */
		if (ovl_tar_skip_xattr(n))
			continue;
		err = ovl_fd_setxattr(fd, n, v, sz, 0);
	}
	/*
	 * After the chown, which clears set-id bits, and after the xattrs:
	 * without privilege, user.* xattrs need write permission, which a
	 * read-only mode would take away (a 0444 file with one failed).
	 */
	if (!err && !is_dir && type != AE_IFLNK)
		err = ovl_fchmod_any(fd, archive_entry_perm(e));
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

static int write_file(struct ovl_apply *ap, struct archive *a, int dfd,
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
		err = ovl_apply_fail(ap, -EIO, archive_error_string(a));
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
static int make_link(struct ovl_apply *ap, int dfd, const char *name,
		     const char *target)
{
	char rel[PATH_MAX], *slash;
	struct ovl_trec *r;
	int tfd, err;

	if (ovl_tar_norm_path(target, rel) < 0 || !rel[0])
		return ovl_apply_fail(ap, -EINVAL,
				      "hard link target outside the layer");
	r = ovl_tmap_find(&ap->recs, rel);
	if (!r || !(r->flags & OVL_R_ENTRY) || (r->flags & OVL_R_DIR))
		return ovl_apply_fail(ap, -ENOENT,
				      "hard link target is not a file extracted before it");
	slash = strrchr(rel, '/');
	if (slash)
		*slash = '\0';
	err = ovl_apply_walk_dir(ap, slash ? rel : "", false, &tfd);
	if (err)
		return err;
	if (linkat(tfd, slash ? slash + 1 : rel, dfd, name, 0) < 0)
		err = -errno;
	close(tfd);
	return err;
}

int ovl_apply_whiteout(struct ovl_apply *ap, int dfd, const char *rel,
		       const char *name)
{
	char key[PATH_MAX];
	struct ovl_trec *r;
	int err = join(rel, name, key), cfd;

	if (err)
		return err;
	r = ovl_tmap_find(&ap->recs, key);
	if (r && (r->flags & OVL_R_ENTRY)) {
		/*
		 * A whiteout hides the lower layers only, never an entry of
		 * its own layer: deleted below and present here, a directory
		 * no longer merges with what was below.
		 */
		if (!(r->flags & OVL_R_DIR))
			return 0;
		cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			     O_CLOEXEC);
		if (cfd < 0)
			return -errno;
		err = ovl_apply_set_opaque(ap, cfd);
		if (!err)
			err = ovl_apply_prune(ap, cfd, key);
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
static int new_opaque_dir(struct ovl_apply *ap, int dfd, const char *name,
			  bool old)
{
	char tmp[64];
	int fd, err;

	ovl_tmp_name(&ap->tmp_counter, tmp);
	if (mkdirat(dfd, tmp, 0700) < 0)
		return -errno;
	fd = ovl_open_child(dfd, tmp);
	err = fd < 0 ? fd : ovl_apply_set_opaque(ap, fd);
	if (fd >= 0)
		close(fd);
	if (err) {
		ovl_remove_tree(dfd, tmp);
		return err;
	}
	return put_dir(dfd, tmp, name, old);
}

int ovl_apply_entry(struct ovl_apply *ap, struct archive *a, int dfd,
		    const char *rel, const char *name, struct archive_entry *e)
{
	char key[PATH_MAX], self[PATH_MAX];
	const char *hardlink = archive_entry_hardlink(e);
	mode_t type = archive_entry_filetype(e);
	bool is_dir = !hardlink && type == AE_IFDIR;
	bool merged = false, opaque = false, old = false;
	struct ovl_trec *r;
	struct stat st;
	int err, fd, wh;

	err = join(rel, name, key);
	if (!err)
		err = touch_dir(ap, dfd, rel);
	if (err)
		return err;
	/*
	 * A file listed twice (`tar -cf T d d/t`): GNU tar writes the second
	 * as a hard link to itself and extracts it as nothing to do. Here it
	 * removed the file, then failed to link it to itself.
	 */
	if (hardlink && ovl_tar_norm_path(hardlink, self) == 0 &&
	    !strcmp(self, key)) {
		r = ovl_tmap_find(&ap->recs, key);
		if (r && (r->flags & OVL_R_ENTRY) && !(r->flags & OVL_R_DIR))
			return 0;
	}
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
				return ovl_apply_fail(ap, -EINVAL,
						      "symlink without a target");
			if (symlinkat(archive_entry_symlink(e), dfd, name) < 0)
				err = -errno;
			break;
		case AE_IFCHR:
			/* The kernel format, or a scan of an unstamped upper, reads it as a whiteout. */
			if (archive_entry_rdev(e) == 0 &&
			    ap->fmt == OVLFS_FORMAT_KERNEL)
				return ovl_apply_fail(ap, -EINVAL,
						      OVL_KERNEL_DEV_WHY);
			if (archive_entry_rdev(e) == 0 && !ap->stamped)
				return ovl_apply_fail(ap, -EOPNOTSUPP,
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
			return ovl_apply_fail(ap, -EINVAL,
					      "unknown entry type");
		}
	}
	/* Only now: the new entry beats the whiteout, no gap shows the lower. */
	if (!err && wh > 0)
		err = ovl_wh_remove(&ap->mfmt, dfd, name);
	if (err)
		return err;
	err = ovl_tmap_get(&ap->recs, key, &r);
	if (err)
		return err;
	r->flags |= OVL_R_ENTRY | (is_dir ? OVL_R_DIR : 0);
	if (hardlink)
		return 0;	/* one inode: its metadata came with the first */
	if (is_dir) {
		r->flags |= OVL_R_META;
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
		err = ovl_apply_set_opaque(ap, fd);
	close(fd);
	return err;
}

int ovl_apply_root(struct ovl_apply *ap, struct archive_entry *e)
{
	struct ovl_trec *r;
	int err;

	if (archive_entry_hardlink(e) || archive_entry_filetype(e) != AE_IFDIR)
		return ovl_apply_fail(ap, -EINVAL,
				      "the root must be a directory");
	err = ovl_tmap_get(&ap->recs, "", &r);
	if (err)
		return err;
	r->flags |= OVL_R_ENTRY | OVL_R_DIR | OVL_R_META;
	r->mode = archive_entry_perm(e);
	r->mtime.tv_sec = archive_entry_mtime(e);
	r->mtime.tv_nsec = archive_entry_mtime_nsec(e);
	r->atime = r->mtime;
	return set_meta(ap, ap->upper_fd, e, true, true);
}

