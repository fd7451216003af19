/*
 * rename.c: a renamed directory (a redirect, docs/format.md) committed as
 * one rename in the lower, not as a copy of its tree.
 *
 * The plan: every upper directory with a redirect is a rename of its lower
 * part (the source, a path of the lower as it is before the commit) to its
 * own path (the target). Redirects name the lower as it was, so sources
 * nested in sources, chains and swaps (A->B, B->A) are all done in two
 * steps: every source is moved out of the way first, deepest first (a
 * source inside another is still where the plan says), then each is
 * placed at its target, shallowest first (a target inside another finds
 * its parent placed). What a target displaces in the lower is hidden by
 * the renamed directory (it does not merge with the lower at its own
 * path), so it goes.
 *
 * A plain commit does this in the lower before its walk, from a plan it
 * writes first to OVL_RENAME_WORKDIR in the lower, which is also where the
 * sources wait: a killed run is finished by the next one from that plan
 * (the upper's redirects still name sources that have moved). Once the
 * renames are in, each renamed upper directory loses its redirect (or,
 * under an opaque upper directory, gets one naming its own path), so the
 * upper merges with the new lower as it did with the old, and the plan
 * goes; the walk is then an ordinary commit.
 *
 * An atomic commit journals the same steps: V (move the source to
 * stage/) for all, before the walk's operations, and P (place it at the
 * target) where the walk comes to the target, after what makes its parent
 * (a new directory's R). The walk reads the lower as it will be after
 * them (fin_lower_at).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "offline/offline.h"

void fin_renames_free(struct fin *f)
{
	for (size_t i = 0; i < f->nrenames; i++) {
		free(f->renames[i].src);
		free(f->renames[i].dst);
		if (f->renames[i].src_fd >= 0)
			close(f->renames[i].src_fd);
	}
	free(f->renames);
	f->renames = NULL;
	f->nrenames = f->renames_cap = 0;
	f->mapped = false;
}

static int add_rename(struct fin *f, const char *src, const char *dst,
		      int src_fd)
{
	struct fin_rename *r;
	struct stat st;

	if (src_fd >= 0 && fstat(src_fd, &st) < 0)
		return -errno;
	if (ovl_grow((void **)&f->renames, &f->renames_cap, f->nrenames + 1,
		     sizeof(*f->renames), 8))
		return -ENOMEM;
	r = &f->renames[f->nrenames];
	memset(r, 0, sizeof(*r));
	r->src = strdup(src);
	r->dst = strdup(dst);
	r->src_fd = src_fd >= 0 ? dup(src_fd) : -1;
	if (src_fd >= 0) {
		r->dev = st.st_dev;
		r->ino = st.st_ino;
	}
	r->n = f->nrenames + 1;
	f->nrenames++;
	if (!r->src || !r->dst || (src_fd >= 0 && r->src_fd < 0))
		return -ENOMEM;
	return 0;
}

static char *join(const char *a, const char *b)
{
	char *s = NULL;

	if (asprintf(&s, "%s%s%s", a, *a ? "/" : "", b) < 0)
		return NULL;
	return s;
}

/*
 * Upper directory UD (f->path) has lower part LD (-1: none) at lower path
 * LP: find the redirected directories in it.
 */
