/*
 * offline/offline.h: operations on layers that are not mounted, above
 * format/: diff (diff.c), commit in place, atomic commit with its journal
 * and recovery, discard (finish.c, commit.c, journal.c, atomic.c),
 * convert (convert.c), and OCI tar
 * export and apply (tar.c). They use format/ only: never the live
 * filesystem (fs/) nor FUSE. A layer they work on is locked against a
 * mount (flock on its root) for the whole operation.
 *
 * Defines no locks.
 */
#ifndef OVL_OFFLINE_H
#define OVL_OFFLINE_H

#include "format/format.h"

/* ===== finish.c: commit and discard: shared state, locking, the entry ===== */

/*
 * The lower's work directory of an atomic commit (stage/, trash/, the
 * journal: docs/commit.md), and the first line of a journal.
 */
#define OVL_COMMIT_WORKDIR ".wh..wh.ovlfs-commit"
#define OVL_JOURNAL_MAGIC "ovlfs-journal 1"
/*
 * The lower's work directory of a plain commit's renames (rename.c): the
 * plan, and the renamed directories between their two places.
 */
#define OVL_RENAME_WORKDIR ".wh..wh.ovlfs-rename"

/* A renamed directory, committed as one rename in the lower (rename.c). */
struct fin_rename {
	char *src, *dst;	/* lower paths before and after, relative */
	int src_fd;		/* the source, O_RDONLY (-1: from a plan) */
	dev_t dev;		/* its identity */
	ino_t ino;
	unsigned long n;	/* its name in stage/ or the work directory */
};

/* Where a hard-linked upper file went, so its other names follow it. */
struct placed {
	dev_t dev;
	ino_t ino;
	int fd;			/* O_PATH of the placed or staged object */
};

/*
 * On the upper's root while a plain commit has temporary copies in the
 * lower: a run that finds it knows a killed one may have left some (and
 * removes them from the lower directories it walks).
 */
#define XATTR_COMMITTING "user.ovlfs.commit"

/* One commit, discard or recovery (finish.c, commit.c, journal.c, atomic.c). */
struct fin {
	struct ovlfs *fs;
	bool is_root;		/* euid 0: metadata copies may chown */
	_Atomic uint64_t tmp_counter;	/* ovl_tmp_name() in the lower */
	struct ovl_fmt fmt;	/* the upper's markers */
	const char *lower, *upper;	/* canonical paths, for messages */
	int lower_fd, upper_fd;	/* O_RDONLY|O_DIRECTORY roots */
	bool same_fs, atomic;
	bool atomic_or_commit;	/* a commit, not a discard */
	bool retry;		/* a killed plain commit may have left debris */
	bool marked;		/* this run set XATTR_COMMITTING */
	/*
	 * The walk is under an opaque upper directory whose marker stays
	 * (atomic; plain: frozen, one it could not unmark, read-only without
	 * privilege): a directory there shows nothing of the lower's, but a
	 * renamed one, and a plain commit moves nothing out of the upper.
	 */
	bool opaque_above;
	/* Upper files with several links: how many of their names it holds. */
	struct ovl_linkmap names;

	/* commit-atomic */
	int work_fd, stage_fd, trash_fd;
	char *journal;		/* operations so far, text */
	size_t jlen, jcap;
	unsigned long next_op;

	struct placed *placed;
	size_t nplaced, placed_cap;

	/* renamed directories; the walk maps them (atomic) while mapped */
	struct fin_rename *renames;
	size_t nrenames, renames_cap;
	bool mapped;

	/* the path being worked on, relative to the roots, for messages */
	char path[PATH_MAX];
	size_t plen;

	struct ovlfs_progress prog;
	struct timespec last_report;
};

/*
 * Carry out ACTION (preserve, discard, commit, commit-atomic) on LOWER and
 * UPPER, canonical and checked (ovl_pair_paths): locks both, recovers an
 * interrupted atomic commit of LOWER first, reports progress to fs. 0 or
 * -errno with a message in fs->err.
 */
int ovl_finish(struct ovlfs *fs, enum ovlfs_action action, const char *lower,
	       const char *upper);

