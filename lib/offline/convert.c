/*
 * convert.c: rewrite an upper's markers from one format to the other.
 *
 * Every directory is rewritten in place: for each marker of the other
 * format, the new marker is made first and the old one removed after, so
 * an interrupted run leaves an upper holding markers of both formats,
 * which mount refuses (nothing is misread) and a second run finishes. The
 * stamp goes first and comes back, naming the new format, only at the end.
 * Directory times are kept: the markers are bookkeeping, not changes a
 * user made.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "offline/offline.h"

#define MAX_DEPTH 4096
/* On the root while a conversion to OCI is under way. */
#define XATTR_CONVERTING "user.ovlfs.convert"

struct conv {
	struct ovlfs *fs;
	const char *upper;		/* for messages */
	struct ovl_fmt from, to;
	char path[PATH_MAX];		/* relative, of the directory */
	size_t plen;
};

static int conv_fail(struct conv *c, int err, const char *name)
{
	if (c->fs->err[0])
		return err;
	return ovl_set_error(c->fs, err, "convert: %s%s%s/%s: %s", c->upper,
			     c->plen ? "/" : "", c->path, name, strerror(-err));
}

/* A kernel opaque marker in either namespace (a root or userxattr mount). */
static const char *const kernel_opaque[] = { "trusted.overlay.opaque",
					     "user.overlay.opaque" };

/*
 * FN on subdirectory NAME of DFD, with c->path naming it meanwhile. One
 * that cannot be opened is a failure if MUST, else skipped.
 */
static int descend(struct conv *c, int dfd, const char *name, int depth,
		   int (*fn)(struct conv *, int, int), bool must)
{
	size_t saved = c->plen, len = strlen(name);
	int cfd, err;

	if (saved + len + 2 > sizeof(c->path))
		return conv_fail(c, -ENAMETOOLONG, name);
	cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (cfd < 0)
		return must ? conv_fail(c, -errno, name) : 0;
	if (saved)
		c->path[c->plen++] = '/';
	memcpy(c->path + c->plen, name, len + 1);
	c->plen += len;
	err = fn(c, cfd, depth + 1);
	close(cfd);
	c->plen = saved;
	c->path[saved] = '\0';
	return err;
}

/*
 * The times directory DFD had before a conversion first touched it, into
 * TS: kept in OVL_XATTR_TIMES until given back, so that a run killed
 * midway and run again gives back those, not the ones the killed run
 * left (best effort: a filesystem without user xattrs keeps the latter).
 */
static int keep_times(int dfd, struct timespec ts[2])
{
	long long s[2], ns[2];
	char buf[64];
	struct stat st;
	ssize_t n = ovl_fd_getxattr(dfd, OVL_XATTR_TIMES, buf, sizeof(buf) - 1);

	if (n > 0) {
		buf[n] = '\0';
		if (sscanf(buf, "%lld.%lld %lld.%lld", &s[0], &ns[0], &s[1],
			   &ns[1]) == 4 && ns[0] >= 0 && ns[0] < 1000000000 &&
		    ns[1] >= 0 && ns[1] < 1000000000) {
			for (int i = 0; i < 2; i++) {
				ts[i].tv_sec = (time_t)s[i];
				ts[i].tv_nsec = (long)ns[i];
			}
			return 0;
		}
	}
	if (fstat(dfd, &st) < 0)
		return -errno;
	ts[0] = st.st_atim;
	ts[1] = st.st_mtim;
	n = snprintf(buf, sizeof(buf), "%lld.%09ld %lld.%09ld",
		     (long long)ts[0].tv_sec, ts[0].tv_nsec,
		     (long long)ts[1].tv_sec, ts[1].tv_nsec);
	ovl_fd_setxattr(dfd, OVL_XATTR_TIMES, buf, n, 0);
	return 0;
}

/* A redirect (a renamed directory) in any of its forms, either format. */
static const char *const redirect_names[] = {
	"trusted.overlay.redirect", "user.overlay.redirect",
	OVL_XATTR_REDIRECT_TRUSTED, OVL_XATTR_REDIRECT_USER
};

/*
 * Directory DFD's redirect into the new format's xattr: the new one
 * first, the old ones removed after, so a killed run leaves both, which
 * say the same.
 */
static int convert_redirect(struct conv *c, int dfd)
{
	char v[OVL_REDIRECT_MAX + 1];
	ssize_t n = -ENODATA;
	int err = 0;

	for (size_t i = 0; i < 4 && n < 0; i++)
		n = ovl_fd_getxattr(dfd, redirect_names[i], v, OVL_REDIRECT_MAX);
	if (n == -ENODATA || n == -EOPNOTSUPP)
		return 0;
	if (n < 0)
		return (int)n;
	v[n] = '\0';
	err = ovl_redirect_set(&c->to, dfd, v);
	for (size_t i = 0; i < 4 && !err; i++) {
		int r;

		if (!strcmp(redirect_names[i], c->to.redirect_xattr))
			continue;
		r = ovl_fd_removexattr(dfd, redirect_names[i]);
		if (r < 0 && r != -ENODATA && r != -EOPNOTSUPP)
			err = r;
	}
	return err;
}

