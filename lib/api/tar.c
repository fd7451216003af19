/*
 * api/tar.c: the public OCI layer calls (docs/tar.md), ovlfs_export_tar
 * and ovlfs_apply_tar, as the handle sees them: never while mounted, the
 * layer pair, the refusals, and for apply --commit a handle of its own
 * that commits. The tar work itself is offline/'s (export.c, apply.c);
 * here so that offline/ never calls back up into the public API.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

int ovlfs_export_tar(struct ovlfs *fs, int fd)
{
	char *lower = NULL, *upper = NULL;
	bool upper_exists;
	int err;

	fs->err[0] = '\0';
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "unmount %s first",
				     fs->mount_point);
	err = ovl_pair_paths(fs, false, &lower, &upper, &upper_exists);
	if (err)
		return err;
	err = ovl_refuse_pending_commit(fs, "export", lower, upper);
	if (!err)
		err = ovl_refuse_volatile_dirty(fs, "export", upper);
	if (!err)
		err = ovl_export_tar(fs, fd, lower, upper, upper_exists);
	free(lower);
	free(upper);
	return err;
}

/*
 * OVLFS_APPLY_COMMIT: apply into a fresh OCI upper next to LOWER, then
 * commit that as ovlfs_finish() does (same checks, same guarantees).
 */
static int apply_commit(struct ovlfs *fs, int fd, const char *lower)
{
	char *tmp;
	struct ovlfs *h;
	int err;

	err = ovl_apply_tar_next_to(fs, fd, lower, &tmp);
	if (err)
		return err;
	h = ovlfs_new(lower);
	err = h ? ovlfs_set_upper(h, tmp) : -errno;
	if (!err) {
		ovlfs_set_progress(h, fs->progress, fs->progress_arg);
		err = ovlfs_finish(h, OVLFS_COMMIT);
	}
	if (err) {
		/* The commit keeps its upper on failure: say where it is. */
		ovl_set_error(fs, err,
			      "%s; the layer stays applied in %s (retry with: ovlfs commit -u %s %s)",
			      h && ovlfs_error(h)[0] ? ovlfs_error(h) : strerror(-err),
			      tmp, tmp, lower);
	}
	ovlfs_free(h);
	free(tmp);
	return err;
}

int ovlfs_apply_tar(struct ovlfs *fs, int fd, unsigned flags)
{
	char *lower = NULL, *upper = NULL;
	bool upper_exists, named;
	int err;

	fs->err[0] = '\0';
	if (flags & ~OVLFS_APPLY_COMMIT)
		return ovl_set_error(fs, -EINVAL, "apply: unknown flags %#x",
				     flags);
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "unmount %s first",
				     fs->mount_point);
	/* A missing upper, named or not, is made as a mount makes it. */
	named = fs->upper_set;
	fs->upper_set = false;
	err = ovl_pair_paths(fs, false, &lower, &upper, &upper_exists);
	fs->upper_set = named;
	if (err)
		return err;
	/*
	 * --commit writes the lower: it recovers first, as commit does (and
	 * with the upper the interrupted commit was for, which it may
	 * remove). Into the upper, it would write what recovery may delete.
	 */
	if (flags & OVLFS_APPLY_COMMIT) {
		err = ovl_recover_lower(fs, lower, upper);
		if (err >= 0)
			err = apply_commit(fs, fd, lower);
	} else {
		err = ovl_refuse_pending_commit(fs, "apply", lower, upper);
		if (!err)
			err = ovl_apply_tar(fs, fd, lower, upper, true,
					    !upper_exists);
	}
	free(lower);
	free(upper);
	return err;
}
