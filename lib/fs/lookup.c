/*
 * lookup.c: finding a name across the layers.
 *
 * The upper wins: an upper entry hides the lower one of the same name (and
 * any stale whiteout beside it). Without an upper entry, a whiteout hides
 * the lower name. A lower directory merges with an upper directory of the
 * same name unless the upper one is opaque. Names starting with ".wh." are
 * markers (or ovlfs's own files) and never show.
 *
 * Several lowers stack as in the kernel's overlayfs: searched top to
 * bottom, the first layer holding a name holds the object, and a whiteout
 * in a layer hides the name in every layer beneath. A directory merges
 * with the directories of the same name beneath it, down to the first
 * layer where its part is opaque or a whiteout or a non-directory stands
 * at its name.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"

int ovl_check_name(const char *name)
{
	size_t len = strlen(name);

	if (len > NAME_MAX)
		return -ENAMETOOLONG;
	if (ovl_is_wh_name(name))
		return -EINVAL;
	return 0;
}

bool ovl_node_lower_visible(struct ovl_node *node)
{
	return node->type == S_IFDIR && atomic_load(&node->lower_fd) >= 0 &&
	       !node->opaque;
}

static int *lstack_new(struct ovl_fs *ofs)
{
	int *v = malloc(ofs->nlower * sizeof(*v));

	for (int k = 0; v && k < ofs->nlower; k++)
		v[k] = -1;
	return v;
}

int ovl_lower_root_stack(struct ovl_fs *ofs, int **out)
{
	int *v, err;

	*out = NULL;
	if (ofs->nlower == 1)
		return 0;
	v = lstack_new(ofs);
	if (!v)
		return -ENOMEM;
	for (int k = 1; k < ofs->nlower; k++) {
		/* An opaque root hides the layers beneath it. */
		err = ovl_opaque_get(&ofs->fmt, ofs->lowers[k - 1].root_fd);
		if (err > 0)
			break;
		if (!err && (v[k] = dup(ofs->lowers[k].root_fd)) < 0)
			err = -errno;
		if (err) {
			ovl_lstack_free(ofs, v);
			return err;
		}
	}
	*out = v;
	return 0;
}

/*
 * The lower part of a directory as lower_find needs it: its layer, its fd
 * there and the fds beneath (ovl_dir_lfd). A node's, or one met on the
 * way along an absolute redirect.
 */
struct lower_dir {
	int lidx;
	int fd;
	const int *lstack;
};

static int ldir_fd(const struct lower_dir *d, int k)
{
	if (k < d->lidx)
		return -1;
	if (k == d->lidx)
		return d->fd;
	return d->lstack ? d->lstack[k] : -1;
}

static int lower_find_abs(struct ovl_fs *ofs, const char *path, int from,
			  int *layer, struct stat *st, int *fds);

/*
 * Find NAME in the lower part D of a directory (ns_lock held): 1 with
 * *LAYER and ST set, 0 if no layer shows it, or -errno. If FDS (one slot
 * per lower, -1 each) is given and the object is a directory, FDS[k] gets
 * an O_PATH fd of its part in every layer k that merges into it (the
 * caller owns them, also on error).
 */
