/*
 * diff_convert.c: the public ovlfs_diff() and ovlfs_convert(): what makes
 * a handle's pair fit for the work (not mounted, its paths checked, no
 * interrupted commit, no unclean volatile upper), then the work itself,
 * which is offline/'s (ovl_diff, ovl_convert) on plain paths.
 *
 * Its own file because public functions belong in api/, and offline/ may
 * use nothing above format/.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

int ovlfs_diff(struct ovlfs *fs, ovlfs_diff_fn fn, void *arg)
{
	char *lower, *upper;
	bool upper_exists;
	int err;

	err = ovl_pair_paths(fs, true, &lower, &upper, &upper_exists);
	if (err)
		return err;
	err = ovl_refuse_pending_commit(fs, "diff", lower, upper);
	if (!err)
		err = ovl_refuse_volatile_dirty(fs, "diff", upper);
	if (!err)
		err = ovl_diff(fs, lower, upper, upper_exists, fn, arg);
	free(lower);
	free(upper);
	return err;
}

int ovlfs_convert(struct ovlfs *fs, enum ovlfs_format to)
{
	char *lower = NULL, *upper = NULL;
	bool exists;
	int err;

	fs->err[0] = '\0';
	if (to != OVLFS_FORMAT_OCI && to != OVLFS_FORMAT_KERNEL)
		return ovl_set_error(fs, -EINVAL, "convert: unknown format %d", to);
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "convert: unmount %s first",
				     fs->mount_point);
	err = ovl_pair_paths(fs, false, &lower, &upper, &exists);
	if (err)
		return err;
	err = ovl_refuse_pending_commit(fs, "convert", lower, upper);
	if (!err)
		err = ovl_refuse_volatile_dirty(fs, "convert", upper);
	if (!err && !exists)
		err = ovl_set_error(fs, -ENOENT, "convert: upper %s: %s", upper,
				    strerror(ENOENT));
	if (!err)
		err = ovl_convert(fs, upper, to);
	free(lower);
	free(upper);
	return err;
}
