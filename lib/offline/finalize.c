/*
 * finalize.c: what happens to the changes: preserve, discard, commit and
 * crash-safe commit-atomic, and recovery of an interrupted atomic commit.
 * docs/commit.md describes the design; the comments here say why.
 *
 * Both commits walk the upper once, with the lower directory of the same
 * path beside it, through fds only (O_NOFOLLOW everywhere): a symlink in
 * either layer is an entry to replace or keep, never a way out.
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
#include "api/api.h"	/* until the public wrappers move to api/ */

#define WORKDIR ".wh..wh.ovlfs-commit"
#define JOURNAL_MAGIC "ovlfs-journal 1"
/*
 * On the upper's root while a plain commit has temporary copies in the
 * lower: a run that finds it knows a killed one may have left some.
 */
#define XATTR_COMMITTING "user.ovlfs.commit"

/* Where a hard-linked upper file went, so its other names follow it. */
struct placed {
	dev_t dev;
	ino_t ino;
	int fd;			/* O_PATH of the placed or staged object */
};

struct fin {
	struct ovlfs *fs;
	struct ovl_fs ofs;	/* context for the shared helpers */
	const char *lower, *upper;	/* canonical paths, for messages */
	int lower_fd, upper_fd;	/* O_RDONLY|O_DIRECTORY roots */
	bool same_fs, atomic;
	bool atomic_or_commit;	/* a commit, not a discard */
	bool retry;		/* a killed plain commit may have left debris */
	bool marked;		/* this run set XATTR_COMMITTING */
	/* Upper files with several links: how many of their names it holds. */
	struct ovl_linkmap names;

	/* commit-atomic */
	int work_fd, stage_fd, trash_fd;
	char *journal;		/* operations so far, text */
	size_t jlen, jcap;
	unsigned long next_op;

	struct placed *placed;
	size_t nplaced;

	/* the path being worked on, relative to the roots, for messages */
	char path[PATH_MAX];
	size_t plen;

	struct ovlfs_progress prog;
	struct timespec last_report;
};

/* ---- errors, paths, progress ---- */

static int fail(struct fin *f, int err, const char *what)
{
	return ovl_set_error(f->fs, err, "%s: %s%s%s: %s", what, f->lower,
			     f->plen ? "/" : "", f->path, strerror(-err));
}

static int path_push(struct fin *f, const char *name, size_t *saved)
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

static void path_pop(struct fin *f, size_t saved)
{
	f->plen = saved;
	f->path[saved] = '\0';
}

/* The command that finishes an atomic commit of LOWER, for messages. */
static const char *recover_cmd(const struct ovlfs *fs, const char *lower,
			       const char *upper, char *buf, size_t len)
{
	bool named = fs->upper_set && upper;

	snprintf(buf, len, "ovlfs recover %s%s%s%s", named ? "--upper " : "",
		 named ? upper : "", named ? " " : "", lower);
	return buf;
}

static void report(struct fin *f, bool final)
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

static void tick(struct fin *f, uint64_t bytes)
{
	f->prog.entries_done++;
	f->prog.bytes_done += bytes;
	report(f, false);
}

/*
 * Entries and file bytes under directory DFD, for progress totals; in NAMES
 * (if given) the names of each multiply-linked file.
 */
static void count_tree(int dfd, uint64_t *entries, uint64_t *bytes,
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
				count_tree(cfd, entries, bytes, names);
				close(cfd);
			}
		}
	}
	ovl_dirlist_free(&dl);
}

static int open_dir_at(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			O_CLOEXEC);

	/* The fd is returned: cppcheck loses track of it through the ?:. */
	/* cppcheck-suppress resourceLeak */
	return fd < 0 ? -errno : fd;
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

static void strip_private(int fd)
{
	ovl_fd_removexattr(fd, OVL_XATTR_ORIGIN_TRUSTED);
	ovl_fd_removexattr(fd, OVL_XATTR_ORIGIN_USER);
}

/*
 * Make DST (any fd) carry SRC's owner, mode, xattrs and times exactly; the
 * times from TIMES instead when given (SRC's own changed since).
 */
static int sync_meta_times(struct fin *f, int srcfd, int dstfd,
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
		err = ovl_copy_meta_strict(f->ofs.is_root, srcfd, dstfd, &st, true,
					   failed);
	if (!err)
		strip_private(dstfd);
	else if (failed[0])	/* the deepest message is kept: name it */
		ovl_set_error(f->fs, err, "commit: %s%s%s: cannot set %s: %s",
			      f->lower, f->plen ? "/" : "", f->path, failed,
			      strerror(-err));
	return err;
}

static int sync_meta(struct fin *f, int srcfd, int dstfd)
{
	return sync_meta_times(f, srcfd, dstfd, NULL);
}