static int lower_find_in(struct ovl_fs *ofs, const struct lower_dir *d,
			 const char *name, int *layer, struct stat *st,
			 int *fds)
{
	int n = ofs->nlower, k, j, dfd = -1, rk = -1, err;
	char rname[OVL_REDIRECT_MAX + 1];
	struct stat tmp;

	for (k = d->lidx; k < n; k++) {
		dfd = ldir_fd(d, k);
		if (dfd < 0)
			continue;
		if (fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW) == 0) {
			if (ofs->fmt.kernel && ovl_is_kernel_wh(st))
				return 0;
			break;
		}
		if (errno != ENOENT)
			return -errno;
		/* A whiteout in the bottom layer hides nothing. */
		if (k + 1 < n && !ofs->fmt.kernel) {
			err = ovl_wh_exists(&ofs->fmt, dfd, name);
			if (err)
				return err < 0 ? err : 0;
		}
	}
	if (k >= n)
		return 0;
	*layer = k;
	if (!fds || !S_ISDIR(st->st_mode))
		return 1;
	fds[k] = ovl_open_child(dfd, name);
	if (fds[k] < 0)
		return fds[k];
	for (j = k + 1; j < n; j++) {
		err = ovl_opaque_get(&ofs->fmt, fds[k]);
		if (err)
			return err < 0 ? err : 1;
		/*
		 * A lower layer that was an upper once (lowerdir=upper:lower)
		 * may hold a renamed directory: as the kernel, its parts
		 * beneath are where its redirect says, not at its name.
		 */
		err = rk == k ? 0 : ovl_redirect_get(&ofs->fmt, fds[k], rname);
		rk = k;
		if (err < 0)
			return err;
		if (err && rname[0] == '/') {
			err = lower_find_abs(ofs, rname, j, &k, &tmp, fds);
			return err < 0 ? err : 1;
		}
		if (err)
			name = rname;
		dfd = ldir_fd(d, j);
		if (dfd < 0)
			continue;
		if (fstatat(dfd, name, &tmp, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno != ENOENT)
				return -errno;
			if (j + 1 < n && !ofs->fmt.kernel) {
				err = ovl_wh_exists(&ofs->fmt, dfd, name);
				if (err)
					return err < 0 ? err : 1;
			}
			continue;
		}
		if (!S_ISDIR(tmp.st_mode))
			break;
		fds[j] = ovl_open_child(dfd, name);
		if (fds[j] < 0)
			return fds[j];
		k = j;
	}
	return 1;
}

/* The same in the visible lower of directory node PARENT. */
static int lower_find(struct ovl_fs *ofs, struct ovl_node *parent,
		      const char *name, int *layer, struct stat *st, int *fds)
{
	struct lower_dir d = { parent->lidx, atomic_load(&parent->lower_fd),
			       parent->lstack };

	if (!ovl_node_lower_visible(parent))
		return 0;
	return lower_find_in(ofs, &d, name, layer, st, fds);
}

/*
 * lower_find for an absolute redirect PATH ("/a/b"): each component in
 * the lower part of the one before, from the root's, as the lower would
 * show the directory that stood at PATH; in the lowers from FROM down (a
 * redirect in a lower layer points into the layers beneath it).
 */
static int lower_find_abs(struct ovl_fs *ofs, const char *path, int from,
			  int *layer, struct stat *st, int *fds)
{
	int n = ofs->nlower, one = -1, *cur = NULL, *next, err = 0, k;
	struct lower_dir d;
	char comp[NAME_MAX + 1];
	const char *s = path, *e;

	if (!ovl_node_lower_visible(ofs->root))
		return 0;
	d = (struct lower_dir){ ofs->root->lidx,
				atomic_load(&ofs->root->lower_fd),
				ofs->root->lstack };
	if (from > d.lidx)
		d = (struct lower_dir){ from, ldir_fd(&d, from), d.lstack };
	for (;;) {
		while (*s == '/')
			s++;
		e = strchrnul(s, '/');
		if ((size_t)(e - s) > NAME_MAX) {
			err = 0;
			break;
		}
		memcpy(comp, s, e - s);
		comp[e - s] = '\0';
		if (!*e) {
			err = lower_find_in(ofs, &d, comp, layer, st, fds);
			break;
		}
		next = n > 1 ? lstack_new(ofs) : &one;
		if (!next) {
			err = -ENOMEM;
			break;
		}
		one = -1;
		err = lower_find_in(ofs, &d, comp, &k, st, next);
		if (err > 0 && !S_ISDIR(st->st_mode))
			err = 0;
		if (cur && cur != &one)
			ovl_lstack_free(ofs, cur);
		else if (cur && d.fd >= 0)
			close(d.fd);
		cur = next;
		if (err <= 0)
			break;
		d = (struct lower_dir){ k, cur[k], n > 1 ? cur : NULL };
		s = e;
	}
	if (cur && cur != &one)
		ovl_lstack_free(ofs, cur);
	else if (cur && one >= 0)
		close(one);
	return err;
}

