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
#include <stdint.h>
#include <sys/types.h>

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
 * FUSE passthrough (on by default): files open on their upper copy are
 * read and written by the kernel directly, with no round trip through
 * ovlfs. Used only when the kernel offers it (Linux 6.9+) and the process
 * has CAP_SYS_ADMIN; otherwise, or after any failure to set it up, every
 * file takes the ordinary path. Same return values as the setters above.
 */
int ovlfs_set_passthrough(struct ovlfs *fs, bool enable);
/*
 * Rename of directories with a lower part (on by default): by a redirect
 * (the kernel overlayfs's redirect_dir=on, docs/format.md), in O(1). Off:
 * their whole tree is copied into the upper first, so the upper holds no
 * redirect (for readers that do not follow them: redirect_dir=off).
 * Redirects already in the upper are followed either way. Same return
 * values as the setters above.
 */
int ovlfs_set_redirect_dir(struct ovlfs *fs, bool enable);
/*
 * Metadata-only copy-up (on by default; the kernel overlayfs's
 * metacopy=on, docs/format.md): a chmod, chown, utimes or xattr change of
 * a lower regular file with one link copies up its metadata alone, with a
 * marker saying its data is still the lower's; the data follows on the
 * first open for writing, truncate or fallocate. Off: such changes copy
 * the whole file, as before. A kernel-format upper with user.overlay.*
 * markers (rootless) never gets metacopy files, whatever this says: the
 * kernel refuses metacopy with userxattr. Metacopy files already in an
 * upper are read either way. Same return values as the setters above.
 */
int ovlfs_set_metacopy(struct ovlfs *fs, bool enable);

/* How requests travel between the kernel and ovlfs. */
enum ovlfs_io_uring {
	/* FUSE-over-io_uring when the kernel offers it, else /dev/fuse. */
	OVLFS_IO_URING_AUTO = 0,
	/* FUSE-over-io_uring or no mount. */
	OVLFS_IO_URING_ON,
	/* /dev/fuse only. */
	OVLFS_IO_URING_OFF,
};
/*
 * The transport (default OVLFS_IO_URING_AUTO). FUSE-over-io_uring (Linux
 * 6.14+) hands each request to a thread of the CPU that made it, through
 * per-CPU rings, saving a system call and usually a cross-CPU wakeup per
 * request (docs/performance.md). The kernel offers it only while the fuse
 * module's parameter /sys/module/fuse/parameters/enable_uring is Y (off
 * by default; ovlfs never changes it). With AUTO, ovlfs_mount() falls back
 * to /dev/fuse when it is not available and says so in the log (level
 * info, as it says which transport runs); with ON it fails instead
 * (-EOPNOTSUPP, the error naming the reason). Same return values as the
 * setters above; -EINVAL for an unknown MODE.
 */
int ovlfs_set_io_uring(struct ovlfs *fs, enum ovlfs_io_uring mode);
/*
 * Volatile mount (the kernel overlayfs's `volatile`): fsync, fdatasync and
 * fsyncdir through the mount succeed without syncing anything, and
 * O_SYNC/O_DSYNC are dropped from the upper's files, so no sync reaches
 * the layers (a file opened O_SYNC is kept off passthrough, whose writes
 * the kernel would sync). After a crash or a killed daemon the upper may
 * have lost changes, so the mount marks its upper (the private xattr
 * `user.ovlfs.volatile` on its root) and a clean unmount removes the
 * mark; an upper still marked is refused by the next mount (-EUCLEAN,
 * see ovlfs_set_volatile_dirty), and by commit, diff, export, flatten
 * and convert, until it is discarded or accepted. A crash soon after a
 * clean unmount may still lose what had not reached the disk yet: run
 * sync(1) first where that matters. Same return values as the setters
 * above.
 */
int ovlfs_set_volatile(struct ovlfs *fs, bool enable);

