/*
 * ovl_remove_tree (lib/format/layers.c) opens up a directory (mode 0700)
 * only when the caller could not empty it otherwise: a removal that stops
 * midway (a commit killed or failing while it removes the upper) must not
 * leave modes changed for nothing, which the merged view of what is left
 * would show. As root a 0555 directory keeps its mode.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format/format.h"
#include "test.h"

/* Set or clear FS_IMMUTABLE_FL on PATH; 0, or -errno. */
static int immutable(const char *path, bool on)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), flags, err = 0;

	if (fd < 0)
		return -errno;
	if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0)
		err = -errno;
	if (!err) {
		flags = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
		if (ioctl(fd, FS_IOC_SETFLAGS, &flags) < 0)
			err = -errno;
	}
	close(fd);
	return err;
}

int main(void)
{
	char dir[] = "/tmp/ovlfs-unit-remove-XXXXXX", p[128], f[160];
	struct stat st;
	int dfd, fd, err;

	if (geteuid() != 0) {
		fprintf(stderr, "test_remove: needs root\n");
		return 77;
	}
	T_ASSERT(mkdtemp(dir) != NULL);
	snprintf(p, sizeof(p), "%s/t", dir);
	T_INTEQ(mkdir(p, 0755), 0);
	snprintf(p, sizeof(p), "%s/t/ro", dir);
	T_INTEQ(mkdir(p, 0755), 0);
	snprintf(f, sizeof(f), "%s/stuck", p);
	fd = open(f, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	T_ASSERT(fd >= 0);
	close(fd);
	err = immutable(f, true);
	if (err) {
		fprintf(stderr, "test_remove: no immutable flag on %s: %s\n", f,
			strerror(-err));
		rmdir(dir);
		return 77;
	}
	T_INTEQ(chmod(p, 0555), 0);
	dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	T_ASSERT(dfd >= 0);

	/* Stopped by the immutable file: the 0555 directory kept its mode. */
	T_INTEQ(ovl_remove_tree(dfd, "t"), -EPERM);
	T_INTEQ(stat(p, &st), 0);
	T_INTEQ(st.st_mode & 07777, 0555);

	/* Once it can go, everything goes. */
	T_INTEQ(immutable(f, false), 0);
	T_INTEQ(ovl_remove_tree(dfd, "t"), 0);
	T_INTEQ(faccessat(dfd, "t", F_OK, AT_SYMLINK_NOFOLLOW), -1);
	close(dfd);
	T_INTEQ(rmdir(dir), 0);
	return 0;
}
