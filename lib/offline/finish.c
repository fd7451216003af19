/*
 * finish.c: what happens to the changes: preserve, discard, commit and
 * crash-safe commit-atomic. docs/commit.md describes the design; the
 * comments here say why. This file holds what all of them share: the
 * state of one run (struct fin), errors, paths and progress, the metadata
 * sync, and opening and locking the two layers; discard, and ovl_finish(),
 * which picks the action. The commit walk is commit.c, the atomic commit
 * journal.c and atomic.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "offline/offline.h"

int fin_fail(struct fin *f, int err, const char *what)
{
	return ovl_set_error(f->fs, err, "%s: %s%s%s: %s", what, f->lower,
			     f->plen ? "/" : "", f->path, strerror(-err));
}

int fin_path_push(struct fin *f, const char *name, size_t *saved)
{
	size_t len = strlen(name);

	*saved = f->plen;
	if (f->plen + len + 2 >= sizeof(f->path))
		return -ENAMETOOLONG;
	if (f->plen)
		f->path[f->plen++] = '/';
	memcpy(f->path + f->plen, name, len + 1);
	f->plen += len;
	return 0;
}

void fin_path_pop(struct fin *f, size_t saved)
{
	f->plen = saved;
	f->path[saved] = '\0';
}

void fin_report(struct fin *f, bool final)
{
	struct timespec now;

	if (!f->fs->progress)
		return;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!final && (now.tv_sec - f->last_report.tv_sec) * 1000000000L +
			      (now.tv_nsec - f->last_report.tv_nsec) <
		      100000000L)
		return;
	f->last_report = now;
	f->fs->progress(&f->prog, f->fs->progress_arg);
}

void fin_tick(struct fin *f, uint64_t bytes)
{
	f->prog.entries_done++;
	f->prog.bytes_done += bytes;
	fin_report(f, false);
}

/*
 * Entries and file bytes under directory DFD, for progress totals; in NAMES
 * (if given) the names of each multiply-linked file.
 */
void fin_count_tree(int dfd, uint64_t *entries, uint64_t *bytes,
		    struct ovl_linkmap *names)
{
	struct ovl_dirlist dl;
	struct stat st;