static int convert_dir(struct conv *c, int dfd, int depth)
{
	struct ovl_dirlist dl;
	struct timespec ts[2];
	int err, opaque = 0;

	if (depth > MAX_DEPTH)
		return conv_fail(c, -ELOOP, "");
	err = keep_times(dfd, ts);
	if (err)
		return conv_fail(c, err, "");
	err = ovl_dirlist_read(dfd, &dl);
	if (err)
		return conv_fail(c, err, "");
	/* The opaque marker of this directory, in whichever form. */
	for (size_t i = 0; i < 2 && !opaque; i++) {
		char v[2];
		ssize_t n = ovl_fd_getxattr(dfd, kernel_opaque[i], v, sizeof(v));

		opaque = n == 1 && v[0] == 'y';
	}
	if (!opaque)
		opaque = ovl_opaque_get(NULL, dfd) > 0;
	for (size_t i = 0; i < dl.n && !err; i++) {
		const struct ovl_dirent *de = &dl.ents[i];
		char buf[NAME_MAX + 2];
		const char *t;
		int m;

		/* Markers of the old format (or both, after a crash). */
		m = ovl_marker(&c->from, dfd, de, buf, &t);
		if (m < 0) {
			err = conv_fail(c, m, de->name);
			break;
		}
		if (!m || !t)
			continue;
		if (c->to.kernel) {
			struct stat st;

			/* An entry beside a stale marker wins: the marker goes. */
			if (fstatat(dfd, t, &st, AT_SYMLINK_NOFOLLOW) < 0) {
				if (errno != ENOENT)
					err = -errno;
				else
					err = ovl_wh_create(&c->to, dfd, t);
			}
			if (err >= 0 && unlinkat(dfd, de->name, 0) < 0)
				err = -errno;
		} else {
			err = ovl_wh_create(&c->to, dfd, t);
			if (err >= 0 && unlinkat(dfd, de->name, 0) < 0)
				err = -errno;
		}
		if (err < 0)
			err = conv_fail(c, err, de->name);
		else
			err = 0;
	}
	if (!err && opaque) {
		err = ovl_opaque_set(&c->to, dfd);
		if (!err && c->to.kernel)
			err = unlinkat(dfd, OVL_OPAQUE_NAME, 0) < 0 &&
			      errno != ENOENT ? -errno : 0;
		for (size_t i = 0; i < 2 && !err && !c->to.kernel; i++) {
			int r = ovl_fd_removexattr(dfd, kernel_opaque[i]);

			if (r < 0 && r != -ENODATA && r != -EOPNOTSUPP)
				err = r;
		}
		if (err)
			err = conv_fail(c, err, "");
	}
	if (!err) {
		err = convert_redirect(c, dfd);
		if (err)
			err = conv_fail(c, err, "");
	}
	/* Metacopy files: the marker, and the redirect of a renamed one. */
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *name = dl.ents[i].name;
		int r, fd;

		if (ovl_is_wh_name(name) || (dl.ents[i].type != DT_REG &&
					     dl.ents[i].type != DT_UNKNOWN))
			continue;
		r = ovl_convert_metacopy(&c->from, &c->to, dfd, name);
		if (r > 0) {
			fd = ovl_open_child(dfd, name);
			r = fd < 0 ? fd : convert_redirect(c, fd);
			if (fd >= 0)
				close(fd);
		}
		if (r < 0)
			err = conv_fail(c, r, name);
	}
	/* Then the real subdirectories, a name at a time. */
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *name = dl.ents[i].name;
		struct stat st;

		if (ovl_is_wh_name(name) ||
		    fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(st.st_mode))
			continue;
		err = descend(c, dfd, name, depth, convert_dir, true);
	}
	ovl_dirlist_free(&dl);
	if (!err && futimens(dfd, ts) == 0)
		ovl_fd_removexattr(dfd, OVL_XATTR_TIMES);
	return err;
}

/*
 * A kernel-format upper may hold user entries named ".wh.*"; read as OCI
 * they would turn into markers. 1 if one is found (named in fs->err).
 */
