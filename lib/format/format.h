/*
 * format/format.h: the on-disk format, the bottom layer of libovlfs.
 *
 * Owns what a layer looks like at rest and how ovlfs reaches it: layer
 * roots and fd helpers (layers.c), markers of both formats (whiteouts,
 * opaque directories, long names: whiteout.c), the checks of a pair of
 * layers and of an upper's format and stamp (upper.c), ovlfs's private
 * xattrs and the copying of an object's data and metadata between layers
 * (meta.c), path identity (paths.c), the process's privileges
 * (userns.c), and messages (log.c). It also defines
 * the handle's settings (struct ovlfs), which every layer reads; only
 * api/ changes them.
 *
 * Depends on nothing else in lib/. Defines no locks: everything here is
 * either pure, or works on fds its caller owns.
 *
 * Conventions of all of lib/: functions return 0 or -errno; names are
 * ovl_<object>_<verb>; nothing here is public API (that is ovlfs.h).
 */
#ifndef OVL_FORMAT_H
#define OVL_FORMAT_H

#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include "ovlfs.h"

#define OVL_WH_PREFIX "."  "wh."
#define OVL_WH_PREFIX_LEN 4
#define OVL_OPAQUE_NAME ".wh..wh..opq"
/* Everything under ".wh..wh." is ovlfs's own namespace (docs/format.md). */
#define OVL_META_PREFIX ".wh..wh."
#define OVL_META_PREFIX_LEN 8
#define OVL_LONGWH_PREFIX ".wh..wh.lng."
#define OVL_TMP_PREFIX ".wh..wh.tmp."

/* Private xattrs that never show through the mount. */
#define OVL_XATTR_ORIGIN_TRUSTED "trusted.ovlfs.origin"
#define OVL_XATTR_ORIGIN_USER "user.ovlfs.origin"
#define OVL_XATTR_FORMAT "user.ovlfs.format"
/* On the upper's root while a volatile mount uses it (docs/containers.md). */
#define OVL_XATTR_VOLATILE "user.ovlfs.volatile"
/* Answered "ovlfs" by a mount's root, whatever its subtype=: see umount. */
#define OVL_XATTR_MOUNT "user.ovlfs.mount"
/*
 * A directory renamed in an OCI-format upper: where its lower part is
 * (docs/format.md); the kernel format uses the kernel's overlay.redirect.
 */
#define OVL_XATTR_REDIRECT_TRUSTED "trusted.ovlfs.redirect"
#define OVL_XATTR_REDIRECT_USER "user.ovlfs.redirect"
/*
 * A regular file of an OCI-format upper whose data is still the lower's
 * (metadata-only copy-up, docs/format.md); the kernel format uses the
 * kernel's overlay.metacopy.
 */
#define OVL_XATTR_METACOPY_TRUSTED "trusted.ovlfs.metacopy"
#define OVL_XATTR_METACOPY_USER "user.ovlfs.metacopy"
/* A directory's times before an interrupted convert changed it. */
#define OVL_XATTR_TIMES "user.ovlfs.times"
#define OVL_MOUNT_MARK "ovlfs"
#define OVL_FORMAT_VERSION 1

#define OVL_ERRLEN 512

struct ovl_node;
struct ovl_fs;
struct ovl_fmt;
struct ovl_file;

/* ===== the handle (struct ovlfs): its settings, set through api/ ===== */

struct ovlfs {
	char *lower;		/* as given, then canonical after mount */
	char *upper;		/* NULL until set or defaulted */
	char *mount_point;
	char *fuse_options;
	enum ovlfs_inode_mode inode_mode;
	bool debug;
	bool no_passthrough;	/* ovlfs_set_passthrough(fs, false) */
	bool no_redirect;	/* ovlfs_set_redirect_dir(fs, false) */
	bool no_metacopy;	/* ovlfs_set_metacopy(fs, false) */
	enum ovlfs_io_uring io_uring;	/* ovlfs_set_io_uring */
	bool read_only;		/* ovlfs_set_read_only: no upper */
	bool no_sync;		/* ovlfs_set_volatile */
	enum ovlfs_volatile_dirty volatile_dirty;
	char **more_lowers;	/* ovlfs_add_lower, top to bottom, below lower */
	unsigned n_more_lowers;
	char *commit_into;	/* ovlfs_set_commit_into, or NULL */
	enum ovlfs_format format;	/* as set; after mount, as used */
	ovlfs_log_fn log_fn;
	void *log_arg;
	char err[OVL_ERRLEN];
	ovlfs_progress_fn progress;
	void *progress_arg;
	bool upper_set;		/* named by the caller, not defaulted */

