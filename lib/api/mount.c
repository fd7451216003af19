/*
 * mount.c: checking the directories, mounting and unmounting (a handle's
 * own mount, and any ovlfs mount from outside by its path).
 *
 * Everything that can be refused is checked before anything is created, so
 * a refused mount changes nothing; what ovlfs_mount() did create it removes
 * again when a later step fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include "api/api.h"

#define FUSECTL_DIR "/sys/fs/fuse/connections"

/* ---- checking the three directories ---- */

struct dirs {
	char *lower, *upper, *mp;	/* canonical; upper NULL if read-only */
	char **more;			/* the further lowers, canonical */
	unsigned nmore;
	/* the same, by identity (ovl_place), for the overlap checks */
	struct ovl_place plower, pupper, pmp, *pmore;
};

static void dirs_free_places(struct dirs *d)
{
	for (unsigned i = 0; d->pmore && i < d->nmore; i++)
		ovl_place_free(&d->pmore[i]);
	free(d->pmore);
	d->pmore = NULL;
	ovl_place_free(&d->plower);
	ovl_place_free(&d->pupper);
	ovl_place_free(&d->pmp);
}

static void dirs_free(struct dirs *d)
{
	free(d->lower);
	free(d->upper);
	free(d->mp);
	for (unsigned i = 0; i < d->nmore; i++)
		free(d->more[i]);
	free(d->more);
	dirs_free_places(d);
}

static int check_empty(struct ovlfs *fs, const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	int err = 0;

	if (!d)
		return ovl_set_error(fs, -errno, "mount point %s: %s", path,
				     strerror(errno));
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			err = ovl_set_error(fs, -ENOTEMPTY,
					    "mount point %s is not empty", path);
			break;
		}
	}
	closedir(d);
	return err;
}

static int check_lower(struct ovlfs *fs)
{
	return ovl_check_lower_at(fs, fs->lower);
}

/*
 * The further lowers, each checked and canonical, none the same as another
 * lower or lying in the upper or the mount point (UPPER may be NULL).
 */
static int check_more_lowers(struct ovlfs *fs, struct dirs *d)
{
	int err = 0;

	if (1 + fs->n_more_lowers > OVL_MAX_LOWERS)
		return ovl_set_error(fs, -EINVAL, "too many lower layers (%u, at most %d)",
				     1 + fs->n_more_lowers, OVL_MAX_LOWERS);
	d->more = calloc(fs->n_more_lowers + 1, sizeof(*d->more));
	d->pmore = calloc(fs->n_more_lowers + 1, sizeof(*d->pmore));
	if (!d->more || !d->pmore)
		return ovl_set_error(fs, -ENOMEM, "out of memory");
	for (unsigned i = 0; i < fs->n_more_lowers && !err; i++) {
		const char *l = fs->more_lowers[i];

		err = ovl_check_lower_at(fs, l);
		if (!err)
			err = ovl_canonical_of(fs, "lower", l, &d->more[i]);
		if (err)
			break;
		d->nmore++;
		err = ovl_place_of(fs, "lower", d->more[i], &d->pmore[i]);
		if (!err && ovl_same_place(&d->pmore[i], &d->plower))
			err = ovl_set_error(fs, -EINVAL, "lower %s is given twice", l);
		for (unsigned j = 0; j < i && !err; j++)
			if (ovl_same_place(&d->pmore[i], &d->pmore[j]))
				err = ovl_set_error(fs, -EINVAL,
						    "lower %s is given twice", l);
		if (!err && d->upper)
			err = ovl_check_pair(fs, "upper", &d->pupper, "lower",
					     &d->pmore[i]);
		if (!err && d->mp)
			err = ovl_check_pair(fs, "mount point", &d->pmp, "lower",
					     &d->pmore[i]);
	}
	return err;
}

/*
 * Refused as the kernel's overlayfs refuses it: on a read-only filesystem
 * the mount would say "rw" and then fail every change with EROFS. A
 * missing upper is made in its parent, so that is what is asked.
 */
static int check_upper_writable(struct ovlfs *fs, const char *upper,
				bool exists)
{
	char *dir = strdup(upper), *slash;
	struct statvfs sv;
	int err = 0;

	if (!dir)
		return ovl_set_error(fs, -ENOMEM, "out of memory");
	slash = strrchr(dir, '/');
	if (!exists && slash)
		slash[slash == dir ? 1 : 0] = '\0';
	if (statvfs(dir, &sv) == 0 && (sv.f_flag & ST_RDONLY))
		err = ovl_set_error(fs, -EROFS,
				    "upper %s is on a read-only filesystem "
				    "(a read-only view needs no upper: --read-only)",
				    upper);
	free(dir);
	return err;
}

