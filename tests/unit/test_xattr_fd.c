/*
 * The xattr helpers of lib/format/meta.c: an fd opened for I/O takes the
 * f*xattr calls, an O_PATH one (files and symlinks alike) goes through
 * /proc/self/fd/N, and ovl_at_getxattr reads a child's own xattr (never a
 * symlink's target's) with getxattrat(2) or, where the kernel or a seccomp
 * filter refuses that call (ENOSYS, EPERM), through /proc.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "format/format.h"
#include "test.h"

#define XA "trusted.ovlfs-test"	/* root: allowed on symlinks too */

static char dir[] = "/tmp/ovlfs-unit-xattr-XXXXXX";

/* Every helper on FD: set, get, list, remove; then "gone". */
static void check_fd_ops(int fd, const char *path)
{
	char buf[256];
	ssize_t n;

	T_INTEQ(ovl_fd_setxattr(fd, XA, "v1", 2, 0), 0);
	T_INTEQ(ovl_fd_getxattr(fd, XA, buf, sizeof(buf)), 2);
	T_ASSERT(!memcmp(buf, "v1", 2));
	/* What the helper did is on the object itself. */
	T_INTEQ(lgetxattr(path, XA, buf, sizeof(buf)), 2);
	n = ovl_fd_listxattr(fd, buf, sizeof(buf));
	T_ASSERT(n > 0);
	T_ASSERT(memmem(buf, n, XA, sizeof(XA)) != NULL);
	T_INTEQ(ovl_fd_setxattr(fd, XA, "v2", 2, XATTR_CREATE), -EEXIST);
	T_INTEQ(ovl_fd_removexattr(fd, XA), 0);
	T_INTEQ(ovl_fd_getxattr(fd, XA, buf, sizeof(buf)), -ENODATA);
	T_INTEQ(ovl_fd_removexattr(fd, XA), -ENODATA);
}

static void test_fds(void)
{
	char file[128], link[128];
	char buf[16];
	int fd;

	snprintf(file, sizeof(file), "%s/f", dir);
	snprintf(link, sizeof(link), "%s/l", dir);
	fd = open(file, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	T_ASSERT(fd >= 0);
	check_fd_ops(fd, file);
	close(fd);

	fd = open(file, O_PATH | O_CLOEXEC);
	T_ASSERT(fd >= 0);
	check_fd_ops(fd, file);
	close(fd);

	/* A symlink's O_PATH fd: its own xattrs, not its target's. */
	T_INTEQ(symlink("f", link), 0);
	fd = open(link, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	T_ASSERT(fd >= 0);
	check_fd_ops(fd, link);
	T_INTEQ(ovl_fd_setxattr(fd, XA, "s", 1, 0), 0);
	T_INTEQ(getxattr(file, XA, buf, sizeof(buf)), -1);
	T_INTEQ(errno, ENODATA);
	close(fd);

	/* A bad fd is an error, not a walk somewhere else. */
	T_ASSERT(ovl_fd_getxattr(1000, XA, buf, sizeof(buf)) < 0);
}

/* ovl_at_getxattr on DIR's children: the link's own value, none on f. */
static void check_at(void)
{
	char buf[16];
	int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);

	T_ASSERT(dfd >= 0);
	T_INTEQ(ovl_at_getxattr(dfd, "l", XA, buf, sizeof(buf)), 1);
	T_ASSERT(buf[0] == 's');
	T_INTEQ(ovl_at_getxattr(dfd, "l", XA, NULL, 0), 1);
	T_INTEQ(ovl_at_getxattr(dfd, "f", XA, buf, sizeof(buf)), -ENODATA);
	T_INTEQ(ovl_at_getxattr(dfd, "missing", XA, buf, sizeof(buf)),
		-ENOENT);
	T_INTEQ(ovl_at_getxattr(dfd, "l", XA, buf, 0), 1);
	close(dfd);
}

/* Run check_at in a child whose getxattrat(2) (464) fails with ERR. */
static void check_at_refused(int err)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			 offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 464, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & 0xffff)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(f) / sizeof(f[0]), f };
	int status;
	pid_t pid = fork();

	T_ASSERT(pid >= 0);
	if (pid == 0) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
		    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog))
			_exit(2);
		check_at();
		_exit(0);
	}
	T_ASSERT(waitpid(pid, &status, 0) == pid);
	T_ASSERT(WIFEXITED(status));
	T_INTEQ(WEXITSTATUS(status), 0);
}

int main(void)
{
	char cmd[128];

	if (geteuid() != 0) {
		fprintf(stderr, "test_xattr_fd: needs root (trusted.*)\n");
		return 77;
	}
	T_ASSERT(mkdtemp(dir) != NULL);
	test_fds();
	check_at();
	check_at_refused(ENOSYS);
	check_at_refused(EPERM);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	T_INTEQ(system(cmd), 0);
	return 0;
}