int ovl_lower_has(struct ovl_fs *ofs, struct ovl_node *parent,
		  const char *name, struct stat *st)
{
	struct stat tmp;
	int k;

	return lower_find(ofs, parent, name, &k, st ? st : &tmp, NULL);
}

/* ---- reaching a node's objects ---- */

/* WHICH with OVL_TOP resolved to the layer it stands for now. */
static enum ovl_which layer_of(struct ovl_node *node, enum ovl_which which)
{
	if (which == OVL_DATA)
		return ovl_node_has_upper(node) && !atomic_load(&node->metacopy)
			       ? OVL_UPPER : OVL_LOWER;
	if (which != OVL_TOP)
		return which;
	return ovl_node_has_upper(node) ? OVL_UPPER : OVL_LOWER;
}

/* Where NODE keeps a pinned fd of its object in layer L (not OVL_TOP). */
static _Atomic int *pin_slot(struct ovl_node *node, enum ovl_which l)
{
	return l == OVL_UPPER ? &node->upper_fd : &node->lower_fd;
}

int ovl_node_at(struct ovl_node *node, enum ovl_which which, int *dirfd,
		const char **name)
{
	enum ovl_which l = layer_of(node, which);
	int fd = atomic_load(pin_slot(node, l)), pfd;

	/* The lower object is a metacopy file: its data is beneath. */
	if (which == OVL_DATA && l == OVL_LOWER && node->data_fd >= 0)
		fd = node->data_fd;
	if (fd >= 0) {
		*dirfd = fd;
		*name = "";
		return 0;
	}
	/*
	 * A file's lower object is where its lookup found it only until
	 * copy-up: a rename moves the upper copy alone. A metacopy file's
	 * data stays at that name (a rename pins it first: dir.c
	 * set_file_redirect).
	 */
	if (l == OVL_UPPER ? !ovl_node_has_upper(node)
			   : !node->has_lower || (ovl_node_has_upper(node) &&
						  !atomic_load(&node->metacopy)))
		return -ENOENT;
	/* Directories are always pinned: from here on, a file by name. */
	if (node->deleted || !node->parent)
		return -ENOENT;
	pfd = l == OVL_UPPER ? atomic_load(&node->parent->upper_fd)
			     : ovl_dir_lfd(node->parent, node->lidx);
	if (pfd < 0)
		return -ENOENT;
	*dirfd = pfd;
	*name = node->name;
	return 0;
}

int ovl_node_open_locked(struct ovl_node *node, enum ovl_which which,
			 int flags)
{
	const char *name;
	int dfd, fd, err = ovl_node_at(node, which, &dfd, &name);

	if (err)
		return err;
	if (!name[0])
		return ovl_reopen(dfd, flags);
	fd = openat(dfd, name, flags | O_NOFOLLOW | O_CLOEXEC);
	/* cppcheck-suppress resourceLeak */
	return fd < 0 ? -errno : fd;
}

int ovl_node_fd_get_locked(struct ovl_node *node, enum ovl_which which)
{
	const char *name;
	int dfd, err = ovl_node_at(node, which, &dfd, &name);

	if (err)
		return err;
	return name[0] ? ovl_open_child(dfd, name) : dfd;
}

int ovl_node_fd_get(struct ovl_fs *ofs, struct ovl_node *node,
		    enum ovl_which which)
{
	/* Pinned (every directory): no lock needed, nothing to open. */
	int fd = atomic_load(pin_slot(node, layer_of(node, which)));

	if (fd >= 0 && which != OVL_DATA)
		return fd;
	pthread_rwlock_rdlock(&ofs->ns_lock);
	fd = ovl_node_fd_get_locked(node, which);
	pthread_rwlock_unlock(&ofs->ns_lock);
	return fd;
}

void ovl_node_fd_put(struct ovl_node *node, int fd)
{
	/* A pinned fd stays; one opened for the caller is a different fd. */
	if (fd >= 0 && fd != atomic_load(&node->upper_fd) &&
	    fd != atomic_load(&node->lower_fd) && fd != node->data_fd)
		close(fd);
}

