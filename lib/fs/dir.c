/*
 * dir.c: operations that change names: create, mkdir, mknod, symlink, link,
 * unlink, rmdir, rename.
 *
 * Each runs in two phases. First, without ns_lock, whatever must be copied
 * up is (parents, the source of a link or rename). Then, under ns_lock for
 * writing, the names are checked again and changed. Steps are ordered so a
 * crash at any point leaves a consistent tree: a whiteout is created before
 * the upper entry it stands in for is removed (an upper entry beats a
 * whiteout, so the pair is harmless), and a directory being removed or
 * replaced is first renamed to a hidden temporary name.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"

/*
 * The mode to create with. The kernel hands us the raw mode and the
 * caller's umask (FUSE_CAP_DONT_MASK): a parent with a default ACL ignores
 * the umask, as on any local filesystem, and the upper applies the ACL.
 */
static mode_t create_mode(const struct ovl_ctx *ctx, struct ovl_node *parent,
			  mode_t mode, bool *acl)
{
	/* Asked once per directory: only our setxattr can add one. */
	unsigned int gen = atomic_load(&parent->xgen);

	*acl = !ovl_xattr_none(parent, &parent->dacl_none) &&
	       ovl_at_getxattr(atomic_load(&parent->upper_fd), ".",
			       "system.posix_acl_default", NULL, 0) > 0;
	if (!*acl)
		ovl_xattr_set_none(&parent->dacl_none, gen);
	return *acl ? mode : mode & ~(ctx->umask & 0777);
}

/*
 * Give a new upper object the caller's identity, as a local filesystem
 * would (ovlfs runs as root, or as the only user it serves). A setgid
 * parent passes its group on, as the kernel does for the mkdir/mknod
 * itself. MODE is reapplied when our own umask or the chown took bits off
 * (not under a default ACL, which decided the mode itself).
 */