static int check_dirs(struct ovlfs *fs, struct dirs *d, bool *upper_exists,
		      bool *mp_exists)
{
	int err;

	err = check_lower(fs);
	if (err)
		return err;
	if ((!fs->upper && !fs->read_only) || !fs->mount_point)
		return ovl_set_error(fs, -EINVAL,
				     "lower %s has no default upper or mount point: set them",
				     fs->lower);
	err = ovl_canonical_of(fs, "lower", fs->lower, &d->lower);
	if (!err && !fs->read_only)
		err = ovl_check_upper_not_link(fs);
	if (!err && !fs->read_only)
		err = ovl_canonical_of(fs, "upper", fs->upper, &d->upper);
	if (!err)
		err = ovl_canonical_of(fs, "mount point", fs->mount_point, &d->mp);
	if (!err)
		err = ovl_place_of(fs, "lower", d->lower, &d->plower);
	if (!err && d->upper)
		err = ovl_place_of(fs, "upper", d->upper, &d->pupper);
	if (!err)
		err = ovl_place_of(fs, "mount point", d->mp, &d->pmp);
	if (!err && d->upper)
		err = ovl_check_pair(fs, "upper", &d->pupper, "lower", &d->plower);
	if (!err)
		err = ovl_check_pair(fs, "mount point", &d->pmp, "lower", &d->plower);
	if (!err && d->upper)
		err = ovl_check_pair(fs, "mount point", &d->pmp, "upper", &d->pupper);
	if (!err)
		err = check_more_lowers(fs, d);
	if (!err && d->upper)
		err = ovl_check_dir_or_missing(fs, "upper", d->upper, upper_exists);
	if (!err && d->upper)
		err = check_upper_writable(fs, d->upper, *upper_exists);
	if (!err)
		err = ovl_check_dir_or_missing(fs, "mount point", d->mp, mp_exists);
	if (!err && *mp_exists)
		err = check_empty(fs, d->mp);
	return err;
}

/*
 * Lock the upper against a second mount. The lock lives on an open file
 * description, so it dies with the daemon however it ends. An unmount
 * returns a moment before the old daemon has let go: wait a little.
 */