static int pin_layer(struct ovl_node *node, enum ovl_which l)
{
	_Atomic int *slot = pin_slot(node, l);
	int fd;

	if (atomic_load(slot) >= 0)
		return 0;
	fd = ovl_node_fd_get_locked(node, l);
	if (fd < 0)
		return fd;
	atomic_store(slot, fd);
	return 0;
}

int ovl_node_pin_upper(struct ovl_node *node)
{
	return pin_layer(node, OVL_UPPER);
}

int ovl_node_pin_lower(struct ovl_node *node)
{
	return pin_layer(node, OVL_LOWER);
}

int ovl_node_pin(struct ovl_node *node)
{
	/*
	 * Opens of fifos, sockets and devices never reach us (the kernel
	 * serves them): any of those may be open.
	 */
	if (node->type == S_IFDIR || node->type == S_IFLNK ||
	    (node->type == S_IFREG && atomic_load(&node->nopen) == 0))
		return 0;
	/* Its data, for its readers and for a copy-up by its writers. */
	if (atomic_load(&node->metacopy)) {
		int err = pin_layer(node, OVL_LOWER);

		if (err)
			return err;
	}
	return pin_layer(node, layer_of(node, OVL_TOP));
}

/* lstat of NODE's object in WHICH; ns_lock held. */
static int layer_stat_locked(struct ovl_node *node, enum ovl_which which,
			     struct stat *st)
{
	const char *name;
	int dfd, err = ovl_node_at(node, which, &dfd, &name);

	if (err)
		return err;
	if (fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW |
		    (name[0] ? 0 : AT_EMPTY_PATH)) < 0)
		return -errno;
	return 0;
}

int ovl_node_layer_stat(struct ovl_fs *ofs, struct ovl_node *node,
			enum ovl_which which, struct stat *st)
{
	int err;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = layer_stat_locked(node, which, st);
	pthread_rwlock_unlock(&ofs->ns_lock);
	return err;
}

int ovl_node_stat_locked(struct ovl_fs *ofs, struct ovl_node *node,
			 struct stat *st)
{
	struct stat lst;
	int err = layer_stat_locked(node, OVL_TOP, st);

	(void)ofs;
	if (err)
		return err;
	st->st_ino = node->ino;
	/* As the kernel shows it: the space its data takes, below. */
	if ((atomic_load(&node->metacopy) ||
	     (node->data_fd >= 0 && !ovl_node_has_upper(node))) &&
	    layer_stat_locked(node, OVL_DATA, &lst) == 0)
		st->st_blocks = lst.st_blocks;
	/*
	 * A lower file that lost its name (open still) has no name left:
	 * one shared with a visible name was copied up first (hardlink.c).
	 */
	if (node->deleted && !S_ISDIR(st->st_mode) && !ovl_node_has_upper(node))
		st->st_nlink = 0;
	return 0;
}

int ovl_node_stat(struct ovl_fs *ofs, struct ovl_node *node, struct stat *st)
{
	enum ovl_which l = layer_of(node, OVL_TOP);
	int fd = atomic_load(pin_slot(node, l)), err;

	/*
	 * Pinned: the fd names the object, no lock needed; but a pinned
	 * lower file was (or is being) deleted, which only ns_lock tells.
	 */
	if (fd >= 0 && (l == OVL_UPPER || node->type == S_IFDIR) &&
	    !atomic_load(&node->metacopy)) {
		err = ovl_fstat(fd, st);
		if (!err)
			st->st_ino = node->ino;
		return err;
	}
	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = ovl_node_stat_locked(ofs, node, st);
	pthread_rwlock_unlock(&ofs->ns_lock);
	return err;
}

/* ---- lookup ---- */

/*
 * The lower part of upper directory UFD, NAME in PARENT: the lower's NAME
 * beside it, or where its redirect says (a renamed directory). As
 * lower_find.
 */
static int lower_of_dir(struct ovl_fs *ofs, struct ovl_node *parent,
			const char *name, int ufd, int *layer, struct stat *st,
			int *fds)
{
	char redir[OVL_REDIRECT_MAX + 1];
	int err = ovl_redirect_get(&ofs->fmt, ufd, redir);

	if (err < 0)
		return err;
	if (err && redir[0] == '/')
		return lower_find_abs(ofs, redir, 0, layer, st, fds);
	return lower_find(ofs, parent, err ? redir : name, layer, st, fds);
}

