/*
 * killshim: an LD_PRELOAD library for the tests only. It numbers the calls
 * by which a process (the ovlfs daemon) changes a filesystem, with one
 * counter for the whole process, whichever thread makes them, and can
 * SIGKILL the process just before the Nth (tests/test_daemon_every_step.py).
 * strace cannot do this for the daemon: its inject=...:when=N counts each
 * system call on its own and per thread, and the daemon serves requests on
 * whichever thread is free.
 *
 * Environment:
 *   KILLSHIM_AT=N         SIGKILL the process just before its Nth counted call
 *   KILLSHIM_LOG=PATH     append "N name detail" per counted call
 *   KILLSHIM_ARM_FILE=P   count nothing until P exists (the test creates it
 *                         once the mount is live), so that the mount's own
 *                         setup, before and after the fork, is not numbered
 *   KILLSHIM_IGNORE=PATH  writes to this file (the daemon's --log) are not
 *                         counted
 *
 * Counted: the calls that create, remove, rename, link or change the data or
 * the metadata of a file, open/openat only with O_CREAT, O_TRUNC or
 * O_TMPFILE, and syscall() with the numbers of such calls. write and its
 * kin count only on regular files and never on fds 0-2: the FUSE replies
 * (/dev/fuse) and the logs are not steps. The shim's own log goes through
 * the real functions, so it is never counted.
 */
#undef _FILE_OFFSET_BITS	/* define open and open64 (etc.) both */
#undef _FORTIFY_SOURCE		/* no inline wrappers of open() */

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef O_TMPFILE
#define O_TMPFILE 0
#endif

static struct {
	atomic_bool ready;		/* the constructor has read the env */
	atomic_bool armed;
	atomic_long count;
	long kill_at;			/* 0: never */
	const char *log;
	const char *arm_file;
	const char *ignore;
} shim;

static void *resolve(_Atomic(void *) *slot, const char *name)
{
	void *p = atomic_load_explicit(slot, memory_order_acquire);

	if (!p) {
		p = dlsym(RTLD_NEXT, name);
		if (!p)
			abort();	/* the test's own setup is broken */
		atomic_store_explicit(slot, p, memory_order_release);
	}
	return p;
}

