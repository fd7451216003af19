/*
 * upper.c: the checks that come before any use of the layers: that the
 * lower and upper of a pair are real, apart directories (the same tests
 * a mount makes of its three directories, which is why they are here and
 * not in api/), that no volatile mount left the upper unclean, and which
 * format an upper is in.
 *
 * Its own file because both a mount (api/) and the offline operations
 * (offline/) need them, and offline/ may use nothing above format/.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "format/format.h"

static int is_inside(struct ovlfs *fs, const char *what_in, const char *in,
		     const char *what_out, const char *out, const char *via)
{
	if (via)
		return ovl_set_error(fs, -EINVAL,
				     "%s %s is inside the %s %s (it is %s, reached through another mount)",
				     what_in, in, what_out, out, via);
	return ovl_set_error(fs, -EINVAL, "%s %s is inside the %s %s", what_in,
			     in, what_out, out);
}

/*
 * Neither of A and B may be the other or lie inside it, by identity: no
 * symlink, ".." or bind mount makes one pass for another (paths.c).
 */
int ovl_check_pair(struct ovlfs *fs, const char *what_a,
		   const struct ovl_place *a, const char *what_b,
		   const struct ovl_place *b)
{
	char *via = NULL;
	int err = 0;

	switch (ovl_place_overlap(a, b, &via)) {
	case OVL_APART:
		break;
	case OVL_SAME:
		err = ovl_set_error(fs, -EINVAL,
				    "%s %s is the same directory as the %s %s",
				    what_a, a->path, what_b, b->path);
		break;
	case OVL_A_IN_B:
		err = is_inside(fs, what_a, a->path, what_b, b->path, via);
		break;
	case OVL_B_IN_A:
		err = is_inside(fs, what_b, b->path, what_a, a->path, via);
		break;
	}
	free(via);
	return err;
}

bool ovl_same_place(const struct ovl_place *a, const struct ovl_place *b)
{
	char *via = NULL;
	bool same = ovl_place_overlap(a, b, &via) == OVL_SAME;

	free(via);
	return same;
}

int ovl_place_of(struct ovlfs *fs, const char *what, const char *path,
		 struct ovl_place *pl)
{
	int err = ovl_place_get(path, pl);

	if (err)
		return ovl_set_error(fs, err, "%s %s: %s", what, path,
				     strerror(-err));
	return 0;
}

/*
 * An upper named by a symlink would be followed to the directory, which
 * a discard or commit then removes, leaving the link dangling, and the
 * next mount refuses that. Every command refuses it instead, saying
 * where it points.
 */
int ovl_check_upper_not_link(struct ovlfs *fs)
{
	char *p = ovl_path_strip(fs->upper), to[PATH_MAX];
	struct stat st;
	ssize_t n;
	int err = 0;

	if (!p)
		return ovl_set_error(fs, -ENOMEM, "out of memory");
	if (lstat(p, &st) == 0 && S_ISLNK(st.st_mode)) {
		n = readlink(p, to, sizeof(to) - 1);
		to[n < 0 ? 0 : n] = '\0';
		err = ovl_set_error(fs, -EINVAL,
				    "upper %s is a symbolic link (to %s): name the directory itself",
				    fs->upper, to);
	}
	free(p);
	return err;
}

int ovl_canonical_of(struct ovlfs *fs, const char *what, const char *path,
		     char **out)
{
	int err = ovl_path_canonical(path, out);

	if (err)
		return ovl_set_error(fs, err, "%s %s: %s", what, path,
				     strerror(-err));
	return 0;
}

/* Existing PATH must be a directory; a missing one is fine (created). */
int ovl_check_dir_or_missing(struct ovlfs *fs, const char *what,
			     const char *path, bool *exists)
{
	struct stat st;

	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	if (stat(path, &st) < 0) {
		if (errno == ENOENT) {
			*exists = false;
			return 0;
		}
		return ovl_set_error(fs, -errno, "%s %s: %s", what, path,
				     strerror(errno));
	}
	if (!S_ISDIR(st.st_mode))
		return ovl_set_error(fs, -ENOTDIR, "%s %s: not a directory",
				     what, path);
	*exists = true;
	return 0;
}

