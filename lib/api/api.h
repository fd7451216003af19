/*
 * api/api.h: the public lifecycle, the top of libovlfs: struct ovlfs's
 * calls (ovlfs_new, the setters: handle.c; mount and umount: mount.c),
 * the operations built of a mount (flatten.c), and the public wrappers
 * of offline/'s work (finish.c, tar.c, diff_convert.c). May use every
 * folder below.
 *
 * Defines no locks: a handle belongs to the thread that calls it.
 */
#ifndef OVL_API_H
#define OVL_API_H

#include "fuse/fuse_side.h"
#include "offline/offline.h"

/* ===== mount.c: mounting and unmounting ===== */

/*
 * Remove the mount point if ovlfs created it (this handle, or a marker
 * xattr left by the mount that did) and it is empty and unmounted.
 */
void ovl_remove_mount_point(struct ovlfs *fs);

/* ===== finish.c: finishing and recovering a pair of layers ===== */

/*
 * No private calls: ovlfs_finish, ovlfs_recover and ovlfs_set_progress are
 * public (ovlfs.h), the handle's part (unmount, its paths, its mount
 * point) around offline/'s ovl_finish() and ovl_recover_lower().
 */

#endif /* OVL_API_H */
