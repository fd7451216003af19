/*
 * journal.c: the journal of an atomic commit (docs/commit.md): building
 * it, writing it (the commit point), checking one read back from the lower
 * (which may be damaged or crafted), applying it and rolling it back. Its
 * own file: the journal's format and its distrust of the lower are one
 * concern, apart from the walk that fills it.
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

/* The operations a journal line may name (docs/commit.md). */
#define OPS "RDMWVP"

int fin_jput(struct fin *f, const char *s, size_t len)
{
	if (ovl_grow((void **)&f->journal, &f->jcap, f->jlen + len, 1, 256))
		return -ENOMEM;
	memcpy(f->journal + f->jlen, s, len);
	f->jlen += len;
	f->journal[f->jlen] = '\0';
	return 0;
}

/* Paths are bytes: everything outside '!'..'~', and '%', as %XX. */
int fin_jput_path(struct fin *f, const char *path)
{
	char buf[4];
	int err = 0;

	if (!*path)
		return fin_jput(f, ".", 1);
	for (const unsigned char *p = (const unsigned char *)path; *p && !err;
	     p++) {
		if (*p > ' ' && *p < 0x7f && *p != '%') {
			err = fin_jput(f, (const char *)p, 1);
		} else {
			snprintf(buf, sizeof(buf), "%%%02X", *p);
			err = fin_jput(f, buf, 3);
		}
	}
	return err;
}

int fin_jop_path(struct fin *f, char op, unsigned long n, const char *path)
{
	char buf[32];
	int len = snprintf(buf, sizeof(buf), "%c %lu ", op, n);
	int err = fin_jput(f, buf, len);

	if (!err)
		err = fin_jput_path(f, path);
	if (!err)
		err = fin_jput(f, "\n", 1);
	return err;
}

int fin_jop(struct fin *f, char op, unsigned long n)
{
	return fin_jop_path(f, op, n, f->path);
}

/* Operations that carry metadata (stage/N, and the old in stage/N.old). */
static bool is_meta(char op)
{
	return op == 'M' || op == 'W';
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

int fin_decode_path(char *s)
{
	return decode_path(s);
}

/*
 * What is wrong with decoded journal path PATH, or NULL: it must stay in
 * the lower (relative, no "", "." or ".." component) and out of the work
 * directory. "." (the root) only for M and W.
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
		if (p == path && len == strlen(OVL_COMMIT_WORKDIR) && !strncmp(p, OVL_COMMIT_WORKDIR, len))
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

	if (!line[0] || !strchr(OPS, line[0]) || line[1] != ' ')
		return "not an operation (R, D, M, W, V or P)";
	nd = strspn(line + 2, "0123456789");
	if (nd == 0 || nd > 20 || line[2 + nd] != ' ')
		return "no operation number";
	if (decode_path(line + 3 + nd))
		return "a bad %XX escape in the path";
	return bad_path(line + 3 + nd, is_meta(line[0]));
}

/*
 * A journal comes from the lower: it may be damaged or crafted. Check the
 * whole of TEXT (SIZE bytes) before acting on any line, so a bad one stops
 * recovery with nothing changed. 0, or -EUCLEAN with a message naming the
 * line.
 */
int fin_check_journal(struct fin *f, const char *text, size_t size)
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
			why = strcmp(line, OVL_JOURNAL_MAGIC) ?
				      "not an ovlfs journal (no \"" OVL_JOURNAL_MAGIC "\")" :
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
			     f->lower, OVL_COMMIT_WORKDIR, nline, why, f->lower, OVL_COMMIT_WORKDIR);
}

/*
 * Open the parent directory of relative PATH under the lower root and
 * point *LAST at its final component (in PATH, which is modified only
 * meanwhile). A journal comes from the lower, so
 * it is not trusted: "..", "." and empty components are refused, and no
 * symlink is followed.
 */
int fin_resolve_parent(struct fin *f, char *path, char **last)
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
		nfd = fin_open_dir_at(dfd, path);
		*slash = '/';	/* PATH stays whole, for messages */
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
			fin_strip_private(fd);
			close(fd);
		}
		return;
	}
	if (!S_ISDIR(st.st_mode))
		return;
	fd = fin_open_dir_at(dfd, name);
	if (fd < 0)
		return;
	if (ovl_dirlist_read(fd, &dl) == 0) {
		for (size_t i = 0; i < dl.n; i++)
			strip_tree(fd, dl.ents[i].name);
		ovl_dirlist_free(&dl);
	}
	close(fd);
}