	if (ovl_dirlist_read(dfd, &dl) < 0)
		return;
	for (size_t i = 0; i < dl.n; i++) {
		if (fstatat(dfd, dl.ents[i].name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		(*entries)++;
		if (S_ISREG(st.st_mode))
			*bytes += st.st_size;
		if (names && !S_ISDIR(st.st_mode) && st.st_nlink > 1) {
			const char *first;

			/* On ENOMEM the count is low: copies, never wrong. */
			ovl_linkmap_first(names, st.st_dev, st.st_ino, "",
					  &first);
		}
		if (S_ISDIR(st.st_mode)) {
			int cfd = openat(dfd, dl.ents[i].name, O_RDONLY |
					 O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

			if (cfd >= 0) {
				fin_count_tree(cfd, entries, bytes, names);
				close(cfd);
			}
		}
	}
	ovl_dirlist_free(&dl);
}

int fin_open_dir_at(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			O_CLOEXEC);

	/* The fd is returned: cppcheck loses track of it through the ?:. */
	/* cppcheck-suppress resourceLeak */
	return fd < 0 ? -errno : fd;
}

int fin_open_subdir(int ud, const struct ovl_dirent *de)
{
	int fd;

	if (ovl_is_wh_name(de->name) ||
	    (de->type != DT_DIR && de->type != DT_UNKNOWN))
		return -ENOTDIR;
	fd = fin_open_dir_at(ud, de->name);
	/* cppcheck-suppress resourceLeak */
	return fd;
}

/* ---- metadata ---- */

/* Remove xattrs of DST that SRC lacks (never ovlfs's private ones). */
static int drop_extra_xattrs(int srcfd, int dstfd)
{
	ssize_t len = ovl_fd_listxattr(dstfd, NULL, 0);
	char *names;
	int err = 0;

	if (len <= 0)
		return 0;	/* none, or no xattr support */
	names = malloc(len);
	if (!names)
		return -ENOMEM;
	len = ovl_fd_listxattr(dstfd, names, len);
	for (char *n = names; len > 0 && n < names + len; n += strlen(n) + 1) {
		if (ovl_xattr_is_private(n) ||
		    ovl_fd_getxattr(srcfd, n, NULL, 0) != -ENODATA)
			continue;
		err = ovl_fd_removexattr(dstfd, n);
		if (err == -ENODATA || err == -EOPNOTSUPP)
			err = 0;
		if (err)
			break;
	}
	free(names);
	return err;
}

void fin_strip_private(int fd)
{
	ovl_fd_removexattr(fd, OVL_XATTR_ORIGIN_TRUSTED);
	ovl_fd_removexattr(fd, OVL_XATTR_ORIGIN_USER);
}

/*
 * Make DST (any fd) carry SRC's owner, mode, xattrs and times exactly; the
 * times from TIMES instead when given (SRC's own changed since).
 */
int fin_sync_meta_times(struct fin *f, int srcfd, int dstfd,
			const struct stat *times)
{
	char failed[XATTR_NAME_MAX + 1] = "";
	struct stat st, dst;
	int err = ovl_fstat(srcfd, &st);

	if (!err)
		err = ovl_fstat(dstfd, &dst);
	if (err)
		return err;
	if (S_ISLNK(dst.st_mode))
		st.st_mode = dst.st_mode;	/* symlinks have no mode */
	if (times) {
		st.st_atim = times->st_atim;
		st.st_mtim = times->st_mtim;
	}
	err = drop_extra_xattrs(srcfd, dstfd);
	if (!err)
		err = ovl_copy_meta_strict(f->is_root, srcfd, dstfd, &st, true,
					   failed);
	if (!err)
		fin_strip_private(dstfd);
	else if (failed[0])	/* the deepest message is kept: name it */
		ovl_set_error(f->fs, err, "commit: %s%s%s: cannot set %s: %s",
			      f->lower, f->plen ? "/" : "", f->path, failed,
			      strerror(-err));
	return err;
}

int fin_sync_meta(struct fin *f, int srcfd, int dstfd)
{
	return fin_sync_meta_times(f, srcfd, dstfd, NULL);
}

/* ---- setting up, locking, cleaning up ---- */

void fin_init(struct fin *f, struct ovlfs *fs)
{
	memset(f, 0, sizeof(*f));
	f->fs = fs;
	f->is_root = geteuid() == 0;
	f->lower_fd = f->upper_fd = f->work_fd = f->stage_fd = f->trash_fd = -1;
	fs->err[0] = '\0';
}

void fin_done(struct fin *f)
{
	int fds[] = { f->lower_fd, f->upper_fd, f->work_fd, f->stage_fd,
		      f->trash_fd };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	for (size_t i = 0; i < f->nplaced; i++)
		close(f->placed[i].fd);
	free(f->placed);
	free(f->journal);
	fin_renames_free(f);
	ovl_linkmap_free(&f->names);
}

/* Open an existing layer root for finalizing; *FD is O_RDONLY|O_DIRECTORY. */
int fin_open_root(struct fin *f, const char *what, const char *path,
		  int *fdp)
{
	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return ovl_set_error(f->fs, -errno, "%s %s: %s", what, path,
				     strerror(errno));
	*fdp = fd;
	return 0;
}

void fin_sweep_trash(const char *upper)
{
	const char *base;
	int dfd = ovl_open_parent(upper, O_RDONLY, &base);

	if (dfd >= 0) {
		ovl_dead_runs(dfd, ovl_is_upper_trash, base, true);
		close(dfd);
	}
}

/*
 * Remove the finished upper PFD/BASE as one step: renamed to a trash name
 * beside it first (.BASE.removed-XXXXXX), then deleted. Killed while it
 * went in place, what was left of it was still an upper, which a retry
 * committed again; its directories opened up for the removal (a 0555 one
 * of a caller without privilege became 0700) were committed with those
 * modes. Trash of dead runs (each locks its own) goes first. Where the
 * rename cannot be made (a mount point, no write access to the parent):
 * in place, as before.
 */
static int remove_whole(int pfd, const char *base)
{
	char trash[NAME_MAX + 1];
	int dfd, fd, err;

	dfd = ovl_reopen(pfd, O_RDONLY | O_DIRECTORY);
	if (dfd >= 0)
		ovl_dead_runs(dfd, ovl_is_upper_trash, base, true);
	if (dfd < 0 || strlen(base) + 17 > NAME_MAX)
		goto in_place;
	for (unsigned i = 0; i < 100; i++) {
		snprintf(trash, sizeof(trash), ".%s.removed-%06u", base,
			 (unsigned)((getpid() * 100U + i) % 1000000U));
		if (renameat2(dfd, base, dfd, trash, RENAME_NOREPLACE) == 0) {
			fd = openat(dfd, trash, O_RDONLY | O_DIRECTORY |
				    O_NOFOLLOW | O_CLOEXEC);
			if (fd >= 0)
				flock(fd, LOCK_EX | LOCK_NB);
			err = ovl_remove_tree(dfd, trash);
			/* Failing (an immutable file): back under its name. */
			if (err)
				renameat2(dfd, trash, dfd, base, RENAME_NOREPLACE);
			if (fd >= 0)
				close(fd);
			close(dfd);
			return err;
		}
		if (errno != EEXIST)
			break;
	}
in_place:
	if (dfd >= 0)
		close(dfd);
	return ovl_remove_tree(pfd, base);
}

/* Remove the upper directory itself, making sure it is the one we hold. */
int fin_remove_upper(struct fin *f)
{
	const char *base;
	struct stat a, b;
	int pfd, err;

	if (f->upper[0] != '/' || !strrchr(f->upper, '/')[1])
		return ovl_set_error(f->fs, -EINVAL, "refusing to remove upper %s",
				     f->upper);
	pfd = ovl_open_parent(f->upper, O_PATH, &base);
	err = pfd < 0 ? pfd : 0;
	if (!err && (fstat(f->upper_fd, &a) < 0 ||
		     fstatat(pfd, base, &b, AT_SYMLINK_NOFOLLOW) < 0 ||
		     a.st_dev != b.st_dev || a.st_ino != b.st_ino))
		err = -ESTALE;	/* replaced meanwhile: not ours to delete */
	if (!err)
		err = remove_whole(pfd, base);
	if (pfd >= 0)
		close(pfd);
	if (err)
		return ovl_set_error(f->fs, err, "cannot remove upper %s: %s",
				     f->upper, strerror(-err));
	return 0;
}

/* Open and lock the lower for F, recovering an interrupted commit. */
int fin_take_lower(struct fin *f)
{
	bool own_upper_fd = false;
	int err = fin_open_root(f, "lower", f->lower, &f->lower_fd);

	if (err)
		return err;
	err = ovl_flock_wait(f->lower_fd, LOCK_EX);
	if (err == -EBUSY)
		return ovl_set_error(f->fs, err,
				     "lower %s is in use by an ovlfs mount; unmount it first",
				     f->lower);
	if (err)
		return ovl_set_error(f->fs, err, "lower %s: cannot lock: %s",
				     f->lower, strerror(-err));
	/*
	 * A commit rolled forward removes its upper, identified by this fd:
	 * else a commit after it would walk an upper already applied.
	 */
	if (f->upper_fd < 0 && f->upper) {
		f->upper_fd = open(f->upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		own_upper_fd = f->upper_fd >= 0;
	}
	err = fin_recover_locked(f);
	if (own_upper_fd) {
		close(f->upper_fd);	/* fin_take_upper opens (and locks) its own */
		f->upper_fd = -1;
	}
	/* Recovery used the work fds; a commit opens its own. */
	if (f->work_fd >= 0)
		close(f->work_fd);
	if (f->stage_fd >= 0)
		close(f->stage_fd);
	if (f->trash_fd >= 0)
		close(f->trash_fd);
	f->work_fd = f->stage_fd = f->trash_fd = -1;
	return err < 0 ? err : 0;
}

/*
 * The upper is deleted at the end of a commit or discard: all of it on
 * its own filesystem, so a mount point in it (a bind mount of anything)
 * is refused, naming it, before anything is changed.
 */
static int refuse_upper_mounts(struct fin *f)
{
	const char *what = f->atomic_or_commit ? "commit" : "discard";
	char *where = NULL;
	int r = ovl_find_mount_under(f->upper_fd, &where);

	if (r < 0)
		return ovl_set_error(f->fs, r, "%s: upper %s: cannot read the mount table: %s",
				     what, f->upper, strerror(-r));
	if (r == 0)
		return 0;
	if (!strcmp(where, f->upper))
		r = ovl_set_error(f->fs, -EBUSY,
				  "%s: upper %s is a mount point, and ovlfs does not delete "
				  "across mounts: nothing was changed", what, f->upper);
	else
		r = ovl_set_error(f->fs, -EBUSY,
				  "%s: upper %s holds a mount point, %s, and ovlfs does not delete "
				  "across mounts: unmount it first (nothing was changed)",
				  what, f->upper, where);
	free(where);
	return r;
}

/* Open and lock the upper; 1 if there is none (nothing to do). */
int fin_take_upper(struct fin *f)
{
	struct stat st;
	int err;

	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	if (stat(f->upper, &st) < 0 && errno == ENOENT) {
		/* Gone: maybe a run was killed removing it (remove_whole). */
		fin_sweep_trash(f->upper);
		return 1;
	}
	err = fin_open_root(f, "upper", f->upper, &f->upper_fd);
	if (!err)
		err = ovl_flock_wait(f->upper_fd, LOCK_EX);
	/* Committing a misread upper would write its markers as data. */
	if (!err && f->atomic_or_commit)
		err = ovl_check_upper_format(f->fs, f->upper_fd, f->upper,
					     false, &f->fmt);
	if (err == -EBUSY)
		return ovl_set_error(f->fs, err,
				     "upper %s is in use by an ovlfs mount; unmount it first",
				     f->upper);
	if (err && !f->fs->err[0])
		return ovl_set_error(f->fs, err, "upper %s: cannot lock: %s",
				     f->upper, strerror(-err));
	return err ? err : refuse_upper_mounts(f);
}

static int discard(struct fin *f)
{
	int err = ovl_refuse_pending_commit(f->fs, "discard", f->lower, f->upper);

	if (!err)
		err = fin_take_upper(f);
	if (err)
		return err == 1 ? 0 : err;
	f->prog.phase = "discard";
	fin_count_tree(f->upper_fd, &f->prog.entries_total,
		       &f->prog.bytes_total, NULL);
	fin_report(f, true);
	err = fin_remove_upper(f);
	f->prog.entries_done = f->prog.entries_total;
	f->prog.bytes_done = f->prog.bytes_total;
	fin_report(f, true);
	return err;
}

int ovl_finish(struct ovlfs *fs, enum ovlfs_action action, const char *lower,
	       const char *upper)
{
	struct fin f;
	int err = 0;

	fin_init(&f, fs);
	f.lower = lower;
	f.upper = upper;
	switch (action) {
	case OVLFS_PRESERVE:
		break;
	case OVLFS_DISCARD:
		err = discard(&f);
		break;
	case OVLFS_COMMIT:
	case OVLFS_COMMIT_ATOMIC:
		err = fin_commit(&f, action == OVLFS_COMMIT_ATOMIC);
		break;
	}
	fin_done(&f);
	return err;
}