	/* Set by ovlfs_mount, cleared by unmount; owned by the caller's thread. */
	struct ovl_fs *ofs;
	bool mounted;
	bool created_upper, created_mount_point;
};

/* ===== upper.c: checks of a pair of layers and of an upper, before use ===== */

struct ovl_place;

/*
 * Is NAME the trash of the upper BASE (".BASE.removed-" and six
 * characters): a finished upper renamed away to be deleted (offline's
 * remove_whole); left by a run killed while deleting it.
 */
bool ovl_is_upper_trash(const char *name, const char *base);
/*
 * For calls on an unmounted pair (finish, recover, diff): the canonical
 * lower (an existing, readable directory) and upper, neither the same as
 * nor inside the other. A default upper may be missing (*UPPER_EXISTS
 * false); one the caller named must exist. New strings, or -errno with a
 * message.
 */
int ovl_pair_paths(struct ovlfs *fs, bool target, char **lower, char **upper,
		   bool *upper_exists);
/*
 * Refuse (-EUCLEAN, with a message saying why and what to do, WHAT naming
 * the operation) an upper that a volatile mount left marked: its daemon
 * died or the system crashed, so changes may be lost. An upper in use by
 * a live mount, or one the caller accepted (OVLFS_VOLATILE_DIRTY_KEEP),
 * passes; so does a missing one.
 */
int ovl_refuse_volatile_dirty(struct ovlfs *fs, const char *what,
			      const char *upper);
/* Does the upper's root (directory fd FD) carry the volatile mark? */
bool ovl_volatile_marked(int fd);
/*
 * The format of the upper at FD (*OUT): its stamp, or for an unstamped
 * one the markers found in it, or fs->format, or OCI. Refused (-EPROTO
 * with a message): a newer stamp, markers of both formats or of features
 * ovlfs does not read, a format other than fs->format when that is set.
 * An unstamped upper is stamped if STAMP.
 */
int ovl_check_upper_format(struct ovlfs *fs, int fd, const char *upper,
			   bool stamp, struct ovl_fmt *out);

/*
 * The single checks the above are made of, which a mount (api/) makes of
 * its directories too. Each returns 0 or -errno with a message naming
 * WHAT ("lower", "upper", "mount point") and the path.
 */
/* A lower must exist, be a directory and be readable. */
int ovl_check_lower_at(struct ovlfs *fs, const char *lower);
/* Existing PATH must be a directory; a missing one is fine (created). */
int ovl_check_dir_or_missing(struct ovlfs *fs, const char *what,
			     const char *path, bool *exists);
/*
 * Refuse an upper named by a symlink: a discard or commit would remove
 * the directory and leave the link dangling.
 */
int ovl_check_upper_not_link(struct ovlfs *fs);
/* ovl_path_canonical() of PATH into *OUT (to free). */
int ovl_canonical_of(struct ovlfs *fs, const char *what, const char *path,
		     char **out);
/* ovl_place_get() of PATH into *PL (to free with ovl_place_free()). */
int ovl_place_of(struct ovlfs *fs, const char *what, const char *path,
		 struct ovl_place *pl);
/*
 * Neither of A and B may be the other or lie inside it, by identity: no
 * symlink, ".." or bind mount makes one pass for another (paths.c).
 */
int ovl_check_pair(struct ovlfs *fs, const char *what_a,
		   const struct ovl_place *a, const char *what_b,
		   const struct ovl_place *b);
/* Are A and B the same directory? (No message.) */
bool ovl_same_place(const struct ovl_place *a, const struct ovl_place *b);

/* ===== paths.c: pure path logic (unit tested) ===== */

