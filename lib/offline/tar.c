/*
 * tar.c: what OCI layer export (export.c) and apply (apply.c,
 * apply_entry.c) share (docs/tar.md): the xattrs a layer never carries,
 * the upper's format, locking a layer, naming the tar in messages, and
 * for the two halves of apply a small table keyed by path and the tar
 * path check. Its own file so that neither side reaches into the other.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "offline/offline.h"

/* ---- a small table keyed by string ---- */

static size_t hash_str(const char *s)
{
	size_t h = 14695981039346656037ULL;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
	return h;
}

struct ovl_trec *ovl_tmap_find(const struct ovl_tmap *m, const char *key)
{
	if (!m->cap)
		return NULL;
	for (size_t i = hash_str(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->recs[i].key)
			return NULL;
		if (!strcmp(m->recs[i].key, key))
			return &m->recs[i];
	}
}

static int tmap_grow(struct ovl_tmap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 256;
	struct ovl_trec *recs = calloc(cap, sizeof(*recs));

	if (!recs)
		return -ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		size_t j;

		if (!m->recs[i].key)
			continue;
		for (j = hash_str(m->recs[i].key) & (cap - 1); recs[j].key;
		     j = (j + 1) & (cap - 1))
			;
		recs[j] = m->recs[i];
	}
	free(m->recs);
	m->recs = recs;
	m->cap = cap;
	return 0;
}

int ovl_tmap_get(struct ovl_tmap *m, const char *key, struct ovl_trec **out)
{
	struct ovl_trec *r = ovl_tmap_find(m, key);
	size_t i;

	if (!r) {
		if ((m->n + 1) * 2 > m->cap && tmap_grow(m) < 0)
			return -ENOMEM;
		for (i = hash_str(key) & (m->cap - 1); m->recs[i].key;
		     i = (i + 1) & (m->cap - 1))
			;
		r = &m->recs[i];
		r->key = strdup(key);
		if (!r->key)
			return -ENOMEM;
		m->n++;
	}
	*out = r;
	return 0;
}

void ovl_tmap_free(struct ovl_tmap *m)
{
	for (size_t i = 0; i < m->cap; i++) {
		free(m->recs[i].key);
	}
	free(m->recs);
	memset(m, 0, sizeof(*m));
}

/* ---- shared helpers ---- */

bool ovl_tar_skip_xattr(const char *name)
{
	return ovl_xattr_is_private(name) ||
	       !strncmp(name, "trusted.overlay.", 16) ||
	       !strncmp(name, "user.overlay.", 13);
}

int ovl_tar_upper_format(struct ovlfs *fs, int fd, const char *upper,
			 struct ovl_fmt *mf, enum ovlfs_format *fmt)
{
	int err = ovl_check_upper_format(fs, fd, upper, false, mf);

	*fmt = mf->kernel ? OVLFS_FORMAT_KERNEL : OVLFS_FORMAT_OCI;
	return err;
}

int ovl_tar_open_locked(struct ovlfs *fs, const char *what, const char *path,
			int *out)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int err;

	*out = -1;
	if (fd < 0)
		return ovl_set_error(fs, -errno, "%s %s: %s", what, path,
				     strerror(errno));
	err = ovl_flock_wait(fd, LOCK_EX);
	if (err) {
		close(fd);
		if (err == -EBUSY)
			return ovl_set_error(fs, err,
					     "%s %s is in use by an ovlfs mount; unmount it first",
					     what, path);
		return ovl_set_error(fs, err, "%s %s: cannot lock: %s", what,
				     path, strerror(-err));
	}
	*out = fd;
	return 0;
}

void ovl_tar_fd_name(int fd, char *buf, size_t len)
{
	char p[64];
	ssize_t n;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	n = readlink(p, buf, len - 1);
	if (n < 0 || (size_t)n >= len - 1)
		snprintf(buf, len, "the tar (fd %d)", fd);
	else
		buf[n] = '\0';
}


int ovl_tar_norm_path(const char *in, char *out)
{
	size_t o = 0;

	if (in[0] == '/')
		return -EINVAL;
	while (*in) {
		const char *end = strchr(in, '/');
		size_t len = end ? (size_t)(end - in) : strlen(in);

		if (len == 2 && in[0] == '.' && in[1] == '.')
			return -EINVAL;
		if (len && !(len == 1 && in[0] == '.')) {
			if (o + len + 2 > PATH_MAX)
				return -ENAMETOOLONG;
			if (o)
				out[o++] = '/';
			memcpy(out + o, in, len);
			o += len;
		}
		in += len;
		if (*in == '/')
			in++;
	}
	out[o] = '\0';
	return 0;
}
