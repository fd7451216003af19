/*
 * redirect.c: an upper with renamed directories, made plain before commit.
 *
 * A directory renamed through the mount carries a redirect (docs/format.md):
 * its lower part is elsewhere in the lower. The commit walk compares each
 * upper directory with the lower one at the same path, so before it runs,
 * every directory that shows lower entries from somewhere else (a
 * redirected one, and the merged ones under it) gets those entries copied
 * in, and becomes opaque without a redirect. This is a copy of the renamed
 * trees, not one rename in the lower: correct, not fast. A commit uses it
 * only where rename.c cannot rename (a renamed directory on another
 * filesystem mounted inside the lower: rename(2) cannot cross it).
 *
 * Every step keeps the merged view as it was, so a kill at any point
 * leaves an upper that shows the same tree (and a later commit finishes
 * the job): a copied entry is built under a temporary name and renamed
 * into place, where it shadows the lower entry it equals; the directory
 * is marked opaque only when all of them are in, and its redirect removed
 * after that (an opaque directory ignores it). Directories are done
 * deepest first, so a directory that loses its lower part has none under
 * it that still needs it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "offline/offline.h"

static int copy_lower(struct fin *f, int ld, const char *name, int ud,
		      const char *dst);

/* Lower directory LD/NAME and all in it as UD/DST (which is new). */
static int copy_lower_dir(struct fin *f, int ld, const char *name, int ud,
			  const char *dst)
{
	struct ovl_dirlist dl;
	int src, out = -1, err;

	src = fin_open_dir_at(ld, name);
	if (src < 0)
		return src;
	if (mkdirat(ud, dst, 0700) < 0) {
		err = -errno;
		goto out;
	}
	out = fin_open_dir_at(ud, dst);
	if (out < 0) {
		err = out;
		goto out;
	}
	err = ovl_dirlist_read(src, &dl);
	for (size_t i = 0; !err && i < dl.n; i++)
		if (!ovl_is_wh_name(dl.ents[i].name))
			err = copy_lower(f, src, dl.ents[i].name, out,
					 dl.ents[i].name);
	ovl_dirlist_free(&dl);
	if (!err)
		err = fin_sync_meta(f, src, out);
out:
	if (out >= 0)
		close(out);
	close(src);
	return err;
}

