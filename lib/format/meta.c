/*
 * meta.c: an object's metadata and data, copied between layers.
 *
 * Copy-up, commit, flatten and tar apply all copy an object the same way:
 * data first, then owner (chown clears setuid and security.capability),
 * then mode, then xattrs, then times (every write before it would bump
 * mtime). ovlfs's own bookkeeping xattrs ("*.ovlfs.*", and the kernel's
 * "*.overlay.*" markers) are never copied and never shown.
 *
 * O_PATH fds cannot take f*xattr calls, so the object is named through
 * /proc/self/fd/N: the magic link resolves to the object the fd holds
 * (even a symlink), with no path walk a symlink in a layer could divert.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "format/format.h"

bool ovl_xattr_is_private(const char *name)
{
	/* The kernel's overlayfs markers are layer bookkeeping too. */
	return !strncmp(name, "trusted.ovlfs.", 14) ||
	       !strncmp(name, "user.ovlfs.", 11) ||
	       !strncmp(name, "trusted.overlay.", 16) ||
	       !strncmp(name, "user.overlay.", 13);
}

/*
 * An fd opened for I/O takes the f*xattr calls straight; an O_PATH one
 * is refused them (EBADF) and named through /proc/self/fd/N, a walk
 * through procfs: 3 us a call here against 0.55 on the fd.
 */
static bool refused_on_path_fd(int fd, ssize_t n, char p[32])
{
	if (n >= 0 || errno != EBADF)
		return false;
	ovl_proc_path(fd, p);
	return true;
}

ssize_t ovl_fd_getxattr(int fd, const char *name, void *buf, size_t size)
{
	char p[32];
	ssize_t n = fgetxattr(fd, name, buf, size);

	if (refused_on_path_fd(fd, n, p))
		n = getxattr(p, name, buf, size);
	return n < 0 ? -errno : n;
}

/*
 * getxattrat(2) (Linux 6.13) reads CHILD's xattr relative to DIRFD with
 * no walk through procfs; older kernels (ENOSYS) and seccomp filters that
 * do not know it (ENOSYS or EPERM) get the /proc/self/fd/N/CHILD path.
 */
#if defined(__x86_64__) || defined(__aarch64__) || defined(__i386__) || \
	defined(__riscv)
#define OVL_SYS_GETXATTRAT 464	/* one number on these (asm-generic) */
#endif

struct ovl_xattr_args {		/* the kernel's struct xattr_args */
	uint64_t value;
	uint32_t size;
	uint32_t flags;
};

ssize_t ovl_at_getxattr(int dirfd, const char *child, const char *name,
			void *buf, size_t size)
{
	char p[32 + NAME_MAX + 2];
	ssize_t n;

#ifdef OVL_SYS_GETXATTRAT
	struct ovl_xattr_args a = { (uint64_t)(uintptr_t)buf,
				    (uint32_t)size, 0 };

	n = syscall(OVL_SYS_GETXATTRAT, dirfd, child, AT_SYMLINK_NOFOLLOW,
		    name, &a, sizeof(a));
	if (n >= 0 || (errno != ENOSYS && errno != EPERM))
		return n < 0 ? -errno : n;
#endif
	snprintf(p, sizeof(p), "/proc/self/fd/%d/%s", dirfd, child);
	n = lgetxattr(p, name, buf, size);
	return n < 0 ? -errno : n;
}

ssize_t ovl_fd_listxattr(int fd, char *buf, size_t size)
{
	char p[32];
	ssize_t n = flistxattr(fd, buf, size);

	if (refused_on_path_fd(fd, n, p))
		n = listxattr(p, buf, size);
	return n < 0 ? -errno : n;
}

int ovl_fd_setxattr(int fd, const char *name, const void *v, size_t size,
		    int flags)
{
	char p[32];
	int r = fsetxattr(fd, name, v, size, flags);

	if (refused_on_path_fd(fd, r, p))
		r = setxattr(p, name, v, size, flags);
	return r < 0 ? -errno : 0;
}

int ovl_fd_removexattr(int fd, const char *name)
{
	char p[32];
	int r = fremovexattr(fd, name);

	if (refused_on_path_fd(fd, r, p))
		r = removexattr(p, name);
	return r < 0 ? -errno : 0;
}


#define COPY_CHUNK (1 << 20)

static int copy_range_rw(int src, int dst, off_t off, off_t len)
{
	char *buf = NULL;
	int err = 0;

	while (len > 0) {
		loff_t roff = off, woff = off;
		ssize_t n = copy_file_range(src, &roff, dst, &woff,
					    len > COPY_CHUNK ? COPY_CHUNK : len, 0);
		if (n > 0) {
			off += n;
			len -= n;
			continue;
		}
		if (n == 0)
			break;	/* source shrank under us */
		if (errno == EINTR)
			continue;
		if (errno != EXDEV && errno != EINVAL && errno != EOPNOTSUPP &&
		    errno != ENOSYS)
			return -errno;
		/* No copy_file_range between these two: plain read/write. */
		if (!buf && !(buf = malloc(COPY_CHUNK)))
			return -ENOMEM;
		n = pread(src, buf, len > COPY_CHUNK ? COPY_CHUNK : len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		for (ssize_t done = 0; done < n;) {
			ssize_t w = pwrite(dst, buf + done, n - done,
					   off + done);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				err = -errno;
				goto out;
			}
			done += w;
		}
		off += n;
		len -= n;
	}
out:
	free(buf);
	return err;
}