bool fin_exists_at(int dfd, const char *name)
{
	struct stat st;

	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

int fin_open_up(int dfd, const char *name)
{
	int fd = name ? openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) : dfd;
	struct stat st;
	int err = fd < 0 ? -errno : 0;

	if (!err && fstat(fd, &st) < 0)
		err = -errno;
	if (!err && S_ISDIR(st.st_mode) && (st.st_mode & 0700) != 0700)
		err = ovl_fchmod_any(fd, (st.st_mode | 0700) & 07777);
	if (fd >= 0 && name)
		close(fd);
	return err;
}

int fin_rename_opened(struct fin *f, int od, const char *on, int nd,
		      const char *nn)
{
	if (renameat(od, on, nd, nn) == 0)
		return 0;
	if (f->is_root || errno != EACCES)
		return -errno;
	/* Best effort: the second renameat says what still fails. */
	fin_open_up(od, NULL);
	fin_open_up(nd, NULL);
	fin_open_up(od, on);
	return renameat(od, on, nd, nn) < 0 ? -errno : 0;
}

/*
 * W: the directory at PATH opened up, once: a later operation may put
 * another object at PATH, which W applied again after a crash must leave
 * alone (the mark stage/N.w says it was done).
 */
static int apply_open_up(struct fin *f, const char *n, char *path)
{
	char *last = NULL, mark[40];
	int dfd, src, dst, err;
	struct stat st;

	snprintf(mark, sizeof(mark), "%s.w", n);
	if (fin_exists_at(f->stage_fd, mark))
		return 0;
	if (!strcmp(path, ".")) {
		dst = dup(f->lower_fd);
		dst = dst < 0 ? -errno : dst;
	} else {
		dfd = fin_resolve_parent(f, path, &last);
		dst = dfd < 0 ? dfd : ovl_open_child(dfd, last);
		if (dfd >= 0)
			close(dfd);
	}
	src = ovl_open_child(f->stage_fd, n);
	err = src < 0 ? src : dst < 0 ? dst : ovl_fstat(dst, &st);
	if (!err && S_ISDIR(st.st_mode))
		err = fin_sync_meta(f, src, dst);
	if (src >= 0)
		close(src);
	if (dst >= 0)
		close(dst);
	if (!err && mkdirat(f->stage_fd, mark, 0700) < 0 && errno != EEXIST)
		err = -errno;
	return err;
}