/* What ovlfs_mount() does with an upper a volatile mount left marked. */
enum ovlfs_volatile_dirty {
	/* Refuse the mount with -EUCLEAN, the message saying why (default). */
	OVLFS_VOLATILE_DIRTY_REFUSE = 0,
	/* Empty the upper (as OVLFS_DISCARD, keeping its root) and mount. */
	OVLFS_VOLATILE_DIRTY_DISCARD = 1,
	/*
	 * Take the upper as it is (the caller knows nothing was lost: the
	 * system did not crash), as removing the kernel's
	 * work/incompat/volatile does.
	 */
	OVLFS_VOLATILE_DIRTY_KEEP = 2,
};
int ovlfs_set_volatile_dirty(struct ovlfs *fs, enum ovlfs_volatile_dirty what);

/* ---------------------------------------------------------------------
 * Layers and on-disk formats.
 * --------------------------------------------------------------------- */

/*
 * Add LOWER as one more read-only layer beneath those given so far
 * (ovlfs_new()'s is the topmost), as the kernel's `lowerdir=A:B:C` lists
 * them left to right. Whiteouts and opaque directories of a layer hide
 * what the layers beneath it hold, as in the kernel's overlayfs. Defaults
 * (upper, mount point) still derive from the topmost lower. Same return
 * values as the setters above.
 */
int ovlfs_add_lower(struct ovlfs *fs, const char *lower);
/* How many lower layers, and the Ith (0 = topmost); NULL past the end. */
unsigned ovlfs_lower_count(const struct ovlfs *fs);
const char *ovlfs_lower_at(const struct ovlfs *fs, unsigned i);

/*
 * Mount with no upper at all: a read-only merged view of the lowers
 * (every change fails with EROFS). The upper setting is ignored.
 */
int ovlfs_set_read_only(struct ovlfs *fs, bool read_only);

/* How whiteouts and opaque directories are written (docs/format.md). */
enum ovlfs_format {
	/* The upper's own (stamped or recognised) format, else OCI. */
	OVLFS_FORMAT_AUTO = 0,
	/* OCI image layers: `.wh.NAME` files and `.wh..wh..opq`. */
	OVLFS_FORMAT_OCI = 1,
	/*
	 * The kernel's overlayfs: whiteouts are 0/0 character devices,
	 * opaque directories carry trusted.overlay.opaque="y" (as root) or
	 * user.overlay.opaque="y" (otherwise, the kernel's `userxattr`).
	 */
	OVLFS_FORMAT_KERNEL = 2,
};
/*
 * The format of the upper and of every lower layer's markers. AUTO (the
 * default) takes the upper's; asking for the other format than an
 * existing upper's is refused with -EPROTO at mount (ovlfs_convert()
 * rewrites an upper).
 */
int ovlfs_set_format(struct ovlfs *fs, enum ovlfs_format format);
/* The format in use (after a mount), or the one set (AUTO if none). */
enum ovlfs_format ovlfs_format(const struct ovlfs *fs);

/*
 * Rewrite the upper's markers in format TO (the upper must not be
 * mounted). Stamps the upper with TO. 0 or -errno.
 */
int ovlfs_convert(struct ovlfs *fs, enum ovlfs_format to);

/*
 * Which lower OVLFS_COMMIT and ovlfs_diff() work on when there are
 * several: LOWER must be one of them (compared canonically). With one
 * lower it is that one; with several and none named, commit and diff
 * refuse with -EINVAL.
 */
int ovlfs_set_commit_into(struct ovlfs *fs, const char *lower);

/*
 * Write the merged view of every layer (and the upper, if any) to DEST,
 * a directory that must not exist yet (created, with the root's
 * metadata). Files, links, specials, owners, modes, times and xattrs are
 * copied; hard links between files of one layer stay hard links. A
 * mounted handle is read at its mount point (as it is at that moment);
 * an unmounted one through a private read-only mount next to DEST, so it
 * needs what a mount needs (/dev/fuse, root or fusermount3). DEST may not
 * lie in a layer; a DEST that cannot be completed is removed again.
 * 0 or -errno (-EEXIST if DEST exists).
 */
int ovlfs_flatten(struct ovlfs *fs, const char *dest);

/* ---------------------------------------------------------------------
 * OCI image-layer tarballs (the changeset format, with whiteouts).
 * --------------------------------------------------------------------- */

