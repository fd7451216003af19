/*
 * layers.c: the two layers and the fd-relative helpers everything else uses.
 *
 * Layer contents are only ever reached through fds: each node holds O_PATH
 * fds of its objects and children are opened with openat(O_NOFOLLOW)
 * relative to them, so a symlink inside a layer can never lead ovlfs out of
 * the layers. Where a syscall cannot take an O_PATH fd (reading data,
 * xattrs) the object is reopened through /proc/self/fd/N: that magic link
 * resolves to the very object the fd holds, with no path walk that a
 * symlink could redirect.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "format/format.h"

void ovl_proc_path(int fd, char buf[32])
{
	snprintf(buf, 32, "/proc/self/fd/%d", fd);
}

int ovl_reopen(int fd, int flags)
{
	char p[32];
	int r;

	ovl_proc_path(fd, p);
	r = open(p, flags | O_CLOEXEC);
	/* The fd is returned: cppcheck loses track of it through the ?:. */
	/* cppcheck-suppress resourceLeak */
	return r < 0 ? -errno : r;
}

int ovl_fstat(int fd, struct stat *st)
{
	if (fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

int ovl_open_child(int dirfd, const char *name)
{
	int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);

	/* The fd is returned: cppcheck loses track of it through the ?:. */
	/* cppcheck-suppress resourceLeak */
	return fd < 0 ? -errno : fd;
}

int ovl_link_fd(int fd, int dirfd, const char *name)
{
	char p[32];

	if (linkat(fd, "", dirfd, name, AT_EMPTY_PATH) == 0)
		return 0;
	if (errno != EPERM && errno != ENOENT)
		return -errno;
	/* Without CAP_DAC_READ_SEARCH: link through the magic link. */
	ovl_proc_path(fd, p);
	if (linkat(AT_FDCWD, p, dirfd, name, AT_SYMLINK_FOLLOW) < 0)
		return -errno;
	return 0;
}

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif


/* chmod of NAME in DFD ("": DFD itself), no symlink followed; -ENOSYS
 * where the kernel has no fchmodat2 with flags (before 6.6). */
int ovl_fchmodat_nofollow(int dfd, const char *name, mode_t mode)
{
	int flags = AT_SYMLINK_NOFOLLOW | (name[0] ? 0 : AT_EMPTY_PATH);

	if (syscall(SYS_fchmodat2, dfd, name, mode, flags) == 0)
		return 0;
	return errno == ENOSYS || errno == EINVAL ? -ENOSYS : -errno;
}

int ovl_fchmod_any(int fd, mode_t mode)
{
	char p[32];

	if (syscall(SYS_fchmodat2, fd, "", mode, AT_EMPTY_PATH) == 0)
		return 0;
	if (errno != ENOSYS && errno != EINVAL)
		return -errno;
	/* Older kernels: the magic link names the object itself. */
	ovl_proc_path(fd, p);
	return chmod(p, mode) < 0 ? -errno : 0;
}

void ovl_tmp_name(_Atomic uint64_t *counter, char buf[64])
{
	snprintf(buf, 64, OVL_TMP_PREFIX "%d.%llu", (int)getpid(),
		 (unsigned long long)atomic_fetch_add(counter, 1));
}

static size_t link_slot(const struct ovl_linkmap *m, dev_t dev, ino_t ino)
{
	size_t i = ((uint64_t)ino * 0x9e3779b97f4a7c15ULL ^ (uint64_t)dev) &
		   (m->cap - 1);

	while (m->v[i].path && (m->v[i].dev != dev || m->v[i].ino != ino))
		i = (i + 1) & (m->cap - 1);
	return i;
}

int ovl_linkmap_first(struct ovl_linkmap *m, dev_t dev, ino_t ino,
		      const char *path, const char **first)
{
	size_t i;

	*first = NULL;
	if (m->cap) {
		i = link_slot(m, dev, ino);
		if (m->v[i].path) {
			*first = m->v[i].path;
			m->v[i].seen++;
			return 0;
		}
	}
	if ((m->n + 1) * 2 > m->cap) {
		struct ovl_linkmap g = { .cap = m->cap ? m->cap * 2 : 64 };

		g.v = calloc(g.cap, sizeof(*g.v));
		if (!g.v)
			return -ENOMEM;
		for (size_t j = 0; j < m->cap; j++)
			if (m->v[j].path)
				g.v[link_slot(&g, m->v[j].dev, m->v[j].ino)] = m->v[j];
		free(m->v);
		g.n = m->n;
		*m = g;
	}
	i = link_slot(m, dev, ino);
	m->v[i].path = strdup(path);
	if (!m->v[i].path)
		return -ENOMEM;
	m->v[i].dev = dev;
	m->v[i].ino = ino;
	m->v[i].seen = 1;
	m->n++;
	return 0;
}

unsigned ovl_linkmap_seen(const struct ovl_linkmap *m, dev_t dev, ino_t ino)
{
	return m->cap ? m->v[link_slot(m, dev, ino)].seen : 0;
}

void ovl_linkmap_free(struct ovl_linkmap *m)
{
	for (size_t i = 0; i < m->cap; i++)
		free(m->v[i].path);
	free(m->v);
	memset(m, 0, sizeof(*m));
}

int ovl_flock_wait(int fd, int op)
{
	for (int i = 0; flock(fd, op | LOCK_NB) < 0; i++) {
		if (errno != EWOULDBLOCK)
			return -errno;
		if (i == 40)
			return -EBUSY;
		nanosleep(&(struct timespec){ 0, 50 * 1000 * 1000 }, NULL);
	}
	return 0;
}

int ovl_grow(void **v, size_t *cap, size_t n, size_t size, size_t first)
{
	size_t ncap = *cap ? *cap : first;
	void *nv;

	if (n < *cap)
		return 0;
	while (ncap <= n) {
		if (ncap > SIZE_MAX / 2 / size)
			return -ENOMEM;
		ncap *= 2;
	}
	nv = realloc(*v, ncap * size);
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = ncap;
	return 0;
}

int ovl_dirlist_read(int dirfd, struct ovl_dirlist *dl)
{
	DIR *d;
	struct dirent *de;
	int fd, err = 0;

	memset(dl, 0, sizeof(*dl));
	fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	d = fdopendir(fd);
	if (!d) {
		err = -errno;
		close(fd);
		return err;
	}
	for (;;) {
		errno = 0;
		de = readdir(d);
		if (!de) {
			err = -errno;
			break;
		}
		if (de->d_name[0] == '.' &&
		    (!de->d_name[1] ||
		     (de->d_name[1] == '.' && !de->d_name[2])))
			continue;
		err = ovl_grow((void **)&dl->ents, &dl->cap, dl->n,
			       sizeof(*dl->ents), 32);
		if (err)
			break;
		dl->ents[dl->n].name = strdup(de->d_name);
		if (!dl->ents[dl->n].name) {
			err = -ENOMEM;
			break;
		}
		dl->ents[dl->n].ino = de->d_ino;
		dl->ents[dl->n].type = de->d_type;
		dl->n++;
	}
	closedir(d);
	if (err)
		ovl_dirlist_free(dl);
	return err;
}

void ovl_dirlist_free(struct ovl_dirlist *dl)
{
	for (size_t i = 0; i < dl->n; i++)
		free(dl->ents[i].name);
	free(dl->ents);
	memset(dl, 0, sizeof(*dl));
}

/*
 * Is the entry CHILD on another mount than PARENT (the root of a bind
 * mount or of another filesystem mounted there)? The mount id tells a bind
 * mount of the same filesystem too, where st_dev cannot.
 */
static bool other_mount(const struct statx *parent, const struct statx *child)
{
	if (parent->stx_mask & child->stx_mask & STATX_MNT_ID)
		return parent->stx_mnt_id != child->stx_mnt_id;
	if ((child->stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
	    (child->stx_attributes & STATX_ATTR_MOUNT_ROOT))
		return true;
	return parent->stx_dev_major != child->stx_dev_major ||
	       parent->stx_dev_minor != child->stx_dev_minor;
}

#define MNT_MASK (STATX_TYPE | STATX_MODE | STATX_MNT_ID)

static int remove_on(int dirfd, const char *name, const struct statx *mnt);

/*
 * Directories in the tree may be mode 0000 or read-only: grant ourselves
 * access first (we own the upper) so removal never stops half-way.
 */
static int remove_children(int dfd, const struct statx *mnt)
{
	struct ovl_dirlist dl;
	int err = ovl_dirlist_read(dfd, &dl);

	if (err)
		return err;
	for (size_t i = 0; i < dl.n && !err; i++)
		err = remove_on(dfd, dl.ents[i].name, mnt);
	ovl_dirlist_free(&dl);
	return err;
}

/* ovl_remove_tree() on the mount MNT (a statx of a directory on it). */
static int remove_on(int dirfd, const char *name, const struct statx *mnt)
{
	struct statx st, dst;
	int dfd, err;

	if (statx(dirfd, name, AT_SYMLINK_NOFOLLOW, MNT_MASK, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	/* Deletion stays on its own filesystem: never into a mount. */
	if (other_mount(mnt, &st))
		return -EBUSY;
	if (!S_ISDIR(st.stx_mode)) {
		if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
			return -errno;
		return 0;
	}
	/*
	 * A directory the caller cannot read, write or search is opened up
	 * first. Only then: a commit killed while removing the upper shows
	 * what is left of it in the merged view, and a mode changed for
	 * nothing would show there (a 0555 directory as 0700, as root).
	 */
	if ((st.stx_mode & 0700) != 0700 &&
	    faccessat(dirfd, name, R_OK | W_OK | X_OK,
		      AT_EACCESS | AT_SYMLINK_NOFOLLOW) != 0) {
		/* Through an fd: a symlink swapped in meanwhile is refused. */
		int pfd = openat(dirfd, name, O_PATH | O_DIRECTORY |
				 O_NOFOLLOW | O_CLOEXEC);

		if (pfd < 0)
			return -errno;
		err = statx(pfd, "", AT_EMPTY_PATH, MNT_MASK, &dst) < 0 ? -errno :
		      other_mount(mnt, &dst) ? -EBUSY : 0;
		if (!err)
			ovl_fchmod_any(pfd, 0700);
		close(pfd);
		if (err)
			return err;
	}
	dfd = openat(dirfd, name,
		     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	/* Mounted on between the statx and the open? Checked on the fd. */
	if (statx(dfd, "", AT_EMPTY_PATH, MNT_MASK, &dst) < 0)
		err = -errno;
	else
		err = other_mount(mnt, &dst) ? -EBUSY : remove_children(dfd, mnt);
	close(dfd);
	if (err)
		return err;
	if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int ovl_remove_tree(int dirfd, const char *name)
{
	struct statx mnt;

	if (statx(dirfd, "", AT_EMPTY_PATH, MNT_MASK, &mnt) < 0)
		return -errno;
	return remove_on(dirfd, name, &mnt);
}

int ovl_open_parent(const char *path, int flags, const char **base)
{
	const char *slash = strrchr(path, '/');
	char *dir = NULL;
	int fd;

	*base = slash ? slash + 1 : path;
	if (slash && slash != path) {
		dir = strndup(path, slash - path);
		if (!dir)
			return -ENOMEM;
	}
	fd = open(!slash ? "." : dir ? dir : "/", flags | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		fd = -errno;
	free(dir);
	return fd;
}

size_t ovl_dead_runs(int dfd, bool (*match)(const char *name, const char *base),
		     const char *base, bool sweep)
{
	struct ovl_dirlist dl;
	size_t found = 0;
	int fd;

	if (ovl_dirlist_read(dfd, &dl))
		return 0;
	for (size_t i = 0; i < dl.n; i++) {
		const char *n = dl.ents[i].name;

		if (!match(n, base))
			continue;
		found++;
		if (!sweep)
			continue;
		fd = openat(dfd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			    O_CLOEXEC);
		/* Locked: a live run's. */
		if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
			ovl_remove_tree(dfd, n);
		if (fd >= 0)
			close(fd);
	}
	ovl_dirlist_free(&dl);
	return found;
}

struct under {
	const char *dir;	/* the directory's path */
	size_t len;
	char *found;
};

static int mount_under(const struct ovl_mount_ent *m, void *arg)
{
	struct under *u = arg;

	if (!ovl_path_within(m->point, u->dir))
		return 0;
	u->found = strdup(m->point);
	return u->found ? 1 : -ENOMEM;
}

int ovl_find_mount_under(int fd, char **where)
{
	struct under u = { 0 };
	char p[32], *dir;
	ssize_t n;
	int err;

	*where = NULL;
	/*
	 * Mounts live on (mount, directory) pairs: the ones that a walk down
	 * from FD would enter are exactly those whose mount point lies at or
	 * under FD's own path in this namespace, so the mount table answers
	 * without a walk of the tree.
	 */
	dir = malloc(PATH_MAX);
	if (!dir)
		return -ENOMEM;
	ovl_proc_path(fd, p);
	n = readlink(p, dir, PATH_MAX - 1);
	if (n < 0) {
		err = -errno;
		goto out;
	}
	dir[n] = '\0';
	/* Removed: no path leads into it, and a mount point cannot be. */
	err = 0;
	if (dir[0] != '/' || (n > 10 && !strcmp(dir + n - 10, " (deleted)")))
		goto out;
	u.dir = dir;
	err = ovl_mountinfo_walk(mount_under, &u);
	if (!err && u.found) {
		*where = u.found;
		err = 1;
	}
out:
	free(dir);
	return err;
}