/* F for FS: no fds, no state; clears fs->err. */
void fin_init(struct fin *f, struct ovlfs *fs);
/* Close F's fds and free what it holds (F's paths are the caller's). */
void fin_done(struct fin *f);
/* Set the error "WHAT: <lower>/<path>: <reason>"; returns ERR. */
int fin_fail(struct fin *f, int err, const char *what);
/* Append NAME to f->path (*SAVED: the length before); -ENAMETOOLONG. */
int fin_path_push(struct fin *f, const char *name, size_t *saved);
void fin_path_pop(struct fin *f, size_t saved);
/* Progress to fs->progress: at most every 100 ms, unless FINAL. */
void fin_report(struct fin *f, bool final);
/* One entry (of BYTES bytes) done. */
void fin_tick(struct fin *f, uint64_t bytes);
/*
 * Entries and file bytes under directory DFD, for progress totals; in NAMES
 * (if given) the names of each multiply-linked file.
 */
void fin_count_tree(int dfd, uint64_t *entries, uint64_t *bytes,
		    struct ovl_linkmap *names);
/* Open directory DFD/NAME O_RDONLY, not following a symlink; fd or -errno. */
int fin_open_dir_at(int dfd, const char *name);
/*
 * Entry DE of upper directory UD opened as fin_open_dir_at when it is a
 * directory to walk into; -ENOTDIR for a marker or anything else.
 */
int fin_open_subdir(int ud, const struct ovl_dirent *de);
/* Remove ovlfs's private xattrs (the origin) from FD. */
void fin_strip_private(int fd);
/*
 * Make DST (any fd) carry SRC's owner, mode, xattrs and times exactly; the
 * times from TIMES instead when given (SRC's own changed since).
 */
int fin_sync_meta_times(struct fin *f, int srcfd, int dstfd,
			const struct stat *times);
int fin_sync_meta(struct fin *f, int srcfd, int dstfd);
/* Open an existing layer root for finalizing; *FD is O_RDONLY|O_DIRECTORY. */
int fin_open_root(struct fin *f, const char *what, const char *path,
		  int *fdp);
/* Remove the upper directory itself, making sure it is the one we hold. */
int fin_remove_upper(struct fin *f);
/* Remove what dead runs left of the upper UPPER (canonical) when they
 * were killed deleting it (.UPPER.removed-NNNNNN beside it). */
void fin_sweep_trash(const char *upper);
/* Open and lock the lower for F, recovering an interrupted commit. */
int fin_take_lower(struct fin *f);
/* Open and lock the upper; 1 if there is none (nothing to do). */
int fin_take_upper(struct fin *f);

/* ===== commit.c: the commit walk of the upper over the lower ===== */

/*
 * Build a copy of upper entry UD/NAME (stat ST, not a directory) as
 * DSTDIR/DST: a hard link of the same upper inode's earlier copy, a hard
 * link of the upper file itself (LINK_UPPER, same filesystem), or a copy
 * with all its metadata.
 */
int fin_copy_object(struct fin *f, int ud, const char *name,
		    const struct stat *st, int dstdir, const char *dst,
		    bool link_upper);
/*
 * Commit upper directory UD into lower LD (f->path is theirs): in place,
 * or into the stage and the journal if f->atomic.
 */
int fin_commit_dir(struct fin *f, int ud, int ld);
/* Commit F's upper into its lower, in place or ATOMIC; 0 or -errno. */
int fin_commit(struct fin *f, bool atomic);

/*
 * ===== redirect.c: renamed directories made plain before a commit =====
 * (only where rename.c cannot rename: a source on another filesystem)
 */

/*
 * Give every upper directory that shows lower entries from elsewhere (a
 * renamed one, by its redirect, and the merged ones under it) copies of
 * those entries, then make it opaque without a redirect: the same merged
 * view, which the commit walk then reads path by path. 0 or -errno with
 * a message.
 */
int fin_plain_redirects(struct fin *f);

/* ===== rename.c: renamed directories as renames in the lower ===== */

/*
 * Find the upper's renamed directories (redirects) and where their lower
 * parts are, into f->renames. 0 or -errno with a message (a redirect
 * whose lower part is missing is refused, naming it).
 */
int fin_renames_plan(struct fin *f);
/*
 * Can every rename of the plan be one rename (same filesystem; plain: its
 * upper directory's redirect can name its path, where it must)?
 */
bool fin_renames_placeable(struct fin *f);
/*
 * Plain commit: carry out the renames in the lower (finishing a killed
 * run's first, from its plan), and leave the upper's renamed directories
 * merging with the lower at their own paths: after it the commit walk is
 * an ordinary one. 0 or -errno with a message.
 */
int fin_renames_plain(struct fin *f);
/* Atomic commit: the sources moved away (journal operations V). */
int fin_renames_journal(struct fin *f);
/* Atomic commit, the walk at a target (f->path): its P operation. */
int fin_rename_place(struct fin *f);
/* Atomic commit: is a target under f->path (a directory)? */
bool fin_renames_under(struct fin *f);
/*
 * The lower entry LD/NAME (f->path) as the lower will be once the renames
 * of an atomic commit are applied: a target is its source, a source has
 * gone. 1 (*ST filled), 0 (none) or -errno.
 */
