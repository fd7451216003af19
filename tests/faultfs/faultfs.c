// SPDX-License-Identifier: MIT
/*
 * faultfs: a tiny read-only passthrough FUSE filesystem (libfuse3
 * high-level API) that injects errors by name, for tests/test_faults.py.
 *
 *	faultfs SOURCE MOUNTPOINT [FUSE OPTIONS...]
 *
 * Every path is passed through to SOURCE, except that the last component
 * of the path decides errors:
 *
 *   contains "eio"     open, opendir, readdir, read, readlink, getxattr and
 *                      listxattr fail with EIO (stat still works)
 *   contains "eacces"  the same with EACCES
 *   contains "staterr" getattr (lookup, stat) fails with EIO
 *   contains "rderr"   open works; read fails with EIO from offset 64 KiB
 *                      on (after a successful first part: a copy that
 *                      fails half way)
 *   contains "stall"   getattr takes 1.5 s (a lower that hangs)
 *
 * Writes are refused with EROFS: this is only ever a lower.
 */
#define FUSE_USE_VERSION 31
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static int src_fd = -1;

/* "/a/b" -> "a/b" relative to SOURCE; "/" -> "." */
static const char *rel(const char *path)
{
	while (*path == '/')
		path++;
	return *path ? path : ".";
}

static const char *base(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/* Error injected for a data-ish operation on PATH, or 0. */
static int fault(const char *path)
{
	const char *b = base(path);

	if (strstr(b, "eio"))
		return -EIO;
	if (strstr(b, "eacces"))
		return -EACCES;
	return 0;
}

static void *ff_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	return NULL;
}

static int ff_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	(void)fi;
	if (strstr(base(path), "staterr"))
		return -EIO;
	if (strstr(base(path), "stall"))
		usleep(1500 * 1000);
	if (fstatat(src_fd, rel(path), st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

static int ff_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int f = fault(path);

	if (f)
		return f;
	n = readlinkat(src_fd, rel(path), buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static int ff_opendir(const char *path, struct fuse_file_info *fi)
{
	int f = fault(path);

	(void)fi;
	return f;
}

static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t filler,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	DIR *d;
	struct dirent *de;
	int fd, f = fault(path);

	(void)off;
	(void)fi;
	(void)flags;
	if (f)
		return f;
	fd = openat(src_fd, rel(path), O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		struct stat st = { 0 };

		st.st_ino = de->d_ino;
		st.st_mode = DTTOIF(de->d_type);
		if (filler(buf, de->d_name, &st, 0, 0))
			break;
	}
	closedir(d);
	return 0;
}

static int ff_open(const char *path, struct fuse_file_info *fi)
{
	int fd, f = fault(path);

	if (f)
		return f;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	fd = openat(src_fd, rel(path), O_RDONLY | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	fi->fh = fd;
	if (strstr(base(path), "rderr"))
		fi->direct_io = 1;
	return 0;
}

static int ff_read(const char *path, char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	ssize_t n;

	if (strstr(base(path), "rderr") && off + (off_t)size > 65536) {
		if (off >= 65536)
			return -EIO;
		size = 65536 - off;
	}
	n = pread(fi->fh, buf, size, off);
	return n < 0 ? -errno : (int)n;
}

static int ff_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	close(fi->fh);
	return 0;
}

static int ff_statfs(const char *path, struct statvfs *sv)
{
	(void)path;
	return fstatvfs(src_fd, sv) < 0 ? -errno : 0;
}

static int proc_path(const char *path, char *out, size_t len)
{
	int n = snprintf(out, len, "/proc/self/fd/%d/%s", src_fd, rel(path));

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int ff_getxattr(const char *path, const char *name, char *val,
		       size_t size)
{
	char p[PATH_MAX + 64];
	ssize_t n;
	int f = fault(path);

	if (f)
		return f;
	if ((f = proc_path(path, p, sizeof(p))))
		return f;
	n = lgetxattr(p, name, val, size);
	return n < 0 ? -errno : (int)n;
}

static int ff_listxattr(const char *path, char *list, size_t size)
{
	char p[PATH_MAX + 64];
	ssize_t n;
	int f = fault(path);

	if (f)
		return f;
	if ((f = proc_path(path, p, sizeof(p))))
		return f;
	n = llistxattr(p, list, size);
	return n < 0 ? -errno : (int)n;
}

static int ff_access(const char *path, int mask)
{
	(void)mask;
	return fault(path);
}

static int ff_rofs(void)
{
	return -EROFS;
}

static int ff_mknod(const char *p, mode_t m, dev_t d)
{
	(void)p, (void)m, (void)d;
	return ff_rofs();
}

static int ff_unlink(const char *p)
{
	(void)p;
	return ff_rofs();
}

static int ff_mkdir(const char *p, mode_t m)
{
	(void)p, (void)m;
	return ff_rofs();
}

static const struct fuse_operations ops = {
	.init = ff_init,
	.getattr = ff_getattr,
	.readlink = ff_readlink,
	.opendir = ff_opendir,
	.readdir = ff_readdir,
	.open = ff_open,
	.read = ff_read,
	.release = ff_release,
	.statfs = ff_statfs,
	.getxattr = ff_getxattr,
	.listxattr = ff_listxattr,
	.access = ff_access,
	.mknod = ff_mknod,
	.unlink = ff_unlink,
	.rmdir = ff_unlink,
	.mkdir = ff_mkdir,
};

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: faultfs SOURCE MOUNTPOINT [FUSE OPTIONS]\n");
		return 2;
	}
	src_fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (src_fd < 0) {
		perror(argv[1]);
		return 1;
	}
	/* Drop SOURCE from argv: fuse_main sees MOUNTPOINT and the options. */
	argv[1] = argv[0];
	return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