static int lock_upper(struct ovlfs *fs, struct ovl_fs *ofs, const char *upper)
{
	int fd = open(upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return ovl_set_error(fs, -errno, "upper %s: %s", upper,
				     strerror(errno));
	for (int i = 0; flock(fd, LOCK_EX | LOCK_NB) < 0; i++) {
		if (errno != EWOULDBLOCK || i == 40) {
			int err = errno == EWOULDBLOCK ? EBUSY : errno;

			close(fd);
			if (err == EBUSY)
				return ovl_set_error(fs, -EBUSY,
						     "upper %s is in use by another ovlfs mount",
						     upper);
			return ovl_set_error(fs, -err, "upper %s: cannot lock: %s",
					     upper, strerror(err));
		}
		nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	}
	ofs->upper_lock_fd = fd;
	return 0;
}

/*
 * Hold the lower shared while mounted: a commit into it takes it
 * exclusively, so it never changes under a mount.
 */
static int lock_lower(struct ovlfs *fs, struct ovl_layer *l, const char *lower)
{
	int fd, err;

	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	fd = open(lower, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return ovl_set_error(fs, -errno, "lower %s: %s", lower,
				     strerror(errno));
	for (int i = 0; flock(fd, LOCK_SH | LOCK_NB) < 0; i++) {
		if (errno != EWOULDBLOCK || i == 40) {
			err = errno == EWOULDBLOCK ? -EBUSY : -errno;
			close(fd);
			return ovl_set_error(fs, err, "lower %s is being committed into",
					     lower);
		}
		nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	}
	l->lock_fd = fd;
	return 0;
}

#define VOLATILE_HELP \
	"discard it (ovlfs discard, or remove it), or mount it with " \
	"--volatile-dirty=discard (-o volatile_dirty=discard) to empty it " \
	"or --volatile-dirty=keep to take it as it is"

/* Remove everything in the upper (directory fd FD), keeping its root. */
static int empty_upper(struct ovlfs *fs, int fd, const char *upper)
{
	int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	DIR *dir;
	int err = 0;

	dir = dfd < 0 ? NULL : fdopendir(dfd);
	if (!dir) {
		err = -errno;
		if (dfd >= 0)
			close(dfd);
		return ovl_set_error(fs, err, "upper %s: cannot discard: %s",
				     upper, strerror(-err));
	}
	while (!err && (de = readdir(dir))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		err = ovl_remove_tree(dfd, de->d_name);
		if (err)
			ovl_set_error(fs, err, "upper %s: cannot discard %s/%s: %s",
				      upper, upper, de->d_name, strerror(-err));
		else
			rewinddir(dir);	/* the listing changed under us */
	}
	closedir(dir);
	return err;
}

/*
 * The volatile mark on the upper (locked, directory fd OFS->upper_lock_fd):
 * one left by a mount that did not end cleanly is dealt with as the
 * caller asked, and a volatile mount sets its own, durably before the
 * first unsynced write, so that a crash at any later moment leaves it.
 */
static int check_volatile_mark(struct ovlfs *fs, struct ovl_fs *ofs,
			       const char *upper)
{
	int fd = ofs->upper_lock_fd, err;

	if (ovl_volatile_marked(fd)) {
		switch (fs->volatile_dirty) {
		case OVLFS_VOLATILE_DIRTY_REFUSE:
			return ovl_set_error(fs, -EUCLEAN,
					     "upper %s was used by a volatile mount that was not "
					     "cleanly unmounted (its process was killed or the "
					     "system crashed), so changes may have been lost; "
					     VOLATILE_HELP, upper);
		case OVLFS_VOLATILE_DIRTY_DISCARD:
			err = empty_upper(fs, fd, upper);
			if (err)
				return err;
			ovl_log(fs, OVLFS_LOG_WARNING,
				"upper %s: emptied, as a volatile mount had left it unclean",
				upper);
			break;
		case OVLFS_VOLATILE_DIRTY_KEEP:
			break;
		}
		err = ofs->no_sync ? 0 : ovl_fd_removexattr(fd, OVL_XATTR_VOLATILE);
		if (err)
			return ovl_set_error(fs, err,
					     "upper %s: cannot remove its volatile mark: %s",
					     upper, strerror(-err));
	}
	if (!ofs->no_sync)
		return 0;
	err = ovl_fd_setxattr(fd, OVL_XATTR_VOLATILE, "1", 1, 0);
	if (!err && fsync(fd) < 0)
		err = -errno;
	if (err)
		return ovl_set_error(fs, err,
				     "upper %s: cannot mark it as in volatile use: %s",
				     upper, strerror(-err));
	ofs->volatile_marked = true;
	return 0;
}

/*
 * A new upper starts as a copy of the lower root's metadata: the merged
 * root shows the upper's, and a private copy of the lower would show the
 * lower's.
 */
static void init_upper_root(struct ovl_fs *ofs)
{
	struct stat st;

	if (ovl_fstat(ofs->lowers[0].root_fd, &st) == 0)
		ovl_copy_meta(ofs->is_root, ofs->lowers[0].root_fd, ofs->upper.root_fd, &st,
			      true);
}

#define OVL_XATTR_CREATED "user.ovlfs.created"

void ovl_remove_mount_point(struct ovlfs *fs)
{
	char buf[4];

	if (!fs->mount_point)
		return;
	if (!fs->created_mount_point &&
	    getxattr(fs->mount_point, OVL_XATTR_CREATED, buf, sizeof(buf)) < 0)
		return;
	/* rmdir refuses a non-empty directory and a mount point: good. */
	if (rmdir(fs->mount_point) == 0)
		fs->created_mount_point = false;
}

static int open_layer(struct ovlfs *fs, struct ovl_layer *l, int idx,
		      const char *what, const char *path)
{
	struct stat st;

	l->idx = idx;
	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	l->root_fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (l->root_fd < 0 || fstat(l->root_fd, &st) < 0)
		return ovl_set_error(fs, -errno, "%s %s: %s", what, path,
				     strerror(errno));
	l->dev = st.st_dev;
	return 0;
}

static int make_root(struct ovlfs *fs, struct ovl_fs *ofs)
{
	struct stat st;
	int ufd = -1, lfd = dup(ofs->lowers[0].root_fd);
	int *lstack = NULL, opaque = 0, err;

	if (ofs->upper.root_fd >= 0)
		ufd = dup(ofs->upper.root_fd);
	if ((ofs->upper.root_fd >= 0 && ufd < 0) || lfd < 0 ||
	    fstat(lfd, &st) < 0) {
		err = ovl_set_error(fs, -errno, "cannot open layer roots: %s",
				    strerror(errno));
		goto out_close;
	}
	if (ufd >= 0)
		opaque = ovl_opaque_get(&ofs->fmt, ufd);
	err = ovl_lower_root_stack(ofs, &lstack);
	if (err) {
		err = ovl_set_error(fs, err, "cannot open lower roots: %s",
				    strerror(-err));
		goto out_close;
	}
	ofs->root = ovl_node_new(ofs, NULL, "",
				 (ufd >= 0 ? OVL_IN_UPPER : 0) | OVL_IN_LOWER,
				 ufd, lfd, S_IFDIR,
				 ovl_ino_for(ofs, 0, st.st_dev, st.st_ino));
	if (!ofs->root) {
		err = ovl_set_error(fs, -ENOMEM, "out of memory");
		goto out_close;
	}
	ofs->root->lstack = lstack;
	ofs->root->opaque = opaque > 0;
	return 0;

out_close:
	ovl_lstack_free(ofs, lstack);
	if (ufd >= 0)
		close(ufd);
	if (lfd >= 0)
		close(lfd);
	return err;
}

static void ofs_free(struct ovl_fs *ofs)
{
	if (!ofs)
		return;
	if (ofs->table) {
		ovl_handles_free(ofs);
		ovl_inode_table_destroy(ofs);
	}
	ovl_pt_destroy(ofs);
	/*
	 * A clean end (also of a failed mount): the mark goes while the
	 * lock is still ours. Not synced: see ovlfs_set_volatile.
	 */
	if (ofs->volatile_marked)
		ovl_fd_removexattr(ofs->upper_lock_fd, OVL_XATTR_VOLATILE);
	if (ofs->upper.root_fd >= 0)
		close(ofs->upper.root_fd);
	/* Let go of the layers before the connection goes (unmount_path). */
	if (ofs->upper_lock_fd >= 0)
		close(ofs->upper_lock_fd);
	for (int i = 0; ofs->lowers && i < ofs->nlower; i++) {
		if (ofs->lowers[i].root_fd >= 0)
			close(ofs->lowers[i].root_fd);
		if (ofs->lowers[i].lock_fd >= 0)
			close(ofs->lowers[i].lock_fd);
	}
	free(ofs->lowers);
	ovl_fuse_session_destroy(ofs);
	/* Last: who waits on it may use the layers at once. */
	if (ofs->mp_lock_fd >= 0)
		close(ofs->mp_lock_fd);
	pthread_rwlock_destroy(&ofs->ns_lock);
	pthread_rwlock_destroy(&ofs->fuse.notify_lock);
	pthread_mutex_destroy(&ofs->hardlink_lock);
	free(ofs);
}

/*
 * The mount's source (mountinfo's, mount(8)'s first column) is "ovlfs",
 * as fuse-overlayfs shows its name and the kernel's overlay "overlay";
 * an fsname= in the caller's options comes later and wins.
 */
static char *mount_options(struct ovlfs *fs)
{
	size_t len = 64 + (fs->fuse_options ? strlen(fs->fuse_options) : 0);
	char *o = malloc(len), *p;

	if (!o)
		return NULL;
	/*
	 * default_permissions: the kernel checks access against the
	 * attributes ovlfs reports, exactly as for a local filesystem (ovlfs
	 * itself acts as root on the layers).
	 */
	p = o + sprintf(o, "default_permissions,subtype=ovlfs,%sfsname=ovlfs",
			fs->read_only ? "ro," : "");
	if (fs->fuse_options)
		sprintf(p, ",%s", fs->fuse_options);
	return o;
}

/* Workers may still be busy: no more notifies on the fd about to close. */
static void stop_notify(struct ovl_fs *ofs)
{
	pthread_rwlock_wrlock(&ofs->fuse.notify_lock);
	ofs->fuse.notify_off = true;
	pthread_rwlock_unlock(&ofs->fuse.notify_lock);
}

/*
 * Every inode the kernel caches holds an O_PATH fd here, and the kernel
 * may cache a whole tree: take all the fds this process may have (the
 * hard limit, raised to fs.nr_open where we are allowed to).
 */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	FILE *f;
	long nr_open = 0;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	f = fopen("/proc/sys/fs/nr_open", "re");
	if (f) {
		if (fscanf(f, "%ld", &nr_open) != 1)
			nr_open = 0;
		fclose(f);
	}
	if (nr_open > 0 && (rlim_t)nr_open > rl.rlim_max) {
		struct rlimit more = { (rlim_t)nr_open, (rlim_t)nr_open };

		if (setrlimit(RLIMIT_NOFILE, &more) == 0)
			return;
	}
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
}

static void *loop_main(void *arg)
{
	struct ovl_fs *ofs = arg;

	ofs->fuse.loop_result = ovl_fuse_loop(ofs);
	return NULL;
}

static int start_fuse(struct ovlfs *fs, struct ovl_fs *ofs, struct dirs *d)
{
	char *opts = mount_options(fs);
	char *argv[5];
	int argc = 0, err;
	sigset_t all, old;
	struct stat st;

	if (!opts)
		return ovl_set_error(fs, -ENOMEM, "out of memory");
	argv[argc++] = (char *)"ovlfs";
	argv[argc++] = (char *)"-o";
	argv[argc++] = opts;
	if (fs->debug)
		argv[argc++] = (char *)"-d";
	argv[argc] = NULL;
	raise_fd_limit();
	ofs->fuse.se = ovl_fuse_session_new(ofs, ovl_fuse_ops(), argc,
					     argv);
	free(opts);
	if (!ofs->fuse.se)
		return ovl_set_error(fs, -EINVAL,
				     "cannot start fuse session (bad -o options \"%s\"?)",
				     fs->fuse_options ? fs->fuse_options : "");
	err = ovl_fuse_session_mount(ofs, d->mp);
	if (err && ovl_userns_without_mntns())
		/* fusermount3 is not setuid in there: only mount(2) is left. */
		return ovl_set_error(fs, err,
				     "mount point %s: cannot mount: %s (in a user namespace, a FUSE mount needs a mount namespace of its own: unshare -Urm, podman unshare)",
				     d->mp, strerror(-err));
	if (err)
		return ovl_set_error(fs, err, "mount point %s: cannot mount: %s",
				     d->mp, strerror(-err));
	/* Our threads take no signals: they belong to the application. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	err = pthread_create(&ofs->fuse.loop_thread, NULL, loop_main, ofs);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err) {
		ovl_fuse_session_unmount(ofs->fuse.se);
		return ovl_set_error(fs, -err, "cannot start worker thread: %s",
				     strerror(err));
	}
	/* Answered only once the loop has taken the kernel's INIT. */
	if (stat(d->mp, &st) < 0) {
		err = -errno;
		stop_notify(ofs);
		ovl_fuse_session_exit(ofs->fuse.se);
		ovl_fuse_session_unmount(ofs->fuse.se);
		pthread_join(ofs->fuse.loop_thread, NULL);
		return ovl_set_error(fs, err, "mount point %s: mount is not answering: %s",
				     d->mp, strerror(-err));
	}
	ofs->fuse.conn_dev = st.st_dev;
	err = ovl_uring_wait(ofs, d->mp);
	if (err) {
		stop_notify(ofs);
		ovl_fuse_session_exit(ofs->fuse.se);
		ovl_fuse_session_unmount(ofs->fuse.se);
		pthread_join(ofs->fuse.loop_thread, NULL);
		return err;
	}
	return 0;
}

static void replace(char **field, char *value)
{
	free(*field);
	*field = value;
}

int ovlfs_mount(struct ovlfs *fs)
{
	struct dirs d = { 0 };
	bool upper_exists = false, mp_exists = false;
	struct ovl_fs *ofs = NULL;
	mode_t um;
	int err;

	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "already mounted at %s",
				     fs->mount_point);
	fs->err[0] = '\0';
	fs->created_upper = fs->created_mount_point = false;
	err = check_dirs(fs, &d, &upper_exists, &mp_exists);
	if (err)
		goto out_dirs;
	/*
	 * An interrupted atomic commit is finished (or rolled back) first; a
	 * finished one removes the upper it committed.
	 */
	for (unsigned i = 0; i <= d.nmore && err >= 0; i++) {
		int r = ovl_recover_lower(fs, i ? d.more[i - 1] : d.lower,
					  d.upper);

		if (r < 0)
			err = r;
		else if (r > 0 && d.upper)
			err = ovl_check_dir_or_missing(fs, "upper", d.upper,
						       &upper_exists);
	}
	if (err)
		goto out_dirs;

	ofs = calloc(1, sizeof(*ofs));
	if (!ofs) {
		err = ovl_set_error(fs, -ENOMEM, "out of memory");
		goto out_dirs;
	}
	ofs->pub = fs;
	ofs->upper.root_fd = ofs->upper_lock_fd = ofs->mp_lock_fd = -1;
	ofs->read_only = fs->read_only;
	ofs->no_sync = fs->no_sync && !fs->read_only;
	ofs->no_redirect = fs->no_redirect;
	ofs->lowers = calloc(d.nmore + 1, sizeof(*ofs->lowers));
	if (!ofs->lowers) {
		free(ofs);
		ofs = NULL;
		err = ovl_set_error(fs, -ENOMEM, "out of memory");
		goto out_dirs;
	}
	ofs->nlower = (int)d.nmore + 1;
	for (int i = 0; i < ofs->nlower; i++)
		ofs->lowers[i].root_fd = ofs->lowers[i].lock_fd = -1;
	ofs->inode_mode = fs->inode_mode;
	ofs->is_root = geteuid() == 0;
	ofs->trusted = ovl_global_sys_admin();
	pthread_rwlock_init(&ofs->ns_lock, NULL);
	pthread_rwlock_init(&ofs->fuse.notify_lock, NULL);
	pthread_mutex_init(&ofs->hardlink_lock, NULL);
	/* Read, not change: umask() is the only way, so put it back at once. */
	um = umask(022);
	umask(um);
	ofs->umask = um;

	if (d.upper && !upper_exists) {
		/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
		if (mkdir(d.upper, 0755) < 0) {
			err = ovl_set_error(fs, -errno, "upper %s: cannot create: %s",
					    d.upper, strerror(errno));
			goto out_free;
		}
		fs->created_upper = true;
	}
	if (d.upper)
		err = lock_upper(fs, ofs, d.upper);
	for (int i = 0; !err && i < ofs->nlower; i++) {
		const char *l = i ? d.more[i - 1] : d.lower;

		err = lock_lower(fs, &ofs->lowers[i], l);
		if (!err)
			err = open_layer(fs, &ofs->lowers[i], 0, "lower", l);
	}
	if (!err && d.upper)
		err = open_layer(fs, &ofs->upper, 1, "upper", d.upper);
	if (!err && d.upper)
		err = check_volatile_mark(fs, ofs, d.upper);
	if (!err && d.upper)
		err = ovl_check_upper_format(fs, ofs->upper.root_fd, d.upper,
					     true, &ofs->fmt);
	else if (!err)
		ofs->fmt = ovl_fmt_of(fs->format == OVLFS_FORMAT_KERNEL);
	if (err)
		goto out_rmdirs;
	/*
	 * Not with user.overlay.* markers: the kernel refuses metacopy in
	 * its userxattr mode ("conflicting options: userxattr,metacopy=on"),
	 * so it could not read those files back.
	 */
	if (!err)
		ofs->metacopy = !fs->no_metacopy && !ofs->read_only &&
				!(ofs->fmt.kernel &&
				  !strncmp(ofs->fmt.opaque_xattr, "user.", 5));
	if (fs->created_upper)
		init_upper_root(ofs);
	if (!mp_exists) {
		/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
		if (mkdir(d.mp, 0755) < 0) {
			err = ovl_set_error(fs, -errno,
					    "mount point %s: cannot create: %s",
					    d.mp, strerror(errno));
			goto out_rmdirs;
		}
		fs->created_mount_point = true;
		/* So a later finalization, in another process, knows too. */
		setxattr(d.mp, OVL_XATTR_CREATED, "1", 1, 0);
	}
	if (ovl_inode_table_init(ofs) < 0) {
		err = ovl_set_error(fs, -ENOMEM, "out of memory");
		goto out_rmdirs;
	}
	/*
	 * The lowers share one device numbering (docs/format.md): their
	 * roots' filesystems first, in layer order, so persistent numbers do
	 * not depend on what a mount happens to look at first.
	 */
	for (int i = 1; i < ofs->nlower; i++)
		ovl_key_for(ofs, 0, ofs->lowers[i].dev, 1);
	/* Best effort: without it an unmount returns without waiting. */
	ofs->mp_lock_fd = open(d.mp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ofs->mp_lock_fd >= 0 && flock(ofs->mp_lock_fd, LOCK_SH | LOCK_NB) < 0) {
		close(ofs->mp_lock_fd);
		ofs->mp_lock_fd = -1;
	}
	err = ovl_pt_init(ofs, !fs->no_passthrough);
	if (err)
		err = ovl_set_error(fs, err, "cannot set up passthrough: %s",
				    strerror(-err));
	if (!err)
		err = ovl_uring_init(ofs, fs->io_uring, d.mp);
	if (!err)
		err = make_root(fs, ofs);
	if (!err)
		err = start_fuse(fs, ofs, &d);
	if (err)
		goto out_rmdirs;

	replace(&fs->lower, d.lower);
	if (d.upper)
		replace(&fs->upper, d.upper);
	replace(&fs->mount_point, d.mp);
	for (unsigned i = 0; i < d.nmore; i++) {
		free(fs->more_lowers[i]);
		fs->more_lowers[i] = d.more[i];
	}
	free(d.more);
	dirs_free_places(&d);
	fs->ofs = ofs;
	fs->mounted = true;
	return 0;

out_rmdirs:
	if (fs->created_mount_point)
		/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
		rmdir(d.mp);
out_free:
	ofs_free(ofs);
	/* Only now is the upper unlocked and ours to remove. */
	if (fs->created_upper)
		rmdir(d.upper);
	fs->created_upper = fs->created_mount_point = false;
out_dirs:
	dirs_free(&d);
	return err;
}