int fin_lower_at(struct fin *f, int ld, const char *name, struct stat *st);
/* Open the lower directory LD/NAME (f->path) so mapped; fd or -errno. */
int fin_lower_dir_at(struct fin *f, int ld, const char *name);
/* Open the lower entry LD/NAME (f->path) so mapped, O_PATH; fd or -errno. */
int fin_lower_child(struct fin *f, int ld, const char *name);
void fin_renames_free(struct fin *f);

/* ===== journal.c: the journal of an atomic commit ===== */

/* Decode a path written by fin_jput_path, in place; -EUCLEAN. */
int fin_decode_path(char *s);

/* Append LEN bytes of S to the journal being built. */
int fin_jput(struct fin *f, const char *s, size_t len);
/* Append PATH, escaped (everything outside '!'..'~', and '%', as %XX). */
int fin_jput_path(struct fin *f, const char *path);
/* Append operation OP (R, D, M, W, V, P) number N on PATH. */
int fin_jop_path(struct fin *f, char op, unsigned long n, const char *path);
/* The same on f->path. */
int fin_jop(struct fin *f, char op, unsigned long n);
/*
 * Open the parent directory of relative PATH (journal syntax, untrusted)
 * under the lower root, never following a symlink, and point *LAST at its
 * final component. The fd or -errno (-EUCLEAN: a bad path).
 */
int fin_resolve_parent(struct fin *f, char *path, char **last);
/*
 * Open up (u+rwx) directory DFD, or its entry NAME (never followed), if
 * it is a directory without u+w or u+x. 0 or -errno.
 */
int fin_open_up(int dfd, const char *name);
/*
 * renameat OD/ON to ND/NN. Without privilege, a directory without u+w
 * moves out of or into a directory without u+w (and at all, to another
 * parent: its "..") only opened up: on EACCES all three are opened up
 * (u+rwx) and it is tried again. The caller sees that each gets its mode
 * back: a plain commit's walk (each is a directory of the upper too), an
 * atomic one's rollback (each has an M or W operation). 0 or -errno.
 */
int fin_rename_opened(struct fin *f, int od, const char *on, int nd,
		      const char *nn);
/*
 * A journal comes from the lower: it may be damaged or crafted. Check the
 * whole of TEXT (SIZE bytes) before acting on any line, so a bad one stops
 * recovery with nothing changed. 0, or -EUCLEAN with a message naming the
 * line.
 */
int fin_check_journal(struct fin *f, const char *text, size_t size);
/* Does DFD/NAME exist (not following a symlink)? */
bool fin_exists_at(int dfd, const char *name);
/*
 * Roll back: the lower becomes the old one again and the work directory
 * goes. The upper was never touched.
 */
int fin_roll_back(struct fin *f, const char *text);
/*
 * Apply journal TEXT (modified in place), or with !APPLY only check it;
 * *UPPER points at the upper it names.
 */
int fin_apply_journal(struct fin *f, char *text, char **upper, bool apply);
/* Write the journal, durably: the commit point of an atomic commit. */
/*
 * Write the buffered text (f->journal) to DIRFD/TMP, fsync it, rename it
 * to NAME and fsync DIRFD: the file is there whole or not at all.
 */
int fin_write_durable(struct fin *f, int dirfd, const char *tmp,
		      const char *name);
int fin_write_journal(struct fin *f);
/*
 * Files staged by link share their inode with the upper, private xattrs
 * included; those go once every operation is in (a rollback before that
 * must give back an untouched upper). Idempotent, like everything here.
 */
int fin_strip_applied(struct fin *f, const char *text);

/* ===== atomic.c: the atomic commit (staging, apply) and recovery ===== */

/* The next operation's number, also as a name (in stage/, trash/) in NAME. */
unsigned long fin_new_op(struct fin *f, char name[32]);
/* Stage directory UD/NAME and everything in it as DSTDIR/DST. */
int fin_stage_tree(struct fin *f, int ud, const char *name, int dstdir,
		   const char *dst);
/*
 * An M operation: carriers of the new metadata (of UD/NAME) and of the old
 * (of LD/NAME), so a failed apply can be rolled back. NAME NULL: the roots.
 */
int fin_stage_meta(struct fin *f, int ud, int ld, const char *name,
		   const struct stat *st);
