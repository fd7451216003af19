/*
 * offline/offline.h: operations on layers that are not mounted, above
 * format/: diff (diff.c), commit in place, atomic commit with its journal
 * and recovery, discard (finalize.c), convert (convert.c), and OCI tar
 * export and apply (tar.c). They use format/ only: never the live
 * filesystem (fs/) nor FUSE. A layer they work on is locked against a
 * mount (flock on its root) for the whole operation.
 *
 * Defines no locks.
 */
#ifndef OVL_OFFLINE_H
#define OVL_OFFLINE_H

#include "format/format.h"

/* ===== finalize.c ===== */

/*
 * Recover an interrupted atomic commit of LOWER (canonical) if there is
 * one; UPPER (may be NULL) is removed only if the journal names it.
 * 1 if something was recovered, 0 if not, -errno.
 */
int ovl_recover_lower(struct ovlfs *fs, const char *lower, const char *upper);

/*
 * -EBUSY with a message "WHAT: interrupted atomic commit in LOWER: run
 * `ovlfs recover ...` first" if LOWER (canonical) holds one, else 0.
 */
int ovl_refuse_pending_commit(struct ovlfs *fs, const char *what,
			      const char *lower, const char *upper);

/* ===== tar.c: what OCI layer export and apply share ===== */

struct archive;
struct archive_entry;

/* What apply did to a path. */
enum {
	OVL_R_ENTRY = 1 << 0,	/* an entry of this tar made it */
	OVL_R_DIR = 1 << 1,	/* ... and it is a directory */
	OVL_R_META = 1 << 2,	/* final mode and times below, from the tar */
	OVL_R_SAVED = 1 << 3,	/* times below, from before we touched it */
	OVL_R_LINK = 1 << 4,	/* (check pass) the entry is a symlink */
};

struct ovl_trec {
	char *key;
	unsigned flags;
	mode_t mode;
	struct timespec atime, mtime;
};

/* A small table keyed by string: what apply did, by relative path. */
struct ovl_tmap {
	struct ovl_trec *recs;	/* open addressing; key NULL = free */
	size_t n, cap;
};

/* The record for KEY, or NULL. */
struct ovl_trec *ovl_tmap_find(const struct ovl_tmap *m, const char *key);
/* The record for KEY, added (zeroed) if missing. */
int ovl_tmap_get(struct ovl_tmap *m, const char *key, struct ovl_trec **out);
void ovl_tmap_free(struct ovl_tmap *m);
/* Not ours to carry over: ovlfs's bookkeeping and the kernel's markers. */
bool ovl_tar_skip_xattr(const char *name);
/*
 * The format of the upper at FD, as a mount reads it (docs/format.md),
 * also as the enum the walkers test. 0 or -errno with a message.
 */
int ovl_tar_upper_format(struct ovlfs *fs, int fd, const char *upper,
			 struct ovl_fmt *mf, enum ovlfs_format *fmt);
/*
 * Open directory PATH (WHAT: "upper", "lower", for messages) into *OUT,
 * locked against a mount (LOCK_EX). 0 or -errno with a message.
 */
int ovl_tar_open_locked(struct ovlfs *fs, const char *what, const char *path,
			int *out);
/*
 * A name for FD in messages: the path it was opened by, if it has one
 * (a tar given as a file), else what /proc says ("pipe:[...]").
 */
void ovl_tar_fd_name(int fd, char *buf, size_t len);
/*
 * Normalise tar path IN into OUT (PATH_MAX): relative, no "." or empty
 * components, no trailing slash; "" is the root. -EINVAL for an absolute
 * path or a ".." component.
 */
int ovl_tar_norm_path(const char *in, char *out);

/* ===== export.c: an upper as an OCI layer tar (libarchive write side) ===== */

/*
 * Write UPPER (canonical; UPPER_EXISTS false: an empty layer) as an OCI
 * layer tar to FD. The caller has made sure nothing has it mounted and
 * no commit is pending. 0 or -errno with a message.
 */
int ovl_export_tar(struct ovlfs *fs, int fd, const char *upper,
		   bool upper_exists);

/* ===== apply.c: an OCI layer tar applied (libarchive read side) ===== */

/* One apply: shared by apply.c (the tar) and apply_entry.c (the upper). */
struct ovl_apply {
	struct ovlfs *fs;
	const char *upper;		/* canonical, for messages */
	int lower_fd;			/* O_PATH root of the lower, or -1 */
	int upper_fd;			/* O_RDONLY|O_DIRECTORY, locked */
	enum ovlfs_format fmt;
	struct ovl_fmt mfmt;		/* the same, for whiteout.c */
	bool is_root;
	_Atomic uint64_t tmp_counter;	/* for ovl_tmp_name() */
	struct ovl_tmap recs;		/* relative path -> what we did */
	const char *entry;		/* the entry being applied */
	char *buf;			/* TAR_BUFSZ */
	bool stamped;			/* the upper's format is on its root */
	char tar[PATH_MAX];		/* what the tar comes from, for messages */
};

#define OVL_KERNEL_DEV_WHY \
	"a 0/0 character device, which the kernel format of the upper would read as a whiteout"

/*
 * Apply the tar on FD to UPPER, over LOWER. CHECK: read it through first
 * (check_tar), refusing before anything is written; CREATE: UPPER does not
 * exist yet, and is made (as a mount makes it) only once the check passed.
 */
int ovl_apply_tar(struct ovlfs *fs, int fd, const char *lower,
		  const char *upper, bool check, bool create);
/*
 * OVLFS_APPLY_COMMIT, the apply: into a fresh OCI upper next to LOWER,
 * made for it; *UPPER (to free) is where, for the commit that follows.
 * 0 or -errno with a message (nothing left behind).
 */
int ovl_apply_tar_next_to(struct ovlfs *fs, int fd, const char *lower,
			  char **upper);

/* ===== apply_entry.c: what one entry of the tar does to the upper ===== */

/*
 * ERR with "apply to UPPER: entry "PATH": WHY" (WHY NULL: ERR's text)
 * as the error; returns ERR.
 */
int ovl_apply_fail(struct ovl_apply *ap, int err, const char *why);
/* Mark the upper directory DFD opaque, in the upper's format. */
int ovl_apply_set_opaque(struct ovl_apply *ap, int dfd);
/*
 * Open directory REL of the upper (O_RDONLY), one component at a time,
 * never following a symlink. With CREATE, directories missing on the way
 * are made (implicit_dir) and a kernel whiteout in the way is replaced.
 */
int ovl_apply_walk_dir(struct ovl_apply *ap, const char *rel, bool create,
		       int *out);
/*
 * Under opaque directory DFD (REL), remove what older layers put there:
 * everything but this tar's own entries (and, in those that are
 * directories, the same again).
 */
int ovl_apply_prune(struct ovl_apply *ap, int dfd, const char *rel);
/* Whiteout of NAME in directory DFD (REL) of the upper. */
int ovl_apply_whiteout(struct ovl_apply *ap, int dfd, const char *rel,
		       const char *name);
/* A non-marker entry E at NAME of directory DFD (REL), replacing. */
int ovl_apply_entry(struct ovl_apply *ap, struct archive *a, int dfd,
		    const char *rel, const char *name, struct archive_entry *e);
/* The upper root itself ("./" in the tar): metadata only. */
int ovl_apply_root(struct ovl_apply *ap, struct archive_entry *e);

#endif /* OVL_OFFLINE_H */
