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

#endif /* OVL_OFFLINE_H */