/* Carry out one journal line; each is idempotent (docs/commit.md). */
static int apply_op(struct fin *f, char op, const char *n, char *path)
{
	char *last = NULL, mark[40];
	int dfd, src, dst, err = 0;

	if (op == 'W')
		return apply_open_up(f, n, path);

	if (op == 'M' && !strcmp(path, ".")) {
		src = ovl_open_child(f->stage_fd, n);
		if (src < 0)
			return src;
		err = fin_sync_meta(f, src, f->lower_fd);
		close(src);
		return err;
	}
	if ((op == 'R' || op == 'P') && !fin_exists_at(f->stage_fd, n))
		return 0;	/* done before a crash */
	/*
	 * V moves a renamed directory's source to stage/N, where P takes it
	 * to its target: V's own mark says it is done, as stage/N is empty
	 * again once P is (and the source's path may hold a target then).
	 */
	snprintf(mark, sizeof(mark), "%s.v", n);
	if (op == 'V' && fin_exists_at(f->stage_fd, mark))
		return 0;
	dfd = fin_resolve_parent(f, path, &last);
	if (dfd < 0)
		return dfd;
	switch (op) {
	case 'V':
		if (!fin_exists_at(f->stage_fd, n) &&
		    renameat(dfd, last, f->stage_fd, n) < 0)
			err = -errno;
		if (!err && mkdirat(f->stage_fd, mark, 0700) < 0 && errno != EEXIST)
			err = -errno;
		break;
	case 'R':
	case 'P':
	case 'D':
		if (fin_exists_at(dfd, last) &&
		    renameat(dfd, last, f->trash_fd, n) < 0)
			err = -errno;
		if (!err && op != 'D' && renameat(f->stage_fd, n, dfd, last) < 0)
			err = -errno;
		break;
	case 'M':
		src = ovl_open_child(f->stage_fd, n);
		dst = ovl_open_child(dfd, last);
		err = src < 0 ? src : dst < 0 ? dst : fin_sync_meta(f, src, dst);
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
	char *last = NULL, old[40], back[40];
	int dfd, src, dst, err = 0;

	if (is_meta(op) != meta_pass)
		return 0;
	snprintf(old, sizeof(old), "%s.old", n);
	snprintf(back, sizeof(back), "%s.back", n);
	if (is_meta(op) && !strcmp(path, ".")) {
		src = ovl_open_child(f->stage_fd, old);
		if (src < 0)
			return src == -ENOENT ? 0 : src;
		err = fin_sync_meta(f, src, f->lower_fd);
		close(src);
		return err;
	}
	dfd = fin_resolve_parent(f, path, &last);
	/* Under a renamed directory never placed: nothing was done there. */
	if (dfd == -ENOENT || dfd == -ENOTDIR)
		return 0;
	if (dfd < 0)
		return dfd;
	switch (op) {
	case 'V':
		/* Marked first: the P of the same N is then undone for good. */
		if (fin_exists_at(f->stage_fd, n) && !fin_exists_at(dfd, last)) {
			if (mkdirat(f->stage_fd, back, 0700) < 0 && errno != EEXIST)
				err = -errno;
			if (!err)
				err = fin_rename_opened(f, f->stage_fd, n, dfd, last);
		}
		break;
	case 'P':
		/*
		 * Undone already (its V is), or never applied (its V was not:
		 * stage/N is empty then too, and the target the old one).
		 */
		snprintf(old, sizeof(old), "%s.v", n);
		if (fin_exists_at(f->stage_fd, back) ||
		    !fin_exists_at(f->stage_fd, old))
			break;
		/* fall through */
	case 'R':
		/* The new object back to stage/, then the old one back. */
		if (!fin_exists_at(f->stage_fd, n) && fin_exists_at(dfd, last))
			err = fin_rename_opened(f, dfd, last, f->stage_fd, n);
		/* fall through */
	case 'D':
		if (!err && fin_exists_at(f->trash_fd, n))
			err = fin_rename_opened(f, f->trash_fd, n, dfd, last);
		break;
	case 'M':
	case 'W': {
		struct stat ss, ds;

		src = ovl_open_child(f->stage_fd, old);
		dst = ovl_open_child(dfd, last);
		/* Not what was there (a new directory over a file, undone). */
		if (src >= 0 && dst >= 0 && ovl_fstat(src, &ss) == 0 &&
		    ovl_fstat(dst, &ds) == 0 &&
		    S_ISDIR(ss.st_mode) == S_ISDIR(ds.st_mode))
			err = fin_sync_meta(f, src, dst);
		if (src >= 0)
			close(src);
		if (dst >= 0)
			close(dst);
		break;
	}
	}
	close(dfd);
	return err;
}

/* One operation of a journal being rolled back. */
struct jline {
	char op, n[32];
	char *path;		/* decoded */
};

/* Is the renamed directory of P operation L at its target now? */
static bool placed(struct fin *f, const struct jline *l)
{
	char v[40], back[40];

	snprintf(v, sizeof(v), "%s.v", l->n);
	snprintf(back, sizeof(back), "%s.back", l->n);
	return fin_exists_at(f->stage_fd, v) && !fin_exists_at(f->stage_fd, l->n) &&
	       !fin_exists_at(f->stage_fd, back);
}

/* The P operation with the longest path at or above L's, or -1. */
static long deepest_p(const struct jline *v, size_t nv, const struct jline *l)
{
	size_t best = 0;
	long at = -1;

	for (size_t i = 0; i < nv; i++) {
		size_t len = strlen(v[i].path);

		if (v[i].op != 'P' || strncmp(l->path, v[i].path, len) ||
		    (l->path[len] && l->path[len] != '/') || len < best)
			continue;
		best = len;
		at = (long)i;
	}
	return at;
}

/*
 * Roll back an apply that failed (journal TEXT, pristine copy): renames in
 * reverse order first, then the old metadata, which the renames would
 * otherwise disturb again (a directory's mtime). A renamed directory (V
 * moved it to stage/, P placed it) gets the old metadata of what is in it
 * just before P is undone, while its path still names it: after, the path
 * names what it displaced, or nothing. What is under a P that is not
 * placed was never applied, or was undone already.
 */
static int rollback_journal(struct fin *f, const char *text)
{
	size_t nl = 0, cap = 0;
	struct jline *v = NULL;
	long *pof = NULL;
	char *copy = strdup(text), *save = NULL, *line;
	int err = 0;

	if (!copy)
		return -ENOMEM;
	for (line = strtok_r(copy, "\n", &save); line && !err;
	     line = strtok_r(NULL, "\n", &save)) {
		struct jline l;

		if (sscanf(line, "%c %31s", &l.op, l.n) != 2 ||
		    !strchr(OPS, l.op) || line[1] != ' ')
			continue;	/* header, trailer */
		l.path = strchr(line + 2, ' ');
		if (!l.path)
			continue;
		l.path++;
		err = decode_path(l.path);
		if (!err)
			err = ovl_grow((void **)&v, &cap, nl, sizeof(*v), 64);
		if (!err)
			v[nl++] = l;
	}
	pof = err ? NULL : calloc(nl + 1, sizeof(*pof));
	if (!err && !pof)
		err = -ENOMEM;
	for (size_t i = 0; !err && i < nl; i++)
		pof[i] = v[i].op == 'P' || v[i].op == 'V' ? -1 : deepest_p(v, nl, &v[i]);
	for (size_t i = nl; i-- > 0 && !err;) {
		if (is_meta(v[i].op) || (pof[i] >= 0 && !placed(f, &v[pof[i]])))
			continue;
		if (v[i].op == 'P' && placed(f, &v[i]))
			for (size_t k = 0; k < nl && !err; k++)	/* post-order */
				if (is_meta(v[k].op) && pof[k] == (long)i)
					err = undo_op(f, v[k].op, v[k].n, v[k].path, true);
		if (!err)
			err = undo_op(f, v[i].op, v[i].n, v[i].path, false);
	}
	for (size_t k = 0; k < nl && !err; k++)	/* M: post-order */
		if (is_meta(v[k].op) && pof[k] < 0)
			err = undo_op(f, v[k].op, v[k].n, v[k].path, true);
	free(pof);
	free(v);
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
int fin_roll_back(struct fin *f, const char *text)
{
	int err = mark_rollback(f);

	if (!err)
		err = rollback_journal(f, text);
	if (!err && syncfs(f->lower_fd) < 0)
		err = -errno;
	if (!err)
		err = ovl_remove_tree(f->lower_fd, OVL_COMMIT_WORKDIR);
	if (!err && fsync(f->lower_fd) < 0)
		err = -errno;
	return err;
}

/*
 * Apply journal TEXT (modified in place), or with !APPLY only check it;
 * *UPPER points at the upper it names.
 */
int fin_apply_journal(struct fin *f, char *text, char **upper, bool apply)
{
	char *save = NULL, *line;
	bool ended = false;
	int err = 0, nline = 0;

	*upper = NULL;
	for (line = strtok_r(text, "\n", &save); line && !err;
	     line = strtok_r(NULL, "\n", &save), nline++) {
		char op, n[32], *path;

		if (nline == 0) {
			if (strcmp(line, OVL_JOURNAL_MAGIC))
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
		if (sscanf(line, "%c %31s", &op, n) != 2 || !strchr(OPS, op) ||
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
		fin_report(f, false);
	}
	if (!err && !ended)
		err = -EUCLEAN;	/* a journal is only renamed in complete */
	return err;
}

/* ---- writing it ---- */

int fin_write_durable(struct fin *f, int dirfd, const char *tmp,
		      const char *name)
{
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW |
			O_CLOEXEC, 0600);
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
	/* The rename makes it whole at once; the fsync makes that durable. */
	if (!err && renameat(dirfd, tmp, dirfd, name) < 0)
		err = -errno;
	if (!err && fsync(dirfd) < 0)
		err = -errno;
	return err;
}

int fin_write_journal(struct fin *f)
{
	/* The journal's rename is the commit point. */
	return fin_write_durable(f, f->work_fd, "journal.tmp", "journal");
}

/*
 * Files staged by link share their inode with the upper, private xattrs
 * included; those go once every operation is in (a rollback before that
 * must give back an untouched upper). Idempotent, like everything here.
 */
int fin_strip_applied(struct fin *f, const char *text)
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
		dfd = fin_resolve_parent(f, path, &last);
		if (dfd < 0) {
			err = dfd;
			break;
		}
		/* NOLINTNEXTLINE(clang-analyzer-core.CallAndMessage): assumes -errno >= 0 */
		strip_tree(dfd, last);
		close(dfd);
	}
	free(copy);
	return err;
}
