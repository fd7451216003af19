/*
 * atomic.c: the atomic commit: staging new objects and metadata in the
 * lower's work directory, the run from staging to cleanup, and recovery of
 * an interrupted one (ovl_recover_lower), which every command that touches
 * the lower runs or asks for first (ovl_refuse_pending_commit). Its own
 * file: the order of the steps is what makes a commit crash-safe.
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

/* The command that finishes an atomic commit of LOWER, for messages. */
static const char *recover_cmd(const struct ovlfs *fs, const char *lower,
			       const char *upper, char *buf, size_t len)
{
	bool named = fs->upper_set && upper;

	snprintf(buf, len, "ovlfs recover %s%s%s%s", named ? "--upper " : "",
		 named ? upper : "", named ? " " : "", lower);
	return buf;
}

unsigned long fin_new_op(struct fin *f, char name[32])
{
	snprintf(name, 32, "%lu", ++f->next_op);
	return f->next_op;
}

/* Stage directory UD/NAME and everything in it as DSTDIR/DST. */
int fin_stage_tree(struct fin *f, int ud, const char *name, int dstdir,
		   const char *dst)
{
	struct ovl_dirlist dl = { 0 };
	int cu = -1, cd = -1, err;

	if (mkdirat(dstdir, dst, 0700) < 0)
		return -errno;
	cu = fin_open_dir_at(ud, name);
	cd = fin_open_dir_at(dstdir, dst);
	err = cu < 0 ? cu : cd < 0 ? cd : ovl_dirlist_read(cu, &dl);
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *e = dl.ents[i].name;
		struct stat st;

		if (ovl_is_wh_name(e))
			continue;	/* markers: nothing below to hide */
		if (fstatat(cu, e, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			err = -errno;
			break;
		}
		/*
		 * The kernel format's whiteouts too: a directory renamed as
		 * a copy of its tree keeps those it held (kernel-format
		 * fuzzer seed 457: one was committed as a 0/0 device).
		 */
		if (f->fmt.kernel && ovl_is_kernel_wh(&st))
			continue;
		if (S_ISDIR(st.st_mode))
			err = fin_stage_tree(f, cu, e, cd, e);
		else
			err = fin_copy_object(f, cu, e, &st, cd, e, f->same_fs);
		fin_tick(f, S_ISREG(st.st_mode) ? st.st_size : 0);
	}
	if (!err)
		err = fin_sync_meta(f, cu, cd);
	ovl_dirlist_free(&dl);
	if (cu >= 0)
		close(cu);
	if (cd >= 0)
		close(cd);
	return err;
}

/* An empty object named N in stage/ carrying the metadata of SRC. */
static int make_carrier(struct fin *f, const char *n, int src, bool dir)
{
	int fd, err;

	if (dir)
		err = mkdirat(f->stage_fd, n, 0700) < 0 ? -errno : 0;
	else
		err = mknodat(f->stage_fd, n, S_IFREG | 0600, 0) < 0 ? -errno : 0;
	if (err)
		return err;
	fd = ovl_open_child(f->stage_fd, n);
	err = fd < 0 ? fd : fin_sync_meta(f, src, fd);
	if (fd >= 0)
		close(fd);
	return err;
}

/*
 * An M operation: carriers of the new metadata (of UD/NAME) and of the old
 * (of LD/NAME), so a failed apply can be rolled back. NAME NULL: the roots.
 */
int fin_stage_meta(struct fin *f, int ud, int ld, const char *name,
		   const struct stat *st)
{
	char n[32], old[40];
	int src, lsrc, err;

	fin_new_op(f, n);
	snprintf(old, sizeof(old), "%s.old", n);
	src = name ? ovl_open_child(ud, name) : dup(ud);
	/*
	 * A renamed directory's old metadata is its source's; a directory
	 * new to the lower has none (the carrier is never used, but made).
	 */
	lsrc = name ? fin_lower_child(f, ld, name) : dup(ld);
	if (lsrc == -ENOENT && src >= 0) {
		lsrc = dup(src);
		if (lsrc < 0)
			lsrc = -errno;
	}
	err = src < 0 ? src : lsrc < 0 ? lsrc : 0;
	if (!err)
		err = make_carrier(f, n, src, S_ISDIR(st->st_mode));
	if (!err)
		err = make_carrier(f, old, lsrc, S_ISDIR(st->st_mode));
	if (src >= 0)
		close(src);
	if (lsrc >= 0)
		close(lsrc);
	if (!err)
		err = fin_jop(f, 'M', f->next_op);
	return err;
}

