/* finalize.c: preserve, discard, commit (being written). */
#include <errno.h>

#include "ovlfs_i.h"

int ovlfs_finish(struct ovlfs *fs, enum ovlfs_action action)
{
	(void)action;
	return ovl_set_error(fs, -ENOSYS, "finish is not implemented yet");
}

int ovlfs_recover(struct ovlfs *fs)
{
	return ovl_set_error(fs, -ENOSYS, "recover is not implemented yet");
}

int ovlfs_set_progress(struct ovlfs *fs, ovlfs_progress_fn fn, void *arg)
{
	fs->progress = fn;
	fs->progress_arg = arg;
	return 0;
}