static int plan_dir(struct fin *f, int ud, int ld, const char *lp)
{
	char redir[OVL_REDIRECT_MAX + 1];
	struct ovl_dirlist dl;
	int err;

	err = ovl_dirlist_read(ud, &dl);
	for (size_t i = 0; !err && i < dl.n; i++) {
		const char *name = dl.ents[i].name;
		char *clp = NULL;
		size_t saved;
		int cud, cld = -1, opq, red;

		cud = fin_open_subdir(ud, &dl.ents[i]);
		if (cud < 0) {
			if (cud == -ENOTDIR)
				continue;
			err = cud;
			break;
		}
		err = fin_path_push(f, name, &saved);
		if (err) {
			close(cud);
			break;
		}
		opq = ovl_opaque_get(&f->fmt, cud);
		red = opq == 0 ? ovl_redirect_get(&f->fmt, cud, redir) : 0;
		if (opq < 0 || red < 0) {
			err = opq < 0 ? opq : red;
		} else if (red > 0) {
			const char *abs = redir;

			while (*abs == '/')
				abs++;
			clp = redir[0] == '/' ? strdup(abs) :
			      ld >= 0 ? join(lp, redir) : NULL;
			cld = redir[0] == '/' ? ovl_open_dir_abs(f->lower_fd, redir) :
			      ld >= 0 ? fin_open_dir_at(ld, redir) : -ENOENT;
			if (cld < 0 || !clp || !*clp ||
			    !strncmp(clp, ".wh.", 4)) {
				err = ovl_set_error(f->fs, cld < 0 ? cld : -EINVAL,
						    "commit: renamed directory %s/%s: its redirect \"%s\" names no directory of the lower %s%s%s; nothing was changed",
						    f->upper, f->path, redir, f->lower,
						    cld < 0 ? ": " : "",
						    cld < 0 ? strerror(-cld) : "");
			} else if (strcmp(clp, f->path)) {
				err = add_rename(f, clp, f->path, cld);
			}
		} else if (opq == 0 && ld >= 0) {
			cld = fin_open_dir_at(ld, name);
			if (cld >= 0) {
				clp = join(lp, name);
				if (!clp)
					err = -ENOMEM;
			} else if (cld != -ENOENT && cld != -ENOTDIR) {
				err = cld;
			}
		}
		if (!err)
			err = plan_dir(f, cud, cld >= 0 ? cld : -1,
				       cld >= 0 ? clp : "");
		fin_path_pop(f, saved);
		free(clp);
		if (cld >= 0)
			close(cld);
		close(cud);
	}
	ovl_dirlist_free(&dl);
	return err;
}

/*
 * What the lower has at rename target DST is deleted when the renamed
 * directory takes its place: refuse, before anything moves, when that is
 * or holds a mount point (ovlfs deletes nothing across mounts, and a plan
 * stopped halfway would leave the lower without a merged view).
 */
static bool is_source(const struct fin *f, const struct stat *st);

static int refuse_mount_at(struct fin *f, const char *dst)
{
	struct stat st;
	const char *slash = strrchr(dst, '/');
	char *parent = NULL, *where = NULL;
	int pfd, fd, r;

	if (slash && asprintf(&parent, "/%.*s", (int)(slash - dst), dst) < 0)
		return -ENOMEM;
	pfd = parent ? ovl_open_dir_abs(f->lower_fd, parent) : dup(f->lower_fd);
	free(parent);
	if (pfd < 0)
		return 0;	/* no parent there: nothing to delete */
	fd = openat(pfd, slash ? slash + 1 : dst, O_PATH | O_NOFOLLOW |
		    O_CLOEXEC);
	close(pfd);
	if (fd < 0)
		return 0;
	/* A source moving away (a swap) is not deleted. */
	if (fstat(fd, &st) == 0 && is_source(f, &st)) {
		close(fd);
		return 0;
	}
	r = ovl_find_mount_under(fd, &where);
	close(fd);
	if (r <= 0)
		return 0;	/* unknown: ovl_remove_tree() still stops */
	r = ovl_set_error(f->fs, -EBUSY,
			  "commit: %s/%s, which a renamed directory replaces, holds a mount point, %s, and ovlfs does not delete across mounts: unmount it first; nothing was changed",
			  f->lower, dst, where);
	free(where);
	return r;
}

int fin_renames_plan(struct fin *f)
{
	size_t saved = f->plen;
	int err = plan_dir(f, f->upper_fd, f->lower_fd, "");

	for (size_t i = 0; !err && i < f->nrenames; i++)
		for (size_t k = i + 1; k < f->nrenames; k++)
			if (f->renames[i].dev == f->renames[k].dev &&
			    f->renames[i].ino == f->renames[k].ino)
				err = ovl_set_error(f->fs, -EINVAL,
						    "commit: renamed directories %s/%s and %s/%s both name %s/%s as their lower part; nothing was changed",
						    f->upper, f->renames[i].dst, f->upper,
						    f->renames[k].dst, f->lower,
						    f->renames[i].src);
	for (size_t i = 0; !err && i < f->nrenames; i++)
		err = refuse_mount_at(f, f->renames[i].dst);
	if (err && !f->fs->err[0])
		fin_fail(f, err, "commit: cannot read the renamed directories of the upper at");
	fin_path_pop(f, saved);
	return err;
}