int fin_stage_open_up(struct fin *f, int fd, const char *path)
{
	char n[32], old[40];
	struct stat st;
	int err;

	if (f->is_root)
		return 0;
	err = ovl_fstat(fd, &st);
	if (err || !S_ISDIR(st.st_mode) || (st.st_mode & 0700) == 0700)
		return err;
	fin_new_op(f, n);
	snprintf(old, sizeof(old), "%s.old", n);
	err = make_carrier(f, n, fd, true);
	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	if (!err && fchmodat(f->stage_fd, n, (st.st_mode | 0700) & 07777, 0) < 0)
		err = -errno;
	if (!err)
		err = make_carrier(f, old, fd, true);
	if (!err)
		err = fin_jop_path(f, 'W', f->next_op, path ? path : f->path);
	return err;
}

int fin_stage_open_up_at(struct fin *f, const char *path)
{
	char *copy, *last;
	int dfd, fd, err;

	if (f->is_root)
		return 0;
	if (!*path)
		return fin_stage_open_up(f, f->lower_fd, path);
	copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	dfd = fin_resolve_parent(f, copy, &last);
	fd = dfd < 0 ? dfd : ovl_open_child(dfd, last);
	err = fd == -ENOENT ? 0 : fd < 0 ? fd : fin_stage_open_up(f, fd, path);
	if (fd >= 0)
		close(fd);
	if (dfd >= 0)
		close(dfd);
	free(copy);
	return err;
}

static int open_work_dirs(struct fin *f, bool create)
{
	f->work_fd = fin_open_dir_at(f->lower_fd, OVL_COMMIT_WORKDIR);
	if (f->work_fd < 0)
		return f->work_fd;
	if (create && (mkdirat(f->work_fd, "stage", 0700) < 0 ||
		       mkdirat(f->work_fd, "trash", 0700) < 0))
		return -errno;
	f->stage_fd = fin_open_dir_at(f->work_fd, "stage");
	f->trash_fd = fin_open_dir_at(f->work_fd, "trash");
	return f->stage_fd < 0 ? f->stage_fd : f->trash_fd < 0 ? f->trash_fd : 0;
}

static int open_work(struct fin *f, bool create)
{
	int err;

	if (create && mkdirat(f->lower_fd, OVL_COMMIT_WORKDIR, 0700) < 0)
		return -errno;
	err = open_work_dirs(f, create);
	/*
	 * Made by us a moment ago and holding no journal yet (a full
	 * filesystem: the directory took the last inode): it goes, or
	 * every later command would take it for an interrupted commit.
	 */
	if (err && create)
		ovl_remove_tree(f->lower_fd, OVL_COMMIT_WORKDIR);
	return err;
}

/* Steps 4-5 of docs/commit.md: make it durable, then clean up. */
static int finish_applied(struct fin *f, const char *text, const char *upper)
{
	int fd, err = 0;

	err = fin_strip_applied(f, text);
	if (err)
		return err;
	if (syncfs(f->lower_fd) < 0)
		return -errno;
	fd = openat(f->work_fd, "done", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0 || fsync(fd) < 0 || fsync(f->work_fd) < 0)
		err = -errno;
	if (fd >= 0)
		close(fd);
	if (err)
		return err;
	/* Only the upper this commit was for; a journal is not trusted. */
	if (upper && f->upper && !strcmp(upper, f->upper) && f->upper_fd >= 0) {
		err = fin_remove_upper(f);
		if (err)
			return err;
	} else if (upper && f->upper && !strcmp(upper, f->upper)) {
		fin_sweep_trash(f->upper);	/* killed while it went */
	}
	err = ovl_remove_tree(f->lower_fd, OVL_COMMIT_WORKDIR);
	if (!err && fsync(f->lower_fd) < 0)
		err = -errno;
	return err;
}

