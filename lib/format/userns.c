/*
 * userns.c: what root of a user namespace may not do.
 *
 * Inside a user namespace (unshare -r, podman unshare) the process is
 * uid 0 and holds every capability, but only over that namespace. The
 * kernel asks for CAP_SYS_ADMIN in the initial namespace before it sets
 * or shows trusted.* xattrs and before it registers a FUSE backing file,
 * so geteuid() == 0 does not tell whether ovlfs may use them: there the
 * kernel format's opaque marker is user.overlay.opaque (the kernel's own
 * overlayfs needs its userxattr mode there too) and passthrough is off.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "format/format.h"

/* The proc inode number of the initial user namespace (PROC_USER_INIT_INO). */
#define OVL_USER_INIT_INO 0xEFFFFFFDU

bool ovl_init_userns(void)
{
	struct stat st;

	/* Without /proc, nothing suggests a namespace: assume the first. */
	return stat("/proc/self/ns/user", &st) < 0 ||
	       st.st_ino == OVL_USER_INIT_INO;
}

bool ovl_global_sys_admin(void)
{
	struct __user_cap_header_struct h = {
		.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d) < 0)
		return false;
	if (!(d[CAP_SYS_ADMIN / 32].effective & (1U << (CAP_SYS_ADMIN % 32))))
		return false;
	return ovl_init_userns();
}

bool ovl_userns_without_mntns(void)
{
	struct stat me, owner;
	int mfd, ufd;
	bool ours = false;

	if (ovl_init_userns() || stat("/proc/self/ns/user", &me) < 0)
		return false;
	mfd = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
	if (mfd < 0)
		return false;
	/* EPERM: the owner is an ancestor of our namespace, so not ours. */
	ufd = ioctl(mfd, NS_GET_USERNS);
	if (ufd >= 0) {
		ours = fstat(ufd, &owner) == 0 && owner.st_ino == me.st_ino &&
		       owner.st_dev == me.st_dev;
		close(ufd);
	}
	close(mfd);
	return !ours;
}