#define REAL(fn) ({ static _Atomic(void *) slot_; \
		    (__typeof__(&fn))resolve(&slot_, #fn); })

__attribute__((constructor)) static void shim_init(void)
{
	const char *at = getenv("KILLSHIM_AT");

	shim.kill_at = at ? strtol(at, NULL, 10) : 0;
	shim.log = getenv("KILLSHIM_LOG");
	shim.arm_file = getenv("KILLSHIM_ARM_FILE");
	shim.ignore = getenv("KILLSHIM_IGNORE");
	atomic_store(&shim.ready, true);
}

static bool armed(void)
{
	if (!atomic_load(&shim.ready))
		return false;
	if (atomic_load(&shim.armed))
		return true;
	if (shim.arm_file && access(shim.arm_file, F_OK) != 0)
		return false;
	atomic_store(&shim.armed, true);
	return true;
}

/* DFD/PATH (PATH NULL: DFD itself; AT_FDCWD: ".") for the log. */
static void describe(int dfd, const char *path, char *buf, size_t len)
{
	char p[64], base[PATH_MAX];
	ssize_t n;

	if (path && path[0] == '/') {
		snprintf(buf, len, "%s", path);
		return;
	}
	if (dfd == AT_FDCWD) {
		snprintf(base, sizeof(base), ".");
	} else {
		snprintf(p, sizeof(p), "/proc/self/fd/%d", dfd);
		n = readlink(p, base, sizeof(base) - 1);
		if (n < 0)
			snprintf(base, sizeof(base), "fd%d", dfd);
		else
			base[n] = '\0';
	}
	snprintf(buf, len, "%s%s%s", base, path && path[0] ? "/" : "",
		 path ? path : "");
}

/*
 * One counted call: NAME on DFD/PATH (DFD itself when PATH is NULL), with
 * a second name DFD2/PATH2 for renames and links. Logs it; dies before it
 * when it is the one to die at.
 */
static void step(const char *name, int dfd, const char *path, int dfd2,
		 const char *path2)
{
	long n;

	if (!armed())
		return;
	n = atomic_fetch_add(&shim.count, 1) + 1;
	if (shim.log) {
		char a[PATH_MAX + 8], b[PATH_MAX + 8], line[2 * PATH_MAX + 100];
		int len, fd;

		describe(dfd, path, a, sizeof(a));
		b[0] = '\0';
		if (path2)
			describe(dfd2, path2, b, sizeof(b));
		len = snprintf(line, sizeof(line), "%ld %s %s%s%s\n", n, name, a,
			       path2 ? " -> " : "", b);
		if (len > 0 && (size_t)len >= sizeof(line))
			len = (int)sizeof(line) - 1;
		fd = REAL(open)(shim.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
				0644);
		if (fd >= 0) {
			if (len > 0 && REAL(write)(fd, line, (size_t)len) < 0) {
				/* nothing to do: the test sees a short log */
			}
			close(fd);
		}
	}
	if (n == shim.kill_at)
		kill(getpid(), SIGKILL);
}

/* Data writes count on regular files other than 0-2 and the ignored one. */
static void data_step(const char *name, int fd)
{
	struct stat st;

	if (fd <= 2 || !armed() || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return;
	if (shim.ignore) {
		struct stat ig;

		if (stat(shim.ignore, &ig) == 0 && ig.st_dev == st.st_dev &&
		    ig.st_ino == st.st_ino)
			return;
	}
	step(name, fd, NULL, -1, NULL);
}

static bool open_changes(int flags)
{
	return (flags & (O_CREAT | O_TRUNC)) ||
	       (O_TMPFILE && (flags & O_TMPFILE) == O_TMPFILE);
}

/* The mode argument is there only with O_CREAT or O_TMPFILE. */
#define OPEN_MODE(flags, last) ({ mode_t m_ = 0; \
	if ((flags & O_CREAT) || (O_TMPFILE && (flags & O_TMPFILE) == O_TMPFILE)) { \
		va_list ap_; va_start(ap_, last); m_ = va_arg(ap_, mode_t); \
		va_end(ap_); } m_; })