static int depth(const char *p)
{
	int d = 0;

	for (; *p; p++)
		d += *p == '/';
	return d;
}

/* The plan's indexes: by source depth, deepest first (or by target, shallowest). */
static size_t *order(const struct fin *f, bool by_src)
{
	size_t *o = calloc(f->nrenames + 1, sizeof(*o)), n = 0;
	int lo = 1 << 30, hi = 0;

	if (!o)
		return NULL;
	for (size_t i = 0; i < f->nrenames; i++) {
		int d = depth(by_src ? f->renames[i].src : f->renames[i].dst);

		lo = d < lo ? d : lo;
		hi = d > hi ? d : hi;
	}
	for (int d = by_src ? hi : lo; by_src ? d >= lo : d <= hi;
	     d += by_src ? -1 : 1)
		for (size_t i = 0; i < f->nrenames; i++)
			if (depth(by_src ? f->renames[i].src : f->renames[i].dst) == d)
				o[n++] = i;
	return o;
}

static const struct fin_rename *find_dst(const struct fin *f, const char *p)
{
	for (size_t i = 0; i < f->nrenames; i++)
		if (!strcmp(f->renames[i].dst, p))
			return &f->renames[i];
	return NULL;
}

static bool is_source(const struct fin *f, const struct stat *st)
{
	if (!S_ISDIR(st->st_mode))
		return false;
	for (size_t i = 0; i < f->nrenames; i++)
		if (f->renames[i].src_fd >= 0 && f->renames[i].dev == st->st_dev &&
		    f->renames[i].ino == st->st_ino)
			return true;
	return false;
}

static int open_upper_at(struct fin *f, const char *dst, bool *under_opaque);

bool fin_renames_placeable(struct fin *f)
{
	struct stat st;
	bool under_opaque;
	int fd;

	/*
	 * A rename stays within one filesystem: a source on another one
	 * mounted inside the lower (or a mount point itself) cannot go to
	 * the work directory in the lower's root, nor anywhere else.
	 */
	if (fstat(f->lower_fd, &st) < 0)
		return false;
	for (size_t i = 0; i < f->nrenames; i++)
		if (f->renames[i].dev != st.st_dev)
			return false;
	/*
	 * A plain commit leaves a renamed upper directory under an opaque
	 * one with a redirect naming its own path (settle_upper): one longer
	 * than a redirect may be cannot be written, and the commit would
	 * stop there, the renames made, for good.
	 */
	for (size_t i = 0; !f->atomic && i < f->nrenames; i++) {
		if (strlen(f->renames[i].dst) + 1 <= OVL_REDIRECT_MAX)
			continue;
		fd = open_upper_at(f, f->renames[i].dst, &under_opaque);
		if (fd >= 0)
			close(fd);
		if (fd < 0 || under_opaque)
			return false;
	}
	return true;
}

/* ---- the atomic commit: journal operations, and the walk's view ---- */

int fin_renames_journal(struct fin *f)
{
	size_t *os = order(f, true);
	int err = os ? 0 : -ENOMEM;
	char n[32];

	for (size_t i = 0; !err && i < f->nrenames; i++) {
		const char *src = f->renames[os[i]].src, *slash;

		/*
		 * Without privilege, a read-only directory moves out of a
		 * read-only parent only opened up (both, just before).
		 */
		slash = strrchr(src, '/');
		if (!f->is_root && slash) {
			char *parent = strndup(src, slash - src);

			err = parent ? fin_stage_open_up_at(f, parent) : -ENOMEM;
			free(parent);
		}
		if (!err)
			err = fin_stage_open_up_at(f, src);
		if (err)
			break;
		f->renames[os[i]].n = fin_new_op(f, n);
		err = fin_jop_path(f, 'V', f->renames[os[i]].n, src);
	}
	free(os);
	if (!err)
		f->mapped = true;
	return err;
}

