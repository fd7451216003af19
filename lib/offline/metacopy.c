/*
 * metacopy.c: metacopy files (a regular file of the upper whose data is
 * still the lower's, docs/format.md) for the offline operations. Each
 * caller has one hook here: export writes the lower's data, commit
 * applies the metadata to the lower file in place, diff compares no
 * content, convert moves the marker to the other format.
 *
 * The data of a metacopy file is the lower file at the same path, or
 * where its redirect says (the kernel writes one when it renames a
 * metacopy file; ovlfs copies the data up before a rename instead).
 */
#include <errno.h>
#include <fcntl.h>
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
	r = ovl_metacopy_get(f, ud, name);
	if (r <= 0)
		return r;
	fd = ovl_open_child(ud, name);
	if (fd < 0)
		return fd;
	r = ovl_redirect_get(f, fd, redir);
	close(fd);
	if (r < 0)
		return r;
	if (r && redir[0] == '/') {
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
	} else if (r) {
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

/*
 * Bring DATA (an fd of the lower file) into metacopy file UD/NAME and
 * drop its marker and redirect, keeping its times: durable before the
 * marker goes, as a live copy-up does (fs/copyup.c).
 */
static int metacopy_fill(const struct ovl_fmt *f, int ud, const char *name,
			 int data)
{
	int fd = openat(ud, name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC), err;
	struct stat st;

	if (fd < 0)
		return -errno;
	err = ovl_fstat(fd, &st);
	if (!err)
		err = ovl_copy_data(data, fd, st.st_size);
	if (!err && fdatasync(fd) < 0)
		err = -errno;
	if (!err) {
		struct timespec ts[2] = { st.st_atim, st.st_mtim };

		if (st.st_mode & (S_ISUID | S_ISGID))
			ovl_fchmod_any(fd, st.st_mode & 07777);
		err = futimens(fd, ts) < 0 ? -errno : 0;
	}
	if (!err)
		err = ovl_redirect_clear(f, fd);
	if (!err)
		err = ovl_metacopy_clear(f, fd);
	close(fd);
	return err;
}

int fin_metacopy(struct fin *f, int ud, int ld, const char *name)
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
	 * metadata changes. Elsewhere (a file the kernel renamed): the
	 * upper file gets its data first, and is committed as any other.
	 */
	err = same ? 1 : metacopy_fill(&f->fmt, ud, name, data);
	close(data);
	return err ? err : 2;
}

int fin_metacopy_fill_dir(struct fin *f, int ud, int ld, bool all)
{
	struct ovl_dirlist dl;
	int err = ovl_dirlist_read(ud, &dl);

	for (size_t i = 0; !err && i < dl.n; i++) {
		const char *name = dl.ents[i].name;
		bool same;
		int data;

		if (ovl_is_wh_name(name) || (dl.ents[i].type != DT_REG &&
					     dl.ents[i].type != DT_UNKNOWN))
			continue;
		err = ovl_metacopy_lower(&f->fmt, f->lower_fd, ud, ld, name,
					 &data, &same);
		if (err == -EIO)
			err = ovl_set_error(f->fs, err,
					    "commit: %s: metacopy file %s has no data in the lower %s",
					    f->upper, name, f->lower);
		if (err <= 0)
			continue;
		err = all || !same ? metacopy_fill(&f->fmt, ud, name, data) : 0;
		close(data);
	}
	ovl_dirlist_free(&dl);
	return err;
}

int ovl_convert_metacopy(const struct ovl_fmt *from, const struct ovl_fmt *to,
			 int ud, const char *name)
{
	int fd, err = ovl_metacopy_get(from, ud, name);

	if (err <= 0)
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
