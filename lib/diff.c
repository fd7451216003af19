/* diff.c: what committing the upper would change (being written). */
#include <errno.h>

#include "ovlfs_i.h"

int ovlfs_diff(struct ovlfs *fs, ovlfs_diff_fn fn, void *arg)
{
	(void)fn;
	(void)arg;
	return ovl_set_error(fs, -ENOSYS, "diff is not implemented yet");
}