int fin_commit_atomic(struct fin *f)
{
	char *upper, *pristine, why[OVL_ERRLEN], cmd[2 * PATH_MAX + 32];
	struct stat st;
	int err, rb;

	err = open_work(f, true);
	if (err)
		return ovl_set_error(f->fs, err,
				     "commit: cannot create %s/%s: %s; %s is unchanged",
				     f->lower, OVL_COMMIT_WORKDIR, strerror(-err),
				     f->lower);
	err = fin_jput(f, OVL_JOURNAL_MAGIC "\nupper ", strlen(OVL_JOURNAL_MAGIC) + 7);
	if (!err)
		err = fin_jput_path(f, f->upper);
	if (!err)
		err = fin_jput(f, "\n", 1);
	if (!err)	/* the root, if it must be opened up: before all */
		err = fin_stage_open_up(f, f->lower_fd, "");
	if (!err)	/* first: the walk's paths are those after the renames */
		err = fin_renames_journal(f);
	if (!err)
		err = fin_commit_dir(f, f->upper_fd, f->lower_fd);
	if (!err)
		err = ovl_fstat(f->upper_fd, &st);
	if (!err)	/* the root's own metadata, last */
		err = fin_stage_meta(f, f->upper_fd, f->lower_fd, NULL, &st);
	if (!err)
		err = fin_jput(f, "end\n", 4);
	if (!err && (syncfs(f->lower_fd) < 0 || fsync(f->stage_fd) < 0))
		err = -errno;
	if (!err)
		err = fin_write_journal(f);
	if (err) {
		/* Before the commit point: roll back, the lower is untouched. */
		if (!f->fs->err[0])
			fin_fail(f, err, "commit");
		snprintf(why, sizeof(why), "%s", f->fs->err);
		recover_cmd(f->fs, f->lower, f->upper, cmd, sizeof(cmd));
		rb = ovl_remove_tree(f->lower_fd, OVL_COMMIT_WORKDIR);
		if (rb)
			ovl_set_error(f->fs, err,
				      "%s; %s is unchanged, but its work directory %s/%s could not be removed (%s): run `%s`",
				      why, f->lower, f->lower, OVL_COMMIT_WORKDIR,
				      strerror(-rb), cmd);
		else
			ovl_set_error(f->fs, err, "%s; %s is unchanged", why,
				      f->lower);
		return err;
	}
	f->prog.phase = "apply";
	f->prog.entries_done = 0;
	f->prog.entries_total = f->next_op;
	f->path[0] = '\0';
	f->plen = 0;
	pristine = strdup(f->journal);
	if (!pristine)
		return fin_fail(f, -ENOMEM, "commit");
	err = fin_apply_journal(f, f->journal, &upper, true);
	if (err) {
		/* Could not go forward (say, an immutable file): go back. */
		fin_fail(f, err, "commit");
		snprintf(why, sizeof(why), "%s", f->fs->err);
		recover_cmd(f->fs, f->lower, f->upper, cmd, sizeof(cmd));
		rb = fin_roll_back(f, pristine);
		if (rb)
			ovl_set_error(f->fs, rb,
				      "%s; rolling back failed too (%s): run `%s`",
				      why, strerror(-rb), cmd);
		else
			ovl_set_error(f->fs, err, "%s; rolled back: %s is unchanged",
				      why, f->lower);
	} else {
		err = finish_applied(f, pristine, upper);
		if (err && !f->fs->err[0])
			fin_fail(f, err, "commit");
		if (err) {
			snprintf(why, sizeof(why), "%s", f->fs->err);
			recover_cmd(f->fs, f->lower, f->upper, cmd, sizeof(cmd));
			ovl_set_error(f->fs, err,
				      "%s; the new %s is in place: fix that, then run `%s` to finish",
				      why, f->lower, cmd);
		}
	}
	free(pristine);
	return err;
}

/* Roll an interrupted atomic commit of F's lower forward or back. */
int fin_recover_locked(struct fin *f)
{
	char *text = NULL, *upper = NULL, *pristine;
	struct stat st;
	int fd, err;

	err = open_work(f, false);
	if (err == -ENOENT && f->work_fd < 0)
		return 0;
	if (f->work_fd >= 0 && fstatat(f->work_fd, "journal", &st,
				       AT_SYMLINK_NOFOLLOW) < 0) {
		/* Never reached its commit point: the lower is the old one. */
		err = ovl_remove_tree(f->lower_fd, OVL_COMMIT_WORKDIR);
		if (!err && fsync(f->lower_fd) < 0)
			err = -errno;
		goto out;
	}
	if (err)
		goto out;
	fd = openat(f->work_fd, "journal", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || !(text = malloc(st.st_size + 1)) ||
	    pread(fd, text, st.st_size, 0) != st.st_size)
		err = errno ? -errno : -EIO;
	if (fd >= 0)
		close(fd);
	if (err)
		goto out;
	/* NOLINTNEXTLINE(clang-analyzer-core.NullDereference): assumes -errno >= 0 */
	text[st.st_size] = '\0';
	err = fin_check_journal(f, text, st.st_size);
	if (err)
		goto out;
	if (fin_exists_at(f->work_fd, "rollback")) {
		err = fin_roll_back(f, text);
		goto out;
	}
	pristine = strdup(text);
	if (!pristine) {
		err = -ENOMEM;
		goto out;
	}
	err = fin_apply_journal(f, text, &upper, !fin_exists_at(f->work_fd, "done"));
	if (err && !fin_exists_at(f->work_fd, "done"))
		err = fin_roll_back(f, pristine);	/* forward is blocked */
	else if (!err)
		err = finish_applied(f, pristine, upper);
	free(pristine);
out:
	free(text);
	if (err) {
		if (!f->fs->err[0])
			ovl_set_error(f->fs, err,
				      "cannot recover the interrupted commit in %s/%s: %s",
				      f->lower, OVL_COMMIT_WORKDIR, strerror(-err));
		return err;
	}
	return 1;
}