int open(const char *path, int flags, ...)
{
	mode_t mode = OPEN_MODE(flags, flags);

	if (open_changes(flags))
		step("open", AT_FDCWD, path, -1, NULL);
	return REAL(open)(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = OPEN_MODE(flags, flags);

	if (open_changes(flags))
		step("open", AT_FDCWD, path, -1, NULL);
	return REAL(open64)(path, flags, mode);
}

int openat(int dfd, const char *path, int flags, ...)
{
	mode_t mode = OPEN_MODE(flags, flags);

	if (open_changes(flags))
		step("openat", dfd, path, -1, NULL);
	return REAL(openat)(dfd, path, flags, mode);
}

int openat64(int dfd, const char *path, int flags, ...)
{
	mode_t mode = OPEN_MODE(flags, flags);

	if (open_changes(flags))
		step("openat", dfd, path, -1, NULL);
	return REAL(openat64)(dfd, path, flags, mode);
}

int creat(const char *path, mode_t mode)
{
	step("creat", AT_FDCWD, path, -1, NULL);
	return REAL(creat)(path, mode);
}

int rename(const char *a, const char *b)
{
	step("rename", AT_FDCWD, a, AT_FDCWD, b);
	return REAL(rename)(a, b);
}

int renameat(int da, const char *a, int db, const char *b)
{
	step("renameat", da, a, db, b);
	return REAL(renameat)(da, a, db, b);
}

int renameat2(int da, const char *a, int db, const char *b, unsigned flags)
{
	step("renameat2", da, a, db, b);
	return REAL(renameat2)(da, a, db, b, flags);
}

int mkdir(const char *path, mode_t mode)
{
	step("mkdir", AT_FDCWD, path, -1, NULL);
	return REAL(mkdir)(path, mode);
}

int mkdirat(int dfd, const char *path, mode_t mode)
{
	step("mkdirat", dfd, path, -1, NULL);
	return REAL(mkdirat)(dfd, path, mode);
}

int unlink(const char *path)
{
	step("unlink", AT_FDCWD, path, -1, NULL);
	return REAL(unlink)(path);
}

int rmdir(const char *path)
{
	step("rmdir", AT_FDCWD, path, -1, NULL);
	return REAL(rmdir)(path);
}

int unlinkat(int dfd, const char *path, int flags)
{
	step("unlinkat", dfd, path, -1, NULL);
	return REAL(unlinkat)(dfd, path, flags);
}

int link(const char *a, const char *b)
{
	step("link", AT_FDCWD, a, AT_FDCWD, b);
	return REAL(link)(a, b);
}

int linkat(int da, const char *a, int db, const char *b, int flags)
{
	step("linkat", da, a, db, b);
	return REAL(linkat)(da, a, db, b, flags);
}

int symlink(const char *target, const char *path)
{
	step("symlink", AT_FDCWD, path, -1, NULL);
	return REAL(symlink)(target, path);
}

int symlinkat(const char *target, int dfd, const char *path)
{
	step("symlinkat", dfd, path, -1, NULL);
	return REAL(symlinkat)(target, dfd, path);
}

int mknod(const char *path, mode_t mode, dev_t dev)
{
	step("mknod", AT_FDCWD, path, -1, NULL);
	return REAL(mknod)(path, mode, dev);
}

int mknodat(int dfd, const char *path, mode_t mode, dev_t dev)
{
	step("mknodat", dfd, path, -1, NULL);
	return REAL(mknodat)(dfd, path, mode, dev);
}

int fsync(int fd)
{
	step("fsync", fd, NULL, -1, NULL);
	return REAL(fsync)(fd);
}

int fdatasync(int fd)
{
	step("fdatasync", fd, NULL, -1, NULL);
	return REAL(fdatasync)(fd);
}

int syncfs(int fd)
{
	step("syncfs", fd, NULL, -1, NULL);
	return REAL(syncfs)(fd);
}

int setxattr(const char *path, const char *name, const void *v, size_t n,
	     int flags)
{
	step("setxattr", AT_FDCWD, path, -1, NULL);
	return REAL(setxattr)(path, name, v, n, flags);
}

int lsetxattr(const char *path, const char *name, const void *v, size_t n,
	      int flags)
{
	step("lsetxattr", AT_FDCWD, path, -1, NULL);
	return REAL(lsetxattr)(path, name, v, n, flags);
}

int fsetxattr(int fd, const char *name, const void *v, size_t n, int flags)
{
	step("fsetxattr", fd, NULL, -1, NULL);
	return REAL(fsetxattr)(fd, name, v, n, flags);
}

int removexattr(const char *path, const char *name)
{
	step("removexattr", AT_FDCWD, path, -1, NULL);
	return REAL(removexattr)(path, name);
}

int lremovexattr(const char *path, const char *name)
{
	step("lremovexattr", AT_FDCWD, path, -1, NULL);
	return REAL(lremovexattr)(path, name);
}

int fremovexattr(int fd, const char *name)
{
	step("fremovexattr", fd, NULL, -1, NULL);
	return REAL(fremovexattr)(fd, name);
}

int chmod(const char *path, mode_t mode)
{
	step("chmod", AT_FDCWD, path, -1, NULL);
	return REAL(chmod)(path, mode);
}

int fchmod(int fd, mode_t mode)
{
	step("fchmod", fd, NULL, -1, NULL);
	return REAL(fchmod)(fd, mode);
}

int fchmodat(int dfd, const char *path, mode_t mode, int flags)
{
	step("fchmodat", dfd, path, -1, NULL);
	return REAL(fchmodat)(dfd, path, mode, flags);
}

int chown(const char *path, uid_t uid, gid_t gid)
{
	step("chown", AT_FDCWD, path, -1, NULL);
	return REAL(chown)(path, uid, gid);
}

int lchown(const char *path, uid_t uid, gid_t gid)
{
	step("lchown", AT_FDCWD, path, -1, NULL);
	return REAL(lchown)(path, uid, gid);
}

int fchown(int fd, uid_t uid, gid_t gid)
{
	step("fchown", fd, NULL, -1, NULL);
	return REAL(fchown)(fd, uid, gid);
}

int fchownat(int dfd, const char *path, uid_t uid, gid_t gid, int flags)
{
	step("fchownat", dfd, path, -1, NULL);
	return REAL(fchownat)(dfd, path, uid, gid, flags);
}

int utimensat(int dfd, const char *path, const struct timespec t[2],
	      int flags)
{
	step("utimensat", dfd, path, -1, NULL);
	return REAL(utimensat)(dfd, path, t, flags);
}

int futimens(int fd, const struct timespec t[2])
{
	step("futimens", fd, NULL, -1, NULL);
	return REAL(futimens)(fd, t);
}

ssize_t write(int fd, const void *buf, size_t n)
{
	data_step("write", fd);
	return REAL(write)(fd, buf, n);
}

ssize_t writev(int fd, const struct iovec *v, int n)
{
	data_step("writev", fd);
	return REAL(writev)(fd, v, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
	data_step("pwrite", fd);
	return REAL(pwrite)(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
	data_step("pwrite", fd);
	return REAL(pwrite64)(fd, buf, n, off);
}

ssize_t pwritev(int fd, const struct iovec *v, int n, off_t off)
{
	data_step("pwritev", fd);
	return REAL(pwritev)(fd, v, n, off);
}

ssize_t pwritev64(int fd, const struct iovec *v, int n, off64_t off)
{
	data_step("pwritev", fd);
	return REAL(pwritev64)(fd, v, n, off);
}

ssize_t copy_file_range(int in, off64_t *oin, int out, off64_t *oout,
			size_t n, unsigned flags)
{
	data_step("copy_file_range", out);
	return REAL(copy_file_range)(in, oin, out, oout, n, flags);
}

int ftruncate(int fd, off_t len)
{
	step("ftruncate", fd, NULL, -1, NULL);
	return REAL(ftruncate)(fd, len);
}

int ftruncate64(int fd, off64_t len)
{
	step("ftruncate", fd, NULL, -1, NULL);
	return REAL(ftruncate64)(fd, len);
}

int truncate(const char *path, off_t len)
{
	step("truncate", AT_FDCWD, path, -1, NULL);
	return REAL(truncate)(path, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
	step("fallocate", fd, NULL, -1, NULL);
	return REAL(fallocate)(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off64_t off, off64_t len)
{
	step("fallocate", fd, NULL, -1, NULL);
	return REAL(fallocate64)(fd, mode, off, len);
}

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif
#ifndef SYS_setxattrat
#define SYS_setxattrat 463
#endif
#ifndef SYS_removexattrat
#define SYS_removexattrat 466
#endif

/*
 * syscall(): ovlfs calls fchmodat2 this way (no libc wrapper yet); the
 * other changing numbers are there in case it calls them so one day.
 */
long syscall(long nr, ...)
{
	long a[6];
	va_list ap;

	va_start(ap, nr);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	switch (nr) {
	case SYS_fchmodat2:
		step("fchmodat2", (int)a[0], (const char *)a[1], -1, NULL);
		break;
	case SYS_fchmodat:
		step("fchmodat", (int)a[0], (const char *)a[1], -1, NULL);
		break;
	case SYS_renameat2:
		step("renameat2", (int)a[0], (const char *)a[1], (int)a[2],
		     (const char *)a[3]);
		break;
	case SYS_setxattrat:
		step("setxattrat", (int)a[0], (const char *)a[1], -1, NULL);
		break;
	case SYS_removexattrat:
		step("removexattrat", (int)a[0], (const char *)a[1], -1, NULL);
		break;
	default:
		break;
	}
	return REAL(syscall)(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
