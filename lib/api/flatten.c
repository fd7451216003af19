/*
 * flatten.c: write the merged view of every layer to a new directory.
 *
 * The merged view is read through a mount, so flatten shows exactly what
 * a mount shows: one implementation of lookup, whiteouts and merging, not
 * two that could disagree. A mounted handle is read where it is mounted;
 * an unmounted one gets a private read-only mount (with the upper, if it
 * exists) for the duration of the copy, served by a child process (see
 * serve_view).
 *
 * The copy goes through fds and *at() calls only, never following a
 * symlink, and keeps owners, modes, times, xattrs and hard links (files
 * the view shows with one inode number and several links).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "api/api.h"

#define MAX_DEPTH 4096

struct flat {
	struct ovlfs *fs;
	bool is_root;			/* may chown: ovl_copy_meta */
	const char *dest;		/* as given, for messages */
	int dest_fd;			/* O_PATH of DEST */
	struct ovl_linkmap links;	/* linked files: first path in DEST */
	char path[PATH_MAX];		/* relative, being copied */
	size_t plen;
};

static int flat_fail(struct flat *f, int err, const char *what)
{
	if (f->fs->err[0])
		return err;	/* the deepest message names the path */
	return ovl_set_error(f->fs, err, "flatten: %s %s/%s: %s", what, f->dest,
			     f->path, strerror(-err));
}

static int copy_dir(struct flat *f, int sfd, int dfd, int depth);

/* Copy entry NAME of SFD (stat ST) into DFD; f->path names it. */
static int copy_entry(struct flat *f, int sfd, int dfd, const char *name,
		      const struct stat *st, int depth)
{
	int s = -1, d = -1, err = 0;
	const char *first;
	char *target;
	ssize_t n;

	switch (st->st_mode & S_IFMT) {
	case S_IFDIR:
		if (mkdirat(dfd, name, 0700) < 0)
			return flat_fail(f, -errno, "cannot create");
		s = openat(sfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			   O_CLOEXEC);
		d = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			   O_CLOEXEC);
		if (s < 0 || d < 0)
			err = flat_fail(f, -errno, "cannot open");
		else
			err = copy_dir(f, s, d, depth + 1);
		break;
	case S_IFREG:
		first = NULL;
		if (st->st_nlink > 1 &&
		    ovl_linkmap_first(&f->links, st->st_dev, st->st_ino,
				      f->path, &first) < 0)
			return -ENOMEM;
		if (first) {
			/* Only directories we made lie on FIRST's path. */
			if (linkat(f->dest_fd, first, dfd, name, 0) < 0)
				return flat_fail(f, -errno, "cannot link");
			return 0;
		}
		s = openat(sfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (s < 0)
			return flat_fail(f, -errno, "cannot read");
		d = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
			   O_CLOEXEC, 0600);
		if (d < 0)
			err = flat_fail(f, -errno, "cannot create");
		else
			err = ovl_copy_data(s, d, st->st_size);
		if (err)
			err = flat_fail(f, err, "cannot copy");
		break;
	case S_IFLNK:
		target = malloc(st->st_size + 1);
		if (!target)
			return -ENOMEM;
		n = readlinkat(sfd, name, target, st->st_size + 1);
		if (n < 0 || n > st->st_size) {
			free(target);
			return flat_fail(f, n < 0 ? -errno : -EAGAIN,
					 "cannot read the link");
		}
		target[n] = '\0';
		if (symlinkat(target, dfd, name) < 0)
			err = flat_fail(f, -errno, "cannot create");
		free(target);
		break;
	default:
		if (mknodat(dfd, name, (st->st_mode & S_IFMT) | 0600,
			    st->st_rdev) < 0)
			err = flat_fail(f, -errno, "cannot create");
		break;
	}
	if (s >= 0)
		close(s);
	if (d >= 0)
		close(d);
	if (err)
		return err;
	/* Owner, mode, xattrs, then times last (directories: after children). */
	s = ovl_open_child(sfd, name);
	d = ovl_open_child(dfd, name);
	if (s < 0 || d < 0)
		err = flat_fail(f, s < 0 ? s : d, "cannot open");
	else
		err = ovl_copy_meta(f->is_root, s, d, st, true);
	if (err)
		err = flat_fail(f, err, "cannot copy the metadata of");
	if (s >= 0)
		close(s);
	if (d >= 0)
		close(d);
	return err;
}

