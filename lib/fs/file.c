/*
 * file.c: attributes and open files.
 *
 * An open file is a plain fd on the backing object, so read, write and
 * fsync go straight to it without ovlfs in the way. Opening for writing (or
 * truncating) copies the file up first; a reader that opened the lower
 * file before the copy-up keeps reading the lower data, as with the
 * kernel's overlayfs before it gained stacked file operations.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fs/fs.h"

static bool open_writes(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

int ovl_file_new(struct ovl_fs *ofs, struct ovl_node *node, int fd, int flags,
		 bool on_lower, struct ovl_file **out)
{
	struct ovl_file *f = calloc(1, sizeof(*f));

	if (!f)
		return -ENOMEM;
	ovl_node_get(ofs, node);
	f->node = node;
	atomic_init(&f->fd, fd);
	f->old_fd = -1;
	f->flags = flags;
	f->on_lower = on_lower;
	pthread_mutex_init(&f->lock, NULL);
	ovl_handle_add(ofs, &f->link, false);
	*out = f;
	return 0;
}

int ovl_file_fd(struct ovl_fs *ofs, struct ovl_file *f)
{
	int fd = atomic_load(&f->fd), nfd;

	/*
	 * The common case: no copy-up since open, or already moved. A
	 * metacopy upper has no data yet: the lower is still the file.
	 */
	if (!f->on_lower || f->old_fd >= 0 || !ovl_node_has_upper(f->node) ||
	    atomic_load(&f->node->metacopy))
		return fd;
	pthread_mutex_lock(&f->lock);
	if (f->old_fd < 0) {
		pthread_rwlock_rdlock(&ofs->ns_lock);
		nfd = ovl_node_open_locked(f->node, OVL_UPPER,
					   f->flags & ~(O_TRUNC | O_CREAT |
							O_EXCL));
		pthread_rwlock_unlock(&ofs->ns_lock);
		if (nfd >= 0) {
			f->old_fd = fd;
			atomic_store(&f->fd, nfd);
		}
		/* On failure keep reading the lower: stale beats broken. */
	}
	pthread_mutex_unlock(&f->lock);
	return atomic_load(&f->fd);
}

void ovl_release(struct ovl_fs *ofs, struct ovl_file *f)
{
	ovl_tell_file_released(ofs, f);
	ovl_handle_del(ofs, &f->link);
	close(atomic_load(&f->fd));
	if (f->old_fd >= 0)
		close(f->old_fd);
	pthread_mutex_destroy(&f->lock);
	atomic_fetch_sub(&f->node->nopen, 1);
	ovl_node_put(ofs, f->node);
	free(f);
}

int ovl_open(struct ovl_fs *ofs, struct ovl_node *node, int flags,
	     struct ovl_file **out)
{
	bool on_lower;
	int fd, err;

	if (node->type == S_IFDIR && open_writes(flags))
		return -EISDIR;
	if (open_writes(flags)) {
		/* Truncating anyway: no point copying the data first. */
		err = (flags & O_TRUNC) ? ovl_copy_up_nodata(ofs, node)
					: ovl_copy_up(ofs, node);
		if (err)
			return err;
	}
	/*
	 * No O_DIRECT on the backing fd: the kernel already gives the caller
	 * direct I/O on the FUSE side, and our buffers are not aligned.
	 */
	flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_DIRECT);
	pthread_rwlock_rdlock(&ofs->ns_lock);
	/* A metacopy file's data is the lower's (not opened for writing). */
	on_lower = !ovl_node_has_upper(node) || atomic_load(&node->metacopy);
	if (on_lower) {
		/* Reading through the overlay must not touch the lower. */
		fd = ovl_node_open_locked(node, OVL_DATA, flags | O_NOATIME);
		if (fd == -EPERM)
			fd = ovl_node_open_locked(node, OVL_DATA, flags);
	} else {
		fd = ovl_node_open_locked(node, OVL_UPPER, flags);
	}
	/* Counted before the lock goes: an unlink must see it (ovl_node_pin). */
	if (fd >= 0)
		atomic_fetch_add(&node->nopen, 1);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (fd < 0)
		return fd;
	err = ovl_file_new(ofs, node, fd, flags, on_lower, out);
	if (err) {
		atomic_fetch_sub(&node->nopen, 1);
		close(fd);
	}
	return err;
}