/* Strip trailing slashes (keeping "/"); returns a new string or NULL. */
char *ovl_path_strip(const char *path);
/* PATH + SUFFIX after stripping trailing slashes; new string or NULL. */
char *ovl_path_with_suffix(const char *path, const char *suffix);
/*
 * Is NAME BASE + SUFFIX + six letters or digits: a name a run made beside
 * BASE (mkdtemp()'s XXXXXX, or six digits)?
 */
bool ovl_is_run_name(const char *name, const char *base, const char *suffix);
/* True if canonical absolute path A equals B or lies inside B. */
bool ovl_path_within(const char *a, const char *b);
/*
 * Canonicalise PATH, which may not exist yet: realpath of the longest
 * existing prefix plus the remaining components (no "." or ".." allowed in
 * them). New string in *OUT or -errno.
 */
int ovl_path_canonical(const char *path, char **out);

/* One line of /proc/self/mountinfo, unescaped. */
struct ovl_mount_ent {
	uint64_t id;		/* the mount id (statx's stx_mnt_id) */
	dev_t fs;		/* the filesystem: its superblock's device */
	char *root;		/* the directory of that filesystem shown */
	char *point;		/* where it is mounted */
	char *fstype;		/* "ext4", "fuse.ovlfs"; "" if not shown */
	char *fsopts;		/* the rest: source, superblock options */
};
/*
 * Call FN for each mount until it returns nonzero. 0, or FN's negative
 * return, or -errno if the table cannot be read.
 */
int ovl_mountinfo_walk(int (*fn)(const struct ovl_mount_ent *m, void *arg),
		       void *arg);

/*
 * A directory (or a path to be created) by identity: its canonical
 * spelling, its inode and its path within its filesystem, which no bind
 * mount, symlink or ".." changes (the reasoning is in paths.c).
 */
struct ovl_place {
	char *path;		/* canonical, as ovl_path_canonical() */
	bool exists;		/* PATH itself exists: DEV and INO are its */
	dev_t dev;		/* else those of its deepest existing parent */
	ino_t ino;
	dev_t fs;		/* the filesystem FSPATH is in */
	char *fspath;		/* path within that filesystem; NULL: unknown */
};
enum ovl_overlap { OVL_APART, OVL_SAME, OVL_A_IN_B, OVL_B_IN_A };
/* PATH (need not exist) into *PL, freed with ovl_place_free(); -errno. */
int ovl_place_get(const char *path, struct ovl_place *pl);
void ovl_place_free(struct ovl_place *pl);
/*
 * Are A and B the same directory, or one inside the other? When only
 * their paths within the filesystem tell (a bind mount), *VIA (to free)
 * is the inner one's spelling under the outer one.
 */
enum ovl_overlap ovl_place_overlap(const struct ovl_place *a,
				   const struct ovl_place *b, char **via);

/* ===== whiteout.c: markers in the upper ===== */

/* SHA-256 (nettle's) of a name too long for ".wh." + it. */
void ovl_sha256(const void *data, size_t len, uint8_t out[32]);

/* Is NAME (a directory entry in the upper) an ovlfs marker or temp? */
static inline bool ovl_is_wh_name(const char *name)
{
	return name[0] == '.' && name[1] == 'w' && name[2] == 'h' &&
	       name[3] == '.';
}
/*
 * Which markers a layer uses (docs/format.md); NULL means the OCI format.
 * Fixed for the life of a mount.
 */
struct ovl_fmt {
	bool kernel;			/* 0/0 devices, overlay.opaque xattr */
	const char *opaque_xattr;	/* kernel: trusted. or user.overlay.opaque */
	const char *redirect_xattr;	/* trusted. or user.overlay.redirect;
					   OCI: trusted. or user.ovlfs.redirect */
	const char *metacopy_xattr;	/* trusted. or user.overlay.metacopy;
					   OCI: trusted. or user.ovlfs.metacopy */
};
/* The markers of the kernel format (KERNEL) or the OCI one, for this process. */
struct ovl_fmt ovl_fmt_of(bool kernel);
static inline bool ovl_is_kernel_wh(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == 0;
}
/*
 * The whiteout name that hides NAME: ".wh.NAME", or for a NAME too long for
 * the prefix, ".wh..wh.lng.<sha256 hex>" whose content is NAME. BUF holds
 * NAME_MAX + 1 bytes. Returns true if the long (hashed) form was used.
 */