/*
 * Write the upper as an OCI image-layer tar stream to FD (not closed):
 * entries in path order, whiteouts as `.wh.NAME`, opaque directories as
 * `.wh..wh..opq`, whatever the upper's own format; ovlfs's private names
 * and xattrs are left out. Works on an unmounted pair. 0 or -errno.
 */
int ovlfs_export_tar(struct ovlfs *fs, int fd);

/* Flags of ovlfs_apply_tar(). */
#define OVLFS_APPLY_COMMIT 0x1	/* apply to the lower, not the upper */
/*
 * Read an OCI image-layer tar stream from FD (not closed) and apply it on
 * top of what the upper already holds, in the upper's format; with
 * OVLFS_APPLY_COMMIT apply it to the lower instead (as a commit would).
 * Refuses entries that would escape the directory (absolute paths, "..",
 * links pointing outside). The pair must not be mounted. 0 or -errno.
 */
int ovlfs_apply_tar(struct ovlfs *fs, int fd, unsigned flags);

/* ---------------------------------------------------------------------
 * Logging of what happens while mounted (copy-up failures, fallbacks).
 * --------------------------------------------------------------------- */

/* Severity, numerically the syslog(3) priorities. */
enum ovlfs_log_level {
	OVLFS_LOG_ERR = 3,
	OVLFS_LOG_WARNING = 4,
	OVLFS_LOG_INFO = 6,
	OVLFS_LOG_DEBUG = 7,
};
/*
 * Called with one line (no newline) per event, from any of the serving
 * threads, possibly at once: FN must be thread-safe. Without one set,
 * errors and warnings go to stderr as "ovlfs: MSG" (info and debug lines
 * only to a function set here).
 */
typedef void (*ovlfs_log_fn)(enum ovlfs_log_level level, const char *msg,
			     void *arg);
int ovlfs_set_log(struct ovlfs *fs, ovlfs_log_fn fn, void *arg);

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
 *                     one lies inside another (by identity: through a
 *                     bind mount, a symlink or ".." too), or the upper is
 *                     named by a symlink;
 *   -EROFS            the upper is on a read-only filesystem;
 *   -ENOTEMPTY        mount point not empty;
 *   -EBUSY            upper in use by another live ovlfs mount, or already
 *                     mounted through this handle;
 *   -EPROTO           upper written in a format this version does not know;
 *   -EUCLEAN          upper left by a volatile mount that was not cleanly
 *                     unmounted (see ovlfs_set_volatile_dirty).
 * A directory ovlfs_mount() created is removed again if the mount fails.
 */
int ovlfs_mount(struct ovlfs *fs);

/*
 * Is PATH (which need not exist) apart from FS's layers and mount point:
 * not one of them, not inside one, not holding one? Decided by identity,
 * as ovlfs_mount() decides it for the layers. For a file written while
 * mounted (a log) or a directory a mount line names (a workdir). 0, or
 * -EINVAL with ovlfs_error() naming WHAT, PATH and what it overlaps.
 */
int ovlfs_check_apart(struct ovlfs *fs, const char *what, const char *path);

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

/*
 * Unmount a live ovlfs mount point from outside the process serving it
 * (also one whose daemon died). Returns once the serving process has let
 * go of the upper, or -errno with a message in ERR (ERRLEN bytes).
 */
int ovlfs_unmount_path(const char *mount_point, char *err, unsigned errlen);

/* ---------------------------------------------------------------------
 * Finalization: what happens to the changes once the overlay is done.
 * These calls work on a mounted handle (they unmount first) and equally
 * on a handle that was never mounted, i.e. a lower+upper pair left by an
 * earlier mount (set the upper as for ovlfs_mount). They refuse with
 * -EBUSY while any ovlfs mount uses the upper (or, to commit, the lower).
 * --------------------------------------------------------------------- */