static int copy_dir(struct flat *f, int sfd, int dfd, int depth)
{
	struct ovl_dirlist dl;
	size_t saved = f->plen;
	int err;

	if (depth > MAX_DEPTH)
		return flat_fail(f, -ELOOP, "too deep at");
	err = ovl_dirlist_read(sfd, &dl);
	if (err)
		return flat_fail(f, err, "cannot list");
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *name = dl.ents[i].name;
		size_t len = strlen(name);
		struct stat st;

		if (saved + len + 2 > sizeof(f->path)) {
			err = flat_fail(f, -ENAMETOOLONG, "path too long at");
			break;
		}
		if (saved)
			f->path[f->plen++] = '/';
		memcpy(f->path + f->plen, name, len + 1);
		f->plen += len;
		if (fstatat(sfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			err = flat_fail(f, -errno, "cannot stat");
		else
			err = copy_entry(f, sfd, dfd, name, &st, depth);
		f->plen = saved;
		f->path[saved] = '\0';
	}
	ovl_dirlist_free(&dl);
	return err;
}

/* Is NAME one of flatten's temporaries beside DEST (its last component BASE)? */
static bool is_flatten_temp(const char *name, const char *base)
{
	return ovl_is_run_name(name, base, ".partial-") ||
	       ovl_is_run_name(name, base, ".flatten-");
}

/*
 * What killed flattens to DEST left beside it: DEST.partial-XXXXXX (a half
 * copy, maybe large) and DEST.flatten-XXXXXX (an empty mount point). Each
 * run holds a lock on its own while it lives (flatten_from,
 * ovlfs_flatten), so a dead run's go (ovl_dead_runs).
 */
static void remove_debris(const char *dest)
{
	const char *base;
	int dfd = ovl_open_parent(dest, O_RDONLY, &base);

	if (dfd >= 0) {
		ovl_dead_runs(dfd, is_flatten_temp, base, true);
		close(dfd);
	}
}

/*
 * Copy the tree at SRC (a mounted view) to the new directory DEST. It is
 * written under a temporary name beside DEST and renamed to DEST once
 * whole: killed midway, flatten leaves no half-made DEST that a retry
 * would refuse (or a user take for the whole), only DEST.partial-XXXXXX.
 */
static int flatten_from(struct flat *f, const char *src)
{
	int sfd, pfd = -1, dfd = -1, err;
	struct stat st;
	char *tmp = NULL, *tbase = NULL;
	const char *base;

	sfd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0 || fstat(sfd, &st) < 0)
		return ovl_set_error(f->fs, -errno, "flatten: %s: %s", src,
				     strerror(errno));
	pfd = ovl_open_parent(f->dest, O_PATH, &base);
	if (pfd < 0) {
		err = ovl_set_error(f->fs, pfd, "flatten: %s: %s", f->dest,
				    strerror(-pfd));
		goto out;
	}
	tmp = ovl_path_with_suffix(f->dest, ".partial-XXXXXX");
	if (!tmp || !mkdtemp(tmp)) {
		err = ovl_set_error(f->fs, tmp ? -errno : -ENOMEM,
				    "flatten: %s: cannot create a directory beside it: %s",
				    f->dest, strerror(tmp ? errno : ENOMEM));
		goto out;
	}
	tbase = strrchr(tmp, '/') ? strrchr(tmp, '/') + 1 : tmp;
	dfd = openat(pfd, tbase, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	f->dest_fd = dfd < 0 ? -1 : ovl_reopen(dfd, O_PATH | O_DIRECTORY);
	/* Held while we live: a later run removes it only once we are dead. */
	err = 0;
	if (dfd >= 0 && flock(dfd, LOCK_EX | LOCK_NB) < 0)
		err = -errno;
	if (dfd < 0 || f->dest_fd < 0 || err)
		err = ovl_set_error(f->fs, -errno, "flatten: %s: %s", f->dest,
				    strerror(errno));
	else
		err = copy_dir(f, sfd, dfd, 0);
	if (!err)
		err = ovl_copy_meta(f->is_root, sfd, dfd, &st, true);
	/* NOREPLACE: a DEST made meanwhile by someone else stays theirs. */
	if (!err && renameat2(pfd, tbase, pfd, base, RENAME_NOREPLACE) < 0)
		err = ovl_set_error(f->fs, -errno, "flatten: %s: cannot rename %s to it: %s",
				    f->dest, tmp, strerror(errno));
	if (err && !f->fs->err[0])
		ovl_set_error(f->fs, err, "flatten: %s: %s", f->dest,
			      strerror(-err));
	/* A half-written copy is no use to anyone: it goes. */
	if (err)
		ovl_remove_tree(pfd, tbase);
out:
	if (dfd >= 0)
		close(dfd);
	if (f->dest_fd >= 0)
		close(f->dest_fd);
	if (pfd >= 0)
		close(pfd);
	close(sfd);
	free(tmp);
	return err;
}

/* A private read-only mount of FS's layers at a new directory MP. */
static struct ovlfs *mount_view(struct ovlfs *fs, const char *mp, int *errp)
{
	struct ovlfs *v = ovlfs_new(fs->lower);
	struct stat st;
	int err = 0;

	*errp = -ENOMEM;
	if (!v)
		return NULL;
	for (unsigned i = 0; i < fs->n_more_lowers && !err; i++)
		err = ovlfs_add_lower(v, fs->more_lowers[i]);
	if (!err && !fs->read_only && fs->upper && stat(fs->upper, &st) == 0)
		err = ovlfs_set_upper(v, fs->upper);
	else if (!err)
		err = ovlfs_set_read_only(v, true);
	if (!err)
		err = ovlfs_set_format(v, fs->format);
	if (!err)
		err = ovlfs_set_mount_point(v, mp);
	if (!err)
		err = ovlfs_set_fuse_options(v, "ro");
	if (!err)
		err = ovlfs_set_passthrough(v, false);
	if (!err)
		err = ovlfs_mount(v);
	if (err) {
		memcpy(fs->err, v->err, sizeof(fs->err));
		ovlfs_free(v);
		*errp = err;
		return NULL;
	}
	return v;
}

/*
 * DEST may not lie in a layer (the copy would show up in what it copies,
 * or be written into a lower) nor hold one: by identity, so a bind mount
 * or symlink alias of a layer's directory is refused too.
 */
static int check_dest(struct ovlfs *fs, const char *dest)
{
	struct ovl_place d, l;
	int err = ovl_place_get(dest, &d);

	if (err)
		return ovl_set_error(fs, err, "flatten: %s: %s", dest,
				     strerror(-err));
	for (unsigned i = 0; !err && i <= fs->n_more_lowers + 2; i++) {
		const char *p = i <= fs->n_more_lowers ? ovlfs_lower_at(fs, i) :
			        i == fs->n_more_lowers + 1 ?
				(fs->read_only ? NULL : fs->upper) :
				(fs->mounted ? fs->mount_point : NULL);
		char *via = NULL;

		if (!p || ovl_place_get(p, &l) < 0)
			continue;
		if (ovl_place_overlap(&d, &l, &via) != OVL_APART)
			err = ovl_set_error(fs, -EINVAL,
					    "flatten: %s overlaps the %s %s%s%s%s",
					    dest, i <= fs->n_more_lowers ? "layer" :
					    i == fs->n_more_lowers + 1 ? "upper" :
					    "mount point", p, via ? " (as " : "",
					    via ? via : "", via ? ")" : "");
		free(via);
		ovl_place_free(&l);
	}
	ovl_place_free(&d);
	return err;
}

/* What the child serving the view tells its parent once mounted. */
struct view_status {
	int err;		/* 0: mounted */
	int ns;			/* in a mount namespace of its own */
	char msg[sizeof(((struct ovlfs *)0)->err)];
};

/*
 * The view is served by a child process, never by this one: a process
 * that serves a FUSE mount and reads it too cannot die when killed (a
 * thread waiting for an answer that its dead server threads will never
 * give keeps /dev/fuse open, and every reader of the mount hangs). The
 * child dies with its parent (PR_SET_PDEATHSIG) and serves until the
 * parent closes its end of SOCK. As root it mounts in a mount namespace
 * of its own, which goes with it: a killed flatten leaves no mount.
 */
static void serve_view(struct ovlfs *fs, const char *mp, int sock,
		       pid_t parent)
{
	struct view_status vs = { 0 };
	struct ovlfs *view;
	char c;

	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(1);
	vs.ns = unshare(CLONE_NEWNS) == 0 &&
		mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0;
	view = mount_view(fs, mp, &vs.err);
	if (view)
		vs.err = 0;
	else
		memcpy(vs.msg, fs->err, sizeof(vs.msg));
	if (write(sock, &vs, sizeof(vs)) != (ssize_t)sizeof(vs) || !view)
		_exit(1);
	while (read(sock, &c, 1) < 0 && errno == EINTR)
		;
	ovlfs_free(view);	/* unmounts */
	_exit(0);
}

/*
 * Start the child serving the view of FS at MP (absolute); *SRC: where
 * this process reads it, *PID and *SOCK for stop_view.
 */
static int start_view(struct ovlfs *fs, const char *mp, char **src,
		      pid_t *pid, int *sock)
{
	struct view_status vs;
	pid_t parent = getpid();
	int sv[2], err;
	ssize_t n;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return ovl_set_error(fs, -errno, "flatten: socketpair: %s",
				     strerror(errno));
	*pid = fork();
	if (*pid < 0) {
		err = -errno;
		close(sv[0]);
		close(sv[1]);
		return ovl_set_error(fs, err, "flatten: fork: %s", strerror(-err));
	}
	if (*pid == 0) {
		close(sv[0]);
		serve_view(fs, mp, sv[1], parent);
	}
	close(sv[1]);
	*sock = sv[0];
	do
		n = read(*sock, &vs, sizeof(vs));
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof(vs) && !vs.err) {
		/* The view is in the child's namespace: reach it through it. */
		if (!vs.ns)
			*src = strdup(mp);
		else if (asprintf(src, "/proc/%d/root%s", (int)*pid, mp) < 0)
			*src = NULL;
		if (*src)
			return 0;
		vs.err = -ENOMEM;
		vs.msg[0] = '\0';
	} else if (n != (ssize_t)sizeof(vs)) {
		vs.err = -ECHILD;
		snprintf(vs.msg, sizeof(vs.msg),
			 "flatten: the process serving the view of the layers died");
	}
	close(*sock);
	waitpid(*pid, NULL, 0);
	if (vs.msg[0]) {
		vs.msg[sizeof(vs.msg) - 1] = '\0';
		memcpy(fs->err, vs.msg, sizeof(vs.msg));
		return vs.err;
	}
	return ovl_set_error(fs, vs.err, "flatten: cannot mount the view: %s",
			     strerror(-vs.err));
}

