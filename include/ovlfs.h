/*
 * ovlfs: a user-space overlay (copy-on-write) filesystem.
 *
 * A read-only LOWER directory is shown under a writable UPPER directory,
 * merged at a MOUNT POINT. The lower is never modified while mounted; every
 * change lands in the upper (copy-up on first change, `.wh.<name>` whiteouts
 * for deletions, `.wh..wh..opq` for opaque directories, see docs/format.md).
 *
 * Life cycle (mirrors the Rust design ovlfs started from):
 *
 *	struct ovlfs *fs = ovlfs_new("/srv/rootfs");
 *	if (!fs) ...                                 (errno says why)
 *	ovlfs_set_upper(fs, "/srv/changes");         (optional)
 *	if (ovlfs_mount(fs) < 0)
 *		fprintf(stderr, "%s\n", ovlfs_error(fs));
 *	... use ovlfs_mount_point(fs) like any directory ...
 *	ovlfs_umount(fs);
 *	ovlfs_free(fs);
 *
 * Conventions:
 *  - Calls returning int return 0 on success or a negative errno value; on
 *    failure ovlfs_error() describes what failed, naming the path.
 *  - Strings passed in are copied; the caller keeps ownership of its own.
 *  - Strings returned are owned by the struct ovlfs and stay valid until the
 *    next call that changes the same setting, or ovlfs_free().
 *  - One struct ovlfs may be used from several threads, but calls on it
 *    must not overlap (the filesystem itself serves requests on its own
 *    threads).
 *  - Defaults for lower `/b/x`: upper `/b/x.upper`, mount point
 *    `/b/x.mountpoint` (the suffix is appended to the whole last component,
 *    so `alpine-3.20` gives `alpine-3.20.upper`).
 */
#ifndef OVLFS_H
#define OVLFS_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OVLFS_VERSION "0.1.0"

/* How inode numbers are chosen for the merged view. */
enum ovlfs_inode_mode {
	/*
	 * Numbers handed out in order of first sight (1 for the root);
	 * stable for the life of the mount, new after a remount.
	 */
	OVLFS_INODE_VIRTUAL = 0,
	/*
	 * Derived from the layers' own inode numbers, so the same file keeps
	 * the same number across remounts, copy-up and rename, and two files
	 * never share one. See docs/format.md for the encoding and limits.
	 */
	OVLFS_INODE_PERSISTENT = 1,
};

struct ovlfs;

/*
 * Create an overlay handle for LOWER. Nothing is checked or touched on disk
 * yet (ovlfs_mount() validates). Returns NULL with errno set (EINVAL for an
 * empty or NULL path, ENOMEM). Free with ovlfs_free().
 */
struct ovlfs *ovlfs_new(const char *lower);

/*
 * Setters. Each copies its argument and returns 0, -EINVAL for a NULL or
 * empty value, or -EBUSY once mounted (settings are fixed while mounted).
 */
int ovlfs_set_upper(struct ovlfs *fs, const char *upper);
int ovlfs_set_mount_point(struct ovlfs *fs, const char *mount_point);
int ovlfs_set_inode_mode(struct ovlfs *fs, enum ovlfs_inode_mode mode);
/*
 * Extra FUSE mount options, comma separated as for `-o` (for example
 * "allow_other,default_permissions"). Passed to libfuse as they are.
 */
int ovlfs_set_fuse_options(struct ovlfs *fs, const char *options);
/* Print every FUSE request to stderr (for debugging). */
int ovlfs_set_debug(struct ovlfs *fs, bool debug);

/*
 * Getters. Paths are the resolved defaults when not set explicitly; after a
 * successful mount they are absolute and canonical. Never NULL.
 */
const char *ovlfs_lower(const struct ovlfs *fs);
const char *ovlfs_upper(const struct ovlfs *fs);
const char *ovlfs_mount_point(const struct ovlfs *fs);
bool ovlfs_is_mounted(const struct ovlfs *fs);

/*
 * Validate the three directories, create the upper and the mount point if
 * they are missing, lock the upper against a second mount, mount, and start
 * serving requests on background threads. Returns only once the mount is
 * live (a stat of the mount point is answered by ovlfs).
 *
 * Refused, with nothing created or changed:
 *   -ENOENT/-ENOTDIR  lower missing or not a directory;
 *   -EINVAL           two of lower, upper and mount point are the same or
 *                     one lies inside another;
 *   -ENOTEMPTY        mount point not empty;
 *   -EBUSY            upper in use by another live ovlfs mount, or already
 *                     mounted through this handle;
 *   -EPROTO           upper written in a format this version does not know.
 * A directory ovlfs_mount() created is removed again if the mount fails.
 */
int ovlfs_mount(struct ovlfs *fs);

/*
 * Block until the filesystem is unmounted from outside (umount(8),
 * `ovlfs umount`, fusermount3 -u), then stop the worker threads. Returns 0,
 * or -EINVAL if not mounted. After it returns the handle is unmounted and
 * may be mounted again or freed.
 */
int ovlfs_wait(struct ovlfs *fs);

/*
 * Unmount and stop the worker threads. Open files in the mount are cut off
 * (lazy detach, as `umount -l`). Returns 0, or -EINVAL if not mounted.
 * The upper and the mount point are left in place.
 */
int ovlfs_umount(struct ovlfs *fs);

/*
 * Unmount if still mounted, release every resource and free FS. NULL is a
 * no-op.
 */
void ovlfs_free(struct ovlfs *fs);

/*
 * Human-readable description of the last failure on FS, lowercase, naming
 * the path and the reason; "" if none. Owned by FS.
 */
const char *ovlfs_error(const struct ovlfs *fs);

/* Unmount a live ovlfs mount point from outside the process serving it. */
int ovlfs_unmount_path(const char *mount_point, char *err, unsigned errlen);

#ifdef __cplusplus
}
#endif

#endif /* OVLFS_H */