static int lower_data_in(struct ovl_fs *ofs, const struct lower_dir *d,
			 const char *name, int k, const struct stat *st,
			 int *layer, struct stat *dst, int *pin);

/*
 * The lower file NAME (a relative redirect or a name) in lower part D of a
 * directory: 1 with *LAYER, ST and, if MOVED, an O_PATH fd in *PIN; 0 if
 * absent or not a regular file; -errno. Where the file found is itself a
 * metacopy file (a lower that was an upper once), the answer is its data
 * beneath it, always pinned (it need not be at NAME in D's layer).
 */
static int lower_file_in(struct ovl_fs *ofs, const struct lower_dir *d,
			 const char *name, int *layer, struct stat *st,
			 int *pin, bool moved)
{
	struct stat dst;
	int err = lower_find_in(ofs, d, name, layer, st, NULL), m;

	*pin = -1;
	if (err <= 0)
		return err;
	if (!S_ISREG(st->st_mode))
		return 0;
	err = lower_data_in(ofs, d, name, *layer, st, &m, &dst, pin);
	if (err < 0)
		return err;
	if (err) {
		*layer = m;
		*st = dst;
		return 1;
	}
	if (moved) {
		*pin = ovl_open_child(ldir_fd(d, *layer), name);
		if (*pin < 0)
			return *pin;
	}
	return 1;
}

/*
 * The lower file at absolute redirect PATH ("/a/b/f"), in the lowers from
 * FROM down: as lower_file_in, always pinned. PATH is changed meanwhile
 * and put back.
 */
static int lower_file_abs(struct ovl_fs *ofs, char *path, int from,
			  int *layer, struct stat *st, int *pin)
{
	char *slash = strrchr(path, '/');
	int n = ofs->nlower, one = -1, *fds = &one, k, err;
	struct lower_dir d = { ofs->root->lidx,
			       atomic_load(&ofs->root->lower_fd),
			       ofs->root->lstack };
	struct stat dst;

	*pin = -1;
	if (!slash || !ovl_node_lower_visible(ofs->root))
		return 0;
	if (from > d.lidx)
		d = (struct lower_dir){ from, ldir_fd(&d, from), d.lstack };
	*slash = '\0';
	err = 1;
	if (slash != path) {
		if (n > 1 && !(fds = lstack_new(ofs))) {
			*slash = '/';
			return -ENOMEM;
		}
		err = lower_find_abs(ofs, path, from, &k, &dst, fds);
		if (err > 0 && !S_ISDIR(dst.st_mode))
			err = 0;
		if (err > 0)
			d = (struct lower_dir){ k, fds[k], n > 1 ? fds : NULL };
	}
	*slash = '/';
	if (err > 0)
		err = lower_file_in(ofs, &d, slash + 1, layer, st, pin, true);
	if (fds != &one)
		ovl_lstack_free(ofs, fds);
	else if (one >= 0)
		close(one);
	return err;
}

/*
 * Regular file NAME, found in layer K of lower part D of a directory with
 * stat ST: is it a metacopy file there (the upper of an earlier mount,
 * stacked as a lower)? Then its data is in the layers beneath, as the
 * kernel finds it: where its redirect says (relative to the directory's
 * parts beneath, or absolute from their root), else at NAME, skipping
 * further metacopy files. 1 with *LAYER, DST and *PIN (an O_PATH fd) of
 * the data; 0 if not a metacopy file; -EIO (logged) if the data is
 * nowhere; -errno.
 *
 * A metacopy file in the bottom layer (an upper of an earlier mount used
 * as the only lower, without the layers it was made over) has nothing
 * beneath it: -EIO, as the kernel fails it, never its holes read as its
 * data (flatten or export would write those zeros). Only a file with
 * holes is asked there (fewer blocks than its size): a metacopy file is
 * made sparse and a killed data copy-up leaves it short, while one whose
 * copy was whole reads right whatever its stale marker says. So the
 * common mount of one lower pays no xattr read (two by name cost 2.5 us
 * here, a sixth of a lookup) for its ordinary files.
 */
