/*
 * metacopy.c: metacopy files (a regular file of the upper whose data is
 * still the lower's, docs/format.md) for the offline operations. Each
 * caller has one hook here: export writes the lower's data, commit
 * applies the metadata to the lower file in place, diff compares no
 * content, convert moves the marker to the other format.
 *
 * The data of a metacopy file is the lower file at the same path, or
 * where its redirect says (written when a metacopy file is renamed, by
 * the kernel and by ovlfs alike).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "offline/offline.h"

int ovl_metacopy_lower(const struct ovl_fmt *f, int lroot, int ud, int ld,
		       const char *name, int *out, bool *same)
{
	char redir[OVL_REDIRECT_MAX + 1];
	const char *lname = name;
	int fd, r, dfd = ld, err = 0;
	struct stat st;

	*out = -1;
	*same = false;
	r = ovl_metacopy_redirect(f, ud, name, redir);
	if (r <= 0)
		return r;
	if (redir[0] == '/') {
		char *slash = strrchr(redir, '/');

		*slash = '\0';
		lname = slash + 1;
		if (lroot < 0)
			dfd = -1;
		else if (slash == redir && (dfd = dup(lroot)) < 0)
			return -errno;
		else if (slash != redir)
			dfd = ovl_open_dir_abs(lroot, redir);
		if (dfd < 0 && dfd != -1 && dfd != -ENOENT && dfd != -ENOTDIR)
			return dfd;
	} else if (redir[0]) {
		lname = redir;
	}
	if (dfd >= 0) {
		fd = openat(dfd, lname, O_RDONLY | O_NOFOLLOW | O_CLOEXEC |
			    O_NOATIME);
		if (fd < 0 && errno == EPERM)
			fd = openat(dfd, lname, O_RDONLY | O_NOFOLLOW |
				    O_CLOEXEC);
		if (fd < 0 && errno != ENOENT && errno != ELOOP &&
		    errno != ENOTDIR)
			err = -errno;
		if (dfd != ld)
			close(dfd);
		if (err)
			return err;
		if (fd >= 0 && (ovl_fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
			close(fd);
			fd = -1;
		}
	} else {
		fd = -1;
	}
	/* As the kernel: a metacopy file with no data is an I/O error. */
	if (fd < 0)
		return -EIO;
	*out = fd;
	*same = dfd == ld && !strcmp(lname, name);
	return 1;
}

/* The private origin (inode number) of SRC onto DST, if it has one. */
static void copy_origin(int src, int dst)
{
	static const char *const names[] = { OVL_XATTR_ORIGIN_TRUSTED,
					     OVL_XATTR_ORIGIN_USER };
	char v[64];

	for (size_t i = 0; i < 2; i++) {
		ssize_t n = ovl_fd_getxattr(src, names[i], v, sizeof(v));

		if (n >= 0)
			ovl_fd_setxattr(dst, names[i], v, n, 0);
	}
}

/*
 * Replace metacopy file UD/NAME by a full copy: DATA (an fd of its lower
 * file) with its metadata, built under a temporary name, made durable and
 * renamed over it, so a kill at any point leaves the metacopy file as it
 * was (times included) or the full copy.
 */
static int metacopy_fill(struct fin *f, int ud, const char *name, int data)
{
	int src = ovl_open_child(ud, name), fd = -1, err;
	char tmp[64];
	struct stat st, dst;

	if (src < 0)
		return src;
	err = ovl_fstat(src, &st);
	if (!err)
		err = ovl_fstat(ud, &dst);
	if (err)
		goto out;
	ovl_tmp_name(&f->tmp_counter, tmp);
	fd = openat(ud, tmp, O_CREAT | O_EXCL | O_RDWR | O_NOFOLLOW | O_CLOEXEC,
		    0600);
	if (fd < 0) {
		err = -errno;
		goto out;
	}
	err = ovl_copy_data(data, fd, st.st_size);
	if (!err)
		err = ovl_copy_meta(f->is_root, src, fd, &st, true);
	if (!err) {
		copy_origin(src, fd);
		if (fsync(fd) < 0)
			err = -errno;
	}
	if (!err && renameat(ud, tmp, ud, name) < 0)
		err = -errno;
	if (err)
		unlinkat(ud, tmp, 0);
	/* The swap is no change to the directory: its times stay. */
	{
		struct timespec ts[2] = { dst.st_atim, dst.st_mtim };

		futimens(ud, ts);
	}
out:
	if (fd >= 0)
		close(fd);
	close(src);
	return err;
}

/*
 * An atomic commit's stage of metacopy file UD/NAME: a full copy, DATA
 * with the upper file's metadata, staged and journalled as a replacement
 * like any changed file (commit.c place_object), the upper untouched.
 */
static int metacopy_stage(struct fin *f, int ud, const char *name, int data)
{
	int src = ovl_open_child(ud, name), fd = -1, pfd = -1, err;
	struct stat st;
	char n[32];

	if (src < 0)
		return src;
	err = ovl_fstat(src, &st);
	if (err)
		goto out;
	fin_new_op(f, n);
	fd = openat(f->stage_fd, n, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
		    O_CLOEXEC, 0600);
	if (fd < 0) {
		err = -errno;
		goto out;
	}
	err = ovl_copy_data(data, fd, st.st_size);
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (!err) {
		pfd = ovl_open_child(f->stage_fd, n);
		err = pfd < 0 ? pfd : fin_sync_meta(f, src, pfd);
	}
	if (err)
		unlinkat(f->stage_fd, n, 0);
	else
		err = fin_jop(f, 'R', f->next_op);
out:
	if (pfd >= 0)
		close(pfd);
	if (fd >= 0)
		close(fd);
	close(src);
	return err;
}