/* Refuse early what opening the layer later would: nothing made yet. */
static int check_readable(struct ovlfs *fs, const char *what, const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return ovl_set_error(fs, -errno, "%s %s: %s", what, path,
				     strerror(errno));
	close(fd);
	return 0;
}

/* A lower must exist, be a directory and be readable. */
int ovl_check_lower_at(struct ovlfs *fs, const char *lower)
{
	struct stat st;

	if (stat(lower, &st) < 0)
		return ovl_set_error(fs, -errno, "lower %s: %s", lower,
				     strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return ovl_set_error(fs, -ENOTDIR, "lower %s: not a directory",
				     lower);
	return check_readable(fs, "lower", lower);
}

/*
 * The lower a commit or diff works on: the one named by
 * ovlfs_set_commit_into() (one of the lowers), else the only one; with
 * several and none named, the topmost if !TARGET, else an error.
 */
static int target_lower(struct ovlfs *fs, bool target, char **out)
{
	struct ovl_place pc = { 0 };
	char *c = NULL;
	int err;

	*out = NULL;
	if (!fs->commit_into) {
		if (target && fs->n_more_lowers)
			return ovl_set_error(fs, -EINVAL,
					     "%u lower layers: name the one to commit into (--into)",
					     1 + fs->n_more_lowers);
		err = ovl_check_lower_at(fs, fs->lower);
		return err ? err : ovl_canonical_of(fs, "lower", fs->lower, out);
	}
	err = ovl_check_lower_at(fs, fs->commit_into);
	if (!err)
		err = ovl_canonical_of(fs, "lower", fs->commit_into, &c);
	if (!err)
		err = ovl_place_of(fs, "lower", c, &pc);
	for (unsigned i = 0; !err && i <= fs->n_more_lowers; i++) {
		/* ovlfs_lower_at(fs, i), which is api/'s */
		const char *l = i ? fs->more_lowers[i - 1] : fs->lower;
		struct ovl_place pl;
		bool same;

		if (ovl_place_get(l, &pl) < 0)
			continue;
		same = ovl_same_place(&pl, &pc);
		ovl_place_free(&pl);
		if (same) {
			ovl_place_free(&pc);
			*out = c;
			return 0;
		}
	}
	ovl_place_free(&pc);
	if (!err)
		err = ovl_set_error(fs, -EINVAL, "%s is not one of the lower layers",
				    fs->commit_into);
	free(c);
	return err;
}

bool ovl_is_upper_trash(const char *name, const char *base)
{
	return name[0] == '.' && ovl_is_run_name(name + 1, base, ".removed-");
}

/* Is there trash of the upper UPPER (canonical) beside it? */
static bool trash_beside(const char *upper)
{
	const char *base;
	int dfd = ovl_open_parent(upper, O_RDONLY, &base);
	size_t found = 0;

	if (dfd >= 0) {
		found = ovl_dead_runs(dfd, ovl_is_upper_trash, base, false);
		close(dfd);
	}
	return found > 0;
}

int ovl_pair_paths(struct ovlfs *fs, bool target, char **lower, char **upper,
		   bool *upper_exists)
{
	struct ovl_place pl = { 0 }, pu = { 0 };
	int err;

	*lower = *upper = NULL;
	if (!fs->upper)
		return ovl_set_error(fs, -EINVAL,
				     "lower %s has no default upper: set one",
				     fs->lower);
	err = target_lower(fs, target, lower);
	if (!err)
		err = ovl_check_upper_not_link(fs);
	if (!err)
		err = ovl_canonical_of(fs, "upper", fs->upper, upper);
	if (!err)
		err = ovl_place_of(fs, "lower", *lower, &pl);
	if (!err)
		err = ovl_place_of(fs, "upper", *upper, &pu);
	if (!err)
		err = ovl_check_pair(fs, "upper", &pu, "lower", &pl);
	ovl_place_free(&pl);
	ovl_place_free(&pu);
	if (!err)
		err = ovl_check_dir_or_missing(fs, "upper", *upper, upper_exists);
	/*
	 * A default upper never made means no changes; a named one, a typo,
	 * unless a run was killed removing it when done (its trash beside).
	 */
	if (!err && !*upper_exists && fs->upper_set && !trash_beside(*upper))
		err = ovl_set_error(fs, -ENOENT, "upper %s: %s", *upper,
				    strerror(ENOENT));
	if (err) {
		free(*lower);
		free(*upper);
		*lower = *upper = NULL;
	}
	return err;
}

bool ovl_volatile_marked(int fd)
{
	char v[8];

	return ovl_fd_getxattr(fd, OVL_XATTR_VOLATILE, v, sizeof(v)) >= 0;
}

int ovl_refuse_volatile_dirty(struct ovlfs *fs, const char *what,
			      const char *upper)
{
	int fd, err = 0;

	if (fs->volatile_dirty == OVLFS_VOLATILE_DIRTY_KEEP)
		return 0;
	/* NOLINTNEXTLINE(clang-analyzer-core.NonNullParamChecker): assumes -errno >= 0 */
	fd = open(upper, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return 0;	/* missing: nothing to lose; else the caller says */
	/*
	 * Marked, and no live mount holds it: that mount did not end. Looked
	 * at again under the lock: an ending mount drops the mark just
	 * before it lets go of the lock.
	 */
	if (ovl_volatile_marked(fd) && flock(fd, LOCK_SH | LOCK_NB) == 0 &&
	    ovl_volatile_marked(fd))
		err = ovl_set_error(fs, -EUCLEAN,
				    "%s: upper %s was used by a volatile mount that was not "
				    "cleanly unmounted, so changes may have been lost; "
				    "discard it, or accept it by mounting it once with "
				    "--volatile-dirty=keep", what, upper);
	close(fd);
	return err;
}

/*
 * What the kernel's overlay.* xattrs on DFD/NAME mean to us: 0 none, 1
 * kernel-format markers we read (opaque, redirect, metacopy) or may ignore
 * (origin, impure, nlink), 2 a feature ovlfs does not implement, which it
 * would misread (none today: the check stays for the next one).
 */
static int overlay_xattrs(int dfd, const char *name, const char **what)
{
	char p[64 + NAME_MAX], *list;
	ssize_t n;
	int found = 0;

	snprintf(p, sizeof(p), "/proc/self/fd/%d/%s", dfd, name);
	n = llistxattr(p, NULL, 0);
	if (n <= 0 || !(list = malloc(n)))
		return 0;
	n = llistxattr(p, list, n);
	for (char *x = list; n > 0 && x < list + n && found < 2;
	     x += strlen(x) + 1) {
		const char *o = !strncmp(x, "trusted.overlay.", 16) ? x + 16 :
				!strncmp(x, "user.overlay.", 13) ? x + 13 : NULL;

		if (!o)
			continue;
		(void)what;
		found = 1;
	}
	free(list);
	return found;
}

/* What a scan of an unstamped upper found. */
struct fmt_scan {
	bool kernel;		/* 0/0 device or overlay.* xattr */
	bool oci;		/* a .wh. marker (not ovlfs's temporaries) */
	const char *bad;	/* something neither format reads, or NULL */
	char *path;		/* where the scan stopped, relative */
};

/*
 * Look through directory DFD (at SC->path, PLEN bytes, of CAP) for the
 * markers of either format; stop at anything unreadable or at proof of
 * both. 0 or -errno.
 */
static int scan_markers(int dfd, struct fmt_scan *sc, size_t plen, size_t cap,
			int depth)
{
	struct ovl_dirlist dl;
	int err;

	if (depth > 4096)
		return -ELOOP;
	err = ovl_dirlist_read(dfd, &dl);
	if (err)
		return err;
	for (size_t i = 0; i < dl.n && !err; i++) {
		const char *name = dl.ents[i].name;
		size_t nlen = strlen(name);
		struct stat st;

		if (plen + nlen + 2 > cap) {
			err = -ENAMETOOLONG;
			break;
		}
		sc->path[plen] = '/';
		memcpy(sc->path + plen + 1, name, nlen + 1);
		if (ovl_is_wh_name(name)) {
			if (strncmp(name, OVL_TMP_PREFIX, strlen(OVL_TMP_PREFIX)))
				sc->oci = true;
			continue;
		}
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue;
		if (ovl_is_kernel_wh(&st))
			sc->kernel = true;
		switch (overlay_xattrs(dfd, name, &sc->bad)) {
		case 2:
			goto out;
		case 1:
			sc->kernel = true;
			break;
		}
		if (sc->kernel && sc->oci)
			goto out;
		if (S_ISDIR(st.st_mode)) {
			int cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY |
					 O_NOFOLLOW | O_CLOEXEC);

			if (cfd >= 0) {
				err = scan_markers(cfd, sc, plen + 1 + nlen, cap,
						   depth + 1);
				close(cfd);
				if (sc->bad || (sc->kernel && sc->oci))
					goto out;
			}
		}
	}
	sc->path[plen] = '\0';
out:
	ovl_dirlist_free(&dl);
	return err;
}

static const char *format_name(enum ovlfs_format f)
{
	return f == OVLFS_FORMAT_KERNEL ? "kernel" : "oci";
}

int ovl_check_upper_format(struct ovlfs *fs, int fd, const char *upper,
			   bool stamp, struct ovl_fmt *out)
{
	char buf[32];
	ssize_t n = ovl_fd_getxattr(fd, OVL_XATTR_FORMAT, buf, sizeof(buf) - 1);
	enum ovlfs_format want = fs->format, have = OVLFS_FORMAT_AUTO;
	struct fmt_scan sc = { 0 };
	char *end;
	long v;
	int err = 0;

	if (n >= 0) {
		buf[n] = '\0';
		errno = 0;
		v = strtol(buf, &end, 10);
		if (!strcmp(end, " kernel"))
			have = OVLFS_FORMAT_KERNEL;
		else if (!*end)
			have = OVLFS_FORMAT_OCI;
		if (errno || end == buf || !have || v < 1 ||
		    v > OVL_FORMAT_VERSION)
			return ovl_set_error(fs, -EPROTO,
					     "upper %s has format \"%s\"; this ovlfs reads format %d only",
					     upper, buf, OVL_FORMAT_VERSION);
		goto check;	/* ours: trusted without a scan */
	}
	/*
	 * Not stamped: new, made by hand, or by another overlay (the
	 * kernel's). Look once for the markers of either format.
	 */
	sc.path = malloc(PATH_MAX);
	if (!sc.path)
		return -ENOMEM;
	sc.path[0] = '\0';
	err = scan_markers(fd, &sc, 0, PATH_MAX, 0);
	if (err)
		err = ovl_set_error(fs, err, "upper %s: cannot check its format: %s",
				    upper, strerror(-err));
	else if (sc.bad)
		err = ovl_set_error(fs, -EPROTO,
				    "upper %s: %s%s is %s, which ovlfs does not read "
				    "(see docs/format.md)", upper, upper, sc.path, sc.bad);
	else if (sc.kernel && sc.oci)
		err = ovl_set_error(fs, -EPROTO,
				    "upper %s holds markers of both the oci and the kernel format "
				    "(see docs/format.md)", upper);
	free(sc.path);
	if (err)
		return err;
	have = sc.kernel ? OVLFS_FORMAT_KERNEL :
	       sc.oci ? OVLFS_FORMAT_OCI : want ? want : OVLFS_FORMAT_OCI;
check:
	if (want && want != have)
		return ovl_set_error(fs, -EPROTO,
				     "upper %s is in the %s format, not %s (ovlfs convert rewrites it)",
				     upper, format_name(have), format_name(want));
	if (stamp && n == -ENODATA) {
		n = snprintf(buf, sizeof(buf), "%d%s", OVL_FORMAT_VERSION,
			     have == OVLFS_FORMAT_KERNEL ? " kernel" : "");
		ovl_fd_setxattr(fd, OVL_XATTR_FORMAT, buf, n, XATTR_CREATE);
	}
	*out = ovl_fmt_of(have == OVLFS_FORMAT_KERNEL);
	return 0;
}