static int lower_data_in(struct ovl_fs *ofs, const struct lower_dir *d,
			 const char *name, int k, const struct stat *st,
			 int *layer, struct stat *dst, int *pin)
{
	char redir[OVL_REDIRECT_MAX + 1];
	int dfd = ldir_fd(d, k), err;

	*pin = -1;
	if (!S_ISREG(st->st_mode) || st->st_size == 0 || dfd < 0)
		return 0;
	if (k + 1 >= ofs->nlower && (off_t)st->st_blocks * 512 >= st->st_size)
		return 0;
	err = ovl_metacopy_redirect(&ofs->fmt, dfd, name, redir);
	if (err <= 0)
		return err;
	if (k + 1 >= ofs->nlower) {
		err = 0;	/* the bottom layer: nothing beneath */
	} else if (redir[0] == '/') {
		err = lower_file_abs(ofs, redir, k + 1, layer, dst, pin);
	} else {
		struct lower_dir below = { k + 1, ldir_fd(d, k + 1),
					   d->lstack };

		err = lower_file_in(ofs, &below, redir[0] ? redir : name, layer,
				    dst, pin, true);
	}
	if (err)
		return err;
	ovl_log(ofs->pub, OVLFS_LOG_ERR,
		"metacopy file %s in lower layer %d (1 = the top one) has no "
		"data beneath it: it reads as an I/O error", name, k + 1);
	return -EIO;
}

/* lower_data_in for NAME found in layer K of the visible lower of PARENT. */
static int lower_data(struct ovl_fs *ofs, struct ovl_node *parent,
		      const char *name, int k, const struct stat *st,
		      int *layer, struct stat *dst, int *pin)
{
	struct lower_dir d = { parent->lidx, atomic_load(&parent->lower_fd),
			       parent->lstack };

	return lower_data_in(ofs, &d, name, k, st, layer, dst, pin);
}

/*
 * Is upper regular file NAME of PARENT (in PUFD) a metacopy file? Then
 * find its data, the lower file beside it or where its redirect says (the
 * kernel writes one when it renames a metacopy file): 1 with *LAYER and
 * LST set, and *PIN an O_PATH fd of it when it is not at NAME (-1 else);
 * 0 if not a metacopy file. A metacopy file whose data is nowhere to be
 * found is -EIO, as with the kernel, which fails its lookup.
 */
static int metacopy_lower(struct ovl_fs *ofs, struct ovl_node *parent,
			  int pufd, const char *name, int *layer,
			  struct stat *lst, int *pin)
{
	char redir[OVL_REDIRECT_MAX + 1];
	int err = ovl_metacopy_redirect(&ofs->fmt, pufd, name, redir);

	*pin = -1;
	if (err <= 0)
		return err;
	if (redir[0] != '/') {
		struct lower_dir d = { parent->lidx,
				       atomic_load(&parent->lower_fd),
				       parent->lstack };
		bool moved = redir[0] && strcmp(redir, name);

		err = !ovl_node_lower_visible(parent) ? 0 :
		      lower_file_in(ofs, &d, redir[0] ? redir : name, layer,
				    lst, pin, moved);
	} else {
		err = lower_file_abs(ofs, redir, 0, layer, lst, pin);
	}
	if (err)
		return err;
	ovl_log(ofs->pub, OVLFS_LOG_ERR,
		"metacopy file %s (in an upper directory) has no lower data: "
		"it reads as an I/O error", name);
	return -EIO;
}

int ovl_node_lower_path(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
			size_t size)
{
	char redir[OVL_REDIRECT_MAX + 1];
	size_t pos = size - 1;
	struct ovl_node *d;

	buf[pos] = '\0';
	for (d = node; d && d->parent; d = d->parent) {
		int ufd = atomic_load(&d->upper_fd), r = 0;
		const char *name = d->name;
		size_t len;

		if (ufd >= 0 && d->type == S_IFDIR) {
			r = ovl_redirect_get(&ofs->fmt, ufd, redir);
			if (r < 0)
				return r;
			if (r)
				name = redir;
		}
		len = strlen(name);
		if (len + (name[0] != '/') > pos)
			return -ENAMETOOLONG;
		pos -= len;
		memcpy(buf + pos, name, len);
		if (name[0] == '/')
			break;
		buf[--pos] = '/';
	}
	if (pos == size - 1)
		buf[--pos] = '/';	/* the root */
	memmove(buf, buf + pos, size - pos);
	return 0;
}