/*
 * A plain commit killed while renaming directories in the lower (rename.c)
 * has moved some of them into its work directory: the layers show a wrong
 * tree, and only that commit, run again, puts them where they go (a
 * discard would strand them). -EBUSY with a message saying so, or 0.
 */
static int refuse_pending_renames(struct ovlfs *fs, const char *what,
				  int lower_fd, const char *lower,
				  const char *upper)
{
	bool named = fs->upper_set && upper;
	struct stat st;

	if (fstatat(lower_fd, OVL_RENAME_WORKDIR, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	return ovl_set_error(fs, -EBUSY,
			     "%s: interrupted commit in %s (%s/%s, renamed directories on their way): run `ovlfs commit %s%s%s%s` again first",
			     what, lower, lower, OVL_RENAME_WORKDIR,
			     named ? "--upper " : "", named ? upper : "",
			     named ? " " : "", lower);
}

/*
 * Commands that read the layers or change only the upper (diff, export,
 * apply, convert, discard) would see, or make, a half-applied lower and a
 * committed or half-removed upper; only recovery writes the lower, and
 * those commands must not. So they refuse while LOWER (canonical) holds
 * the work directory of an interrupted (or running) atomic commit.
 */
int ovl_refuse_pending_commit(struct ovlfs *fs, const char *what,
			      const char *lower, const char *upper)
{
	char cmd[2 * PATH_MAX + 32];
	struct stat st;
	int fd, err = 0;

	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	fd = open(lower, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return ovl_set_error(fs, -errno, "%s: lower %s: %s", what, lower,
				     strerror(errno));
	if (fstatat(fd, OVL_COMMIT_WORKDIR, &st, AT_SYMLINK_NOFOLLOW) == 0)
		err = ovl_set_error(fs, -EBUSY,
				    "%s: interrupted atomic commit in %s (%s/%s): run `%s` first",
				    what, lower, lower, OVL_COMMIT_WORKDIR,
				    recover_cmd(fs, lower, upper, cmd, sizeof(cmd)));
	else if (errno == ENOENT)
		err = refuse_pending_renames(fs, what, fd, lower, upper);
	else if (errno != ENOENT)
		err = ovl_set_error(fs, -errno, "%s: lower %s: %s/%s: %s", what,
				    lower, lower, OVL_COMMIT_WORKDIR, strerror(errno));
	close(fd);
	return err;
}

int ovl_recover_lower(struct ovlfs *fs, const char *lower, const char *upper)
{
	struct fin f;
	struct stat st;
	char p[PATH_MAX];
	int err;

	/* A killed plain commit's renames: only that commit can finish. */
	if (snprintf(p, sizeof(p), "%s/%s", lower, OVL_RENAME_WORKDIR) >= (int)sizeof(p))
		return ovl_set_error(fs, -ENAMETOOLONG, "lower %s: %s", lower,
				     strerror(ENAMETOOLONG));
	if (lstat(p, &st) == 0) {
		int fd = open(lower, O_PATH | O_DIRECTORY | O_CLOEXEC);

		err = fd < 0 ? ovl_set_error(fs, -errno, "lower %s: %s", lower,
					     strerror(errno)) :
			       refuse_pending_renames(fs, "lower", fd, lower, upper);
		if (fd >= 0)
			close(fd);
		return err;
	}
	/* The common case, cheaply: no work directory, nothing to do. */
	if (snprintf(p, sizeof(p), "%s/%s", lower, OVL_COMMIT_WORKDIR) >= (int)sizeof(p))
		return ovl_set_error(fs, -ENAMETOOLONG, "lower %s: %s", lower,
				     strerror(ENAMETOOLONG));
	if (lstat(p, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		return ovl_set_error(fs, -errno, "lower %s: %s", lower,
				     strerror(errno));
	}
	fin_init(&f, fs);
	f.lower = lower;
	f.upper = upper;
	/* finish_applied removes the upper through this fd's identity. */
	if (upper && stat(upper, &st) == 0)
		fin_open_root(&f, "upper", upper, &f.upper_fd);
	fs->err[0] = '\0';
	err = fin_take_lower(&f);
	fin_done(&f);
	return err < 0 ? err : 1;
}
