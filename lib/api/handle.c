/*
 * handle.c: struct ovlfs, the handle: making and freeing one, its setters
 * and getters, and the error of its last call.
 *
 * Its own file because none of this mounts anything: mount.c does.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

struct ovlfs *ovlfs_new(const char *lower)
{
	struct ovlfs *fs;

	if (!lower || !*lower) {
		errno = EINVAL;
		return NULL;
	}
	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return NULL;
	fs->lower = ovl_path_strip(lower);
	/* "/" has no sibling to put the defaults in: they must be set. */
	fs->upper = ovl_path_with_suffix(lower, ".upper");
	fs->mount_point = ovl_path_with_suffix(lower, ".mountpoint");
	if (!fs->lower) {
		ovlfs_free(fs);
		errno = ENOMEM;
		return NULL;
	}
	return fs;
}

static int set_string(struct ovlfs *fs, char **field, const char *value)
{
	char *v;

	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	if (!value || !*value)
		return ovl_set_error(fs, -EINVAL, "empty value");
	v = strdup(value);
	if (!v)
		return -ENOMEM;
	free(*field);
	*field = v;
	return 0;
}

int ovlfs_set_upper(struct ovlfs *fs, const char *upper)
{
	int err = set_string(fs, &fs->upper, upper);

	if (!err)
		fs->upper_set = true;
	return err;
}

int ovlfs_set_mount_point(struct ovlfs *fs, const char *mount_point)
{
	return set_string(fs, &fs->mount_point, mount_point);
}

int ovlfs_set_fuse_options(struct ovlfs *fs, const char *options)
{
	return set_string(fs, &fs->fuse_options, options);
}

int ovlfs_set_inode_mode(struct ovlfs *fs, enum ovlfs_inode_mode mode)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	if (mode != OVLFS_INODE_VIRTUAL && mode != OVLFS_INODE_PERSISTENT)
		return ovl_set_error(fs, -EINVAL, "unknown inode mode %d", mode);
	fs->inode_mode = mode;
	return 0;
}

int ovlfs_set_debug(struct ovlfs *fs, bool debug)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	fs->debug = debug;
	return 0;
}

int ovlfs_set_passthrough(struct ovlfs *fs, bool enable)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	fs->no_passthrough = !enable;
	return 0;
}

int ovlfs_set_io_uring(struct ovlfs *fs, enum ovlfs_io_uring mode)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	if (mode != OVLFS_IO_URING_AUTO && mode != OVLFS_IO_URING_ON &&
	    mode != OVLFS_IO_URING_OFF)
		return ovl_set_error(fs, -EINVAL, "unknown io_uring mode %d",
				     (int)mode);
	fs->io_uring = mode;
	return 0;
}

int ovlfs_set_redirect_dir(struct ovlfs *fs, bool enable)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	fs->no_redirect = !enable;
	return 0;
}

int ovlfs_set_metacopy(struct ovlfs *fs, bool enable)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	fs->no_metacopy = !enable;
	return 0;
}

int ovlfs_set_volatile(struct ovlfs *fs, bool enable)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	fs->no_sync = enable;
	return 0;
}

int ovlfs_set_volatile_dirty(struct ovlfs *fs, enum ovlfs_volatile_dirty what)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	if (what != OVLFS_VOLATILE_DIRTY_REFUSE &&
	    what != OVLFS_VOLATILE_DIRTY_DISCARD &&
	    what != OVLFS_VOLATILE_DIRTY_KEEP)
		return ovl_set_error(fs, -EINVAL, "unknown volatile-dirty action %d",
				     what);
	fs->volatile_dirty = what;
	return 0;
}

int ovlfs_add_lower(struct ovlfs *fs, const char *lower)
{
	char **v, *l;

	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	if (!lower || !*lower)
		return ovl_set_error(fs, -EINVAL, "empty value");
	l = ovl_path_strip(lower);
	v = l ? realloc(fs->more_lowers, (fs->n_more_lowers + 1) * sizeof(*v))
	      : NULL;
	if (!v) {
		free(l);
		return -ENOMEM;
	}
	v[fs->n_more_lowers++] = l;
	fs->more_lowers = v;
	return 0;
}

unsigned ovlfs_lower_count(const struct ovlfs *fs)
{
	return 1 + fs->n_more_lowers;
}

const char *ovlfs_lower_at(const struct ovlfs *fs, unsigned i)
{
	if (i == 0)
		return fs->lower;
	return i <= fs->n_more_lowers ? fs->more_lowers[i - 1] : NULL;
}

int ovlfs_set_read_only(struct ovlfs *fs, bool read_only)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	fs->read_only = read_only;
	return 0;
}

int ovlfs_set_format(struct ovlfs *fs, enum ovlfs_format format)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	if (format != OVLFS_FORMAT_AUTO && format != OVLFS_FORMAT_OCI &&
	    format != OVLFS_FORMAT_KERNEL)
		return ovl_set_error(fs, -EINVAL, "unknown format %d", format);
	fs->format = format;
	return 0;
}

enum ovlfs_format ovlfs_format(const struct ovlfs *fs)
{
	return fs->format;
}

int ovlfs_set_commit_into(struct ovlfs *fs, const char *lower)
{
	return set_string(fs, &fs->commit_into, lower);
}

int ovlfs_set_log(struct ovlfs *fs, ovlfs_log_fn fn, void *arg)
{
	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "settings are fixed while mounted");
	fs->log_fn = fn;
	fs->log_arg = arg;
	return 0;
}

const char *ovlfs_lower(const struct ovlfs *fs)
{
	return fs->lower;
}

const char *ovlfs_upper(const struct ovlfs *fs)
{
	return fs->upper ? fs->upper : "";
}

const char *ovlfs_mount_point(const struct ovlfs *fs)
{
	return fs->mount_point ? fs->mount_point : "";
}

bool ovlfs_is_mounted(const struct ovlfs *fs)
{
	return fs->mounted;
}

const char *ovlfs_error(const struct ovlfs *fs)
{
	return fs->err;
}

int ovlfs_check_apart(struct ovlfs *fs, const char *what, const char *path)
{
	unsigned n = fs->n_more_lowers;
	struct ovl_place p = { 0 }, l;
	int err;

	fs->err[0] = '\0';
	if (!what || !path || !*path)
		return ovl_set_error(fs, -EINVAL, "empty value");
	err = ovl_place_of(fs, what, path, &p);
	for (unsigned i = 0; !err && i <= n + 2; i++) {
		const char *lp = i <= n ? ovlfs_lower_at(fs, i) :
				 i == n + 1 ? (fs->read_only ? NULL : fs->upper) :
				 fs->mount_point;

		/* One that cannot be resolved is the mount's to refuse. */
		if (!lp || ovl_place_get(lp, &l) < 0)
			continue;
		err = ovl_check_pair(fs, what, &p, i <= n ? "lower" : i == n + 1 ?
				     "upper" : "mount point", &l);
		ovl_place_free(&l);
	}
	ovl_place_free(&p);
	return err;
}

void ovlfs_free(struct ovlfs *fs)
{
	if (!fs)
		return;
	if (fs->mounted)
		ovlfs_umount(fs);
	free(fs->lower);
	for (unsigned i = 0; i < fs->n_more_lowers; i++)
		free(fs->more_lowers[i]);
	free(fs->more_lowers);
	free(fs->commit_into);
	free(fs->upper);
	free(fs->mount_point);
	free(fs->fuse_options);
	free(fs);
}