int fin_metacopy(struct fin *f, int ud, int ld, const char *name,
		 bool lower_dir)
{
	bool same;
	int data, err = ovl_metacopy_lower(&f->fmt, f->lower_fd, ud, ld, name,
					   &data, &same);

	if (err == -EIO)
		return ovl_set_error(f->fs, err,
				     "commit: %s: metacopy file has no data in the lower %s",
				     f->upper, f->lower);
	if (err <= 0)
		return err;
	/*
	 * The lower file at the same name holds the data: only its
	 * metadata changes. Elsewhere (renamed), an atomic commit stages a
	 * copy made from it (the lower is untouched until the journal is
	 * applied, the upper throughout); a plain one, whose walk may have
	 * changed the lower already, finds the data put into the upper
	 * file before the walk (fin_metacopy_fill_dir), or puts it there.
	 */
	if (same)
		err = 1;
	else if (f->atomic && !lower_dir)
		err = metacopy_stage(f, ud, name, data);
	else
		err = metacopy_fill(f, ud, name, data);
	if (!err)
		err = same ? 1 : f->atomic && !lower_dir ? 3 : 2;
	close(data);
	return err;
}

/*
 * Entry DE of upper directory UD (lower part LD), if it is a metacopy file
 * whose data is not at its own name (renamed), or any metacopy file if
 * ALL: replaced by a full copy. 0 or -errno with a message.
 */
static int fill_entry(struct fin *f, int ud, int ld,
		      const struct ovl_dirent *de, bool all)
{
	bool same;
	int data, err;

	if (ovl_is_wh_name(de->name) ||
	    (de->type != DT_REG && de->type != DT_UNKNOWN))
		return 0;
	err = ovl_metacopy_lower(&f->fmt, f->lower_fd, ud, ld, de->name, &data,
				 &same);
	if (err == -EIO)
		err = ovl_set_error(f->fs, err,
				    "commit: %s: metacopy file %s has no data in the lower %s",
				    f->upper, de->name, f->lower);
	if (err <= 0)
		return err;
	/* Not renamed: its data stays where the walk finds it. */
	err = all || !same ? metacopy_fill(f, ud, de->name, data) : 0;
	close(data);
	return err;
}

int fin_metacopy_fill_dir(struct fin *f, int ud, int ld, bool all)
{
	struct ovl_dirlist dl;
	int err;

	/* The atomic walk stages such files from the lower (fin_metacopy). */
	if (!all && f->atomic)
		return 0;
	err = ovl_dirlist_read(ud, &dl);
	for (size_t i = 0; !err && i < dl.n; i++)
		err = fill_entry(f, ud, ld, &dl.ents[i], all);
	ovl_dirlist_free(&dl);
	return err;
}

/*
 * The lower part of upper directory UD/NAME (whose parent's is LD, -1 for
 * none): where its redirect says, else the lower's NAME beside it; -1 for
 * none (opaque, or nothing there), or -errno.
 */
static int lower_part(struct fin *f, int ud, const char *name, int ld)
{
	char redir[OVL_REDIRECT_MAX + 1];
	int fd = ovl_open_child(ud, name), r, o, lfd;

	if (fd < 0)
		return fd;
	o = ovl_opaque_get(&f->fmt, fd);
	r = o ? 0 : ovl_redirect_get(&f->fmt, fd, redir);
	close(fd);
	if (o || r < 0)
		return o > 0 ? -1 : o < 0 ? o : r;
	if (r && redir[0] == '/')
		lfd = ovl_open_dir_abs(f->lower_fd, redir);
	else
		lfd = ld < 0 ? -1 : fin_open_dir_at(ld, r ? redir : name);
	return lfd == -ENOENT || lfd == -ENOTDIR ? -1 : lfd;
}

int fin_metacopy_fill_moved(struct fin *f, int ud, int ld)
{
	struct ovl_dirlist dl;
	int err;

	err = ovl_dirlist_read(ud, &dl);
	for (size_t i = 0; !err && i < dl.n; i++) {
		const char *name = dl.ents[i].name;
		int fd, cld;

		fd = fin_open_subdir(ud, &dl.ents[i]);
		if (fd >= 0) {
			cld = lower_part(f, ud, name, ld);
			if (cld < -1)
				err = cld;
			else
				err = fin_metacopy_fill_moved(f, fd, cld);
			if (cld >= 0)
				close(cld);
			close(fd);
			continue;
		}
		if (fd != -ENOTDIR) {
			err = fd;
			continue;
		}
		err = fill_entry(f, ud, ld, &dl.ents[i], false);
	}
	ovl_dirlist_free(&dl);
	return err;
}

int ovl_convert_metacopy(const struct ovl_fmt *from, const struct ovl_fmt *to,
			 int ud, const char *name)
{
	int fd, err = ovl_metacopy_get(from, ud, name);

	/*
	 * Only the new marker: a killed run converted it, and maybe not yet
	 * the redirect of a renamed file, which the caller converts on 1 (a
	 * retry that skipped it left the file unreadable: EIO).
	 */
	if (err == 0)
		return ovl_metacopy_get(to, ud, name);
	if (err < 0)
		return err;
	fd = ovl_open_child(ud, name);
	if (fd < 0)
		return fd;
	/* The new marker first: a killed run leaves both, which agree. */
	err = ovl_metacopy_set(to, fd);
	if (!err && strcmp(from->metacopy_xattr, to->metacopy_xattr))
		err = ovl_metacopy_clear(from, fd);
	close(fd);
	return err ? err : 1;
}
