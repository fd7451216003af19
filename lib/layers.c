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
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ovlfs_i.h"

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

void ovl_tmp_name(struct ovl_fs *ofs, char buf[64])
{
	snprintf(buf, 64, OVL_TMP_PREFIX "%d.%llu", (int)getpid(),
		 (unsigned long long)atomic_fetch_add(&ofs->tmp_counter, 1));
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
		if (dl->n == dl->cap) {
			size_t cap = dl->cap ? dl->cap * 2 : 32;
			void *p = realloc(dl->ents, cap * sizeof(*dl->ents));

			if (!p) {
				err = -ENOMEM;
				break;
			}
			dl->ents = p;
			dl->cap = cap;
		}
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
 * Directories in the tree may be mode 0000 or read-only: grant ourselves
 * access first (we own the upper) so removal never stops half-way.
 */
static int remove_children(int dfd)
{
	struct ovl_dirlist dl;
	int err = ovl_dirlist_read(dfd, &dl);

	if (err)
		return err;
	for (size_t i = 0; i < dl.n && !err; i++)
		err = ovl_remove_tree(dfd, dl.ents[i].name);
	ovl_dirlist_free(&dl);
	return err;
}

int ovl_remove_tree(int dirfd, const char *name)
{
	struct stat st;
	int dfd, err;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode)) {
		if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
			return -errno;
		return 0;
	}
	if ((st.st_mode & 0700) != 0700) {
		/* Through an fd: a symlink swapped in meanwhile is refused. */
		int pfd = openat(dirfd, name, O_PATH | O_DIRECTORY |
				 O_NOFOLLOW | O_CLOEXEC);

		if (pfd < 0)
			return -errno;
		ovl_fchmod_any(pfd, 0700);
		close(pfd);
	}
	dfd = openat(dirfd, name,
		     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	err = remove_children(dfd);
	close(dfd);
	if (err)
		return err;
	if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}