int ovl_copy_data(int src, int dst, off_t size)
{
	off_t pos = 0;
	int err;

	if (size == 0)
		return 0;
	if (ioctl(dst, FICLONE, src) == 0)
		return 0;
	/* Copy the data segments only, so holes stay holes. */
	while (pos < size) {
		off_t data = lseek(src, pos, SEEK_DATA), hole;

		if (data < 0) {
			if (errno == ENXIO)
				break;	/* only a hole remains */
			data = pos;	/* no SEEK_DATA: copy everything */
			hole = size;
		} else {
			hole = lseek(src, data, SEEK_HOLE);
			if (hole < 0)
				hole = size;
		}
		if (hole > size)
			hole = size;
		if (data >= size)
			break;
		err = copy_range_rw(src, dst, data, hole - data);
		if (err)
			return err;
		pos = hole;
	}
	if (ftruncate(dst, size) < 0)
		return -errno;
	return 0;
}

/* Does NAME carry access rights (a file capability, an ACL)? */
static bool xattr_grants(const char *name)
{
	return !strcmp(name, "security.capability") ||
	       !strncmp(name, "system.posix_acl_", 17);
}

static bool xattr_skip_error(bool is_root, const char *name, int err,
			     bool strict)
{
	/* A commit must not drop what decides who may do what. */
	if (strict && xattr_grants(name))
		return false;
	/* Best effort for what the upper cannot hold or we may not set. */
	if (err == -EOPNOTSUPP)
		return true;
	if (err == -EPERM && (!is_root || !strncmp(name, "security.", 9)))
		return true;
	return false;
}

static int copy_xattrs(bool is_root, int srcfd, int dstfd, char *failed)
{
	ssize_t len = ovl_fd_listxattr(srcfd, NULL, 0), vlen;
	char *names = NULL, *val = NULL;
	size_t vcap = 0;
	int err = 0;

	if (len == -EOPNOTSUPP || len == 0)
		return 0;
	if (len < 0)
		return (int)len;
	/* The list may grow between the two calls: retry on ERANGE. */
	for (;;) {
		free(names);
		names = malloc(len);
		if (!names)
			return -ENOMEM;
		len = ovl_fd_listxattr(srcfd, names, len);
		if (len != -ERANGE)
			break;
		len = ovl_fd_listxattr(srcfd, NULL, 0);
		if (len < 0)
			break;
	}
	if (len < 0) {
		err = (int)len;
		goto out;
	}
	for (char *n = names; n < names + len; n += strlen(n) + 1) {
		if (ovl_xattr_is_private(n))
			continue;
		for (;;) {
			vlen = ovl_fd_getxattr(srcfd, n, val, vcap);
			if (vlen == -ERANGE || (vlen >= 0 && !val && vlen)) {
				vlen = ovl_fd_getxattr(srcfd, n, NULL, 0);
				if (vlen < 0)
					break;
				free(val);
				vcap = vlen + 1;
				val = malloc(vcap);
				if (!val) {
					err = -ENOMEM;
					goto out;
				}
				continue;
			}
			break;
		}
		if (vlen == -ENODATA)
			continue;	/* removed meanwhile */
		if (vlen < 0) {
			err = (int)vlen;
			goto out;
		}
		err = ovl_fd_setxattr(dstfd, n, val ? val : "", vlen, 0);
		if (err && !xattr_skip_error(is_root, n, err, failed != NULL)) {
			if (failed)
				snprintf(failed, XATTR_NAME_MAX + 1, "%s", n);
			goto out;
		}
		err = 0;
	}
out:
	free(names);
	free(val);
	return err;
}

int ovl_copy_xattrs(bool is_root, int srcfd, int dstfd)
{
	return copy_xattrs(is_root, srcfd, dstfd, NULL);
}

int ovl_copy_meta_strict(bool is_root, int srcfd, int dstfd,
			 const struct stat *st, bool times, char *failed)
{
	int err;

	if (fchownat(dstfd, "", st->st_uid, st->st_gid,
		     AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0 &&
	    (is_root || errno != EPERM))
		return -errno;
	/*
	 * Without privilege, user.* xattrs need write permission: a read-only
	 * object (a 0444 file, a 0555 directory: ours, so we may chmod it)
	 * is written first, then gets its mode. A kill in between leaves u+w
	 * more, which a retry puts right.
	 */
	if (!is_root && !S_ISLNK(st->st_mode) && !(st->st_mode & S_IWUSR)) {
		err = ovl_fchmod_any(dstfd, (st->st_mode & 07777) | S_IWUSR);
		if (err)
			return err;
	}
	err = copy_xattrs(is_root, srcfd, dstfd, failed);
	if (err)
		return err;
	/* After the chown, which clears set-id bits. */
	if (!S_ISLNK(st->st_mode)) {
		err = ovl_fchmod_any(dstfd, st->st_mode & 07777);
		if (err)
			return err;
	}
	if (times) {
		struct timespec ts[2] = { st->st_atim, st->st_mtim };

		if (utimensat(dstfd, "", ts, AT_EMPTY_PATH) < 0)
			return -errno;
	}
	return 0;
}

int ovl_copy_meta(bool is_root, int srcfd, int dstfd,
		  const struct stat *st, bool times)
{
	return ovl_copy_meta_strict(is_root, srcfd, dstfd, st, times, NULL);
}