static int set_new_owner(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
			 int pufd, int fd, mode_t mode, bool acl)
{
	struct stat pst, st;
	gid_t gid = ctx->gid;
	int err;

	if (ovl_fstat(pufd, &pst) == 0 && (pst.st_mode & S_ISGID))
		gid = pst.st_gid;
	if (ofs->is_root &&
	    fchownat(fd, "", ctx->uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (S_ISLNK(mode) || acl)
		return 0;
	err = ovl_fstat(fd, &st);
	if (err)
		return err;
	if (S_ISDIR(mode) && (st.st_mode & S_ISGID))
		mode |= S_ISGID;
	if ((st.st_mode & 07777) != (mode & 07777))
		return ovl_fchmod_any(fd, mode & 07777);
	return 0;
}

/*
 * Finish a new upper object (stat ST): node, lookup ref, entry. A new
 * directory's fd PIN is kept by its node (pass -1 for anything else).
 * ns_lock held.
 */
static int new_entry(struct ovl_fs *ofs, struct ovl_node *parent,
		     const char *name, const struct stat *st, int pin,
		     bool opaque, struct ovl_entry *e)
{
	struct ovl_node *node;

	/* A new object has no origin: its number is its own. */
	node = ovl_node_new(ofs, parent, name, OVL_IN_UPPER, pin, -1,
			    st->st_mode,
			    ovl_ino_for(ofs, 1, st->st_dev, st->st_ino));
	if (!node) {
		if (pin >= 0)
			close(pin);
		return -ENOMEM;
	}
	node->opaque = opaque;
	node = ovl_node_insert(ofs, node);
	ovl_node_lookup_ref(ofs, node);
	e->node = node;
	e->st = *st;
	e->st.st_ino = node->ino;
	ovl_node_put(ofs, node);
	return 0;
}

/*
 * Checks shared by everything that creates NAME in PARENT: the name is
 * allowed, the parent is in the upper, and (under ns_lock) the name is
 * free. Returns the parent's upper fd, or -errno. *WH tells whether a
 * whiteout stands at NAME (the new object must hide the lower one).
 */
static int prepare_create(struct ovl_fs *ofs, struct ovl_node *parent,
			  const char *name, bool *wh)
{
	struct ovl_node *old;
	int err, pufd;

	if (parent->deleted)
		return -ENOENT;
	err = ovl_lookup_locked(ofs, parent, name, &old);
	if (!err) {
		ovl_node_put(ofs, old);
		return -EEXIST;
	}
	if (err != -ENOENT)
		return err;
	pufd = atomic_load(&parent->upper_fd);
	if (pufd < 0)
		return -EIO;
	*wh = false;
	if (ofs->fmt.kernel) {
		/*
		 * The whiteout is the upper entry at NAME, and it is what
		 * the new entry replaces, wherever it stands: also where the
		 * lower has nothing to hide (a directory renamed as a copy of
		 * its tree, its redirect too long to write, is opaque but
		 * keeps the whiteouts it held).
		 */
		struct stat st;

		*wh = fstatat(pufd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		      ovl_is_kernel_wh(&st);
	} else if (ovl_node_lower_visible(parent)) {
		err = ovl_lower_has(ofs, parent, name, NULL);
		if (err < 0)
			return err;
		*wh = err;
	}
	return pufd;
}

/*
 * Must the new object be made under a hidden name and put in place once
 * whole (place_new)? Where a kernel-format whiteout holds NAME (KWH): it
 * may go only in the step that puts the new object there, or a kill in
 * between shows the deleted lower entry again. And where the caller's
 * identity is not the one the object is made with (set_new_owner): killed
 * before the chown, it would stay root's.
 */
static bool made_hidden(const struct ovl_fs *ofs, const struct ovl_ctx *ctx,
			bool kwh)
{
	return kwh || (ofs->is_root && (ctx->uid != 0 || ctx->gid != 0));
}

/*
 * Put the new object made under the hidden name TMP at NAME in PUFD. The
 * kernel-format whiteout at NAME (KWH: prepare_create found it, ns_lock
 * held for write since) is replaced in the same step: a non-directory is
 * renamed over it, a directory exchanged with it (rename(2) puts no
 * directory over a non-directory) and the whiteout, now at TMP, removed
 * (killed before, it is debris: a .wh..wh.tmp name). Anything else at
 * NAME: EEXIST.
 */
static int place_new(int pufd, const char *tmp, const char *name, bool kwh,
		     bool is_dir)
{
	unsigned int how = !kwh ? RENAME_NOREPLACE : is_dir ? RENAME_EXCHANGE : 0;

	if (renameat2(pufd, tmp, pufd, name, how) < 0)
		return -errno;
	if (how == RENAME_EXCHANGE)
		unlinkat(pufd, tmp, 0);
	return 0;
}

/*
 * After making NAME where a whiteout stood (WH): once the entry is MADE,
 * an OCI marker beside it is stale (the entry beats it) and goes. (A
 * kernel-format one went with place_new's rename.)
 */
static void settle_wh(struct ovl_fs *ofs, int pufd, const char *name,
		      bool wh, bool made)
{
	if (wh && made && !ofs->fmt.kernel)
		ovl_wh_remove(&ofs->fmt, pufd, name);
}

static int make_dir(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
		    struct ovl_node *parent, int pufd,
		    const char *name, mode_t mode, bool opaque, int *fdp)
{
	bool kwh = opaque && ofs->fmt.kernel, acl;
	char tmp[64];
	int fd, err;

	mode = create_mode(ctx, parent, mode, &acl);
	if (!opaque && !made_hidden(ofs, ctx, kwh)) {
		if (mkdirat(pufd, name, mode & 07777) < 0)
			return -errno;
		fd = ovl_open_child(pufd, name);
		if (fd < 0)
			return fd;
		err = set_new_owner(ofs, ctx, pufd, fd, S_IFDIR | mode, acl);
		if (err) {
			close(fd);
			unlinkat(pufd, name, AT_REMOVEDIR);
			return err;
		}
		*fdp = fd;
		return 0;
	}
	/*
	 * Replacing a deleted lower directory: build it opaque under a hidden
	 * name, so no lower child can show through for even an instant (and
	 * so for a caller's directory that needs its owner set).
	 */
	ovl_tmp_name(&ofs->tmp_counter, tmp);
	if (mkdirat(pufd, tmp, acl ? mode & 07777 : 0700) < 0)
		return -errno;
	fd = ovl_open_child(pufd, tmp);
	if (fd < 0) {
		err = fd;
		goto out_rmdir;
	}
	err = opaque ? ovl_opaque_set(&ofs->fmt, fd) : 0;
	if (!err)
		err = set_new_owner(ofs, ctx, pufd, fd, S_IFDIR | mode, acl);
	if (!err)
		err = place_new(pufd, tmp, name, kwh, true);
	if (err) {
		close(fd);
		goto out_rmdir;
	}
	*fdp = fd;
	return 0;
out_rmdir:
	ovl_remove_tree(pufd, tmp);
	return err;
}

int ovl_mknod(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
	      struct ovl_node *parent, const char *name, mode_t mode,
	      dev_t rdev, const char *link_target, struct ovl_entry *e)
{
	int pufd, fd = -1, err;
	bool wh = false, acl = false, kwh;
	char tmp[64];
	const char *at;
	struct stat st;

	err = ovl_check_name(name);
	/* In the kernel format it would be a whiteout, not a device. */
	if (!err && ofs->fmt.kernel && S_ISCHR(mode) && rdev == 0)
		err = -EPERM;
	if (!err)
		err = ovl_copy_up(ofs, parent);
	if (err)
		return err;
	pthread_rwlock_wrlock(&ofs->ns_lock);
	pufd = prepare_create(ofs, parent, name, &wh);
	if (pufd < 0) {
		err = pufd;
		goto out_unlock;
	}
	if (!S_ISDIR(mode) && !S_ISLNK(mode))
		mode = create_mode(ctx, parent, mode, &acl);
	kwh = wh && ofs->fmt.kernel;
	at = name;
	if (made_hidden(ofs, ctx, kwh)) {
		ovl_tmp_name(&ofs->tmp_counter, tmp);
		at = tmp;
	}
	switch (mode & S_IFMT) {
	case S_IFDIR:
		err = make_dir(ofs, ctx, parent, pufd, name, mode, wh, &fd);
		break;
	case S_IFLNK:
		if (symlinkat(link_target, pufd, at) < 0) {
			err = -errno;
			break;
		}
		goto made;
	default:
		if (mknodat(pufd, at, mode, rdev) < 0) {
			err = -errno;
			break;
		}
made:
		fd = ovl_open_child(pufd, at);
		err = fd < 0 ? fd : set_new_owner(ofs, ctx, pufd, fd, mode, acl);
		if (!err && at == tmp)
			err = place_new(pufd, tmp, name, kwh, false);
		if (err) {
			if (fd >= 0)
				close(fd);
			unlinkat(pufd, at, 0);
		}
		break;
	}
	settle_wh(ofs, pufd, name, wh, !err);
	if (err)
		goto out_unlock;
	err = ovl_fstat(fd, &st);
	if (err || !S_ISDIR(mode)) {
		close(fd);
		fd = -1;
	}
	if (!err)
		err = new_entry(ofs, parent, name, &st, fd, S_ISDIR(mode) && wh,
				e);
out_unlock:
	pthread_rwlock_unlock(&ofs->ns_lock);
	return err;
}

int ovl_create(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
	       struct ovl_node *parent, const char *name, mode_t mode,
	       int flags, struct ovl_entry *e, struct ovl_file **out)
{
	int pufd, fd, err;
	bool wh = false, acl, kwh;
	char tmp[64];
	const char *at;
	struct stat st;

	err = ovl_check_name(name);
	if (!err)
		err = ovl_copy_up(ofs, parent);
	if (err)
		return err;
	pthread_rwlock_wrlock(&ofs->ns_lock);
	pufd = prepare_create(ofs, parent, name, &wh);
	if (pufd == -EEXIST && !(flags & O_EXCL)) {
		/* Created by someone else since the kernel's lookup: open it. */
		pthread_rwlock_unlock(&ofs->ns_lock);
		err = ovl_lookup(ofs, parent, name, e);
		if (err)
			return err;
		err = ovl_open(ofs, e->node, flags & ~O_CREAT, out);
		if (err)
			ovl_node_forget(ofs, e->node, 1);
		return err;
	}
	if (pufd < 0) {
		err = pufd;
		goto out_unlock;
	}
	mode = create_mode(ctx, parent, mode, &acl);
	kwh = wh && ofs->fmt.kernel;
	at = name;
	if (made_hidden(ofs, ctx, kwh)) {
		ovl_tmp_name(&ofs->tmp_counter, tmp);
		at = tmp;
	}
	fd = openat(pufd, at,
		    (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_DIRECT)) |
			    O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		    mode & 07777);
	if (fd < 0) {
		err = -errno;
		goto out_unlock;
	}
	err = set_new_owner(ofs, ctx, pufd, fd, S_IFREG | mode, acl);
	if (!err)
		err = ovl_fstat(fd, &st);
	if (!err && at == tmp)
		err = place_new(pufd, tmp, name, kwh, false);
	if (err) {
		close(fd);
		unlinkat(pufd, at, 0);
		goto out_unlock;
	}
	settle_wh(ofs, pufd, name, wh, true);
	err = new_entry(ofs, parent, name, &st, -1, false, e);
	if (err)
		goto out_close;
	/* Open before the lock goes: an unlink must see it (ovl_node_pin). */
	atomic_fetch_add(&e->node->nopen, 1);
	/* Made by us just now: it has no file capability. */
	ovl_xattr_set_none(&e->node->caps_none, atomic_load(&e->node->xgen));
	pthread_rwlock_unlock(&ofs->ns_lock);
	err = ovl_file_new(ofs, e->node, fd, flags, false, out);
	if (err) {
		/* The file exists now; only this open failed. */
		atomic_fetch_sub(&e->node->nopen, 1);
		close(fd);
		ovl_node_forget(ofs, e->node, 1);
	}
	return err;

out_close:
	close(fd);
	unlinkat(pufd, name, 0);
out_unlock:
	pthread_rwlock_unlock(&ofs->ns_lock);
	return err;
}

int ovl_link(struct ovl_fs *ofs, struct ovl_node *node,
	     struct ovl_node *newparent, const char *newname,
	     struct ovl_entry *e)
{
	int pufd, err;
	bool wh = false;
	char tmp[64];

	if (node->type == S_IFDIR)
		return -EPERM;
	err = ovl_check_name(newname);
	if (!err)
		err = ovl_copy_up(ofs, node);
	if (!err)
		err = ovl_copy_up(ofs, newparent);
	if (err)
		return err;
	pthread_rwlock_wrlock(&ofs->ns_lock);
	pufd = prepare_create(ofs, newparent, newname, &wh);
	if (pufd < 0) {
		err = pufd;
		goto out_unlock;
	}
	/*
	 * The node will stand for every name of the file (the inode index),
	 * so it must hold the object, not just one name of it.
	 */
	err = ovl_node_pin_upper(node);
	if (!err && wh && ofs->fmt.kernel) {
		/* Linked beside, then renamed over the whiteout (place_new). */
		ovl_tmp_name(&ofs->tmp_counter, tmp);
		err = ovl_link_fd(atomic_load(&node->upper_fd), pufd, tmp);
		if (!err)
			err = place_new(pufd, tmp, newname, true, false);
		if (err)
			unlinkat(pufd, tmp, 0);
	} else if (!err) {
		err = ovl_link_fd(atomic_load(&node->upper_fd), pufd, newname);
	}
	settle_wh(ofs, pufd, newname, wh, !err);
	if (err)
		goto out_unlock;
	/*
	 * Reply with the node linked to: the kernel then sees one inode with
	 * two names and updates its link count, as on a local filesystem.
	 */
	err = ovl_node_stat_locked(ofs, node, &e->st);
	if (!err) {
		struct stat ust;

		ovl_node_lookup_ref(ofs, node);
		e->node = node;
		atomic_store(&node->aliased, true);
		if (ovl_fstat(atomic_load(&node->upper_fd), &ust) == 0)
			ovl_node_index(ofs, node, ust.st_dev, ust.st_ino);
	}
out_unlock:
	pthread_rwlock_unlock(&ofs->ns_lock);
	return err;
}

/* Look NAME up for removal: a ref on the node, or -errno. ns_lock held. */
static int find_victim(struct ovl_fs *ofs, struct ovl_node *parent,
		       const char *name, struct ovl_node **out)
{
	int err;

	if (ovl_is_wh_name(name))
		return -ENOENT;
	err = ovl_lookup_locked(ofs, parent, name, out);
	return err;
}

/*
 * NODE is about to lose its name. If it is a lower file that another
 * visible name shares, copy it up first (with that name): the names left
 * then count as many links as there are (hardlink.c). No lock held.
 */
static int copy_up_linked(struct ovl_fs *ofs, struct ovl_node *node)
{
	struct stat lst;
	int err;

	if (node->type != S_IFREG || ovl_node_has_upper(node) ||
	    ovl_node_layer_stat(ofs, node, OVL_LOWER, &lst) < 0 ||
	    lst.st_nlink < 2)
		return 0;
	err = ovl_lower_alias_visible(ofs, node, &lst);
	if (err > 0)
		err = ovl_copy_up(ofs, node);
	/*
	 * A full upper must not keep anyone from deleting: the other names
	 * keep showing the lower's count, as before (copy-up logged it).
	 */
	if (err == -ENOSPC || err == -EDQUOT)
		err = 0;
	return err < 0 ? err : 0;
}

/* Find NAME in PARENT and copy_up_linked it; the name may be missing. */
static int copy_up_linked_at(struct ovl_fs *ofs, struct ovl_node *parent,
			     const char *name)
{
	struct ovl_node *node;
	int err;

	if (ovl_is_wh_name(name))
		return 0;
	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = ovl_lookup_locked(ofs, parent, name, &node);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		return 0;	/* phase 2 finds out again */
	err = copy_up_linked(ofs, node);
	ovl_node_put(ofs, node);
	return err;
}

int ovl_unlink(struct ovl_fs *ofs, struct ovl_node *parent, const char *name)
{
	struct ovl_node *node;
	struct stat st;
	int pufd, lower, err;

	err = ovl_copy_up(ofs, parent);
	if (!err)
		err = copy_up_linked_at(ofs, parent, name);
	if (err)
		return err;
	pthread_rwlock_wrlock(&ofs->ns_lock);
	err = find_victim(ofs, parent, name, &node);
	if (err)
		goto out_unlock;
	if (node->type == S_IFDIR) {
		err = -EISDIR;
		goto out_put;
	}
	pufd = atomic_load(&parent->upper_fd);
	lower = ovl_lower_has(ofs, parent, name, NULL);
	if (lower < 0) {
		err = lower;
		goto out_put;
	}
	/* Files still open on it keep working on the object itself. */
	err = ovl_node_pin(node);
	/*
	 * So does a file with other names: the kernel may know this node by
	 * one of them (a rename onto another name of the same file does
	 * nothing, but moves the dentry: the node is the new name's then).
	 */
	if (!err && node->type == S_IFREG && ovl_node_has_upper(node) &&
	    ovl_node_stat_locked(ofs, node, &st) == 0 &&
	    st.st_nlink > 1)
		err = ovl_node_pin_upper(node);
	if (err)
		goto out_put;
	/* In the kernel format the whiteout replaces the upper entry. */
	if (lower) {
		err = ovl_wh_create(&ofs->fmt, pufd, name);
		if (err < 0)
			goto out_put;
	}
	if (ovl_node_has_upper(node) && !(lower && err > 0) &&
	    unlinkat(pufd, name, 0) < 0) {
		err = -errno;
		goto out_put;
	}
	err = 0;
	ovl_node_unlink(ofs, node, parent, name);
out_put:
	ovl_node_put(ofs, node);
out_unlock:
	pthread_rwlock_unlock(&ofs->ns_lock);
	return err;
}

/*
 * Remove the upper directory NAME in PUFD: hide it under a temporary name
 * first (one atomic step), then delete its markers at leisure.
 */
static int remove_upper_dir(struct ovl_fs *ofs, int pufd, const char *name)
{
	char tmp[64];

	ovl_tmp_name(&ofs->tmp_counter, tmp);
	if (renameat2(pufd, name, pufd, tmp, RENAME_NOREPLACE) < 0)
		return -errno;
	ovl_remove_tree(pufd, tmp);
	return 0;
}

int ovl_rmdir(struct ovl_fs *ofs, struct ovl_node *parent, const char *name)
{
	struct ovl_node *node;
	int pufd, lower, err;

	err = ovl_copy_up(ofs, parent);
	if (err)
		return err;
	pthread_rwlock_wrlock(&ofs->ns_lock);
	err = find_victim(ofs, parent, name, &node);
	if (err)
		goto out_unlock;
	if (node->type != S_IFDIR) {
		err = -ENOTDIR;
		goto out_put;
	}
	if (node == ofs->root) {
		err = -EBUSY;
		goto out_put;
	}
	err = ovl_dir_is_empty(ofs, node);
	if (err <= 0) {
		err = err ? err : -ENOTEMPTY;
		goto out_put;
	}
	err = 0;
	pufd = atomic_load(&parent->upper_fd);
	lower = ovl_lower_has(ofs, parent, name, NULL);
	if (lower < 0) {
		err = lower;
		goto out_put;
	}
	if (lower) {
		err = ovl_wh_create(&ofs->fmt, pufd, name);
		if (err < 0)
			goto out_put;
	}
	if (ovl_node_has_upper(node) && !(lower && err > 0)) {
		err = remove_upper_dir(ofs, pufd, name);
		if (err)
			goto out_put;
	}
	err = 0;
	ovl_node_unlink(ofs, node, parent, name);
out_put:
	ovl_node_put(ofs, node);
out_unlock:
	pthread_rwlock_unlock(&ofs->ns_lock);
	return err;
}

/*
 * Bring a rename participant into the upper: a directory with a lower
 * part alone (it moves with a redirect, below), or with its whole subtree
 * if WHOLE (no redirect can be written).
 */
static int copy_up_mover(struct ovl_fs *ofs, struct ovl_node *node,
			 bool whole)
{
	if (node->type == S_IFDIR && whole)
		return ovl_copy_up_tree(ofs, node);
	/* A lone file moves as metacopy, with a redirect, where it may. */
	if (node->type == S_IFREG && !whole)
		return ovl_copy_up_meta(ofs, node);
	return ovl_copy_up(ofs, node);
}

/*
 * Directory NODE, with a lower part, is about to leave its name: record
 * where that lower part is, as the kernel does (ovl_set_redirect): one it
 * has already stays if it still holds (an absolute one, or a move within
 * the directory); else its old name for a move within the directory, or
 * its lower path from the root. -EXDEV if none can be written (the caller
 * then copies the tree instead). ns_lock held for writing.
 */
static int set_redirect(struct ovl_fs *ofs, struct ovl_node *node,
			bool samedir)
{
	char cur[OVL_REDIRECT_MAX + 1], path[OVL_REDIRECT_MAX + 1];
	int ufd = atomic_load(&node->upper_fd);
	int err = ovl_redirect_get(&ofs->fmt, ufd, cur);

	if (err < 0)
		return err;
	if (err && (samedir || cur[0] == '/'))
		return 0;
	/*
	 * redirect_dir=off: the caller copies. So too for a kernel-format
	 * upper with user.overlay.* markers: the kernel's userxattr mode
	 * does not follow redirects (it refuses the lookup, EPERM).
	 */
	if (ofs->no_redirect ||
	    (ofs->fmt.kernel && !strncmp(ofs->fmt.redirect_xattr, "user.", 5)))
		return -EXDEV;
	if (samedir) {
		err = strlen(node->name) <= OVL_REDIRECT_MAX ? 0 : -EXDEV;
		if (!err)
			snprintf(path, sizeof(path), "%s", node->name);
	} else {
		err = ovl_node_lower_path(ofs, node, path, sizeof(path));
	}
	if (!err)
		err = ovl_redirect_set(&ofs->fmt, ufd, path);
	if (err) {
		/* (ovl_node_path would take ns_lock, held here.) */
		ovl_log(ofs->pub, OVLFS_LOG_DEBUG,
			"rename: cannot record a redirect on directory %s (%s): "
			"copying its tree up instead", node->name,
			strerror(-err));
		return -EXDEV;
	}
	return 0;
}

/*
 * Metacopy file NODE is about to leave its name: its data stays the lower
 * file it came from, which the node pins from now on, and whose place the
 * upper file records as the kernel does for a renamed metacopy file (an
 * overlay.redirect, relative within the directory, else absolute), so a
 * later lookup finds it. -EXDEV where none can be written (the caller
 * then copies the data up first). ns_lock held for writing.
 */
static int set_file_redirect(struct ovl_fs *ofs, struct ovl_node *node,
			     bool samedir)
{
	char cur[OVL_REDIRECT_MAX + 1], path[OVL_REDIRECT_MAX + 1];
	const char *lname = node->name;
	int ufd, r, err;

	if (ofs->no_redirect)
		return -EXDEV;
	err = ovl_node_pin_lower(node);
	if (err)
		return err;
	ufd = ovl_node_fd_get_locked(node, OVL_UPPER);
	if (ufd < 0)
		return ufd;
	r = ovl_redirect_get(&ofs->fmt, ufd, cur);
	err = r < 0 ? r : 0;
	if (r > 0)
		lname = cur;
	if (!err && (r <= 0 || (!samedir && cur[0] != '/'))) {
		if (samedir) {
			snprintf(path, sizeof(path), "%s", lname);
		} else {
			err = ovl_node_lower_path(ofs, node->parent, path,
						  sizeof(path));
			if (!err && strlen(path) + strlen(lname) + 1 >=
					    sizeof(path))
				err = -ENAMETOOLONG;
			if (!err)
				snprintf(path + strlen(path),
					 sizeof(path) - strlen(path), "%s%s",
					 path[1] ? "/" : "", lname);
		}
		if (!err && !ovl_redirect_valid(path))
			err = -ENAMETOOLONG;
		if (!err)
			err = ovl_redirect_set(&ofs->fmt, ufd, path);
	}
	ovl_node_fd_put(node, ufd);
	if (err) {
		ovl_log(ofs->pub, OVLFS_LOG_DEBUG,
			"rename: cannot record a redirect on metacopy file %s (%s): "
			"copying its data up instead", node->name,
			strerror(-err));
		return -EXDEV;
	}
	return 0;
}

/*
 * Directory NODE now sits where the lower has an entry: make it opaque so
 * nothing of that lower entry shows through it. A redirected one takes its
 * lower part from its redirect, whatever stands at its new name.
 */
static int hide_lower_under(struct ovl_fs *ofs, struct ovl_node *node,
			    struct ovl_node *parent, const char *name)
{
	int lower, err;

	if (node->type != S_IFDIR || node->opaque ||
	    ovl_node_lower_visible(node))
		return 0;
	lower = ovl_lower_has(ofs, parent, name, NULL);
	if (lower <= 0)
		return lower;
	err = ovl_opaque_set(&ofs->fmt, atomic_load(&node->upper_fd));
	if (!err)
		node->opaque = true;
	return err;
}

static int rename_exchange(struct ovl_fs *ofs, struct ovl_node *src,
			   struct ovl_node *parent, const char *name,
			   struct ovl_node *dst, struct ovl_node *newparent,
			   const char *newname)
{
	int opufd = atomic_load(&parent->upper_fd);
	int npufd = atomic_load(&newparent->upper_fd);
	bool samedir = parent == newparent;
	int err = 0;

	if (ovl_node_lower_visible(src))
		err = set_redirect(ofs, src, samedir);
	else if (atomic_load(&src->metacopy))
		err = set_file_redirect(ofs, src, samedir);
	if (!err && ovl_node_lower_visible(dst))
		err = set_redirect(ofs, dst, samedir);
	else if (!err && atomic_load(&dst->metacopy))
		err = set_file_redirect(ofs, dst, samedir);
	if (!err)
		err = hide_lower_under(ofs, src, newparent, newname);
	if (!err)
		err = hide_lower_under(ofs, dst, parent, name);
	if (err)
		return err;
	if (renameat2(opufd, name, npufd, newname, RENAME_EXCHANGE) < 0)
		return -errno;
	ovl_node_unlink(ofs, dst, newparent, newname);
	err = ovl_node_move(ofs, src, newparent, newname);
	if (!err)
		err = ovl_node_move(ofs, dst, parent, name);
	return err;
}

/*
 * Kernel format: exchange the upper directory at NAME with a new empty
 * opaque one, the old one going to TMP (its removal is the caller's).
 */
static int empty_opaque_at(struct ovl_fs *ofs, int pufd, const char *name,
			   const char *tmp)
{
	struct timespec ts[2];
	struct stat st;
	int fd, err;

	/* It shows for an instant: with the owner, mode and times of NAME. */
	if (fstatat(pufd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (mkdirat(pufd, tmp, 0700) < 0)
		return -errno;
	fd = ovl_open_child(pufd, tmp);
	err = fd < 0 ? fd : ovl_opaque_set(&ofs->fmt, fd);
	if (!err && ofs->is_root &&
	    fchownat(fd, "", st.st_uid, st.st_gid, AT_EMPTY_PATH) < 0)
		err = -errno;
	if (!err)
		err = ovl_fchmod_any(fd, st.st_mode & 07777);
	ts[0] = st.st_atim;
	ts[1] = st.st_mtim;
	if (!err && utimensat(fd, "", ts, AT_EMPTY_PATH) < 0)
		err = -errno;
	if (fd >= 0)
		close(fd);
	if (!err && renameat2(pufd, tmp, pufd, name, RENAME_EXCHANGE) < 0)
		err = -errno;
	if (err)
		unlinkat(pufd, tmp, AT_REMOVEDIR);
	return err;
}

static int rename_plain(struct ovl_fs *ofs, struct ovl_node *src,
			struct ovl_node *parent, const char *name,
			struct ovl_node *dst, struct ovl_node *newparent,
			const char *newname)
{
	int opufd = atomic_load(&parent->upper_fd);
	int npufd = atomic_load(&newparent->upper_fd);
	char dsttmp[64] = "";
	bool kernel = ofs->fmt.kernel, dst_wh = false;
	unsigned int flags = 0;
	int lower_old, err;

	lower_old = ovl_lower_has(ofs, parent, name, NULL);
	if (lower_old < 0)
		return lower_old;
	if (dst && dst->type == S_IFDIR) {
		err = ovl_dir_is_empty(ofs, dst);
		if (err <= 0)
			return err ? err : -ENOTEMPTY;
	}
	err = 0;
	if (ovl_node_lower_visible(src))
		err = set_redirect(ofs, src, parent == newparent);
	else if (atomic_load(&src->metacopy))
		err = set_file_redirect(ofs, src, parent == newparent);
	if (!err)
		err = hide_lower_under(ofs, src, newparent, newname);
	if (!err && dst)
		err = ovl_node_pin(dst);	/* if open, it lives on */
	if (err)
		return err;
	/*
	 * The old name must hide the lower entry from the instant it is
	 * free: an OCI marker goes in first, a kernel one comes with the
	 * rename itself.
	 */
	if (lower_old && kernel) {
		flags = RENAME_WHITEOUT;
	} else if (lower_old) {
		err = ovl_wh_create(&ofs->fmt, opufd, name);
		if (err)
			return err;
	}
	/*
	 * A directory cannot replace a kernel whiteout (rename(2) puts no
	 * directory over a non-directory): it is exchanged with it, in one
	 * step, so no instant shows the deleted lower entry at NEWNAME; the
	 * whiteout lands at the old name, which needs one iff LOWER_OLD.
	 */
	if (kernel && !dst && src->type == S_IFDIR) {
		/* (Also where the lower shows nothing: see prepare_create.) */
		err = ovl_wh_exists(&ofs->fmt, npufd, newname);
		if (err < 0)
			goto out_wh;
		dst_wh = err > 0;
	}
	/*
	 * An upper dir being replaced holds markers. Kernel format: an empty
	 * opaque directory is exchanged with it first (the view is the same:
	 * an empty directory), which the rename then replaces; moved out of
	 * the way instead, a kill in between showed its lower entries again.
	 * OCI (opaque is a file inside, so never empty): moved out of the way
	 * (that window remains).
	 */
	if (dst && dst->type == S_IFDIR && ovl_node_has_upper(dst)) {
		ovl_tmp_name(&ofs->tmp_counter, dsttmp);
		err = kernel ? empty_opaque_at(ofs, npufd, newname, dsttmp) :
		      renameat2(npufd, newname, npufd, dsttmp,
				RENAME_NOREPLACE) < 0 ? -errno : 0;
		if (err) {
			dsttmp[0] = '\0';
			goto out_wh;
		}
	}
	if (dst_wh) {
		err = renameat2(opufd, name, npufd, newname, RENAME_EXCHANGE) < 0 ?
		      -errno : 0;
		if (!err && !lower_old)
			unlinkat(opufd, name, 0);
		/* No RENAME_EXCHANGE in the upper: the old way, with its window. */
		if (err == -EINVAL) {
			dst_wh = false;
			err = ovl_wh_remove(&ofs->fmt, npufd, newname);
		}
	}
	if (!dst_wh && !err)
		err = renameat2(opufd, name, npufd, newname, flags) < 0 ? -errno : 0;
	if (err == -EINVAL && flags) {
		/* No RENAME_WHITEOUT here: rename, then make the whiteout. */
		err = renameat2(opufd, name, npufd, newname, 0) < 0 ? -errno : 0;
		if (!err)
			err = ovl_wh_create(&ofs->fmt, opufd, name);
		if (err > 0)
			err = 0;
	}
	if (err) {
		/* Back where it was (kernel: in place of the empty one). */
		if (dsttmp[0])
			renameat2(npufd, dsttmp, npufd, newname,
				  kernel ? RENAME_EXCHANGE : RENAME_NOREPLACE);
		if (dsttmp[0] && kernel)
			ovl_remove_tree(npufd, dsttmp);
		goto out_wh;
	}
	if (dsttmp[0])
		ovl_remove_tree(npufd, dsttmp);
	if (!dst && !kernel && ovl_node_lower_visible(newparent))
		ovl_wh_remove(&ofs->fmt, npufd, newname);
	if (dst)
		ovl_node_unlink(ofs, dst, newparent, newname);
	return ovl_node_move(ofs, src, newparent, newname);

out_wh:
	if (lower_old && !kernel)
		ovl_wh_remove(&ofs->fmt, opufd, name);
	return err;
}

/*
 * Are A and B one file (hard links, in the upper or both still in the
 * lower)? rename(2) between two names of one file does nothing.
 */
static bool same_file(struct ovl_fs *ofs, struct ovl_node *a,
		      struct ovl_node *b)
{
	struct stat sa, sb;

	if (ovl_node_has_upper(a) != ovl_node_has_upper(b))
		return false;
	if (ovl_node_layer_stat(ofs, a, OVL_TOP, &sa) ||
	    ovl_node_layer_stat(ofs, b, OVL_TOP, &sb))
		return false;
	return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int ovl_rename(struct ovl_fs *ofs, struct ovl_node *parent, const char *name,
	       struct ovl_node *newparent, const char *newname,
	       unsigned int flags)
{
	struct ovl_node *src = NULL, *dst = NULL, *s2 = NULL, *d2 = NULL;
	bool exchange = flags & RENAME_EXCHANGE, whole = ofs->no_redirect;
	int err, tries = 0;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if (exchange && (flags & RENAME_NOREPLACE))
		return -EINVAL;
	err = ovl_check_name(newname);
	if (err)
		return err;
	if (ovl_is_wh_name(name))
		return -ENOENT;
again:
	/* Phase 1: find both ends and copy up what will move. */
	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = ovl_lookup_locked(ofs, parent, name, &src);
	if (!err) {
		err = ovl_lookup_locked(ofs, newparent, newname, &dst);
		if (err == -ENOENT) {
			dst = NULL;
			err = 0;
		}
	}
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		goto out;
	if (src == dst)
		goto out;	/* same name: nothing to do */
	if (exchange && !dst) {
		err = -ENOENT;
		goto out;
	}
	if (dst && (flags & RENAME_NOREPLACE)) {
		err = -EEXIST;
		goto out;
	}
	if (dst && !exchange) {
		if (src->type == S_IFDIR && dst->type != S_IFDIR) {
			err = -ENOTDIR;
			goto out;
		}
		if (src->type != S_IFDIR && dst->type == S_IFDIR) {
			err = -EISDIR;
			goto out;
		}
	}
	/* Hard links to one file: rename(2) says do nothing. */
	if (dst && !exchange && src->type != S_IFDIR && same_file(ofs, src, dst))
		goto out;
	err = ovl_copy_up(ofs, parent);
	if (!err)
		err = ovl_copy_up(ofs, newparent);
	if (!err)
		err = copy_up_mover(ofs, src, whole);
	if (!err && exchange)
		err = copy_up_mover(ofs, dst, whole);
	else if (!err && dst)
		err = copy_up_linked(ofs, dst);
	if (err)
		goto out;

	/* Phase 2: under the lock, check nothing moved, then rename. */
	pthread_rwlock_wrlock(&ofs->ns_lock);
	err = ovl_lookup_locked(ofs, parent, name, &s2);
	if (!err) {
		err = ovl_lookup_locked(ofs, newparent, newname, &d2);
		if (err == -ENOENT) {
			d2 = NULL;
			err = 0;
		}
	}
	/* NOLINTNEXTLINE(bugprone-branch-clone): two -EAGAIN cases kept apart for their comments */
	if (!err && (s2 != src || d2 != dst)) {
		err = -EAGAIN;
	} else if (!err && (!ovl_node_has_upper(src) ||
			    (whole && src->type == S_IFDIR &&
			     ovl_node_lower_visible(src)) ||
			    (exchange && (!ovl_node_has_upper(dst) ||
					  (whole && dst->type == S_IFDIR &&
					   ovl_node_lower_visible(dst)))))) {
		err = -EAGAIN;	/* a lower entry came back into view */
	} else if (!err) {
		if (exchange)
			err = rename_exchange(ofs, src, parent, name, dst,
					      newparent, newname);
		else
			err = rename_plain(ofs, src, parent, name, dst,
					   newparent, newname);
	}
	pthread_rwlock_unlock(&ofs->ns_lock);
	ovl_node_put(ofs, s2);
	ovl_node_put(ofs, d2);
	s2 = d2 = NULL;
	if (err == -EXDEV && !whole) {
		/* No redirect could be written: move a copy of the tree. */
		whole = true;
		err = -EAGAIN;
	}
	if (err == -EAGAIN && ++tries < 8) {
		ovl_node_put(ofs, src);
		ovl_node_put(ofs, dst);
		src = dst = NULL;
		goto again;
	}
out:
	ovl_node_put(ofs, src);
	ovl_node_put(ofs, dst);
	return err;
}