bool ovl_wh_name(const char *name, char *buf);
/* Is NAME hidden by a whiteout in directory DIRFD? 1, 0 or -errno. */
int ovl_wh_exists(const struct ovl_fmt *f, int dirfd, const char *name);
/*
 * Create the whiteout for NAME in DIRFD (one already there is success).
 * In the kernel format the whiteout takes NAME itself: an entry there is
 * replaced atomically and 1 returned; else 0 (the caller removes an upper
 * entry of an OCI upper itself, after the marker exists), or -errno.
 */
int ovl_wh_create(const struct ovl_fmt *f, int dirfd, const char *name);
/* Remove the whiteout for NAME from DIRFD if there is one. */
int ovl_wh_remove(const struct ovl_fmt *f, int dirfd, const char *name);
/* Does directory DIRFD carry the opaque marker? 1, 0 or -errno. */
int ovl_opaque_get(const struct ovl_fmt *f, int dirfd);
int ovl_opaque_set(const struct ovl_fmt *f, int dirfd);
/* Remove DIRFD's opaque marker, if any, keeping the directory's times. */
int ovl_opaque_clear(const struct ovl_fmt *f, int dirfd);
/*
 * Redirects: a directory renamed away from its lower counterpart records
 * where that is, as the kernel's overlayfs does with redirect_dir=on: the
 * old name (relative: in the parent's lower) or "/path" from the lower's
 * root. OVL_REDIRECT_MAX bytes at most (the kernel's redirect_max).
 */
#define OVL_REDIRECT_MAX 256
/* Is V (NUL-terminated) a redirect the kernel would follow? */
bool ovl_redirect_valid(const char *v);
/*
 * DIRFD's redirect into BUF (OVL_REDIRECT_MAX + 1 bytes): 1, or 0 if it
 * has none or one that is not valid (ignored, as the kernel does); -errno.
 */
int ovl_redirect_get(const struct ovl_fmt *f, int dirfd, char *buf);
int ovl_redirect_set(const struct ovl_fmt *f, int dirfd, const char *v);
/* Remove DIRFD's redirect, if any. */
int ovl_redirect_clear(const struct ovl_fmt *f, int dirfd);
/*
 * Metacopy: a regular file copied up without its data, which is still the
 * lower's (the kernel's metacopy=on; docs/format.md). Does the object NAME
 * in DIRFD ("": DIRFD itself) carry the marker? 1, 0 or -errno. The kernel
 * writes an empty value (or a digest, with verity): any value counts.
 */
int ovl_metacopy_get(const struct ovl_fmt *f, int dirfd, const char *name);
/*
 * Is NAME in DIRFD a metacopy file, and where is its data? 1 with REDIR
 * (OVL_REDIRECT_MAX + 1 bytes) its redirect, written when a metacopy file
 * is renamed ("/path" from the lower's root, or a name in the lower of
 * its directory), or "" when it has none or one not valid: the data is
 * the lower file at the same path. 0: not a metacopy file; -errno. Read
 * by name, with no fd of the file opened.
 */
int ovl_metacopy_redirect(const struct ovl_fmt *f, int dirfd, const char *name,
			  char *redir);
int ovl_metacopy_set(const struct ovl_fmt *f, int fd);
/* Remove FD's metacopy marker, if any. */
int ovl_metacopy_clear(const struct ovl_fmt *f, int fd);
/*
 * Open directory PATH ("/a/b", an absolute redirect) beneath layer root
 * ROOT, one component at a time, following no symlink: fd or -errno.
 */
int ovl_open_dir_abs(int root, const char *path);
/* Name of a long whiteout's target, read from its content; -errno. */
int ovl_wh_long_target(int dirfd, const char *whname, char *buf);
/*
 * If marker entry DE of upper directory DFD is a whiteout, point *TARGET
 * at the name it hides (into DE, or into BUF of NAME_MAX + 2 bytes), else
 * NULL (opaque marker, debris, not a regular file). 0 or -errno.
 */