/* ---- content comparison ---- */

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
	struct placed *p;
	int fd;

	if (S_ISDIR(st->st_mode) || st->st_nlink < 2)
		return 0;
	p = realloc(f->placed, (f->nplaced + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	f->placed = p;
	fd = ovl_open_child(dirfd, name);
	if (fd < 0)
		return fd;
	p[f->nplaced++] = (struct placed){ st->st_dev, st->st_ino, fd };
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
static int copy_object(struct fin *f, int ud, const char *name,
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
	err = src < 0 ? src : fd < 0 ? fd : sync_meta(f, src, fd);
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

/* ---- the journal (commit-atomic) ---- */

static int jput(struct fin *f, const char *s, size_t len)
{
	if (f->jlen + len + 1 > f->jcap) {
		size_t cap = (f->jcap + len + 1) * 2;
		char *p = realloc(f->journal, cap);

		if (!p)
			return -ENOMEM;
		f->journal = p;
		f->jcap = cap;
	}
	memcpy(f->journal + f->jlen, s, len);
	f->jlen += len;
	f->journal[f->jlen] = '\0';
	return 0;
}

/* Paths are bytes: everything outside '!'..'~', and '%', as %XX. */
static int jput_path(struct fin *f, const char *path)
{
	char buf[4];
	int err = 0;

	if (!*path)
		return jput(f, ".", 1);
	for (const unsigned char *p = (const unsigned char *)path; *p && !err;
	     p++) {
		if (*p > ' ' && *p < 0x7f && *p != '%') {
			err = jput(f, (const char *)p, 1);
		} else {
			snprintf(buf, sizeof(buf), "%%%02X", *p);
			err = jput(f, buf, 3);
		}
	}
	return err;
}

static int jop(struct fin *f, char op, unsigned long n)
{
	char buf[32];
	int len = snprintf(buf, sizeof(buf), "%c %lu ", op, n);
	int err = jput(f, buf, len);

	if (!err)
		err = jput_path(f, f->path);
	if (!err)
		err = jput(f, "\n", 1);
	return err;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Strictly %XX (sscanf would take signs and blanks); never a NUL byte. */
static int decode_path(char *s)
{
	char *o = s;

	for (; *s; s++) {
		if (*s == '%') {
			int hi = hex_digit(s[1]), lo = hi < 0 ? -1 : hex_digit(s[2]);

			if (lo < 0 || (hi | lo) == 0)
				return -EUCLEAN;
			*o++ = (char)(hi << 4 | lo);
			s += 2;
		} else {
			*o++ = *s;
		}
	}
	*o = '\0';
	return 0;
}

/*
 * What is wrong with decoded journal path PATH, or NULL: it must stay in
 * the lower (relative, no "", "." or ".." component) and out of the work
 * directory. "." (the root) only for M.
 */
static const char *bad_path(const char *path, bool root_ok)
{
	const char *p = path;

	if (!strcmp(path, "."))
		return root_ok ? NULL : "the lower root itself";
	for (;;) {
		size_t len = strcspn(p, "/");

		if (len == 0 || (len == 1 && p[0] == '.') ||
		    (len == 2 && p[0] == '.' && p[1] == '.'))
			return "a path that is absolute or has an empty, . or .. component";
		if (p == path && len == strlen(WORKDIR) && !strncmp(p, WORKDIR, len))
			return "a path inside the work directory";
		if (!p[len])
			return NULL;
		p += len + 1;
	}
}

/* What is wrong with operation line LINE (a copy, decoded here), or NULL. */
static const char *bad_op(char *line)
{
	size_t nd;

	if (!line[0] || !strchr("RDM", line[0]) || line[1] != ' ')
		return "not an operation (R, D or M)";
	nd = strspn(line + 2, "0123456789");
	if (nd == 0 || nd > 20 || line[2 + nd] != ' ')
		return "no operation number";
	if (decode_path(line + 3 + nd))
		return "a bad %XX escape in the path";
	return bad_path(line + 3 + nd, line[0] == 'M');
}

/*
 * A journal comes from the lower: it may be damaged or crafted. Check the
 * whole of TEXT (SIZE bytes) before acting on any line, so a bad one stops
 * recovery with nothing changed. 0, or -EUCLEAN with a message naming the
 * line.
 */
static int check_journal(struct fin *f, const char *text, size_t size)
{
	char *copy = malloc(size + 1), *line, *next;
	const char *why = NULL;
	unsigned long nline = 0;
	bool ended = false, upper = false;

	if (!copy)
		return -ENOMEM;
	memcpy(copy, text, size);
	copy[size] = '\0';
	for (line = copy; !why && line < copy + size; line = next) {
		char *nl = memchr(line, '\n', copy + size - line);
		bool last = !nl;

		nline++;
		if (last)
			nl = copy + size;
		*nl = '\0';
		next = nl + 1;
		if (strlen(line) != (size_t)(nl - line))
			why = "a NUL byte";
		else if (ended)
			why = "text after \"end\"";
		else if (nline == 1)
			why = strcmp(line, JOURNAL_MAGIC) ?
				      "not an ovlfs journal (no \"" JOURNAL_MAGIC "\")" :
				      NULL;
		else if (!strcmp(line, "end"))
			ended = true;
		else if (strncmp(line, "upper ", 6))
			why = bad_op(line);
		else if (upper || nline != 2)
			why = "a misplaced upper line";
		else if (decode_path(line + 6) || line[6] != '/')
			why = "a bad upper path";
		else
			upper = true;
		if (!why && last)
			why = "the last line has no newline (truncated)";
	}
	if (!why && !ended) {
		nline++;
		why = "no \"end\" line (truncated)";
	}
	free(copy);
	if (!why)
		return 0;
	return ovl_set_error(f->fs, -EUCLEAN,
			     "cannot recover: %s/%s/journal, line %lu: %s; nothing was changed: inspect %s/%s by hand",
			     f->lower, WORKDIR, nline, why, f->lower, WORKDIR);
}

/*
 * Open the parent directory of relative PATH under the lower root and
 * point *LAST at its final component. A journal comes from the lower, so
 * it is not trusted: "..", "." and empty components are refused, and no
 * symlink is followed.
 */
static int resolve_parent(struct fin *f, char *path, char **last)
{
	int dfd = dup(f->lower_fd), nfd;
	char *slash;

	if (dfd < 0)
		return -errno;
	for (;;) {
		slash = strchr(path, '/');
		if (!*path || !strcmp(path, ".") || !strcmp(path, "..") ||
		    (slash && (slash == path || !strncmp(path, "./", 2) ||
			       !strncmp(path, "../", 3)))) {
			close(dfd);
			return -EUCLEAN;
		}
		if (!slash)
			break;
		*slash = '\0';
		nfd = open_dir_at(dfd, path);
		close(dfd);
		if (nfd < 0)
			return nfd;
		dfd = nfd;
		path = slash + 1;
	}
	*last = path;
	return dfd;
}

/* Strip private xattrs from files staged by link, now in place. */
static void strip_tree(int dfd, const char *name)
{
	struct ovl_dirlist dl;
	struct stat st;
	int fd;

	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return;
	if (S_ISREG(st.st_mode)) {
		fd = ovl_open_child(dfd, name);
		if (fd >= 0) {
			strip_private(fd);
			close(fd);
		}
		return;
	}
	if (!S_ISDIR(st.st_mode))
		return;
	fd = open_dir_at(dfd, name);
	if (fd < 0)
		return;
	if (ovl_dirlist_read(fd, &dl) == 0) {
		for (size_t i = 0; i < dl.n; i++)
			strip_tree(fd, dl.ents[i].name);
		ovl_dirlist_free(&dl);
	}
	close(fd);
}

static bool exists_at(int dfd, const char *name)
{
	struct stat st;

	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Carry out one journal line; each is idempotent (docs/commit.md). */
static int apply_op(struct fin *f, char op, const char *n, char *path)
{
	char *last = NULL;
	int dfd, src, dst, err = 0;

	if (op == 'M' && !strcmp(path, ".")) {
		src = ovl_open_child(f->stage_fd, n);
		if (src < 0)
			return src;
		err = sync_meta(f, src, f->lower_fd);
		close(src);
		return err;
	}
	if (op == 'R' && !exists_at(f->stage_fd, n))
		return 0;	/* done before a crash */
	dfd = resolve_parent(f, path, &last);
	if (dfd < 0)
		return dfd;
	switch (op) {
	case 'R':
	case 'D':
		if (exists_at(dfd, last) &&
		    renameat(dfd, last, f->trash_fd, n) < 0)
			err = -errno;
		if (!err && op == 'R' && renameat(f->stage_fd, n, dfd, last) < 0)
			err = -errno;
		break;
	case 'M':
		src = ovl_open_child(f->stage_fd, n);
		dst = ovl_open_child(dfd, last);
		err = src < 0 ? src : dst < 0 ? dst : sync_meta(f, src, dst);
		if (src >= 0)
			close(src);
		if (dst >= 0)
			close(dst);
		break;
	default:
		err = -EUCLEAN;
	}
	close(dfd);
	return err;
}

/* Undo one journal line (rollback); as idempotent as apply_op. */
static int undo_op(struct fin *f, char op, const char *n, char *path,
		   bool meta_pass)
{
	char *last = NULL, old[40];
	int dfd, src, dst, err = 0;

	if ((op == 'M') != meta_pass)
		return 0;
	snprintf(old, sizeof(old), "%s.old", n);
	if (op == 'M' && !strcmp(path, ".")) {
		src = ovl_open_child(f->stage_fd, old);
		if (src < 0)
			return src == -ENOENT ? 0 : src;
		err = sync_meta(f, src, f->lower_fd);
		close(src);
		return err;
	}
	dfd = resolve_parent(f, path, &last);
	if (dfd < 0)
		return dfd;
	switch (op) {
	case 'R':
		/* The new object back to stage/, then the old one back. */
		if (!exists_at(f->stage_fd, n) && exists_at(dfd, last) &&
		    renameat(dfd, last, f->stage_fd, n) < 0)
			err = -errno;
		/* fall through */
	case 'D':
		if (!err && exists_at(f->trash_fd, n) &&
		    renameat(f->trash_fd, n, dfd, last) < 0)
			err = -errno;
		break;
	case 'M':
		src = ovl_open_child(f->stage_fd, old);
		dst = ovl_open_child(dfd, last);
		if (src >= 0 && dst >= 0)
			err = sync_meta(f, src, dst);
		if (src >= 0)
			close(src);
		if (dst >= 0)
			close(dst);
		break;
	}
	close(dfd);
	return err;
}

/*
 * Roll back an apply that failed (journal TEXT, pristine copy): renames in
 * reverse order first, then the old metadata, which the renames would
 * otherwise disturb again (a directory's mtime).
 */
static int rollback_journal(struct fin *f, const char *text)
{
	size_t nl = 0, cap = 0;
	char **lines = NULL, *copy = strdup(text), *save = NULL, *line;
	int err = 0;

	if (!copy)
		return -ENOMEM;
	for (line = strtok_r(copy, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (nl == cap) {
			char **p = realloc(lines, (cap = cap ? cap * 2 : 64) *
					   sizeof(*lines));

			if (!p) {
				err = -ENOMEM;
				goto out;
			}
			lines = p;
		}
		lines[nl++] = line;
	}
	for (int pass = 0; pass < 2 && !err; pass++) {
		for (size_t i = nl; i-- > 0 && !err;) {
			size_t k = pass ? nl - 1 - i : i;	/* M: post-order */
			char op, n[32], *path;

			if (sscanf(lines[k], "%c %31s", &op, n) != 2 ||
			    !strchr("RDM", op) || lines[k][1] != ' ')
				continue;	/* header, trailer */
			path = strchr(lines[k] + 2, ' ');
			if (!path)
				continue;
			path++;
			err = decode_path(path);
			if (!err)
				err = undo_op(f, op, n, path, pass == 1);
		}
	}
out:
	free(lines);
	free(copy);
	return err;
}

/* Mark the commit as going back, durably, before undoing anything. */
static int mark_rollback(struct fin *f)
{
	int fd = openat(f->work_fd, "rollback", O_WRONLY | O_CREAT | O_CLOEXEC,
			0600);
	int err = 0;

	if (fd < 0 || fsync(fd) < 0 || fsync(f->work_fd) < 0)
		err = -errno;
	if (fd >= 0)
		close(fd);
	return err;
}

/*
 * Roll back: the lower becomes the old one again and the work directory
 * goes. The upper was never touched.
 */
static int roll_back(struct fin *f, const char *text)
{
	int err = mark_rollback(f);

	if (!err)
		err = rollback_journal(f, text);
	if (!err && syncfs(f->lower_fd) < 0)
		err = -errno;
	if (!err)
		err = ovl_remove_tree(f->lower_fd, WORKDIR);
	if (!err && fsync(f->lower_fd) < 0)
		err = -errno;
	return err;
}

/*
 * Apply journal TEXT (modified in place), or with !APPLY only check it;
 * *UPPER points at the upper it names.
 */
static int apply_journal(struct fin *f, char *text, char **upper, bool apply)
{
	char *save = NULL, *line;
	bool ended = false;
	int err = 0, nline = 0;

	*upper = NULL;
	for (line = strtok_r(text, "\n", &save); line && !err;
	     line = strtok_r(NULL, "\n", &save), nline++) {
		char op, n[32], *path;

		if (nline == 0) {
			if (strcmp(line, JOURNAL_MAGIC))
				return -EUCLEAN;
			continue;
		}
		if (!strncmp(line, "upper ", 6)) {
			*upper = line + 6;
			err = decode_path(*upper);
			continue;
		}
		if (!strcmp(line, "end")) {
			ended = true;
			break;
		}
		if (sscanf(line, "%c %31s", &op, n) != 2 || !strchr("RDM", op) ||
		    strspn(n, "0123456789") != strlen(n))
			return -EUCLEAN;
		path = strchr(line + 2, ' ');
		if (!path)
			return -EUCLEAN;
		path++;
		err = decode_path(path);
		if (!err && apply)
			err = apply_op(f, op, n, path);
		if (err) {
			snprintf(f->path, sizeof(f->path), "%s", path);
			f->plen = strlen(f->path);
		}
		f->prog.entries_done++;
		report(f, false);
	}
	if (!err && !ended)
		err = -EUCLEAN;	/* a journal is only renamed in complete */
	return err;
}

/* ---- walking the upper ---- */

static int commit_dir(struct fin *f, int ud, int ld);

static unsigned long new_op(struct fin *f, char name[32])
{
	snprintf(name, 32, "%lu", ++f->next_op);
	return f->next_op;
}

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

/* Lower entry LD/NAME goes (whiteout, opaque parent). Path pushed. */
static int delete_lower(struct fin *f, int ld, const char *name)
{
	char n[32];
	int err;

	if (!exists_at(ld, name))
		return 0;
	err = refuse_mounts_in(f, ld, name);
	if (err)
		return err;
	if (!f->atomic)
		return ovl_remove_tree(ld, name);
	return jop(f, 'D', new_op(f, n));
}

/* Stage directory UD/NAME and everything in it as DSTDIR/DST. */
static int stage_tree(struct fin *f, int ud, const char *name, int dstdir,
		      const char *dst)
{
	struct ovl_dirlist dl = { 0 };
	int cu = -1, cd = -1, err;

	if (mkdirat(dstdir, dst, 0700) < 0)
		return -errno;
	cu = open_dir_at(ud, name);
	cd = open_dir_at(dstdir, dst);
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
		if (S_ISDIR(st.st_mode))
			err = stage_tree(f, cu, e, cd, e);
		else
			err = copy_object(f, cu, e, &st, cd, e, f->same_fs);
		tick(f, S_ISREG(st.st_mode) ? st.st_size : 0);
	}
	if (!err)
		err = sync_meta(f, cu, cd);
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
	err = fd < 0 ? fd : sync_meta(f, src, fd);
	if (fd >= 0)
		close(fd);
	return err;
}

/*
 * An M operation: carriers of the new metadata (of UD/NAME) and of the old
 * (of LD/NAME), so a failed apply can be rolled back. NAME NULL: the roots.
 */
static int stage_meta(struct fin *f, int ud, int ld, const char *name,
		      const struct stat *st)
{
	char n[32], old[40];
	int src, lsrc, err;

	new_op(f, n);
	snprintf(old, sizeof(old), "%s.old", n);
	src = name ? ovl_open_child(ud, name) : dup(ud);
	lsrc = name ? ovl_open_child(ld, name) : dup(ld);
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
		err = jop(f, 'M', f->next_op);
	return err;
}

/* Metadata of the existing lower LD/NAME becomes that of UD/NAME. */
static int update_meta(struct fin *f, int ud, int ld, const char *name,
		       const struct stat *us)
{
	int src, dst, err;

	if (f->atomic)
		return stage_meta(f, ud, ld, name, us);
	src = ovl_open_child(ud, name);
	dst = ovl_open_child(ld, name);
	/*
	 * US was taken before the contents were committed: moving files out
	 * of an upper directory changes its mtime, the merged view's did not.
	 */
	err = src < 0 ? src : dst < 0 ? dst : sync_meta_times(f, src, dst, us);
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

		new_op(f, n);
		err = copy_object(f, ud, name, us, f->stage_fd, n, f->same_fs);
		return err ? err : jop(f, 'R', f->next_op);
	}
	if (S_ISREG(us->st_mode) && f->same_fs && !pl &&
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
			strip_private(fd);
			close(fd);
		}
		if (renameat(ud, name, ld, name) == 0)
			return remember_placed(f, us, ld, name);
		if (errno != EXDEV)
			return -errno;
	}
	if (!f->marked && !f->retry) {
		/* Unmarkable (no xattrs): every later run cleans up. */
		ovl_fd_setxattr(f->upper_fd, XATTR_COMMITTING, "1", 1, 0);
		f->marked = true;
	}
	ovl_tmp_name(&f->ofs.tmp_counter, tmp);
	err = copy_object(f, ud, name, us, ld, tmp, false);
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

	if (!merge && f->atomic) {
		char n[32];

		new_op(f, n);
		err = stage_tree(f, ud, name, f->stage_fd, n);
		return err ? err : jop(f, 'R', f->next_op);
	}
	if (!merge) {
		if (ls)
			err = ovl_remove_tree(ld, name);
		if (!err && mkdirat(ld, name, 0700) < 0)
			err = -errno;
	}
	if (!err && merge && !f->atomic && !f->ofs.is_root &&
	    (ls->st_mode & 0700) != 0700) {
		/* Written before its own mode is applied (after); by fd. */
		int pfd = openat(ld, name, O_PATH | O_DIRECTORY | O_NOFOLLOW |
				 O_CLOEXEC);

		err = pfd < 0 ? -errno : ovl_fchmod_any(pfd, ls->st_mode | 0700);
		if (pfd >= 0)
			close(pfd);
	}
	if (!err)
		cu = err = open_dir_at(ud, name);
	if (err >= 0)
		cl = err = open_dir_at(ld, name);
	if (err >= 0)
		err = commit_dir(f, cu, cl);
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

static int commit_entry(struct fin *f, int ud, int ld, const char *name)
{
	struct stat us, ls;
	bool have_l;
	int err;

	if (fstatat(ud, name, &us, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	have_l = fstatat(ld, name, &ls, AT_SYMLINK_NOFOLLOW) == 0;
	if (!have_l && errno != ENOENT)
		return -errno;
	if (S_ISDIR(us.st_mode)) {
		tick(f, 0);
		return commit_subdir(f, ud, ld, name, &us, have_l ? &ls : NULL);
	}
	/* Same bytes already there: keep the lower file, fix metadata. */
	if (S_ISREG(us.st_mode) && have_l && S_ISREG(ls.st_mode) &&
	    us.st_nlink == 1 && us.st_size == ls.st_size) {
		err = same_content(ud, name, ld, us.st_size);
		if (err < 0)
			return err;
		if (err == 1) {
			err = same_meta(f, ud, ld, name, &us, &ls)
				      ? 0
				      : update_meta(f, ud, ld, name, &us);
			tick(f, us.st_size);
			return err;
		}
	}
	err = place_object(f, ud, name, &us, ld, have_l ? &ls : NULL);
	tick(f, S_ISREG(us.st_mode) ? us.st_size : 0);
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
		if (f->ofs.fmt.kernel) {
			struct stat lst;

			/* A marker of the lower itself is no entry. */
			if (fstatat(ld, c, &lst, AT_SYMLINK_NOFOLLOW) == 0 &&
			    ovl_is_kernel_wh(&lst))
				continue;
		}
		err = path_push(f, c, &saved);
		if (!err)
			err = delete_lower(f, ld, c);
		if (err)
			return err;
		path_pop(f, saved);
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
		struct stat us, ls;
		int cu;

		if (fstatat(ud, real[i], &us, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(us.st_mode) ||
		    fstatat(ld, real[i], &ls, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(ls.st_mode))
			continue;	/* nothing of the lower's to hide */
		err = path_push(f, real[i], &saved);
		if (err)
			return err;
		cu = open_dir_at(ud, real[i]);
		err = cu < 0 ? cu : ovl_opaque_set(&f->ofs.fmt, cu);
		if (cu >= 0)
			close(cu);
		if (err)
			return fail(f, err, "cannot mark upper directory opaque");
		path_pop(f, saved);
	}
	if (err)
		return err;
	err = ovl_opaque_clear(&f->ofs.fmt, ud);
	return err ? fail(f, err, "cannot remove opaque marker") : 0;
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
		err = path_push(f, c, &saved);
		if (!err)
			err = ovl_remove_tree(ld, c);
		if (err)
			return fail(f, err, "cannot remove debris");
		path_pop(f, saved);
	}
	return 0;
}

static int commit_dir(struct fin *f, int ud, int ld)
{
	struct ovl_dirlist ul = { 0 }, ll = { 0 };
	char **real = NULL;
	int *marker = NULL;	/* per upper entry: ovl_marker's answer */
	size_t nreal = 0, saved;
	int err, opaque;

	err = ovl_dirlist_read(ud, &ul);
	if (err)
		return fail(f, err, "cannot read upper directory");
	opaque = ovl_opaque_get(&f->ofs.fmt, ud);
	if (opaque < 0) {
		/* Not knowing would merge what the upper hides. */
		err = opaque;
		fail(f, err, "cannot read opaque marker");
		goto out;
	}
	real = calloc(ul.n + 1, sizeof(*real));
	marker = calloc(ul.n + 1, sizeof(*marker));
	if (!real || !marker) {
		err = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ul.n; i++) {
		char buf[NAME_MAX + 2];
		const char *t;

		err = ovl_marker(&f->ofs.fmt, ud, &ul.ents[i], buf, &t);
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
			fail(f, err, "cannot read lower directory");
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
	if (opaque > 0) {
		err = f->atomic ? delete_hidden(f, ld, real, nreal, &ll)
				: unmark_opaque(f, ud, ld, real, nreal, &ll);
		if (err)
			goto out_fail;
	}
	for (size_t i = 0; i < ul.n && !err; i++) {
		char buf[NAME_MAX + 2];
		const char *target;

		if (!marker[i])
			continue;
		err = ovl_marker(&f->ofs.fmt, ud, &ul.ents[i], buf, &target);
		if (err < 0)
			goto out_fail;
		err = 0;
		if (!target)
			continue;	/* opaque marker, debris */
		if (in_sorted(real, nreal, target))
			continue;	/* an upper entry replaces it anyway */
		err = path_push(f, target, &saved);
		if (!err)
			err = delete_lower(f, ld, target);
		if (err)
			goto out_fail;
		path_pop(f, saved);
	}
	for (size_t i = 0; i < nreal && !err; i++) {
		err = path_push(f, real[i], &saved);
		if (!err)
			err = commit_entry(f, ud, ld, real[i]);
		if (err)
			goto out_fail;
		path_pop(f, saved);
	}
	goto out;
out_fail:
	/* Keep the deepest message: it names the path that failed. */
	if (!f->fs->err[0])
		fail(f, err, "commit");
out:
	free(real);
	free(marker);
	ovl_dirlist_free(&ul);
	ovl_dirlist_free(&ll);
	return err;
}

/* ---- setting up, locking, cleaning up ---- */

static void fin_init(struct fin *f, struct ovlfs *fs)
{
	memset(f, 0, sizeof(*f));
	f->fs = fs;
	f->ofs.is_root = geteuid() == 0;
	f->lower_fd = f->upper_fd = f->work_fd = f->stage_fd = f->trash_fd = -1;
	fs->err[0] = '\0';
}

static void fin_done(struct fin *f)
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
	ovl_linkmap_free(&f->names);
}

/* Open an existing layer root for finalizing; *FD is O_RDONLY|O_DIRECTORY. */
static int open_root(struct fin *f, const char *what, const char *path,
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

/* Remove the upper directory itself, making sure it is the one we hold. */
static int remove_upper(struct fin *f)
{
	char *dup_path = strdup(f->upper), *slash;
	struct stat a, b;
	int pfd, err;

	if (!dup_path)
		return -ENOMEM;
	slash = strrchr(dup_path, '/');
	if (!slash || !slash[1]) {
		free(dup_path);
		return ovl_set_error(f->fs, -EINVAL, "refusing to remove upper %s",
				     f->upper);
	}
	*slash = '\0';
	pfd = open(slash == dup_path ? "/" : dup_path,
		   O_PATH | O_DIRECTORY | O_CLOEXEC);
	err = pfd < 0 ? -errno : 0;
	if (!err && (fstat(f->upper_fd, &a) < 0 ||
		     fstatat(pfd, slash + 1, &b, AT_SYMLINK_NOFOLLOW) < 0 ||
		     a.st_dev != b.st_dev || a.st_ino != b.st_ino))
		err = -ESTALE;	/* replaced meanwhile: not ours to delete */
	if (!err)
		err = ovl_remove_tree(pfd, slash + 1);
	if (pfd >= 0)
		close(pfd);
	free(dup_path);
	if (err)
		return ovl_set_error(f->fs, err, "cannot remove upper %s: %s",
				     f->upper, strerror(-err));
	return 0;
}

/* ---- commit-atomic ---- */

static int write_journal(struct fin *f)
{
	int fd = openat(f->work_fd, "journal.tmp", O_WRONLY | O_CREAT |
			O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	size_t done = 0;
	int err = 0;

	if (fd < 0)
		return -errno;
	while (done < f->jlen && !err) {
		ssize_t n = write(fd, f->journal + done, f->jlen - done);

		if (n < 0 && errno != EINTR)
			err = -errno;
		else if (n > 0)
			done += n;
	}
	if (!err && fsync(fd) < 0)
		err = -errno;
	close(fd);
	/* The rename is the commit point; the fsync makes it durable. */
	if (!err && renameat(f->work_fd, "journal.tmp", f->work_fd, "journal") < 0)
		err = -errno;
	if (!err && fsync(f->work_fd) < 0)
		err = -errno;
	return err;
}

static int open_work(struct fin *f, bool create)
{
	int err;

	if (create && mkdirat(f->lower_fd, WORKDIR, 0700) < 0)
		return -errno;
	f->work_fd = open_dir_at(f->lower_fd, WORKDIR);
	if (f->work_fd < 0)
		return f->work_fd;
	if (create && (mkdirat(f->work_fd, "stage", 0700) < 0 ||
		       mkdirat(f->work_fd, "trash", 0700) < 0))
		return -errno;
	f->stage_fd = open_dir_at(f->work_fd, "stage");
	f->trash_fd = open_dir_at(f->work_fd, "trash");
	err = f->stage_fd < 0 ? f->stage_fd : f->trash_fd < 0 ? f->trash_fd : 0;
	return err;
}

/*
 * Files staged by link share their inode with the upper, private xattrs
 * included; those go once every operation is in (a rollback before that
 * must give back an untouched upper). Idempotent, like everything here.
 */
static int strip_applied(struct fin *f, const char *text)
{
	char *copy = strdup(text), *save = NULL, *line, *last;
	int err = 0, dfd;

	if (!copy)
		return -ENOMEM;
	for (line = strtok_r(copy, "\n", &save); line && !err;
	     line = strtok_r(NULL, "\n", &save)) {
		char *path;

		if (line[0] != 'R' || line[1] != ' ' ||
		    !(path = strchr(line + 2, ' ')))
			continue;
		path++;
		err = decode_path(path);
		if (err)
			break;
		dfd = resolve_parent(f, path, &last);
		if (dfd < 0) {
			err = dfd;
			break;
		}
		strip_tree(dfd, last);
		close(dfd);
	}
	free(copy);
	return err;
}

/* Steps 4-5 of docs/commit.md: make it durable, then clean up. */
static int finish_applied(struct fin *f, const char *text, const char *upper)
{
	int fd, err = 0;

	err = strip_applied(f, text);
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
		err = remove_upper(f);
		if (err)
			return err;
	}
	err = ovl_remove_tree(f->lower_fd, WORKDIR);
	if (!err && fsync(f->lower_fd) < 0)
		err = -errno;
	return err;
}

static int commit_atomic(struct fin *f)
{
	char *upper, *pristine, why[OVL_ERRLEN], cmd[2 * PATH_MAX + 32];
	struct stat st;
	int err, rb;

	err = open_work(f, true);
	if (err)
		return ovl_set_error(f->fs, err, "commit: cannot create %s/%s: %s",
				     f->lower, WORKDIR, strerror(-err));
	err = jput(f, JOURNAL_MAGIC "\nupper ", strlen(JOURNAL_MAGIC) + 7);
	if (!err)
		err = jput_path(f, f->upper);
	if (!err)
		err = jput(f, "\n", 1);
	if (!err)
		err = commit_dir(f, f->upper_fd, f->lower_fd);
	if (!err)
		err = ovl_fstat(f->upper_fd, &st);
	if (!err)	/* the root's own metadata, last */
		err = stage_meta(f, f->upper_fd, f->lower_fd, NULL, &st);
	if (!err)
		err = jput(f, "end\n", 4);
	if (!err && (syncfs(f->lower_fd) < 0 || fsync(f->stage_fd) < 0))
		err = -errno;
	if (!err)
		err = write_journal(f);
	if (err) {
		/* Before the commit point: roll back, the lower is untouched. */
		if (!f->fs->err[0])
			fail(f, err, "commit");
		snprintf(why, sizeof(why), "%s", f->fs->err);
		recover_cmd(f->fs, f->lower, f->upper, cmd, sizeof(cmd));
		rb = ovl_remove_tree(f->lower_fd, WORKDIR);
		if (rb)
			ovl_set_error(f->fs, err,
				      "%s; %s is unchanged, but its work directory %s/%s could not be removed (%s): run `%s`",
				      why, f->lower, f->lower, WORKDIR,
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
		return fail(f, -ENOMEM, "commit");
	err = apply_journal(f, f->journal, &upper, true);
	if (err) {
		/* Could not go forward (say, an immutable file): go back. */
		fail(f, err, "commit");
		snprintf(why, sizeof(why), "%s", f->fs->err);
		recover_cmd(f->fs, f->lower, f->upper, cmd, sizeof(cmd));
		rb = roll_back(f, pristine);
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
			fail(f, err, "commit");
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
static int recover_locked(struct fin *f)
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
		err = ovl_remove_tree(f->lower_fd, WORKDIR);
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
	err = check_journal(f, text, st.st_size);
	if (err)
		goto out;
	if (exists_at(f->work_fd, "rollback")) {
		err = roll_back(f, text);
		goto out;
	}
	pristine = strdup(text);
	if (!pristine) {
		err = -ENOMEM;
		goto out;
	}
	err = apply_journal(f, text, &upper, !exists_at(f->work_fd, "done"));
	if (err && !exists_at(f->work_fd, "done"))
		err = roll_back(f, pristine);	/* forward is blocked */
	else if (!err)
		err = finish_applied(f, pristine, upper);
	free(pristine);
out:
	free(text);
	if (err) {
		if (!f->fs->err[0])
			ovl_set_error(f->fs, err,
				      "cannot recover the interrupted commit in %s/%s: %s",
				      f->lower, WORKDIR, strerror(-err));
		return err;
	}
	return 1;
}

/* ---- the public calls ---- */

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
	if (fstatat(fd, WORKDIR, &st, AT_SYMLINK_NOFOLLOW) == 0)
		err = ovl_set_error(fs, -EBUSY,
				    "%s: interrupted atomic commit in %s (%s/%s): run `%s` first",
				    what, lower, lower, WORKDIR,
				    recover_cmd(fs, lower, upper, cmd, sizeof(cmd)));
	else if (errno != ENOENT)
		err = ovl_set_error(fs, -errno, "%s: lower %s: %s/%s: %s", what,
				    lower, lower, WORKDIR, strerror(errno));
	close(fd);
	return err;
}

/* Open and lock the lower for F, recovering an interrupted commit. */
static int take_lower(struct fin *f)
{
	bool own_upper_fd = false;
	int err = open_root(f, "lower", f->lower, &f->lower_fd);

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
	err = recover_locked(f);
	if (own_upper_fd) {
		close(f->upper_fd);	/* take_upper opens (and locks) its own */
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
static int take_upper(struct fin *f)
{
	struct stat st;
	int err;

	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	if (stat(f->upper, &st) < 0 && errno == ENOENT)
		return 1;
	err = open_root(f, "upper", f->upper, &f->upper_fd);
	if (!err)
		err = ovl_flock_wait(f->upper_fd, LOCK_EX);
	/* Committing a misread upper would write its markers as data. */
	if (!err && f->atomic_or_commit)
		err = ovl_check_upper_format(f->fs, f->upper_fd, f->upper,
					     false, &f->ofs.fmt);
	if (err == -EBUSY)
		return ovl_set_error(f->fs, err,
				     "upper %s is in use by an ovlfs mount; unmount it first",
				     f->upper);
	if (err && !f->fs->err[0])
		return ovl_set_error(f->fs, err, "upper %s: cannot lock: %s",
				     f->upper, strerror(-err));
	return err ? err : refuse_upper_mounts(f);
}

static int commit(struct fin *f, bool atomic)
{
	struct stat ls, us;
	int err;

	f->atomic = atomic;
	f->atomic_or_commit = true;
	err = take_lower(f);
	if (!err)
		err = take_upper(f);
	if (err)
		return err == 1 ? 0 : err;
	if (fstat(f->lower_fd, &ls) < 0 || fstat(f->upper_fd, &us) < 0)
		return ovl_set_error(f->fs, -errno, "cannot stat layers: %s",
				     strerror(errno));
	f->same_fs = ls.st_dev == us.st_dev;
	f->prog.phase = "commit";
	count_tree(f->upper_fd, &f->prog.entries_total, &f->prog.bytes_total,
		   &f->names);
	report(f, true);
	if (atomic) {
		err = commit_atomic(f);
	} else {
		f->retry = ovl_fd_getxattr(f->upper_fd, XATTR_COMMITTING, NULL,
					   0) != -ENODATA;
		err = commit_dir(f, f->upper_fd, f->lower_fd);
		keep_times(f->upper_fd, &us);
		/* Failing (not killed), a copy removes its temporary file. */
		if (err && f->marked)
			ovl_fd_removexattr(f->upper_fd, XATTR_COMMITTING);
		if (!err)
			err = sync_meta_times(f, f->upper_fd, f->lower_fd, &us);
		/* The lower is durable before the upper goes. */
		if (!err && syncfs(f->lower_fd) < 0)
			err = -errno;
		if (err && !f->fs->err[0])
			fail(f, err, "commit");
		if (!err)
			err = remove_upper(f);
	}
	report(f, true);
	return err;
}

static int discard(struct fin *f)
{
	int err = ovl_refuse_pending_commit(f->fs, "discard", f->lower, f->upper);

	if (!err)
		err = take_upper(f);
	if (err)
		return err == 1 ? 0 : err;
	f->prog.phase = "discard";
	count_tree(f->upper_fd, &f->prog.entries_total, &f->prog.bytes_total,
		   NULL);
	report(f, true);
	err = remove_upper(f);
	f->prog.entries_done = f->prog.entries_total;
	f->prog.bytes_done = f->prog.bytes_total;
	report(f, true);
	return err;
}

/* Canonical, checked lower and upper of FS into F (freed by the caller). */
static int fin_paths(struct fin *f, bool target, char **lower, char **upper)
{
	bool upper_exists;
	int err = ovl_pair_paths(f->fs, target, lower, upper, &upper_exists);

	f->lower = *lower;
	f->upper = *upper;
	return err;
}

int ovlfs_finish(struct ovlfs *fs, enum ovlfs_action action)
{
	char *lower = NULL, *upper = NULL;
	struct fin f;
	int err = 0;

	if (action < OVLFS_PRESERVE || action > OVLFS_COMMIT_ATOMIC)
		return ovl_set_error(fs, -EINVAL, "unknown action %d", action);
	if (fs->mounted)
		err = ovlfs_umount(fs);
	fin_init(&f, fs);
	if (!err)
		err = fin_paths(&f, action >= OVLFS_COMMIT, &lower, &upper);
	/* Lost changes half-committed would be worse than a refusal. */
	if (!err && action >= OVLFS_COMMIT)
		err = ovl_refuse_volatile_dirty(fs, "commit", upper);
	if (!err) {
		switch (action) {
		case OVLFS_PRESERVE:
			break;
		case OVLFS_DISCARD:
			err = discard(&f);
			break;
		case OVLFS_COMMIT:
		case OVLFS_COMMIT_ATOMIC:
			err = commit(&f, action == OVLFS_COMMIT_ATOMIC);
			break;
		}
	}
	fin_done(&f);
	if (!err)
		ovl_remove_mount_point(fs);
	free(lower);
	free(upper);
	return err;
}

int ovl_recover_lower(struct ovlfs *fs, const char *lower, const char *upper)
{
	struct fin f;
	struct stat st;
	char p[PATH_MAX];
	int err;

	/* The common case, cheaply: no work directory, nothing to do. */
	if (snprintf(p, sizeof(p), "%s/%s", lower, WORKDIR) >= (int)sizeof(p))
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
		open_root(&f, "upper", upper, &f.upper_fd);
	fs->err[0] = '\0';
	err = take_lower(&f);
	fin_done(&f);
	return err < 0 ? err : 1;
}

int ovlfs_recover(struct ovlfs *fs)
{
	char *lower = NULL, *upper = NULL;
	struct fin f;
	bool named;
	int err;

	if (fs->mounted)
		return ovl_set_error(fs, -EBUSY, "unmount %s first",
				     fs->mount_point);
	fin_init(&f, fs);
	/*
	 * A named upper may be gone: the interrupted commit may have removed
	 * it already, and recovery removes it only if it is still there.
	 */
	named = fs->upper_set;
	fs->upper_set = false;
	err = fin_paths(&f, false, &lower, &upper);
	fs->upper_set = named;
	fin_done(&f);
	if (!err)
		err = ovl_recover_lower(fs, lower, upper);
	free(lower);
	free(upper);
	return err;
}

int ovlfs_set_progress(struct ovlfs *fs, ovlfs_progress_fn fn, void *arg)
{
	fs->progress = fn;
	fs->progress_arg = arg;
	return 0;
}