int fin_rename_place(struct fin *f)
{
	const struct fin_rename *r = f->mapped ? find_dst(f, f->path) : NULL;

	return r ? fin_jop_path(f, 'P', r->n, r->dst) : 0;
}

bool fin_renames_under(struct fin *f)
{
	for (size_t i = 0; f->mapped && i < f->nrenames; i++)
		if (!strncmp(f->renames[i].dst, f->path, f->plen) &&
		    f->renames[i].dst[f->plen] == '/')
			return true;
	return false;
}

int fin_lower_at(struct fin *f, int ld, const char *name, struct stat *st)
{
	const struct fin_rename *r = f->mapped ? find_dst(f, f->path) : NULL;

	if (r)
		return fstat(r->src_fd, st) < 0 ? -errno : 1;
	if (fstatat(ld, name, st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	return f->mapped && is_source(f, st) ? 0 : 1;
}

int fin_lower_dir_at(struct fin *f, int ld, const char *name)
{
	const struct fin_rename *r = f->mapped ? find_dst(f, f->path) : NULL;
	int fd;

	if (!r)
		return fin_open_dir_at(ld, name);
	fd = dup(r->src_fd);
	return fd < 0 ? -errno : fd;
}

int fin_lower_child(struct fin *f, int ld, const char *name)
{
	const struct fin_rename *r = f->mapped ? find_dst(f, f->path) : NULL;
	int fd;

	if (!r)
		return ovl_open_child(ld, name);
	fd = dup(r->src_fd);
	return fd < 0 ? -errno : fd;
}

/* ---- the plain commit: the plan, and the renames in place ---- */

/* The parent directory of lower path P, and its last component in *LAST. */
static int open_parent(int root, char *p, char **last, bool create)
{
	int fd = dup(root), next;
	char *s = p, *e;
	struct stat st;

	*last = p;
	if (fd < 0)
		return -errno;
	for (;;) {
		e = strchr(s, '/');
		if (!e)
			break;
		*e = '\0';
		next = fin_open_dir_at(fd, s);
		if (next < 0 && create && (next == -ENOENT || next == -ENOTDIR)) {
			/*
			 * A new upper directory holds the target: whatever the
			 * lower has there, the upper hides; the walk merges
			 * with the directory made here and gives it its
			 * metadata.
			 */
			next = 0;
			if (fstatat(fd, s, &st, AT_SYMLINK_NOFOLLOW) == 0)
				next = ovl_remove_tree(fd, s);
			if (!next && mkdirat(fd, s, 0700) < 0)
				next = -errno;
			if (!next)
				next = fin_open_dir_at(fd, s);
		}
		*e = '/';
		close(fd);
		if (next < 0)
			return next;
		fd = next;
		s = e + 1;
	}
	*last = s;
	return fd;
}

static int write_plan(struct fin *f, int wfd)
{
	char num[32];
	int err = 0;

	f->jlen = 0;
	for (size_t i = 0; !err && i < f->nrenames; i++) {
		snprintf(num, sizeof(num), "%lu ", f->renames[i].n);
		err = fin_jput(f, num, strlen(num));
		if (!err)
			err = fin_jput_path(f, f->renames[i].src);
		if (!err)
			err = fin_jput(f, " ", 1);
		if (!err)
			err = fin_jput_path(f, f->renames[i].dst);
		if (!err)
			err = fin_jput(f, "\n", 1);
	}
	if (!err)
		err = fin_jput(f, "end\n", 4);
	if (err)
		return err;
	/* Nothing moves before the plan is durable: it is how a retry knows. */
	err = fin_write_durable(f, wfd, "plan.tmp", "plan");
	f->jlen = 0;
	return err;
}

/*
 * A path of a plan (from the lower, not trusted): relative, no empty, "."
 * or ".." component, not into ovlfs's work directories.
 */
static bool plan_path_ok(const char *p)
{
	if (!strncmp(p, ".wh.", 4))
		return false;
	for (;;) {
		size_t len = strcspn(p, "/");

		if (len == 0 || (len == 1 && p[0] == '.') ||
		    (len == 2 && p[0] == '.' && p[1] == '.'))
			return false;
		if (!p[len])
			return true;
		p += len + 1;
	}
}

/* A killed run's plan (it comes from the lower: checked like a journal). */
static int read_plan(struct fin *f, int wfd)
{
	char *text = NULL, *save = NULL, *line;
	struct stat st;
	int fd, err = 0;
	bool ended = false;

	fd = openat(wfd, "plan", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !(text = malloc(st.st_size + 1)) ||
	    pread(fd, text, st.st_size, 0) != st.st_size)
		err = errno ? -errno : -EIO;
	close(fd);
	if (err || !text) {
		free(text);
		return err ? err : -ENOMEM;
	}
	text[st.st_size] = '\0';
	for (line = strtok_r(text, "\n", &save); line && !err && !ended;
	     line = strtok_r(NULL, "\n", &save)) {
		char *src, *dst, *end;
		unsigned long n;

		if (!strcmp(line, "end")) {
			ended = true;
			break;
		}
		n = strtoul(line, &end, 10);
		src = *end == ' ' ? end + 1 : NULL;
		dst = src ? strchr(src, ' ') : NULL;
		if (!dst || n == 0) {
			err = -EUCLEAN;
			break;
		}
		*dst++ = '\0';
		err = fin_decode_path(src);
		if (!err)
			err = fin_decode_path(dst);
		if (!err && (!plan_path_ok(src) || !plan_path_ok(dst)))
			err = -EUCLEAN;
		if (!err)
			err = add_rename(f, src, dst, -1);
		if (!err)
			f->renames[f->nrenames - 1].n = n;
	}
	free(text);
	if (!err && !ended)
		err = -EUCLEAN;
	if (err == -EUCLEAN)
		ovl_set_error(f->fs, err,
			      "commit: %s/%s/plan is damaged; nothing more was changed: inspect %s/%s by hand",
			      f->lower, OVL_RENAME_WORKDIR, f->lower, OVL_RENAME_WORKDIR);
	return err;
}

/*
 * The upper directory at DST (fd, or -errno), and in *UNDER_OPAQUE whether
 * an opaque upper directory lies above it.
 */
static int open_upper_at(struct fin *f, const char *dst, bool *under_opaque)
{
	char buf[PATH_MAX], *s = buf, *e;
	int fd = dup(f->upper_fd), next, opq;

	*under_opaque = false;
	if (fd < 0)
		return -errno;
	snprintf(buf, sizeof(buf), "%s", dst);
	while (fd >= 0 && *s) {
		e = strchrnul(s, '/');
		char c = *e;

		*e = '\0';
		next = fin_open_dir_at(fd, s);
		*e = c;
		close(fd);
		fd = next;
		if (fd >= 0 && c) {
			opq = ovl_opaque_get(&f->fmt, fd);
			if (opq < 0) {
				close(fd);
				fd = opq;
			}
			*under_opaque |= opq > 0;
		}
		s = c ? e + 1 : e;
	}
	return fd;
}

static int settle_redirect(struct fin *f, int fd, const char *dst,
			   bool under_opaque)
{
	char own[OVL_REDIRECT_MAX + 2];

	if (!under_opaque)
		return ovl_redirect_clear(&f->fmt, fd);
	if (snprintf(own, sizeof(own), "/%s", dst) > OVL_REDIRECT_MAX)
		return -ENAMETOOLONG;
	return ovl_redirect_set(&f->fmt, fd, own);
}

/*
 * The renamed upper directory of R now merges with the lower at its own
 * path: its redirect goes, or, under an opaque upper directory (which has
 * no lower part for a relative lookup), names its own path. A read-only
 * one of a caller without privilege (its user.* xattrs need write
 * permission) is opened up meanwhile, its mode recorded first in the work
 * directory WFD as "open-N-MODE": killed while it is open, the next run
 * puts the mode back (restore_opened) before the walk could commit it.
 */
static int settle_upper(struct fin *f, int wfd, const struct fin_rename *r)
{
	char rec[64];
	bool under_opaque;
	struct stat st;
	int fd = open_upper_at(f, r->dst, &under_opaque), err;

	if (fd < 0)
		return fd == -ENOENT ? 0 : fd;	/* a killed walk moved it */
	err = settle_redirect(f, fd, r->dst, under_opaque);
	if (err == -EACCES && !f->is_root && fstat(fd, &st) == 0 &&
	    (st.st_mode & 0700) != 0700) {
		snprintf(rec, sizeof(rec), "open-%lu-%o", r->n,
			 (unsigned)(st.st_mode & 07777));
		/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
		err = mknodat(wfd, rec, S_IFREG | 0600, 0) < 0 && errno != EEXIST ?
			      -errno : 0;
		if (!err && fsync(wfd) < 0)
			err = -errno;
		if (!err)
			err = ovl_fchmod_any(fd, st.st_mode | 0700);
		if (!err) {
			err = settle_redirect(f, fd, r->dst, under_opaque);
			ovl_fchmod_any(fd, st.st_mode & 07777);
		}
	}
	close(fd);
	return err;
}

/* What a killed run left opened up by settle_upper: modes put back. */
static int restore_opened(struct fin *f, int wfd)
{
	struct ovl_dirlist dl;
	int err = ovl_dirlist_read(wfd, &dl);

	for (size_t i = 0; !err && i < dl.n; i++) {
		unsigned long n;
		unsigned mode;
		bool under_opaque;
		int fd;

		if (sscanf(dl.ents[i].name, "open-%lu-%o", &n, &mode) != 2)
			continue;
		for (size_t k = 0; k < f->nrenames; k++) {
			if (f->renames[k].n != n)
				continue;
			fd = open_upper_at(f, f->renames[k].dst, &under_opaque);
			if (fd >= 0) {
				err = ovl_fchmod_any(fd, mode & 07777);
				close(fd);
			}
		}
		if (!err && unlinkat(wfd, dl.ents[i].name, 0) < 0)
			err = -errno;
	}
	ovl_dirlist_free(&dl);
	return err;
}

static int move_sources(struct fin *f, int wfd)
{
	size_t *o = order(f, true);
	char n[32], path[PATH_MAX], *last;
	int err = o ? 0 : -ENOMEM, pfd;

	if (fin_exists_at(wfd, "placing"))
		goto out;
	for (size_t i = 0; !err && i < f->nrenames; i++) {
		const struct fin_rename *r = &f->renames[o[i]];

		snprintf(n, sizeof(n), "%lu", r->n);
		if (fin_exists_at(wfd, n))
			continue;	/* moved before a kill */
		snprintf(path, sizeof(path), "%s", r->src);
		pfd = open_parent(f->lower_fd, path, &last, false);
		err = pfd < 0 ? pfd : 0;
		if (!err)
			err = fin_rename_opened(f, pfd, last, wfd, n);
		if (pfd >= 0)
			close(pfd);
		if (err)
			ovl_set_error(f->fs, err, "commit: cannot move renamed directory %s/%s out of the way: %s",
				      f->lower, r->src, strerror(-err));
	}
	if (!err) {
		int fd = openat(wfd, "placing", O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

		if (fd < 0 || fsync(fd) < 0 || fsync(wfd) < 0)
			err = -errno;
		if (fd >= 0)
			close(fd);
	}
out:
	free(o);
	return err;
}

static int place_targets(struct fin *f, int work)
{
	size_t *o = order(f, false);
	char n[32], path[PATH_MAX], *last;
	int err = o ? 0 : -ENOMEM, pfd;

	for (size_t i = 0; !err && i < f->nrenames; i++) {
		const struct fin_rename *r = &f->renames[o[i]];

		snprintf(n, sizeof(n), "%lu", r->n);
		if (!fin_exists_at(work, n))
			continue;	/* placed before a kill */
		snprintf(path, sizeof(path), "%s", r->dst);
		pfd = open_parent(f->lower_fd, path, &last, true);
		err = pfd < 0 ? pfd : 0;
		/* The renamed directory hid what the lower had here. */
		if (!err && fin_exists_at(pfd, last))
			err = ovl_remove_tree(pfd, last);
		if (!err)
			err = fin_rename_opened(f, work, n, pfd, last);
		if (pfd >= 0)
			close(pfd);
		if (err)
			ovl_set_error(f->fs, err, "commit: cannot rename %s/%s to %s/%s: %s",
				      f->lower, r->src, f->lower, r->dst,
				      strerror(-err));
	}
	for (size_t i = 0; !err && i < f->nrenames; i++) {
		err = settle_upper(f, work, &f->renames[i]);
		if (err)
			ovl_set_error(f->fs, err, "commit: %s/%s: cannot update its redirect: %s",
				      f->upper, f->renames[i].dst, strerror(-err));
	}
	free(o);
	return err;
}

/*
 * A work directory without a plan: its run was killed before the plan was
 * in (nothing had moved), or after every rename was placed and settled
 * (the plan goes first, below). Either way it holds no renamed directory:
 * anything else there (a moved source) is not deleted but named.
 */
static int remove_planless(struct fin *f, int wfd)
{
	struct ovl_dirlist dl;
	int err = ovl_dirlist_read(wfd, &dl);

	for (size_t i = 0; !err && i < dl.n; i++)
		if (strcmp(dl.ents[i].name, "plan.tmp") &&
		    strcmp(dl.ents[i].name, "placing") &&
		    strncmp(dl.ents[i].name, "open-", 5))
			err = ovl_set_error(f->fs, -EUCLEAN,
					    "commit: %s/%s has no plan but holds %s; nothing more was changed: inspect %s/%s by hand",
					    f->lower, OVL_RENAME_WORKDIR,
					    dl.ents[i].name, f->lower,
					    OVL_RENAME_WORKDIR);
	ovl_dirlist_free(&dl);
	return err ? err : ovl_remove_tree(f->lower_fd, OVL_RENAME_WORKDIR);
}

int fin_renames_plain(struct fin *f)
{
	int wfd, err = 0;

	wfd = fin_open_dir_at(f->lower_fd, OVL_RENAME_WORKDIR);
	if (wfd >= 0 && !fin_exists_at(wfd, "plan")) {
		err = remove_planless(f, wfd);
		close(wfd);
		wfd = -ENOENT;
	}
	if (wfd >= 0) {
		fin_renames_free(f);
		err = read_plan(f, wfd);
		if (!err)
			err = restore_opened(f, wfd);
	} else if (!err && wfd == -ENOENT) {
		if (!f->nrenames)
			return 0;
		if (mkdirat(f->lower_fd, OVL_RENAME_WORKDIR, 0700) < 0)
			err = -errno;
		wfd = err ? err : fin_open_dir_at(f->lower_fd, OVL_RENAME_WORKDIR);
		err = wfd < 0 ? wfd : write_plan(f, wfd);
	} else if (!err) {
		err = wfd;
	}
	if (!err)
		err = move_sources(f, wfd);
	if (!err)
		err = place_targets(f, wfd);
	/* The upper's new redirects are durable before the plan goes. */
	if (!err && (syncfs(f->lower_fd) < 0 || syncfs(f->upper_fd) < 0))
		err = -errno;
	/*
	 * The plan goes first, durably: a run killed while the rest goes
	 * must not find the plan without "placing" and move sources again
	 * (they are placed: it failed with ENOENT).
	 */
	if (!err && (unlinkat(wfd, "plan", 0) < 0 || fsync(wfd) < 0))
		err = -errno;
	if (wfd >= 0)
		close(wfd);
	if (!err)
		err = ovl_remove_tree(f->lower_fd, OVL_RENAME_WORKDIR);
	if (!err && fsync(f->lower_fd) < 0)
		err = -errno;
	if (err && !f->fs->err[0])
		ovl_set_error(f->fs, err, "commit: renames in %s (%s/%s): %s",
			      f->lower, f->lower, OVL_RENAME_WORKDIR, strerror(-err));
	fin_renames_free(f);
	return err;
}