/* Cut a connection whose mount is gone but whose files are still open. */
static void abort_connection(dev_t dev)
{
	char p[64];
	int fd;

	snprintf(p, sizeof(p), FUSECTL_DIR "/%u/abort", minor(dev));
	fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT &&
	    mount("fusectl", FUSECTL_DIR, "fusectl", 0, NULL) == 0)
		fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "1", 1) < 0) {
			/* nothing more we can do */
		}
		close(fd);
	}
}

static void teardown(struct ovlfs *fs)
{
	stop_notify(fs->ofs);
	ovl_fuse_session_unmount(fs->ofs->fuse.se);
	ofs_free(fs->ofs);
	fs->ofs = NULL;
	fs->mounted = false;
}

int ovlfs_wait(struct ovlfs *fs)
{
	if (!fs->mounted)
		return -EINVAL;
	pthread_join(fs->ofs->fuse.loop_thread, NULL);
	teardown(fs);
	return 0;
}

int ovlfs_umount(struct ovlfs *fs)
{
	struct ovl_fs *ofs = fs->ofs;
	bool detached = false, ours;
	struct timespec ts;
	struct stat st;

	if (!fs->mounted)
		return -EINVAL;
	/* Still ours at that path? (Asked while the workers still serve.) */
	ours = stat(fs->mount_point, &st) == 0 && st.st_dev == ofs->fuse.conn_dev;
	stop_notify(ofs);
	ovl_fuse_session_exit(ofs->fuse.se);
	/*
	 * End the connection before libfuse closes /dev/fuse: a worker may
	 * still be writing a reply to that fd, and a closed (soon reused)
	 * fd number would take it. A detached unmount (where we may; libfuse
	 * unmounts otherwise) ends it once no file is open; the workers then
	 * leave their read(), and only then does the fd go.
	 */
	if (ours && umount2(fs->mount_point, MNT_DETACH) == 0)
		detached = true;
	else
		ovl_fuse_session_unmount(ofs->fuse.se);
	/*
	 * The workers leave their read() of /dev/fuse when the connection
	 * ends; a detached mount with files still open keeps it alive, so
	 * cut it after a grace period.
	 */
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 2;
	if (pthread_timedjoin_np(ofs->fuse.loop_thread, NULL, &ts) != 0) {
		abort_connection(ofs->fuse.conn_dev);
		pthread_join(ofs->fuse.loop_thread, NULL);
	}
	if (detached)
		ovl_fuse_session_unmount(ofs->fuse.se);
	teardown(fs);
	return 0;
}

