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

#endif /* OVL_OFFLINE_H */