/*
 * A W operation, for a caller without privilege: lower directory FD (at
 * PATH; NULL: f->path, "": the root) lacks u+w or u+x, which writing into
 * it and moving it to another directory (its "..") need, so the apply
 * opens it up (u+rwx) before the operations that need it. Its own M,
 * later in the journal, sets its new mode; a rollback its old one. 0
 * (nothing to do as root, or for a directory already open) or -errno.
 */
int fin_stage_open_up(struct fin *f, int fd, const char *path);
/* The same for the lower entry at PATH as it is now (none: nothing). */
int fin_stage_open_up_at(struct fin *f, const char *path);
/*
 * Atomic commit of F's locked layers: stage and journal, write the
 * journal (the commit point), apply it, clean up; on failure, roll back
 * or say how to finish. 0 or -errno with a message.
 */
int fin_commit_atomic(struct fin *f);
/*
 * Roll an interrupted atomic commit of F's (locked) lower forward or back.
 * 1 if there was one, 0 if not, -errno with a message.
 */
int fin_recover_locked(struct fin *f);

/* ===== convert.c: rewriting an upper's markers into another format ===== */

/*
 * Rewrite the markers of UPPER (an existing, canonical upper of an
 * unmounted pair, checked by the caller) into format TO (OCI or kernel)
 * and stamp it so, under the upper's lock; a run that was interrupted is
 * finished. 0 or -errno with a message.
 */
int ovl_convert(struct ovlfs *fs, const char *upper, enum ovlfs_format to);

/* ===== diff.c: what committing the upper would change in the lower ===== */

/*
 * Call FN (with ARG) for each change UPPER makes to LOWER (both
 * canonical, a pair the caller checked; mounted or not), in bytewise
 * path order, a directory before its contents. A missing upper
 * (!UPPER_EXISTS) changes nothing. 0, FN's nonzero return, or -errno
 * with a message.
 */
int ovl_diff(struct ovlfs *fs, const char *lower, const char *upper,
	     bool upper_exists, ovlfs_diff_fn fn, void *arg);

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
 * layer tar to FD; a renamed directory's tree goes in whole, from LOWER. The caller has made sure nothing has it mounted and
 * no commit is pending. 0 or -errno with a message.
 */
int ovl_export_tar(struct ovlfs *fs, int fd, const char *lower,
		   const char *upper,
		   bool upper_exists);

/* ===== metacopy.c: metacopy files of an upper, offline ===== */

/*
 * The lower data of upper file UD/NAME if it is a metacopy file: 1 and an
 * O_RDONLY fd of it in *OUT, *SAME true if that is LD/NAME (LD: the lower
 * directory at UD's path, -1 if none; LROOT: the lower's root, for an
 * absolute redirect); 0 if not a metacopy file; -EIO if its data is
 * nowhere (the kernel's answer too); -errno.
 */
int ovl_metacopy_lower(const struct ovl_fmt *f, int lroot, int ud, int ld,
		       const char *name, int *out, bool *same);
/*
 * Commit's hook for UD/NAME (lower directory LD, holding a directory at
 * NAME if LOWER_DIR): 1 if it is a metacopy file whose data is LD/NAME
 * (only its metadata is to be committed); 0 if not a metacopy file; 2 if
 * one whose data was elsewhere and has just been copied into it (stat it
 * again, commit it as any file); 3 if such a one was staged in full (an
 * atomic commit: done); -errno with a message.
 */
int fin_metacopy(struct fin *f, int ud, int ld, const char *name,
		 bool lower_dir);
/*
 * For redirect.c, before the commit walk: the metacopy files of upper
 * directory UD (whose lower part is LD) whose data is not where the walk
 * will look (ALL: UD is inside a renamed directory, so none is; else the
 * renamed ones) get their data, from a lower the walk may change first.
 */
int fin_metacopy_fill_dir(struct fin *f, int ud, int ld, bool all);
/*
 * For a plain commit, before it changes the lower: the renamed metacopy
 * files under upper directory UD (whose lower part is LD, -1 for none:
 * those not at their data's name) get their data,
 * which is a lower file the commit may delete (the whiteout of their old
 * name) or move (a renamed directory) before it reaches them. 0 or -errno
 * with a message.
 */
int fin_metacopy_fill_moved(struct fin *f, int ud, int ld);
/*
 * Convert's: the metacopy marker of UD/NAME from format FROM to TO. 1 if
 * it has one in either (its redirect, if any, is the caller's), 0, or
 * -errno.
 */
int ovl_convert_metacopy(const struct ovl_fmt *from, const struct ovl_fmt *to,
			 int ud, const char *name);

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