enum ovlfs_action {
	/* Keep the upper; a later mount of the pair shows the changes again. */
	OVLFS_PRESERVE = 0,
	/* Delete the upper (whatever its modes); the lower is untouched. */
	OVLFS_DISCARD = 1,
	/*
	 * Merge the upper into the lower: whiteouts delete, opaque directories
	 * replace, new and changed entries are written with their metadata;
	 * files whose content already matches are not rewritten. The upper is
	 * removed only after everything succeeded; on failure it stays, and
	 * the merged view of lower+upper is still what it was, so the commit
	 * can be retried. Not atomic: a crash may leave part of it applied.
	 */
	OVLFS_COMMIT = 2,
	/*
	 * As OVLFS_COMMIT, all or nothing: whatever instant a crash or power
	 * cut strikes, recovery (ovlfs_recover(), or automatically the next
	 * mount or commit of the lower) yields the old lower or the fully
	 * committed one, never a mix; the upper survives until the new lower
	 * is durable. Costs grow with the size of the change, not of the
	 * lower. See docs/commit.md.
	 */
	OVLFS_COMMIT_ATOMIC = 3,
};

/*
 * Finish with the overlay: unmount if mounted, then apply ACTION. In every
 * case the mount point is removed if ovlfs created it and it is empty.
 * Returns 0 or -errno (ovlfs_error() says what failed, naming the path).
 */
int ovlfs_finish(struct ovlfs *fs, enum ovlfs_action action);

/*
 * Finish or roll back an interrupted OVLFS_COMMIT_ATOMIC of the lower:
 * rolled forward if the commit had reached its commit point, else rolled
 * back. Returns 1 if there was something to recover, 0 if not, or -errno.
 */
int ovlfs_recover(struct ovlfs *fs);

/* Progress of a long finalization, reported at most ~10 times a second. */
struct ovlfs_progress {
	const char *phase;		/* "commit", "discard", ... */
	uint64_t entries_done, entries_total;
	uint64_t bytes_done, bytes_total;
};
typedef void (*ovlfs_progress_fn)(const struct ovlfs_progress *p, void *arg);
/* Call FN (NULL: none) during ovlfs_finish and ovlfs_recover. */
int ovlfs_set_progress(struct ovlfs *fs, ovlfs_progress_fn fn, void *arg);

/* ---------------------------------------------------------------------
 * Diff: what committing the upper would change in the lower.
 * --------------------------------------------------------------------- */

enum ovlfs_change {
	OVLFS_ADDED = 'A',
	OVLFS_MODIFIED = 'M',
	OVLFS_DELETED = 'D',
	OVLFS_RENAMED = 'R',	/* a directory, from another path (a redirect) */
};

/* For OVLFS_MODIFIED: what differs (several bits may be set). */
#define OVLFS_DIFF_CONTENT 0x1	/* data, or a symlink's target, or rdev */
#define OVLFS_DIFF_TYPE 0x2	/* e.g. a file replaced by a directory */
#define OVLFS_DIFF_MODE 0x4
#define OVLFS_DIFF_OWNER 0x8
#define OVLFS_DIFF_MTIME 0x10
#define OVLFS_DIFF_XATTR 0x20

struct ovlfs_diff_entry {
	const char *path;	/* "/etc/hostname": bytes, may be non-UTF-8 */
	enum ovlfs_change change;
	unsigned what;		/* OVLFS_DIFF_* for OVLFS_MODIFIED, _RENAMED */
	mode_t mode;		/* new type and mode (old for deletions) */
	uint64_t size;		/* new size (old for deletions) */
	const char *from;	/* OVLFS_RENAMED: the old path, else NULL */
};

/*
 * Call FN for every path the commit would change, in path order (bytewise,
 * a directory before its contents). A deleted or added directory is
 * reported, and so is everything inside it. A directory renamed through
 * the mount is one OVLFS_RENAMED (path: the new one, from: the old one;
 * what: OVLFS_DIFF_* bits of what else differs), followed by the changes
 * inside it relative to the old one; what it replaces at its new path, if
 * anything, is reported deleted before it. FN returns 0 to go on, or
 * non-zero to stop (ovlfs_diff then returns that value). The entry and its
 * strings are valid only during the call. Works mounted or not.
 */
typedef int (*ovlfs_diff_fn)(const struct ovlfs_diff_entry *e, void *arg);
int ovlfs_diff(struct ovlfs *fs, ovlfs_diff_fn fn, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* OVLFS_H */