static int copy_lower(struct fin *f, int ld, const char *name, int ud,
		      const char *dst)
{
	struct stat st;

	if (fstatat(ld, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (S_ISDIR(st.st_mode))
		return copy_lower_dir(f, ld, name, ud, dst);
	return fin_copy_object(f, ld, name, &st, ud, dst, false);
}

static int drop_kernel_whiteouts(int ud)
{
	struct ovl_dirlist dl;
	struct stat st;
	int err = ovl_dirlist_read(ud, &dl);

	for (size_t i = 0; !err && i < dl.n; i++) {
		const char *name = dl.ents[i].name;

		if ((dl.ents[i].type != DT_CHR && dl.ents[i].type != DT_UNKNOWN) ||
		    fstatat(ud, name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !ovl_is_kernel_wh(&st))
			continue;
		if (unlinkat(ud, name, 0) < 0 && errno != ENOENT)
			err = -errno;
	}
	ovl_dirlist_free(&dl);
	return err;
}

/*
 * Upper directory UD shows lower directory LD (its lower part, from a
 * redirect of its own or of an ancestor): copy in each lower entry it
 * shows, then make it opaque and drop its redirect.
 */
static int make_plain(struct fin *f, int ud, int ld)
{
	struct ovl_dirlist dl;
	char tmp[64];
	struct stat st, dst;
	int err;

	/* The copies are no change to the directory: its times stay. */
	if (fstat(ud, &dst) < 0)
		return -errno;
	err = ovl_dirlist_read(ld, &dl);
	for (size_t i = 0; !err && i < dl.n; i++) {
		const char *name = dl.ents[i].name;

		if (ovl_is_wh_name(name))
			continue;
		/* An upper entry (a kernel whiteout too) hides it. */
		if (fstatat(ud, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			continue;
		if (errno != ENOENT) {
			err = -errno;
			break;
		}
		if (!f->fmt.kernel) {
			err = ovl_wh_exists(&f->fmt, ud, name);
			if (err) {
				err = err < 0 ? err : 0;
				continue;
			}
		}
		ovl_tmp_name(&f->tmp_counter, tmp);
		err = copy_lower(f, ld, name, ud, tmp);
		if (!err && renameat2(ud, tmp, ud, name, RENAME_NOREPLACE) < 0)
			err = -errno;
		if (err)
			ovl_remove_tree(ud, tmp);
	}
	ovl_dirlist_free(&dl);
	if (!err)
		err = ovl_opaque_set(&f->fmt, ud);
	if (!err)
		err = ovl_redirect_clear(&f->fmt, ud);
	/*
	 * Kernel whiteouts hide nothing in an opaque directory, and the
	 * commit walk expects none there (the kernel clears them too).
	 */
	if (!err && f->fmt.kernel)
		err = drop_kernel_whiteouts(ud);
	if (!err) {
		struct timespec ts[2] = { dst.st_atim, dst.st_mtim };

		if (futimens(ud, ts) < 0)
			err = -errno;
	}
	return err;
}

/*
 * Walk upper directory UD, whose lower part is LD (-1: none); INSIDE: it
 * or an ancestor is redirected.
 */
static int plain_dir(struct fin *f, int ud, int ld, bool inside)
{
	char redir[OVL_REDIRECT_MAX + 1];
	struct ovl_dirlist dl;
	int err;

	/* Metacopy files whose data is elsewhere get it now (metacopy.c). */
	err = fin_metacopy_fill_dir(f, ud, ld, inside);
	if (!err)
		err = ovl_dirlist_read(ud, &dl);
	else
		dl = (struct ovl_dirlist){ 0 };
	for (size_t i = 0; !err && i < dl.n; i++) {
		const char *name = dl.ents[i].name;
		size_t saved;
		int cud, cld = -1, opq, red;
		bool cin = inside;

		cud = fin_open_subdir(ud, &dl.ents[i]);
		if (cud < 0) {
			if (cud == -ENOTDIR)
				continue;
			err = cud;
			break;
		}
		opq = ovl_opaque_get(&f->fmt, cud);
		red = opq == 0 ? ovl_redirect_get(&f->fmt, cud, redir) : 0;
		if (opq < 0 || red < 0) {
			err = opq < 0 ? opq : red;
		} else if (red > 0) {
			cin = true;
			cld = redir[0] == '/' ?
				      ovl_open_dir_abs(f->lower_fd, redir) :
			      ld >= 0 ? fin_open_dir_at(ld, redir) : -ENOENT;
		} else if (opq == 0 && ld >= 0) {
			cld = fin_open_dir_at(ld, name);
		}
		if (cld < 0 && cld != -ENOENT && cld != -ENOTDIR && cld != -1)
			err = cld;
		err = err ? err : fin_path_push(f, name, &saved);
		if (!err) {
			err = plain_dir(f, cud, cld >= 0 ? cld : -1, cin);
			fin_path_pop(f, saved);
		}
		if (cld >= 0)
			close(cld);
		close(cud);
	}
	ovl_dirlist_free(&dl);
	if (!err && inside && ld >= 0)
		err = make_plain(f, ud, ld);
	return err;
}

int fin_plain_redirects(struct fin *f)
{
	size_t saved = f->plen;
	int err = plain_dir(f, f->upper_fd, f->lower_fd, false);

	/* Copies of lower files are no upper objects the commit has placed. */
	for (size_t i = 0; i < f->nplaced; i++)
		close(f->placed[i].fd);
	f->nplaced = 0;
	if (err && !f->fs->err[0])
		fin_fail(f, err, "commit: cannot copy the lower part of a renamed "
			 "directory into");
	fin_path_pop(f, saved);
	return err;
}
