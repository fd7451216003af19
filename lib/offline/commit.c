/*
 * commit.c: the commit walk, plain and atomic alike: the upper is walked
 * once, with the lower directory of the same path beside it, through fds
 * only (O_NOFOLLOW everywhere): a symlink in either layer is an entry to
 * replace or keep, never a way out. A plain commit changes the lower in
 * place here; an atomic one only stages and journals (atomic.c). Its own
 * file: the walk is the largest part of finalizing.
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

static int same_content(int ud, const char *name, int ld, off_t size)
{
	int a = openat(ud, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	int b = openat(ld, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
	char *ba = NULL, *bb = NULL;
	int ret = 0;

	if (b < 0 && errno == EPERM)
		b = openat(ld, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ba = malloc(1 << 20);
	bb = malloc(1 << 20);
	if (a < 0 || b < 0 || !ba || !bb) {
		ret = a < 0 || b < 0 ? -errno : -ENOMEM;
		goto out;
	}
	ret = 1;
	for (off_t off = 0; off < size && ret == 1;) {
		size_t want = size - off > (1 << 20) ? (1 << 20) : size - off;
		ssize_t na = pread(a, ba, want, off), nb = pread(b, bb, want, off);

		if (na < 0 || nb < 0)
			ret = -errno;
		else if (na != nb || na == 0 || memcmp(ba, bb, na))
			ret = 0;
		else
			off += na;
	}
out:
	free(ba);
	free(bb);
	if (a >= 0)
		close(a);
	if (b >= 0)
		close(b);
	return ret;
}

static bool same_meta(struct fin *f, int ud, int ld, const char *name,
		      const struct stat *us, const struct stat *ls)
{
	int ufd, lfd;
	bool same;

	if (us->st_uid != ls->st_uid || us->st_gid != ls->st_gid ||
	    (us->st_mode & 07777) != (ls->st_mode & 07777) ||
	    us->st_mtim.tv_sec != ls->st_mtim.tv_sec ||
	    us->st_mtim.tv_nsec != ls->st_mtim.tv_nsec)
		return false;
	/* Same xattrs: syncing is cheap to test by listing both. */
	ufd = ovl_open_child(ud, name);
	lfd = ovl_open_child(ld, name);
	same = ufd >= 0 && lfd >= 0;
	if (same) {
		char a[4096], b[4096];
		ssize_t na = ovl_fd_listxattr(ufd, a, sizeof(a));
		ssize_t nb = ovl_fd_listxattr(lfd, b, sizeof(b));

		/* Private names make lists differ: compare values instead. */
		same = na >= 0 && nb >= 0;
		for (char *n = a; same && n < a + na; n += strlen(n) + 1) {
			char va[4096], vb[4096];
			ssize_t x, y;

			if (ovl_xattr_is_private(n))
				continue;
			x = ovl_fd_getxattr(ufd, n, va, sizeof(va));
			y = ovl_fd_getxattr(lfd, n, vb, sizeof(vb));
			same = x == y && x >= 0 && !memcmp(va, vb, x);
		}
		for (char *n = b; same && n < b + nb; n += strlen(n) + 1)
			same = ovl_xattr_is_private(n) ||
			       ovl_fd_getxattr(ufd, n, NULL, 0) >= 0;
	}
	if (ufd >= 0)
		close(ufd);
	if (lfd >= 0)
		close(lfd);
	(void)f;
	return same;
}

/* ---- placing objects ---- */

static struct placed *find_placed(struct fin *f, const struct stat *st)
{
	for (size_t i = 0; i < f->nplaced; i++)
		if (f->placed[i].dev == st->st_dev && f->placed[i].ino == st->st_ino)
			return &f->placed[i];
	return NULL;
}

static int remember_placed(struct fin *f, const struct stat *st, int dirfd,
			   const char *name)
{
	int fd;

	if (S_ISDIR(st->st_mode) || st->st_nlink < 2)
		return 0;
	if (ovl_grow((void **)&f->placed, &f->placed_cap, f->nplaced,
		     sizeof(*f->placed), 64))
		return -ENOMEM;
	fd = ovl_open_child(dirfd, name);
	if (fd < 0)
		return fd;
	f->placed[f->nplaced++] = (struct placed){ st->st_dev, st->st_ino, fd };
	return 0;
}

