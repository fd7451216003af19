/*
 * finish.c: the public calls that finalize a pair of layers
 * (ovlfs_finish, ovlfs_recover) and the progress callback they report to.
 * What belongs to the handle happens here: unmounting it first, checking
 * and resolving its paths, removing the mount point it made; the work is
 * offline/'s (ovl_finish, ovl_recover_lower).
 */
#include <errno.h>
#include <stdlib.h>

#include "api/api.h"

int ovlfs_finish(struct ovlfs *fs, enum ovlfs_action action)
{
	char *lower = NULL, *upper = NULL;
	bool upper_exists;
	int err = 0;

	if (action < OVLFS_PRESERVE || action > OVLFS_COMMIT_ATOMIC)
		return ovl_set_error(fs, -EINVAL, "unknown action %d", action);
	if (fs->mounted)
		err = ovlfs_umount(fs);
	fs->err[0] = '\0';
	if (!err)
		err = ovl_pair_paths(fs, action >= OVLFS_COMMIT, &lower, &upper,
				     &upper_exists);
	/* Lost changes half-committed would be worse than a refusal. */
	if (!err && action >= OVLFS_COMMIT)
		err = ovl_refuse_volatile_dirty(fs, "commit", upper);
	if (!err)
		err = ovl_finish(fs, action, lower, upper);
	if (!err)
		ovl_remove_mount_point(fs);
	free(lower);
	free(upper);
	return err;
}

int ovlfs_recover(struct ovlfs *fs)
{
	char *lower = NULL, *upper = NULL;
	bool named, upper_exists;
	int err;

	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "unmount %s first",
				     fs->mount_point);
	fs->err[0] = '\0';
	/*
	 * A named upper may be gone: the interrupted commit may have removed
	 * it already, and recovery removes it only if it is still there.
	 */
	named = fs->upper_set;
	fs->upper_set = false;
	err = ovl_pair_paths(fs, false, &lower, &upper, &upper_exists);
	fs->upper_set = named;
	if (!err)
		err = ovl_recover_lower(fs, lower, upper);
	free(lower);
	free(upper);
	return err;
}

int ovlfs_set_progress(struct ovlfs *fs, ovlfs_progress_fn fn, void *arg)
{
	fs->progress = fn;
	fs->progress_arg = arg;
	return 0;
}