struct ovl_dirent;
int ovl_wh_target(int dfd, const struct ovl_dirent *de, char *buf,
		  const char **target);
/*
 * Is entry DE of directory DFD a marker of format F (never shown)? 1 with
 * *TARGET the name a whiteout hides (into DE or BUF, NAME_MAX + 2 bytes)
 * or NULL (opaque marker, temporary, debris); 0 for a real entry; -errno.
 */
int ovl_marker(const struct ovl_fmt *f, int dfd, const struct ovl_dirent *de,
	       char *buf, const char **target);

/* ===== layers.c: the two layers and fd helpers ===== */

struct ovl_layer {
	int root_fd;		/* O_PATH|O_DIRECTORY, never closed while mounted */
	dev_t dev;		/* st_dev of the root */
	int idx;		/* 0 = a lower, 1 = the upper (inode keys) */
	int lock_fd;		/* flock held while mounted, or -1 */
};

/* The kernel's limit on lower layers; ours (node lidx is 16 bits). */
#define OVL_MAX_LOWERS 500

/* "/proc/self/fd/N" for FD into BUF (32 bytes). */
void ovl_proc_path(int fd, char buf[32]);
/*
 * Reopen the object an fd holds with FLAGS. Never pass O_NOFOLLOW: the
 * magic link must be followed, and it leads to the object itself.
 */
int ovl_reopen(int fd, int flags);
/* statx/fstatat helpers on an O_PATH fd. */
int ovl_fstat(int fd, struct stat *st);
/* Open a child CHILD of directory fd DIRFD as O_PATH|O_NOFOLLOW. */
int ovl_open_child(int dirfd, const char *name);
/*
 * Give the object FD holds (an O_TMPFILE or any other fd) the name NAME in
 * DIRFD; EEXIST if taken.
 */
int ovl_link_fd(int fd, int dirfd, const char *name);
/* chmod an fd of any kind (O_PATH too), never following a symlink. */
int ovl_fchmod_any(int fd, mode_t mode);
int ovl_fchmodat_nofollow(int dfd, const char *name, mode_t mode);
/* A fresh temporary name ".wh..wh.tmp.<n>" in BUF (64 bytes). */
void ovl_tmp_name(_Atomic uint64_t *counter, char buf[64]);
/*
 * flock(FD, OP) (LOCK_SH or LOCK_EX), waiting up to 2 s for a mount that is
 * just going away (its daemon lets go a moment after the unmount returns).
 * 0, -EBUSY if it is held still, or -errno.
 */
int ovl_flock_wait(int fd, int op);
/*
 * Remove NAME in DIRFD and everything under it, never following symlinks
 * and never leaving DIRFD's mount: a mount point met (another filesystem,
 * a bind mount) is -EBUSY, and nothing in it is touched.
 */
int ovl_remove_tree(int dirfd, const char *name);
/*
 * The directory holding PATH, opened with FLAGS | O_DIRECTORY | O_CLOEXEC,
 * and in *BASE PATH's last component (pointing into PATH; "" if PATH ends
 * in '/'). The fd, or -errno.
 */
int ovl_open_parent(const char *path, int flags, const char **base);
/*
 * What killed runs left beside a path (flatten's DEST.partial-XXXXXX, a
 * finished upper's .UPPER.removed-NNNNNN): the entries of directory DFD
 * that MATCH(name, BASE) takes. Each run holds an flock on its own while
 * it lives, so with SWEEP each one that can be locked is a dead run's and
 * is removed (ovl_remove_tree: never across a mount). Best effort: what
 * cannot go stays. Returns how many matched.
 */
size_t ovl_dead_runs(int dfd, bool (*match)(const char *name, const char *base),
		     const char *base, bool sweep);
/*
 * Is directory FD, or anything under it, a mount point (in this mount
 * namespace)? 1 with its path in *WHERE (to free), 0, or -errno.
 */