/* ---- unmounting from outside ---- */

/*
 * Whether the FUSE mount on MP (the top one) is ovlfs's: fuse.ovlfs, or,
 * mounted with another subtype=, its root answers OVL_XATTR_MOUNT.
 */
static bool ovlfs_fstype(const char *mp, const char *fstype)
{
	char buf[sizeof(OVL_MOUNT_MARK)];

	if (!strcmp(fstype, "fuse.ovlfs"))
		return true;
	if (strcmp(fstype, "fuse") && strncmp(fstype, "fuse.", 5))
		return false;
	return lgetxattr(mp, OVL_XATTR_MOUNT, buf, sizeof(buf)) ==
		       (ssize_t)sizeof(buf) - 1 &&
	       !memcmp(buf, OVL_MOUNT_MARK, sizeof(buf) - 1);
}

/* What find_ovlfs_mount looks for and finds. */
struct mp_find {
	const char *mp;
	int found;
	dev_t dev;
	char fstype[256];
	long owner;
};

static int mp_match(const struct ovl_mount_ent *m, void *arg)
{
	struct mp_find *mf = arg;
	const char *uid;

	if (strcmp(m->point, mf->mp))
		return 0;
	/* The last mount on MP is the one on top: keep going. */
	mf->found = 1;
	mf->dev = m->fs;
	snprintf(mf->fstype, sizeof(mf->fstype), "%s", m->fstype);
	uid = strstr(m->fsopts, ",user_id=");
	mf->owner = uid ? strtol(uid + 9, NULL, 10) : -1;
	return 0;
}