static void stop_view(pid_t pid, int sock)
{
	close(sock);	/* the child unmounts and exits */
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
}

int ovlfs_flatten(struct ovlfs *fs, const char *dest)
{
	struct flat f = { .fs = fs, .dest = dest, .dest_fd = -1 };
	char *mp = NULL, *abs = NULL, *src = NULL;
	int err, sock = -1, mpfd = -1;
	struct stat st;
	pid_t pid = -1;

	fs->err[0] = '\0';
	if (!dest || !*dest)
		return ovl_set_error(fs, -EINVAL, "flatten: no destination");
	err = lstat(dest, &st) == 0 ? EEXIST : errno == ENOENT ? 0 : errno;
	if (err)
		return ovl_set_error(fs, -err, "flatten: %s: %s", dest,
				     strerror(err));
	err = check_dest(fs, dest);
	if (err)
		return err;
	f.is_root = geteuid() == 0;
	/* Its mount would recover, and flatten changes no layer. */
	for (unsigned i = 0; !fs->mounted && i <= fs->n_more_lowers; i++) {
		err = ovl_refuse_pending_commit(fs, "flatten",
						ovlfs_lower_at(fs, i), fs->upper);
		if (err)
			return err;
	}
	remove_debris(dest);
	if (!fs->mounted) {
		mp = ovl_path_with_suffix(dest, ".flatten-XXXXXX");
		if (!mp || !mkdtemp(mp)) {
			err = ovl_set_error(fs, mp ? -errno : -ENOMEM,
					    "flatten: cannot make a mount point next to %s: %s",
					    dest, strerror(mp ? errno : ENOMEM));
			free(mp);
			return err;
		}
		/* Held while we live, as the copy's (remove_debris). */
		mpfd = open(mp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (mpfd >= 0)
			flock(mpfd, LOCK_EX | LOCK_NB);
		err = ovl_path_canonical(mp, &abs);
		if (err)
			ovl_set_error(fs, err, "flatten: %s: %s", mp, strerror(-err));
		else
			err = start_view(fs, abs, &src, &pid, &sock);
		if (err) {
			rmdir(mp);
			if (mpfd >= 0)
				close(mpfd);
			free(mp);
			free(abs);
			return err;
		}
	}
	err = flatten_from(&f, src ? src : fs->mount_point);
	if (src) {
		stop_view(pid, sock);
		rmdir(mp);
	}
	if (mpfd >= 0)
		close(mpfd);
	free(mp);
	free(abs);
	free(src);
	ovl_linkmap_free(&f.links);
	return err;
}