/*
 * May the inode of upper file UD/NAME itself go into the lower (moved, or
 * linked into the stage), its private xattrs stripped on the way? Only if
 * all its names are in the upper, or it has no private xattr to lose: a
 * name outside the layers must never see it change. (A retry finds the
 * names already moved counted nowhere, but their inode stripped.)
 */
static bool may_take(struct fin *f, int ud, const char *name,
		     const struct stat *us)
{
	if (us->st_nlink == 1 ||
	    ovl_linkmap_seen(&f->names, us->st_dev, us->st_ino) >= us->st_nlink)
		return true;
	return ovl_at_getxattr(ud, name, OVL_XATTR_ORIGIN_TRUSTED, NULL, 0) < 0 &&
	       ovl_at_getxattr(ud, name, OVL_XATTR_ORIGIN_USER, NULL, 0) < 0;
}

/*
 * Build a copy of upper entry UD/NAME (stat ST, not a directory) as
 * DSTDIR/DST: a hard link of the same upper inode's earlier copy, a hard
 * link of the upper file itself (LINK_UPPER, same filesystem), or a copy
 * with all its metadata.
 */
int fin_copy_object(struct fin *f, int ud, const char *name,
		    const struct stat *st, int dstdir, const char *dst,
		    bool link_upper)
{
	struct placed *pl = find_placed(f, st);
	int fd = -1, src, err;

	if (pl)
		return ovl_link_fd(pl->fd, dstdir, dst);
	if (S_ISREG(st->st_mode) && link_upper && may_take(f, ud, name, st)) {
		/*
		 * The link shares the upper's inode: its private xattrs go
		 * only once it is in place (apply), as the upper must stay
		 * intact until then.
		 */
		if (linkat(ud, name, dstdir, dst, 0) == 0)
			return remember_placed(f, st, dstdir, dst);
		if (errno != EPERM && errno != EXDEV)
			return -errno;	/* else copy it after all */
	}
	switch (st->st_mode & S_IFMT) {
	case S_IFREG:
		fd = openat(dstdir, dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
			    O_CLOEXEC, 0600);
		if (fd < 0)
			return -errno;
		src = openat(ud, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (src < 0) {
			err = -errno;
			goto out_close;
		}
		err = ovl_copy_data(src, fd, st->st_size);
		if (!err && f->atomic && fsync(fd) < 0)
			err = -errno;
		close(src);
		if (err)
			goto out_close;
		close(fd);
		break;
	case S_IFLNK: {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(ud, name, target, sizeof(target) - 1);

		if (n < 0)
			return -errno;
		target[n] = '\0';
		if (symlinkat(target, dstdir, dst) < 0)
			return -errno;
		break;
	}
	default:	/* fifo, device, socket: recreated, never opened */
		if (mknodat(dstdir, dst, st->st_mode & (S_IFMT | 0600),
			    st->st_rdev) < 0)
			return -errno;
		break;
	}
	src = ovl_open_child(ud, name);
	fd = ovl_open_child(dstdir, dst);
	err = src < 0 ? src : fd < 0 ? fd : fin_sync_meta(f, src, fd);
	if (src >= 0)
		close(src);
	if (fd >= 0)
		close(fd);
	if (err)	/* a half-made copy (say, an xattr refused) goes */
		unlinkat(dstdir, dst, 0);
	else
		err = remember_placed(f, st, dstdir, dst);
	return err;

out_close:
	close(fd);
	unlinkat(dstdir, dst, 0);
	return err;
}

/* ---- walking the upper ---- */

/*
 * Lower entry LD/NAME (the path pushed) is to go: refused, before it is
 * deleted or journalled, if a mount point is in it. ovl_remove_tree()
 * would stop there, half-way; and an atomic commit would move the mount
 * along into its trash, which it could then never empty.
 */
static int refuse_mounts_in(struct fin *f, int ld, const char *name)
{
	int fd = openat(ld, name, O_PATH | O_NOFOLLOW | O_CLOEXEC), r;
	char *where = NULL;

	if (fd < 0)
		return 0;
	r = ovl_find_mount_under(fd, &where);
	close(fd);
	if (r <= 0)
		return 0;	/* unknown: ovl_remove_tree() still stops */
	r = ovl_set_error(f->fs, -EBUSY,
			  "commit: %s/%s holds a mount point, %s, and ovlfs does not delete "
			  "across mounts: unmount it first",
			  f->lower, f->path, where);
	free(where);
	return r;
}

/* Atomic, without privilege: lower directory LD/NAME (f->path) to be
 * written into or moved opened up first (fin_stage_open_up). */
static int open_up_lower(struct fin *f, int ld, const char *name)
{
	int fd, err;

	if (f->is_root)
		return 0;
	fd = fin_lower_child(f, ld, name);
	if (fd < 0)
		return fd == -ENOENT ? 0 : fd;
	err = fin_stage_open_up(f, fd, NULL);
	close(fd);
	return err;
}

/* Lower entry LD/NAME goes (whiteout, opaque parent). Path pushed. */
static int delete_lower(struct fin *f, int ld, const char *name)
{
	struct stat st;
	char n[32];
	int err;

	/* An atomic commit's rename source is gone from here by then. */
	err = fin_lower_at(f, ld, name, &st);
	if (err <= 0)
		return err;
	err = refuse_mounts_in(f, ld, name);
	if (err)
		return err;
	if (!f->atomic)
		return ovl_remove_tree(ld, name);
	/* A read-only directory moves to trash/ only opened up. */
	if (S_ISDIR(st.st_mode))
		err = open_up_lower(f, ld, name);
	return err ? err : fin_jop(f, 'D', fin_new_op(f, n));
}

/* Metadata of the existing lower LD/NAME becomes that of UD/NAME. */
static int update_meta(struct fin *f, int ud, int ld, const char *name,
		       const struct stat *us)
{
	int src, dst, err;

	if (f->atomic)
		return fin_stage_meta(f, ud, ld, name, us);
	src = ovl_open_child(ud, name);
	dst = ovl_open_child(ld, name);
	/*
	 * US was taken before the contents were committed: moving files out
	 * of an upper directory changes its mtime, the merged view's did not.
	 */
	err = src < 0 ? src : dst < 0 ? dst : fin_sync_meta_times(f, src, dst, us);
	if (src >= 0)
		close(src);
	if (dst >= 0)
		close(dst);
	return err;
}

/* Put upper non-directory UD/NAME in place of whatever LD/NAME is. */
static int place_object(struct fin *f, int ud, const char *name,
			const struct stat *us, int ld, const struct stat *ls)
{
	struct placed *pl = find_placed(f, us);
	struct stat ps;
	char tmp[64];
	int fd, err;

	/*
	 * Already in place: the upper name is a link of the lower one (a
	 * killed run moved another name of it), or the lower name one of
	 * the copy placed for an earlier name. Renaming a link over a link
	 * of the same inode would do nothing and leave the source behind.
	 */
	if (ls && ((ls->st_dev == us->st_dev && ls->st_ino == us->st_ino) ||
		   (pl && ovl_fstat(pl->fd, &ps) == 0 &&
		    ls->st_dev == ps.st_dev && ls->st_ino == ps.st_ino)))
		return pl ? 0 : remember_placed(f, us, ld, name);
	if (ls && S_ISDIR(ls->st_mode)) {
		err = refuse_mounts_in(f, ld, name);
		if (err)
			return err;
	}
	if (f->atomic) {
		char n[32];

		err = ls && S_ISDIR(ls->st_mode) ? open_up_lower(f, ld, name) : 0;
		if (err)
			return err;
		fin_new_op(f, n);
		err = fin_copy_object(f, ud, name, us, f->stage_fd, n, f->same_fs);
		return err ? err : fin_jop(f, 'R', f->next_op);
	}
	if (S_ISREG(us->st_mode) && f->same_fs && !pl && !f->opaque_above &&
	    may_take(f, ud, name, us)) {
		/* Moving beats copying; rename replaces a non-directory. */
		if (ls && S_ISDIR(ls->st_mode)) {
			err = ovl_remove_tree(ld, name);
			if (err)
				return err;
		}
		/*
		 * Stripped before the move: killed after it, no retry would
		 * find the file to strip in the lower.
		 */
		fd = ovl_open_child(ud, name);
		if (fd >= 0) {
			fin_strip_private(fd);
			close(fd);
		}
		if (renameat(ud, name, ld, name) == 0)
			return remember_placed(f, us, ld, name);
		/*
		 * A read-only upper directory (0555) of a caller without
		 * privilege: nothing may leave it, so the file is copied (it
		 * failed with EACCES; opened up instead, a kill would leave
		 * the opened mode for a retry to commit).
		 */
		if (errno != EXDEV &&
		    (f->is_root || (errno != EACCES && errno != EPERM)))
			return -errno;
	}
	if (!f->marked && !f->retry) {
		/* Unmarkable (no xattrs): every later run cleans up. */
		ovl_fd_setxattr(f->upper_fd, XATTR_COMMITTING, "1", 1, 0);
		f->marked = true;
	}
	ovl_tmp_name(&f->tmp_counter, tmp);
	err = fin_copy_object(f, ud, name, us, ld, tmp, false);
	if (err)
		return err;
	if (ls && S_ISDIR(ls->st_mode))
		err = ovl_remove_tree(ld, name);
	if (!err && renameat(ld, tmp, ld, name) < 0)
		err = -errno;
	if (err)
		ovl_remove_tree(ld, tmp);
	return err;
}

/*
 * Moving entries out of upper directory FD changed its times, which the
 * merged view shows: back to US's, for a retry after a failure to see.
 * (Killed in between, a retry takes the changed times: the one thing a
 * killed plain commit may get wrong.)
 */
static void keep_times(int fd, const struct stat *us)
{
	struct timespec ts[2] = { us->st_atim, us->st_mtim };

	futimens(fd, ts);
}

static int commit_subdir(struct fin *f, int ud, int ld, const char *name,
			 const struct stat *us, const struct stat *ls)
{
	bool merge = ls && S_ISDIR(ls->st_mode);
	int cu = -1, cl = -1, err = 0;

	if (!merge && f->atomic && fin_renames_under(f)) {
		char n[32];

		/*
		 * A new directory holding a renamed one: placed empty (R), then
		 * filled by the walk as a merge with that empty directory, so
		 * the renamed one can be placed in it (P, after the R).
		 */
		fin_new_op(f, n);
		if (mkdirat(f->stage_fd, n, 0700) < 0)
			return -errno;
		err = fin_jop(f, 'R', f->next_op);
		cl = err ? -1 : fin_open_dir_at(f->stage_fd, n);
		cu = err ? -1 : fin_open_dir_at(ud, name);
		err = err ? err : cl < 0 ? cl : cu < 0 ? cu : fin_commit_dir(f, cu, cl);
		if (cu >= 0)
			close(cu);
		if (cl >= 0)
			close(cl);
		return err ? err : update_meta(f, ud, ld, name, us);
	}
	if (!merge && f->atomic) {
		char n[32];

		fin_new_op(f, n);
		err = fin_stage_tree(f, ud, name, f->stage_fd, n);
		if (err || f->is_root || (us->st_mode & 0700) == 0700)
			return err ? err : fin_jop(f, 'R', f->next_op);
		/*
		 * Without privilege a read-only directory moves from stage/
		 * to another directory (its "..") only opened up; its M then
		 * gives it its mode.
		 */
		/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
		if (fchmodat(f->stage_fd, n, (us->st_mode | 0700) & 07777, 0) < 0)
			return -errno;
		err = fin_jop(f, 'R', f->next_op);
		return err ? err : update_meta(f, ud, ld, name, us);
	}
	if (f->atomic) {
		err = fin_rename_place(f);
		if (!err && merge)
			err = open_up_lower(f, ld, name);
		if (err)
			return err;
	}
	if (!merge) {
		if (ls)
			err = ovl_remove_tree(ld, name);
		if (!err && mkdirat(ld, name, 0700) < 0)
			err = -errno;
	}
	/* Written before its own mode is applied (after). */
	if (!err && merge && !f->atomic && !f->is_root &&
	    (ls->st_mode & 0700) != 0700)
		err = fin_open_up(ld, name);
	if (!err)
		cu = err = fin_open_dir_at(ud, name);
	if (err >= 0)
		cl = err = fin_lower_dir_at(f, ld, name);
	if (err >= 0)
		err = fin_commit_dir(f, cu, cl);
	if (cu >= 0 && !f->atomic)
		keep_times(cu, us);
	if (cu >= 0)
		close(cu);
	if (cl >= 0)
		close(cl);
	/*
	 * Always: writing the contents changed the lower directory's mtime,
	 * and the merged view shows the upper's.
	 */
	if (!err)
		err = update_meta(f, ud, ld, name, us);
	return err;
}

/* The lower file stays (same bytes): only its metadata may change. */
static int keep_lower(struct fin *f, int ud, int ld, const char *name,
		      const struct stat *us, const struct stat *ls)
{
	int err = same_meta(f, ud, ld, name, us, ls)
			  ? 0
			  : update_meta(f, ud, ld, name, us);

	fin_tick(f, us->st_size);
	return err;
}

static int commit_entry(struct fin *f, int ud, int ld, const char *name)
{
	struct stat us, ls;
	bool have_l;
	int err;

	if (fstatat(ud, name, &us, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	err = fin_lower_at(f, ld, name, &ls);
	if (err < 0)
		return err;
	have_l = err;
	if (S_ISDIR(us.st_mode)) {
		fin_tick(f, 0);
		return commit_subdir(f, ud, ld, name, &us, have_l ? &ls : NULL);
	}
	/* A metacopy file's bytes are the lower's own (offline/metacopy.c). */
	err = S_ISREG(us.st_mode) ?
		      fin_metacopy(f, ud, ld, name,
				   have_l && S_ISDIR(ls.st_mode)) : 0;
	if (err < 0)
		return err;
	if (err == 3) {
		fin_tick(f, us.st_size);
		return 0;
	}
	if (err == 1)
		return keep_lower(f, ud, ld, name, &us, &ls);
	if (err == 2 && fstatat(ud, name, &us, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	/* Same bytes already there: keep the lower file, fix metadata. */
	if (S_ISREG(us.st_mode) && have_l && S_ISREG(ls.st_mode) &&
	    us.st_nlink == 1 && us.st_size == ls.st_size) {
		err = same_content(ud, name, ld, us.st_size);
		if (err < 0)
			return err;
		if (err == 1)
			return keep_lower(f, ud, ld, name, &us, &ls);
	}
	err = place_object(f, ud, name, &us, ld, have_l ? &ls : NULL);
	fin_tick(f, S_ISREG(us.st_mode) ? us.st_size : 0);
	return err;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool in_sorted(char **v, size_t n, const char *s)
{
	return bsearch(&s, v, n, sizeof(*v), cmp_str) != NULL;
}

/*
 * Under opaque upper directory UD: the entries of lower LD (listed in LL)
 * that UD does not replace (REAL: UD's entries, sorted) go.
 */
static int delete_hidden(struct fin *f, int ld, char **real, size_t nreal,
			 const struct ovl_dirlist *ll)
{
	size_t saved;
	int err = 0;

	for (size_t i = 0; i < ll->n && !err; i++) {
		const char *c = ll->ents[i].name;

		if (ovl_is_wh_name(c) || in_sorted(real, nreal, c))
			continue;
		if (f->fmt.kernel) {
			struct stat lst;

			/* A marker of the lower itself is no entry. */
			if (fstatat(ld, c, &lst, AT_SYMLINK_NOFOLLOW) == 0 &&
			    ovl_is_kernel_wh(&lst))
				continue;
		}
		err = fin_path_push(f, c, &saved);
		if (!err)
			err = delete_lower(f, ld, c);
		if (err)
			return err;
		fin_path_pop(f, saved);
	}
	return 0;
}

/*
 * Plain commit, opaque upper directory UD over lower LD: make UD an
 * ordinary directory without changing what the pair shows, before any of
 * its entries moves down (a moved entry under an opaque marker would be
 * hidden, and a retry would delete it). The lower entries it hides go;
 * its subdirectories over lower ones become opaque themselves; then the
 * marker goes.
 */
static int unmark_opaque(struct fin *f, int ud, int ld, char **real,
			 size_t nreal, const struct ovl_dirlist *ll)
{
	size_t saved;
	int err = delete_hidden(f, ld, real, nreal, ll);

	for (size_t i = 0; i < nreal && !err; i++) {
		char redir[OVL_REDIRECT_MAX + 1];
		struct stat us, ls;
		int cu;

		if (fstatat(ud, real[i], &us, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(us.st_mode) ||
		    fstatat(ld, real[i], &ls, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(ls.st_mode))
			continue;	/* nothing of the lower's to hide */
		err = fin_path_push(f, real[i], &saved);
		if (err)
			return err;
		cu = fin_open_dir_at(ud, real[i]);
		/*
		 * A renamed directory, now in the lower, has a redirect naming
		 * its own path (rename.c): it shows that lower directory.
		 */
		err = cu < 0 ? cu : ovl_redirect_get(&f->fmt, cu, redir);
		err = err < 0 ? err : err > 0 ? 0 : ovl_opaque_set(&f->fmt, cu);
		if (cu >= 0)
			close(cu);
		if (err)
			return fin_fail(f, err, "cannot mark upper directory opaque");
		fin_path_pop(f, saved);
	}
	if (err)
		return err;
	err = ovl_opaque_clear(&f->fmt, ud);
	return err ? fin_fail(f, err, "cannot remove opaque marker") : 0;
}

/*
 * Can a plain commit change upper directory UD (its markers: user.*
 * xattrs need write permission)? A read-only one of a caller without
 * privilege it could only open up, and a kill meanwhile would leave the
 * opened mode for a retry to commit: it leaves it as it is (freeze).
 */
static bool upper_writable(struct fin *f, int ud)
{
	struct stat st;

	return f->is_root || (fstat(ud, &st) == 0 && (st.st_mode & 0700) == 0700);
}

/* Debris of a killed plain commit: its temporary copies in LD. */
static int remove_debris(struct fin *f, int ld, const struct ovl_dirlist *ll)
{
	size_t saved;
	int err = 0;

	for (size_t i = 0; i < ll->n && !err; i++) {
		const char *c = ll->ents[i].name;

		if (strncmp(c, OVL_TMP_PREFIX, strlen(OVL_TMP_PREFIX)))
			continue;
		err = fin_path_push(f, c, &saved);
		if (!err)
			err = ovl_remove_tree(ld, c);
		if (err)
			return fin_fail(f, err, "cannot remove debris");
		fin_path_pop(f, saved);
	}
	return 0;
}

int fin_commit_dir(struct fin *f, int ud, int ld)
{
	struct ovl_dirlist ul = { 0 }, ll = { 0 };
	char **real = NULL;
	int *marker = NULL;	/* per upper entry: ovl_marker's answer */
	size_t nreal = 0, saved;
	bool above = f->opaque_above;	/* the parent's, given back at the end */
	int err, opaque;

	err = ovl_dirlist_read(ud, &ul);
	if (err)
		return fin_fail(f, err, "cannot read upper directory");
	opaque = ovl_opaque_get(&f->fmt, ud);
	if (opaque < 0) {
		/* Not knowing would merge what the upper hides. */
		err = opaque;
		fin_fail(f, err, "cannot read opaque marker");
		goto out;
	}
	/*
	 * Under an opaque directory whose marker stays, nothing below is
	 * marked opaque (a mount looks nothing up in the lower there): a
	 * directory shows nothing of the lower's, but a renamed one, whose
	 * redirect names its own lower directory, and what is in it.
	 */
	if (!opaque && above) {
		char redir[OVL_REDIRECT_MAX + 1];

		opaque = ovl_redirect_get(&f->fmt, ud, redir) > 0 ? 0 : 1;
	}
	f->opaque_above = false;
	real = calloc(ul.n + 1, sizeof(*real));
	marker = calloc(ul.n + 1, sizeof(*marker));
	if (!real || !marker) {
		err = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ul.n; i++) {
		char buf[NAME_MAX + 2];
		const char *t;

		err = ovl_marker(&f->fmt, ud, &ul.ents[i], buf, &t);
		if (err < 0)
			goto out_fail;
		marker[i] = err;
		if (!err)
			real[nreal++] = ul.ents[i].name;
	}
	err = 0;
	qsort(real, nreal, sizeof(*real), cmp_str);

	if (opaque > 0 || (f->retry && !f->atomic)) {
		err = ovl_dirlist_read(ld, &ll);
		if (err) {
			fin_fail(f, err, "cannot read lower directory");
			goto out;
		}
	}
	if (f->retry && !f->atomic) {
		err = remove_debris(f, ld, &ll);
		if (err)
			goto out;
	}
	/*
	 * Deletions first: whiteouts, and all of the lower under opaque. A
	 * plain commit changes the upper as it goes, so that the two show
	 * the same at every step: a commit stopped anywhere can be retried.
	 */
	if (opaque > 0 && (f->atomic || above || !upper_writable(f, ud)))
		f->opaque_above = true;
	if (opaque > 0) {
		err = f->opaque_above ? delete_hidden(f, ld, real, nreal, &ll)
				      : unmark_opaque(f, ud, ld, real, nreal, &ll);
		if (err)
			goto out_fail;
	}
	for (size_t i = 0; i < ul.n && !err; i++) {
		char buf[NAME_MAX + 2];
		const char *target;

		if (!marker[i])
			continue;
		err = ovl_marker(&f->fmt, ud, &ul.ents[i], buf, &target);
		if (err < 0)
			goto out_fail;
		err = 0;
		if (!target)
			continue;	/* opaque marker, debris */
		if (in_sorted(real, nreal, target))
			continue;	/* an upper entry replaces it anyway */
		err = fin_path_push(f, target, &saved);
		if (!err)
			err = delete_lower(f, ld, target);
		if (err)
			goto out_fail;
		fin_path_pop(f, saved);
	}
	for (size_t i = 0; i < nreal && !err; i++) {
		err = fin_path_push(f, real[i], &saved);
		if (!err)
			err = commit_entry(f, ud, ld, real[i]);
		if (err)
			goto out_fail;
		fin_path_pop(f, saved);
	}
	goto out;
out_fail:
	/* Keep the deepest message: it names the path that failed. */
	if (!f->fs->err[0])
		fin_fail(f, err, "commit");
out:
	f->opaque_above = above;
	free(real);
	free(marker);
	ovl_dirlist_free(&ul);
	ovl_dirlist_free(&ll);
	return err;
}

int fin_commit(struct fin *f, bool atomic)
{
	struct stat ls, us;
	int err;

	f->atomic = atomic;
	f->atomic_or_commit = true;
	err = fin_take_lower(f);
	if (!err)
		err = fin_take_upper(f);
	if (err)
		return err == 1 ? 0 : err;
	if (fstat(f->lower_fd, &ls) < 0 || fstat(f->upper_fd, &us) < 0)
		return ovl_set_error(f->fs, -errno, "cannot stat layers: %s",
				     strerror(errno));
	f->same_fs = ls.st_dev == us.st_dev;
	/* A killed plain commit's renames are finished first, from its plan. */
	if (fin_exists_at(f->lower_fd, OVL_RENAME_WORKDIR))
		err = fin_renames_plain(f);
	if (!err)
		err = fin_renames_plan(f);
	/*
	 * A source on another filesystem mounted inside the lower cannot be
	 * renamed: then the renamed trees are copied into the upper instead
	 * (correct, not fast).
	 */
	if (!err && !fin_renames_placeable(f)) {
		fin_renames_free(f);
		err = fin_plain_redirects(f);
	} else if (!err && !atomic) {
		/*
		 * A renamed metacopy file's data is a lower file the walk
		 * may delete (its old name's whiteout) or the renames move
		 * before the walk reaches it: it comes in first. (An atomic
		 * commit stages it from the lower, which stays as it is until
		 * the journal is applied.)
		 */
		err = fin_metacopy_fill_moved(f, f->upper_fd, f->lower_fd);
		if (!err)
			err = fin_renames_plain(f);
	}
	if (err)
		return err;
	f->prog.phase = "commit";
	fin_count_tree(f->upper_fd, &f->prog.entries_total,
		       &f->prog.bytes_total, &f->names);
	fin_report(f, true);
	if (atomic) {
		err = fin_commit_atomic(f);
	} else {
		f->retry = ovl_fd_getxattr(f->upper_fd, XATTR_COMMITTING, NULL,
					   0) != -ENODATA;
		err = fin_commit_dir(f, f->upper_fd, f->lower_fd);
		keep_times(f->upper_fd, &us);
		/* Failing (not killed), a copy removes its temporary file. */
		if (err && f->marked)
			ovl_fd_removexattr(f->upper_fd, XATTR_COMMITTING);
		if (!err)
			err = fin_sync_meta_times(f, f->upper_fd, f->lower_fd, &us);
		/* The lower is durable before the upper goes. */
		if (!err && syncfs(f->lower_fd) < 0)
			err = -errno;
		if (err && !f->fs->err[0])
			fin_fail(f, err, "commit");
		if (!err)
			err = fin_remove_upper(f);
	}
	fin_report(f, true);
	return err;
}