/*
 * Build a node for NAME from the layers; ns_lock held by the caller. ST
 * gets the object's stat (st_ino still the layer's) when not NULL.
 */
static int lookup_layers(struct ovl_fs *ofs, struct ovl_node *parent,
			 const char *name, struct ovl_node **out,
			 struct stat *st)
{
	int pufd = atomic_load(&parent->upper_fd);
	bool lower_ok = ovl_node_lower_visible(parent);
	int ufd = -1, lfd = -1, dfd = -1, one = -1, *fds = &one, k = 0, m;
	int err;
	unsigned int layers;
	struct stat tmp, lst;
	bool in_upper = false, opaque = false, indexed = false;
	bool metacopy = false;
	struct ovl_node *node;
	uint64_t ino;

	if (!st)
		st = &tmp;
	/* (An absolute redirect needs the stack without a lower parent.) */
	if (ofs->nlower > 1) {
		fds = lstack_new(ofs);
		if (!fds)
			return -ENOMEM;
	}
	if (pufd >= 0) {
		if (fstatat(pufd, name, st, AT_SYMLINK_NOFOLLOW) == 0) {
			/* A kernel-format whiteout hides every lower. */
			err = -ENOENT;
			if (ofs->fmt.kernel && ovl_is_kernel_wh(st))
				goto out_close;
			in_upper = true;
		} else if (errno != ENOENT) {
			goto out_errno;
		}
	}
	if (in_upper) {
		layers = OVL_IN_UPPER;
		if (S_ISDIR(st->st_mode)) {
			ufd = ovl_open_child(pufd, name);
			if (ufd < 0) {
				err = ufd;
				goto out_close;
			}
			err = ovl_opaque_get(&ofs->fmt, ufd);
			if (err < 0)
				goto out_close;
			opaque = err;
			if (!opaque) {
				err = lower_of_dir(ofs, parent, name, ufd, &k,
						   &lst, fds);
				if (err < 0)
					goto out_close;
				if (err && S_ISDIR(lst.st_mode))
					layers |= OVL_IN_LOWER;
			}
			ino = ovl_ino_upper(ofs, ufd, st);
		} else if ((node = ovl_node_by_inode(ofs, st->st_dev,
						     st->st_ino))) {
			/*
			 * Another name of a file we already know: one node.
			 * Also when this is its last name: the node we know
			 * may have lost its own, and still be open.
			 */
			*out = node;
			err = 0;
			goto out_close;
		} else if (st->st_nlink > 1) {
			/*
			 * ovlfs makes no hard-linked metacopy file; the
			 * kernel does with index=on, whose index ovlfs does
			 * not read: better an error than zeros for data.
			 */
			err = S_ISREG(st->st_mode) && st->st_size > 0 ?
				      ovl_metacopy_get(&ofs->fmt, pufd, name) : 0;
			if (err) {
				if (err > 0)
					ovl_log(ofs->pub, OVLFS_LOG_ERR,
						"metacopy file %s has several links (the kernel's index=on), which ovlfs does not read: it reads as an I/O error",
						name);
				err = err > 0 ? -EIO : err;
				goto out_close;
			}
			/* The index needs the inode held (ovl_node_index). */
			ufd = ovl_open_child(pufd, name);
			if (ufd < 0) {
				err = ufd;
				goto out_close;
			}
			indexed = true;
			ino = ovl_ino_upper(ofs, ufd, st);
		} else {
			ino = ovl_ino_upper_at(ofs, pufd, name, st);
			/* An empty one has no data to look for. */
			err = S_ISREG(st->st_mode) && st->st_size > 0 ?
				      metacopy_lower(ofs, parent, pufd, name,
						     &k, &lst, &lfd) : 0;
			if (err < 0)
				goto out_close;
			if (err) {
				layers |= OVL_IN_LOWER;
				metacopy = true;
				st->st_blocks = lst.st_blocks;
			}
		}
	} else {
		err = -ENOENT;
		if (!lower_ok)
			goto out_close;
		if (pufd >= 0 && !ofs->fmt.kernel) {
			err = ovl_wh_exists(&ofs->fmt, pufd, name);
			if (err)
				goto out_hidden;
		}
		err = lower_find(ofs, parent, name, &k, st, fds);
		if (err <= 0)
			goto out_hidden;
		layers = OVL_IN_LOWER;
		/*
		 * The object in layer k keys the number, also when it is a
		 * metacopy file: it is the one a copy-up records as origin,
		 * and the kernel too numbers it by its uppermost lower.
		 */
		ino = ovl_ino_for(ofs, 0, st->st_dev, st->st_ino);
		err = lower_data(ofs, parent, name, k, st, &m, &lst, &dfd);
		if (err < 0)
			goto out_close;
		if (err)
			st->st_blocks = lst.st_blocks;
	}
	if ((layers & OVL_IN_LOWER) && !metacopy) {
		lfd = fds[k];
		fds[k] = -1;
	}
	node = ovl_node_new(ofs, parent, name, layers, ufd, lfd, st->st_mode,
			    ino);
	if (!node) {
		err = -ENOMEM;
		goto out_close;
	}
	node->data_fd = dfd;
	ufd = lfd = dfd = -1;
	node->opaque = opaque;
	atomic_store(&node->metacopy, metacopy);
	node->lidx = (uint16_t)k;
	if (fds != &one && node->type == S_IFDIR && node->has_lower) {
		node->lstack = fds;
		fds = &one;
	}
	if (!S_ISDIR(st->st_mode) && st->st_nlink > 1)
		atomic_store(&node->aliased, true);
	*out = ovl_node_insert(ofs, node);
	if (indexed)
		ovl_node_index(ofs, *out, st->st_dev, st->st_ino);
	err = 0;
	goto out_close;

out_hidden:
	err = err < 0 ? err : -ENOENT;
	goto out_close;
out_errno:
	err = -errno;
out_close:
	if (ufd >= 0)
		close(ufd);
	if (lfd >= 0)
		close(lfd);
	if (dfd >= 0)
		close(dfd);
	if (fds != &one)
		ovl_lstack_free(ofs, fds);
	return err;
}

