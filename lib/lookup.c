/*
 * lookup.c: finding a name across the two layers.
 *
 * The upper wins: an upper entry hides the lower one of the same name (and
 * any stale whiteout beside it). Without an upper entry, a whiteout hides
 * the lower name. A lower directory merges with an upper directory of the
 * same name unless the upper one is opaque. Names starting with ".wh." are
 * markers (or ovlfs's own files) and never show.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "ovlfs_i.h"

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
	return node->type == S_IFDIR && node->lower_fd >= 0 && !node->opaque;
}

int ovl_lower_has(struct ovl_node *parent, const char *name, struct stat *st)
{
	struct stat tmp;

	if (!ovl_node_lower_visible(parent))
		return 0;
	if (fstatat(parent->lower_fd, name, st ? st : &tmp,
		    AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	return 1;
}

/* Build a node for NAME from the layers; ns_lock held by the caller. */
static int lookup_layers(struct ovl_fs *ofs, struct ovl_node *parent,
			 const char *name, struct ovl_node **out)
{
	int pufd = atomic_load(&parent->upper_fd);
	bool lower_ok = ovl_node_lower_visible(parent);
	int ufd = -1, lfd = -1, err;
	struct stat ust, lst;
	bool opaque = false;
	struct ovl_node *node;
	uint64_t ino;
	mode_t type;

	if (pufd >= 0) {
		ufd = ovl_open_child(pufd, name);
		if (ufd == -ENOENT)
			ufd = -1;
		else if (ufd < 0)
			return ufd;
	}
	if (ufd >= 0) {
		err = ovl_fstat(ufd, &ust);
		if (err)
			goto out_close;
		type = ust.st_mode & S_IFMT;
		if (S_ISDIR(ust.st_mode)) {
			err = ovl_opaque_get(ufd);
			if (err < 0)
				goto out_close;
			opaque = err;
			if (lower_ok && !opaque) {
				lfd = ovl_open_child(parent->lower_fd, name);
				if (lfd >= 0 && (ovl_fstat(lfd, &lst) < 0 ||
						 !S_ISDIR(lst.st_mode))) {
					close(lfd);
					lfd = -1;
				}
				if (lfd < 0)
					lfd = -1;
			}
		}
		/* Another name of a file we already know: the same node. */
		if (!S_ISDIR(ust.st_mode) && ust.st_nlink > 1) {
			node = ovl_node_by_inode(ofs, ust.st_dev, ust.st_ino);
			if (node) {
				close(ufd);
				*out = node;
				return 0;
			}
		}
		ino = ovl_ino_upper(ofs, ufd, &ust);
	} else {
		if (!lower_ok)
			return -ENOENT;
		if (pufd >= 0) {
			err = ovl_wh_exists(pufd, name);
			if (err < 0)
				return err;
			if (err)
				return -ENOENT;
		}
		lfd = ovl_open_child(parent->lower_fd, name);
		if (lfd < 0)
			return lfd;
		err = ovl_fstat(lfd, &lst);
		if (err)
			goto out_close;
		type = lst.st_mode & S_IFMT;
		ino = ovl_ino_for(ofs, 0, lst.st_dev, lst.st_ino);
	}
	node = ovl_node_new(ofs, parent, name, ufd, lfd, type, ino);
	if (!node) {
		err = -ENOMEM;
		goto out_close;
	}
	node->opaque = opaque;
	*out = ovl_node_insert(ofs, node);
	if (ufd >= 0 && !S_ISDIR(ust.st_mode) && ust.st_nlink > 1)
		ovl_node_index(ofs, *out, ust.st_dev, ust.st_ino);
	return 0;

out_close:
	if (ufd >= 0)
		close(ufd);
	if (lfd >= 0)
		close(lfd);
	return err;
}

int ovl_lookup_locked(struct ovl_fs *ofs, struct ovl_node *parent,
		      const char *name, struct ovl_node **out)
{
	struct ovl_node *node;

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
	if (node) {
		*out = node;
		return 0;
	}
	return lookup_layers(ofs, parent, name, out);
}

int ovl_node_stat(struct ovl_fs *ofs, struct ovl_node *node, struct stat *st)
{
	int err = ovl_fstat(ovl_node_fd(node), st);

	(void)ofs;
	if (err)
		return err;
	st->st_ino = node->ino;
	return 0;
}

int ovl_lookup(struct ovl_fs *ofs, struct ovl_node *parent, const char *name,
	       struct ovl_entry *e)
{
	struct ovl_node *node;
	int err;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = ovl_lookup_locked(ofs, parent, name, &node);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		return err;
	err = ovl_node_stat(ofs, node, &e->st);
	if (!err) {
		ovl_node_lookup_ref(ofs, node);
		e->node = node;
	}
	ovl_node_put(ofs, node);
	return err;
}