static int find_wh_names(struct conv *c, int dfd, int depth)
{
	struct ovl_dirlist dl;
	int err;

	if (depth > MAX_DEPTH)
		return conv_fail(c, -ELOOP, "");
	err = ovl_dirlist_read(dfd, &dl);
	if (err)
		return conv_fail(c, err, "");
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *name = dl.ents[i].name;

		if (ovl_is_wh_name(name)) {
			if (!strncmp(name, OVL_TMP_PREFIX, strlen(OVL_TMP_PREFIX)))
				continue;
			err = ovl_set_error(c->fs, -EINVAL,
					    "convert: %s: the entry %s would read as a marker in the oci format",
					    c->upper, name);
			break;
		}
		/* Not a directory: nothing to descend into. */
		err = descend(c, dfd, name, depth, find_wh_names, false);
	}
	ovl_dirlist_free(&dl);
	return err;
}

/*
 * An OCI upper may hold a user's 0/0 character device, which the kernel
 * format would read as a whiteout: refused (named in fs->err), before
 * anything is converted.
 */
static int find_devices(struct conv *c, int dfd, int depth)
{
	struct ovl_dirlist dl;
	int err;

	if (depth > MAX_DEPTH)
		return conv_fail(c, -ELOOP, "");
	err = ovl_dirlist_read(dfd, &dl);
	if (err)
		return conv_fail(c, err, "");
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *name = dl.ents[i].name;
		struct stat st;

		if (ovl_is_wh_name(name) ||
		    fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (ovl_is_kernel_wh(&st)) {
			err = ovl_set_error(c->fs, -EINVAL,
					    "convert: %s%s%s/%s is a 0/0 character device, which the kernel format would read as a whiteout; nothing was converted",
					    c->upper, c->plen ? "/" : "", c->path, name);
			break;
		}
		if (!S_ISDIR(st.st_mode))
			continue;
		err = descend(c, dfd, name, depth, find_devices, false);
	}
	ovl_dirlist_free(&dl);
	return err;
}

int ovl_convert(struct ovlfs *fs, const char *upper, enum ovlfs_format to)
{
	struct conv c = { .fs = fs };
	enum ovlfs_format want = fs->format;
	char stamp[32];
	struct ovl_fmt had = { 0 };
	bool resume = false;
	int fd, err, n;

	c.upper = upper;
	fd = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return ovl_set_error(fs, -errno, "convert: upper %s: %s", upper,
				     strerror(errno));
	/* The same lock as a mount: none may run meanwhile. */
	err = ovl_flock_wait(fd, LOCK_EX);
	if (err) {
		ovl_set_error(fs, err, "convert: upper %s is in use by an ovlfs mount",
			      upper);
		goto out_close;
	}
	/*
	 * Whatever the stamp says, every marker of the other format goes:
	 * the check only refuses what neither format reads.
	 */
	c.from = ovl_fmt_of(to == OVLFS_FORMAT_OCI);
	c.to = ovl_fmt_of(to == OVLFS_FORMAT_KERNEL);
	fs->format = OVLFS_FORMAT_AUTO;
	err = ovl_check_upper_format(fs, fd, upper, false, &had);
	if (err == -EPROTO && strstr(fs->err, "both")) {
		err = 0;	/* an interrupted conversion: finish it */
		resume = true;
	}
	if (!err)
		fs->err[0] = '\0';
	/*
	 * After a run to OCI that got past this check and was killed, the
	 * .wh. names are its markers (XATTR_CONVERTING says so); an upper
	 * that reads as OCI has none of a user's to protect.
	 */
	if (!err && to == OVLFS_FORMAT_OCI && (resume || had.kernel) &&
	    ovl_fd_getxattr(fd, XATTR_CONVERTING, NULL, 0) < 0)
		err = find_wh_names(&c, fd, 0);
	if (!err && to == OVLFS_FORMAT_OCI)
		ovl_fd_setxattr(fd, XATTR_CONVERTING, "oci", 3, 0);
	/* Resumed, the 0/0 devices are the new markers of the first run. */
	if (!err && to == OVLFS_FORMAT_KERNEL && !resume && !had.kernel)
		err = find_devices(&c, fd, 0);
	if (!err) {
		fremovexattr(fd, OVL_XATTR_FORMAT);
		err = convert_dir(&c, fd, 0);
	}
	if (!err) {
		n = snprintf(stamp, sizeof(stamp), "%d%s", OVL_FORMAT_VERSION,
			     to == OVLFS_FORMAT_KERNEL ? " kernel" : "");
		if (fsetxattr(fd, OVL_XATTR_FORMAT, stamp, n, 0) < 0 &&
		    errno != EOPNOTSUPP)
			err = ovl_set_error(fs, -errno, "convert: upper %s: cannot stamp it: %s",
					    upper, strerror(errno));
		if (!err && fsync(fd) < 0)
			err = ovl_set_error(fs, -errno, "convert: upper %s: %s",
					    upper, strerror(errno));
		if (!err)
			fremovexattr(fd, XATTR_CONVERTING);
	}
out_close:
	close(fd);
	fs->format = want;
	return err;
}