int ovl_lookup_stat_locked(struct ovl_fs *ofs, struct ovl_node *parent,
			   const char *name, struct ovl_node **out,
			   struct stat *st)
{
	struct ovl_node *node;
	int err;

	if (parent->type != S_IFDIR)
		return -ENOTDIR;
	if (parent->deleted)
		return -ENOENT;
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	if (ovl_is_wh_name(name))
		return -ENOENT;
	if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
		return -EINVAL;
	node = ovl_node_find(ofs, parent, name);
	if (!node) {
		node = NULL;
		err = lookup_layers(ofs, parent, name, &node, st);
		if (err || !node)	/* (never NULL on success) */
			return err ? err : -EIO;
		/* The stat was of this very object: only the number differs. */
		if (st)
			st->st_ino = node->ino;
	} else if (st) {
		err = ovl_node_stat_locked(ofs, node, st);
		if (err) {
			ovl_node_put(ofs, node);
			return err;
		}
	}
	*out = node;
	return 0;
}

int ovl_lookup_locked(struct ovl_fs *ofs, struct ovl_node *parent,
		      const char *name, struct ovl_node **out)
{
	return ovl_lookup_stat_locked(ofs, parent, name, out, NULL);
}

int ovl_lookup(struct ovl_fs *ofs, struct ovl_node *parent, const char *name,
	       struct ovl_entry *e)
{
	struct ovl_node *node;
	int err;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = ovl_lookup_stat_locked(ofs, parent, name, &node, &e->st);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		return err;
	ovl_node_lookup_ref(ofs, node);
	e->node = node;
	ovl_node_put(ofs, node);
	return 0;
}