/* The times utimensat() is to set for VALID, into TS; false: none. */
static bool setattr_times(const struct stat *attr, int valid,
			  struct timespec ts[2])
{
	ts[0].tv_sec = 0;
	ts[0].tv_nsec = UTIME_OMIT;
	ts[1] = ts[0];
	if (valid & OVL_SET_ATIME_NOW)
		ts[0].tv_nsec = UTIME_NOW;
	else if (valid & OVL_SET_ATIME)
		ts[0] = attr->st_atim;
	if (valid & OVL_SET_MTIME_NOW)
		ts[1].tv_nsec = UTIME_NOW;
	else if (valid & OVL_SET_MTIME)
		ts[1] = attr->st_mtim;
	return valid & (OVL_SET_ATIME | OVL_SET_MTIME | OVL_SET_ATIME_NOW |
			OVL_SET_MTIME_NOW);
}

/*
 * Apply the changes VALID asks for to object UFD (type TYPE). SAME_SIZE:
 * a size change asks for the size the file had before (copy-up aside).
 */
static int set_attrs(int ufd, mode_t type, const struct stat *attr, int valid,
		     int fh, bool same_size)
{
	struct timespec ts[2];
	int err;

	if (valid & OVL_SET_MODE) {
		if (type == S_IFLNK)
			return -EOPNOTSUPP;
		err = ovl_fchmod_any(ufd, attr->st_mode & 07777);
		if (err)
			return err;
	}
	if (valid & (OVL_SET_UID | OVL_SET_GID)) {
		uid_t uid = (valid & OVL_SET_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (valid & OVL_SET_GID) ? attr->st_gid : (gid_t)-1;

		if (fchownat(ufd, "", uid, gid,
			     AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
	}
	if (valid & OVL_SET_SIZE) {
		if (type != S_IFREG)
			return type == S_IFDIR ? -EISDIR : -EINVAL;
		if (fh >= 0) {
			if (ftruncate(fh, attr->st_size) < 0)
				return -errno;
		} else if (same_size) {
			/*
			 * The caller's truncate(2) to the size the file has:
			 * whether its times change is the filesystem's to say
			 * (tmpfs: not from 0 to 0), and an ftruncate would
			 * always set them. truncate(2) of the magic link, which
			 * leads to the object itself, asks the same. (A copy-up
			 * for a truncate to 0 copies no data: the size the
			 * upper file has then is no guide.)
			 */
			char p[32];

			ovl_proc_path(ufd, p);
			if (truncate(p, attr->st_size) < 0)
				return -errno;
		} else {
			int fd = ovl_reopen(ufd, O_WRONLY);

			if (fd < 0)
				return fd;
			err = ftruncate(fd, attr->st_size) < 0 ? -errno : 0;
			close(fd);
			if (err)
				return err;
		}
	}
	if (setattr_times(attr, valid, ts)) {
		if (utimensat(ufd, "", ts, AT_EMPTY_PATH) < 0)
			return -errno;
	}
	return 0;
}

/*
 * set_attrs() for the object NAME in DFD ("": DFD itself), without an fd
 * of its own: a file is not pinned, and opening one for a chmod, chown or
 * utimes costs two syscalls more per SETATTR (an untar sends three SETATTRs
 * per file). -ENOSYS when this kernel has no fchmodat2: nothing was changed
 * then. ns_lock held, so NAME stays the object's name.
 */
static int set_attrs_at(int dfd, const char *name, mode_t type,
			const struct stat *attr, int valid)
{
	struct timespec ts[2];
	int flags = AT_SYMLINK_NOFOLLOW | (name[0] ? 0 : AT_EMPTY_PATH);

	if (valid & OVL_SET_MODE) {
		if (type == S_IFLNK)
			return -EOPNOTSUPP;
		int err = ovl_fchmodat_nofollow(dfd, name,
						attr->st_mode & 07777);

		if (err)
			return err;
	}
	if (valid & (OVL_SET_UID | OVL_SET_GID)) {
		uid_t uid = (valid & OVL_SET_UID) ? attr->st_uid : (uid_t)-1;
		gid_t gid = (valid & OVL_SET_GID) ? attr->st_gid : (gid_t)-1;

		if (fchownat(dfd, name, uid, gid, flags) < 0)
			return -errno;
	}
	if (setattr_times(attr, valid, ts)) {
		if (utimensat(dfd, name, ts, flags) < 0)
			return -errno;
	}
	return 0;
}

int ovl_setattr(struct ovl_fs *ofs, struct ovl_node *node,
		const struct stat *attr, int valid, int fh, struct stat *out)
{
	const char *name;
	bool had_upper = true, same_size = false;
	struct stat before;
	int ufd, dfd, err;

	/* A truncate(2) to the size the file has (see set_attrs). */
	if ((valid & OVL_SET_SIZE) && fh < 0 &&
	    ovl_node_stat(ofs, node, &before) == 0)
		same_size = before.st_size == attr->st_size;
	if (valid & (OVL_SET_MODE | OVL_SET_UID | OVL_SET_GID | OVL_SET_SIZE |
		     OVL_SET_ATIME | OVL_SET_MTIME | OVL_SET_ATIME_NOW |
		     OVL_SET_MTIME_NOW)) {
		had_upper = ovl_node_has_upper(node);
		err = ovl_copy_up_setattr(ofs, node, valid & OVL_SET_SIZE,
					  attr->st_size);
		if (err)
			return err;
	}
	/* A size change may reopen the file for writing: that needs an fd. */
	err = -ENOSYS;
	if (!(valid & OVL_SET_SIZE)) {
		pthread_rwlock_rdlock(&ofs->ns_lock);
		err = ovl_node_at(node, OVL_TOP, &dfd, &name);
		if (!err)
			err = set_attrs_at(dfd, name, node->type, attr, valid);
		pthread_rwlock_unlock(&ofs->ns_lock);
	}
	if (err == -ENOSYS) {
		ufd = ovl_node_fd_get(ofs, node, OVL_TOP);
		if (ufd < 0)
			return ufd;
		err = set_attrs(ufd, node->type, attr, valid, fh, same_size);
		ovl_node_fd_put(node, ufd);
	}
	/* No reply brings the copy's attributes (its ctime): tell. */
	if (err && !had_upper)
		ovl_tell_attr_changed(ofs, node);
	if (err)
		return err;
	return ovl_node_stat(ofs, node, out);
}

int ovl_readlink(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
		 size_t size)
{
	const char *name;
	ssize_t n;
	int dfd, err;

	if (node->type != S_IFLNK)
		return -EINVAL;
	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = ovl_node_at(node, OVL_TOP, &dfd, &name);
	n = err ? err : readlinkat(dfd, name, buf, size - 1);
	if (n < 0 && !err)
		err = -errno;
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		return err;
	buf[n] = '\0';
	return 0;
}

static bool in_group(const struct ovl_ctx *ctx, gid_t gid)
{
	if (ctx->gid == gid)
		return true;
	for (int i = 0; i < ctx->ngroups; i++)
		if (ctx->groups[i] == gid)
			return true;
	return false;
}

/*
 * Permission check for callers the kernel did not check for us (no
 * default_permissions): the usual owner/group/other rules on the merged
 * attributes. Writing is allowed where the mode allows it even though the
 * lower is read-only: the overlay makes it writable by copy-up.
 */
int ovl_access(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
	       struct ovl_node *node, int mask)
{
	struct stat st;
	int err = ovl_node_stat(ofs, node, &st);
	mode_t bits;

	if (err)
		return err;
	if (mask == F_OK)
		return 0;
	if (ctx->uid == 0) {
		if ((mask & X_OK) && !S_ISDIR(st.st_mode) &&
		    !(st.st_mode & 0111))
			return -EACCES;
		return 0;
	}
	if (ctx->uid == st.st_uid)
		bits = (st.st_mode >> 6) & 7;
	else if (in_group(ctx, st.st_gid))
		bits = (st.st_mode >> 3) & 7;
	else
		bits = st.st_mode & 7;
	if ((mask & R_OK && !(bits & 4)) || (mask & W_OK && !(bits & 2)) ||
	    (mask & X_OK && !(bits & 1)))
		return -EACCES;
	return 0;
}

int ovl_statfs(struct ovl_fs *ofs, struct statvfs *st)
{
	/* Free space is what matters to writers, and writes go up. */
	if (fstatvfs(ofs->read_only ? ofs->lowers[0].root_fd
				    : ofs->upper.root_fd, st) < 0)
		return -errno;
	return 0;
}

void ovl_handles_free(struct ovl_fs *ofs)
{
	/* The loop has stopped: no request can use these any more. */
	while (ofs->handles.next != &ofs->handles) {
		struct ovl_hlink *h = ofs->handles.next;

		if (h->is_dir)
			ovl_releasedir(ofs, (struct ovl_dirhandle *)h);
		else
			ovl_release(ofs, (struct ovl_file *)h);
	}
}