int ovl_find_mount_under(int fd, char **where);
/* Read a whole directory (names only, '.'/'..' skipped). */
struct ovl_dirlist {
	struct ovl_dirent {
		char *name;
		ino_t ino;
		unsigned char type;
	} *ents;
	size_t n, cap;
};
/*
 * Room in array *V (*CAP elements of SIZE bytes) for element N: *CAP
 * doubles (from FIRST) until it holds N. 0, or -ENOMEM with *V as it was.
 */
int ovl_grow(void **v, size_t *cap, size_t n, size_t size, size_t first);
int ovl_dirlist_read(int dirfd, struct ovl_dirlist *dl);
void ovl_dirlist_free(struct ovl_dirlist *dl);
/*
 * The hard-linked files a tree walk met (flatten, tar export): the first
 * path of each (dev, ino), so later names become links to it.
 */
struct ovl_linkmap {
	struct ovl_linkent {
		dev_t dev;
		ino_t ino;
		char *path;		/* NULL: a free slot */
		unsigned seen;		/* times met, the first included */
	} *v;
	size_t n, cap;
};
/*
 * *FIRST: the path (DEV, INO) was first met under, or NULL if this is the
 * first time, PATH then being recorded for it. 0 or -ENOMEM.
 */
int ovl_linkmap_first(struct ovl_linkmap *m, dev_t dev, ino_t ino,
		      const char *path, const char **first);
/* How many times (DEV, INO) was met: 0 if never. */
unsigned ovl_linkmap_seen(const struct ovl_linkmap *m, dev_t dev, ino_t ino);
void ovl_linkmap_free(struct ovl_linkmap *m);

/* ===== meta.c: data, metadata and xattrs of layer objects ===== */

/* Is NAME one of ovlfs's private xattrs (hidden from users)? */
bool ovl_xattr_is_private(const char *name);
/* Raw xattr calls on an O_PATH fd (via /proc/self/fd). */
ssize_t ovl_fd_getxattr(int fd, const char *name, void *buf, size_t size);
ssize_t ovl_fd_listxattr(int fd, char *buf, size_t size);
/* getxattr of CHILD of directory fd DIRFD, not following a symlink. */
ssize_t ovl_at_getxattr(int dirfd, const char *child, const char *name,
			void *buf, size_t size);
int ovl_fd_setxattr(int fd, const char *name, const void *v, size_t size,
		    int flags);
int ovl_fd_removexattr(int fd, const char *name);
/* Copy file data SRC to DST (regular fds), keeping holes. */
int ovl_copy_data(int src, int dst, off_t size);
/*
 * Copy metadata (owner, mode, xattrs, times) of SRCFD to DSTFD (both
 * O_PATH), as done at copy-up; exported for commit.
 */
int ovl_copy_meta(bool is_root, int srcfd, int dstfd,
		  const struct stat *st, bool times);
/*
 * The same for commit: a file capability or ACL that DSTFD cannot take is
 * an error, not skipped, and the name of an xattr that could not be set
 * goes to FAILED (XATTR_NAME_MAX + 1 bytes).
 */
int ovl_copy_meta_strict(bool is_root, int srcfd, int dstfd,
			 const struct stat *st, bool times, char *failed);
int ovl_copy_xattrs(bool is_root, int srcfd, int dstfd);

/* ===== userns.c: what this process may do ===== */

/* Is this the initial user namespace? */
bool ovl_init_userns(void);
/* CAP_SYS_ADMIN in the initial user namespace: backing files, trusted.*. */
bool ovl_global_sys_admin(void);
/* In a user namespace whose mount namespace it does not own (no mount(2)). */
bool ovl_userns_without_mntns(void);

/* ===== log.c: messages, and the error of a failed call ===== */

/*
 * One line (control bytes escaped) to fs->log_fn, or "ovlfs: MSG" to
 * stderr in one write. Any thread, any lock held but a caller's own:
 * the application's function runs inside.
 */
void ovl_log(struct ovlfs *fs, enum ovlfs_log_level level, const char *fmt,
	     ...) __attribute__((format(printf, 3, 4)));
/* Format an error into fs->err; returns ERR (negative errno) for chaining. */
int ovl_set_error(struct ovlfs *fs, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif /* OVL_FORMAT_H */