/*
 * Find MP in mountinfo: 1, its device and the uid that mounted it (-1 if
 * not shown) if found; *IS_OVLFS if it is an ovlfs mount.
 */
static int find_ovlfs_mount(const char *mp, dev_t *dev, bool *is_ovlfs,
			    long *owner)
{
	struct mp_find mf = { .mp = mp };
	int err = ovl_mountinfo_walk(mp_match, &mf);

	if (err < 0)
		return err;
	if (mf.found) {
		*dev = mf.dev;
		*owner = mf.owner;
	}
	*is_ovlfs = mf.found && ovlfs_fstype(mp, mf.fstype);
	return mf.found;
}

/* fusermount3 -u MP; its message (the reason it refused) into WHY. */
static int run_fusermount(const char *mp, char *why, size_t len)
{
	int fds[2], status;
	ssize_t n = 0, got;
	pid_t pid;

	why[0] = '\0';
	if (pipe2(fds, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return -errno;
	}
	if (pid == 0) {
		dup2(fds[1], STDERR_FILENO);
		execlp("fusermount3", "fusermount3", "-u", mp, (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	while ((size_t)n + 1 < len &&
	       (got = read(fds[0], why + n, len - 1 - n)) != 0) {
		if (got < 0 && errno != EINTR)
			break;
		if (got > 0)
			n += got;
	}
	why[n] = '\0';
	close(fds[0]);
	while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == ' '))
		why[--n] = '\0';
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && !n)
		snprintf(why, len, "cannot run fusermount3");
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EPERM;
}

int ovlfs_unmount_path(const char *mount_point, char *errbuf, unsigned errlen)
{
	char *mp = NULL, why[256];
	bool is_ovlfs = false;
	long owner = -1;
	dev_t dev = 0;
	int err, fd;

	err = ovl_path_canonical(mount_point, &mp);
	if (err) {
		snprintf(errbuf, errlen, "mount point %s: %s", mount_point,
			 strerror(-err));
		return err;
	}
	err = find_ovlfs_mount(mp, &dev, &is_ovlfs, &owner);
	if (err <= 0 || !is_ovlfs) {
		err = err < 0 ? err : -EINVAL;
		snprintf(errbuf, errlen, "%s is not an ovlfs mount point", mp);
		goto out;
	}
	if (geteuid() == 0) {
		if (umount2(mp, UMOUNT_NOFOLLOW) < 0) {
			err = -errno;
			snprintf(errbuf, errlen, "cannot unmount %s: %s%s", mp,
				 strerror(errno),
				 errno == EBUSY ? " (files still open in it?)" : "");
			goto out;
		}
	} else if (owner >= 0 && owner != (long)getuid()) {
		/* fusermount3 would refuse too, without saying why. */
		err = -EPERM;
		snprintf(errbuf, errlen,
			 "cannot unmount %s: not permitted: mounted by uid %ld",
			 mp, owner);
		goto out;
	} else {
		err = run_fusermount(mp, why, sizeof(why));
		if (err) {
			snprintf(errbuf, errlen, "cannot unmount %s: %s", mp,
				 why[0] ? why : "fusermount3 -u failed");
			goto out;
		}
	}
	/*
	 * Return once the daemon has let go of the layers, so a remount or
	 * a commit can follow at once: it holds LOCK_SH on the directory
	 * under the mount until then (mp_lock_fd). Up to 10 s: a loaded
	 * machine, or a sanitizer's exit-time checks, can keep a daemon's
	 * teardown from running for seconds.
	 */
	fd = open(mp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	for (int i = 0; fd >= 0 && i < 500 && flock(fd, LOCK_EX | LOCK_NB) < 0 &&
			errno == EWOULDBLOCK; i++)
		nanosleep(&(struct timespec){ 0, 20 * 1000 * 1000 }, NULL);
	if (fd >= 0)
		close(fd);
	err = 0;
out:
	free(mp);
	return err;
}
