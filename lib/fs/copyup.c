/*
 * copyup.c: bringing a lower object into the upper on its first change.
 *
 * The copy is built where no lookup can see it (an O_TMPFILE, or a
 * ".wh..wh.tmp.*" name that readdir and lookup never show) and only then
 * linked or renamed into place under ns_lock, so a crash never leaves a
 * partial file shadowing the lower one. The data copy runs outside ns_lock,
 * under the node's copyup_lock only: a slow copy-up holds up no one but
 * other writers of the same file.
 *
 * Metadata order matters: data first, then owner (chown clears setuid and
 * security.capability), then mode, then xattrs, then times (every write
 * before it would bump mtime). The parent's times are put back after the
 * link, as the kernel's overlayfs does: a copy-up is not a change the user
 * made to the directory.
 *
 * Metacopy (the kernel's metacopy=on): a change of metadata alone to a
 * lower regular file with one link copies up a sparse file of the same
 * size with the lower's metadata and a marker (format/whiteout.c) saying
 * the data is still the lower's; reads keep going to the lower. The first
 * open for writing or truncate copies the data into that same upper file
 * (so its inode, its open files and its number stay), makes it durable,
 * and only then removes the marker: a crash leaves a file that still
 * reads the lower, never one that claims data it does not have.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs/fs.h"

/* Origin of a lower object: its key, unless hard links make it ambiguous. */
static void set_origin(struct ovl_fs *ofs, int dstfd, const struct stat *st)
{
	/*
	 * Regular files bring all their lower names along (hardlink.c), but
	 * other hard-linked objects are copied up one name at a time, and two
	 * distinct upper objects must not claim one number. An origin that
	 * cannot be stored (user.* on a symlink when not root) only costs the
	 * number its stability.
	 */
	if (!S_ISDIR(st->st_mode) && !S_ISREG(st->st_mode) && st->st_nlink > 1)
		return;
	ovl_origin_set(ofs, dstfd,
		       ovl_key_for(ofs, 0, st->st_dev, st->st_ino));
}

/* What a copy-up brings of a regular file's data. */
enum cu_data {
	CU_DATA,	/* all of it */
	CU_NODATA,	/* none: it is truncated to 0 next */
	CU_META,	/* none, as a metacopy file, where allowed (else all) */
};

/*
 * Build the copy of lower object LFD (stat ST) in upper directory PUFD,
 * a regular file's data read from DFD (LFD, unless LFD is a metacopy file
 * of a lower layer: its data beneath). Regular files become an O_TMPFILE (*TMPNAME = "") when possible; others
 * get a temporary name in *TMPNAME. Returns an fd of the copy (O_RDWR for
 * regular files, O_PATH otherwise).
 */
static int build_copy(struct ovl_fs *ofs, int pufd, int lfd, int dfd,
		      const struct stat *st, char tmpname[64], enum cu_data how)
{
	int fd = -1, src = -1, err;

	tmpname[0] = '\0';
	switch (st->st_mode & S_IFMT) {
	case S_IFREG:
		if (!ofs->no_tmpfile) {
			fd = openat(pufd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC,
				    0600);
			if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR ||
				       errno == EINVAL))
				ofs->no_tmpfile = true;
			else if (fd < 0)
				return -errno;
		}
		if (fd < 0) {
			ovl_tmp_name(&ofs->tmp_counter, tmpname);
			fd = openat(pufd, tmpname, O_CREAT | O_EXCL | O_RDWR |
				    O_NOFOLLOW | O_CLOEXEC, 0600);
			if (fd < 0)
				return -errno;
		}
		if (how == CU_META) {
			/* Sparse: the size shows, the data stays below. */
			if (ftruncate(fd, st->st_size) < 0) {
				err = -errno;
				goto out_err;
			}
		} else if (how == CU_DATA) {
			/* Copy-up must not touch the lower, atime included. */
			src = ovl_reopen(dfd, O_RDONLY | O_NOATIME);
			if (src == -EPERM)
				src = ovl_reopen(dfd, O_RDONLY);
			if (src < 0) {
				err = src;
				goto out_err;
			}
			err = ovl_copy_data(src, fd, st->st_size);
			close(src);
			if (err)
				goto out_err;
		}
		break;
	case S_IFDIR:
		ovl_tmp_name(&ofs->tmp_counter, tmpname);
		if (mkdirat(pufd, tmpname, 0700) < 0)
			return -errno;
		fd = ovl_open_child(pufd, tmpname);
		if (fd < 0) {
			err = fd;
			goto out_err;
		}
		break;
	case S_IFLNK: {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(lfd, "", target, sizeof(target) - 1);

		if (n < 0)
			return -errno;
		target[n] = '\0';
		ovl_tmp_name(&ofs->tmp_counter, tmpname);
		if (symlinkat(target, pufd, tmpname) < 0)
			return -errno;
		fd = ovl_open_child(pufd, tmpname);
		if (fd < 0) {
			err = fd;
			goto out_err;
		}
		break;
	}
	default:	/* fifo, devices, sockets: recreated, never opened */
		ovl_tmp_name(&ofs->tmp_counter, tmpname);
		if (mknodat(pufd, tmpname, st->st_mode & (S_IFMT | 0600),
			    st->st_rdev) < 0)
			return -errno;
		fd = ovl_open_child(pufd, tmpname);
		if (fd < 0) {
			err = fd;
			goto out_err;
		}
		break;
	}
	/*
	 * A copy made in a directory with a default ACL inherits it; the
	 * lower object had only its own (copied below), if any.
	 */
	ovl_fd_removexattr(fd, "system.posix_acl_access");
	if (S_ISDIR(st->st_mode))
		ovl_fd_removexattr(fd, "system.posix_acl_default");
	err = ovl_copy_meta(ofs->is_root, lfd, fd, st, false);
	if (err)
		goto out_err;
	set_origin(ofs, fd, st);
	if (how == CU_META) {
		err = ovl_metacopy_set(&ofs->fmt, fd);
		if (err)
			goto out_err;
	}
	{
		struct timespec ts[2] = { st->st_atim, st->st_mtim };

		if (utimensat(fd, "", ts, AT_EMPTY_PATH) < 0) {
			err = -errno;
			goto out_err;
		}
	}
	return fd;

out_err:
	if (fd >= 0)
		close(fd);
	if (tmpname[0])
		ovl_remove_tree(pufd, tmpname);
	return err;
}

static bool same_mtime(const struct stat *a, const struct stat *b)
{
	return a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/* Put back the parent's times saved in PST (copy-up is not a user change). */
static void restore_times(int pufd, const struct stat *pst)
{
	struct timespec ts[2] = { pst->st_atim, pst->st_mtim };

	utimensat(pufd, "", ts, AT_EMPTY_PATH);
}

/*
 * Link the finished copy FD (temporary name TMPNAME, or an O_TMPFILE) in
 * as NODE's upper; ns_lock held for writing. PST0 is the parent as it was
 * before the copy began: its times are restored if ns_lock was held all
 * along (EXCLUSIVE) or nobody changed the directory meanwhile. PIN: the
 * node will be indexed, so it must hold its upper object.
 */
static int install_copy(struct ovl_fs *ofs, struct ovl_node *node, int pufd,
			int fd, const char *tmpname, const struct stat *pst0,
			bool exclusive, bool pin)
{
	struct stat pst;
	bool restore;
	int pathfd = -1, err;

	if (node->deleted || pin || node->type == S_IFDIR) {
		pathfd = ovl_reopen(fd, O_PATH);
		if (pathfd < 0)
			return pathfd;
	}
	if (node->deleted) {
		/* Keep it nameless: it only serves the open file. */
		if (tmpname[0])
			unlinkat(pufd, tmpname, 0);
		goto installed;
	}
	restore = pst0->st_mtim.tv_nsec != UTIME_OMIT &&
		  (exclusive ||
		   (ovl_fstat(pufd, &pst) == 0 && same_mtime(&pst, pst0)));
	if (tmpname[0])
		err = renameat2(pufd, tmpname, pufd, node->name,
				RENAME_NOREPLACE) < 0 ? -errno : 0;
	else
		err = ovl_link_fd(fd, pufd, node->name);
	if (err) {
		if (pathfd >= 0)
			close(pathfd);
		return err;
	}
	if (restore)
		restore_times(pufd, pst0);
installed:
	if (pathfd >= 0)
		atomic_store(&node->upper_fd, pathfd);
	atomic_store(&node->has_upper, true);
	return 0;
}

/*
 * Copy NODE up. REPLIED: the caller's reply carries NODE's new attributes
 * (SETATTR), so the kernel is not told they changed: telling it would
 * make it keep that reply's attributes for no time at all (fuse_do_setattr
 * sees the attribute version moved), one more GETATTR for every file.
 */
static int copy_up_one(struct ovl_fs *ofs, struct ovl_node *node,
		       enum cu_data how, struct ovl_xchange *xc, bool replied)
{
	struct ovl_node *parent;
	char tmpname[64] = "";
	struct stat st, pst0;
	int pufd, lfd, fd, err;
	bool deleted, slow, linked = false;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	parent = node->parent;
	deleted = node->deleted;
	ovl_node_get(ofs, parent);
	lfd = ovl_node_fd_get_locked(node, OVL_LOWER);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (lfd < 0) {
		err = lfd;
		goto out_put;
	}

	err = ovl_fstat(lfd, &st);
	if (err)
		goto out_put;
	if (deleted && !S_ISREG(st.st_mode)) {
		err = -ENOENT;
		goto out_put;
	}
	if (!deleted) {
		/* Parent directories first, each with its own metadata. */
		err = ovl_copy_up(ofs, parent);
		if (err)
			goto out_put;
		pufd = atomic_load(&parent->upper_fd);
	} else {
		/* Unlinked but still open: an anonymous copy will do. */
		pufd = ofs->upper.root_fd;
	}
	/*
	 * Several lower names of one file become one upper file: one copy-up
	 * at a time among those, and one of them may have done ours already.
	 */
	linked = S_ISREG(st.st_mode) && st.st_nlink > 1;
	/*
	 * Metacopy for a lone regular file only: the names of a hard-linked
	 * one become one upper file linked at each (hardlink.c), which the
	 * kernel makes metacopy only with index=on, and an empty file has no
	 * data to spare. An unlinked, open one is copied for its writer.
	 */
	if (how == CU_META &&
	    (!ofs->metacopy || !S_ISREG(st.st_mode) || linked || deleted ||
	     st.st_size == 0))
		how = CU_DATA;
	if (linked) {
		pthread_mutex_lock(&ofs->hardlink_lock);
		if (ovl_node_has_upper(node)) {
			pthread_mutex_unlock(&ofs->hardlink_lock);
			goto out_put;
		}
	}
	/*
	 * Only file data is slow to copy: everything else (a metacopy file
	 * too) is built and installed in one go under the namespace lock.
	 */
	slow = S_ISREG(st.st_mode) && how != CU_META;
	if (!slow)
		pthread_rwlock_wrlock(&ofs->ns_lock);
	if (ovl_fstat(pufd, &pst0) < 0)
		pst0.st_mtim.tv_nsec = UTIME_OMIT;
	/* (data_fd is the node's while it lives: no lock, nothing to put.) */
	fd = build_copy(ofs, pufd, lfd, node->data_fd >= 0 ? node->data_fd : lfd,
			&st, tmpname, how);
	if (fd >= 0 && xc) {
		/* Refused: the copy goes too, as nobody has seen it. */
		xc->tried = true;
		err = xc->remove ? ovl_fd_removexattr(fd, xc->name)
				 : ovl_fd_setxattr(fd, xc->name, xc->value,
						   xc->size, xc->flags);
		if (err) {
			close(fd);
			/* Nobody saw it: the parent gets its times back. */
			if (tmpname[0] && ovl_remove_tree(pufd, tmpname) == 0 &&
			    !slow && pst0.st_mtim.tv_nsec != UTIME_OMIT)
				restore_times(pufd, &pst0);
			fd = err;
		}
	}
	if (fd < 0) {
		err = fd;
		if (!slow)
			pthread_rwlock_unlock(&ofs->ns_lock);
		goto out_unlock_links;
	}
	if (slow)
		pthread_rwlock_wrlock(&ofs->ns_lock);
	/* Before has_upper: no moment where the node has neither data. */
	if (how == CU_META)
		atomic_store(&node->metacopy, true);
	err = install_copy(ofs, node, pufd, fd, tmpname, &pst0, !slow, linked);
	if (err)
		atomic_store(&node->metacopy, false);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (!err && linked)
		err = ovl_link_lower_aliases(ofs, node, &st, fd);
	if (!err && linked) {
		struct stat cst;

		/* Names found later (not yet looked up) come to this node. */
		if (fstat(fd, &cst) == 0 && cst.st_nlink > 1)
			ovl_node_index(ofs, node, cst.st_dev, cst.st_ino);
	}
	close(fd);
	if (err && tmpname[0])
		ovl_remove_tree(pufd, tmpname);
	if (!err) {
		/*
		 * The copy has its own ctime, and linking it in changed the
		 * parent's: do not let the kernel's cache hold the old ones.
		 * Even with the parent's times put back, its ctime moved: a
		 * kernel cache left with the old one gives it up at some
		 * later refresh (a READDIRPLUS of the grandparent), and tar
		 * reading the tree meanwhile says "file changed as we read
		 * it" (test_tar_roundtrip). That costs a GETATTR of the
		 * parent at the next walk through it.
		 */
		if (!replied)
			ovl_tell_attr_changed(ofs, node);
		if (!deleted)
			ovl_tell_attr_changed(ofs, parent);
	}
out_unlock_links:
	if (linked)
		pthread_mutex_unlock(&ofs->hardlink_lock);
out_put:
	ovl_node_fd_put(node, lfd);
	ovl_node_put(ofs, parent);
	return err;
}

/*
 * The writer only sees an errno (ENOSPC on a write it thought went to its
 * own file): say which copy-up failed. Once: a parent's failure was
 * logged for the parent.
 */
static void copy_up_failed(struct ovl_fs *ofs, struct ovl_node *node, int err)
{
	char path[1024];
	struct ovl_node *parent;
	bool parents_ok;

	if (err == -ENOENT)
		return;		/* gone meanwhile: nothing failed */
	pthread_rwlock_rdlock(&ofs->ns_lock);
	parent = node->parent;
	parents_ok = node->deleted || !parent || ovl_node_has_upper(parent);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (!parents_ok)
		return;
	ovl_node_path(ofs, node, path, sizeof(path));
	ovl_log(ofs->pub, OVLFS_LOG_ERR, "copy-up of %s failed: %s", path,
		strerror(-err));
}

/*
 * Bring the data of metacopy NODE into its upper file (HOW CU_NODATA: make
 * it empty instead, the caller truncates it anyway) and drop the marker.
 * Caller holds NODE's copyup_lock.
 */
static int copy_up_data(struct ovl_fs *ofs, struct ovl_node *node,
			enum cu_data how)
{
	char cap[256];
	struct stat ust;
	ssize_t ncap;
	int ufd, lfd = -1, src = -1, err;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	ufd = ovl_node_open_locked(node, OVL_UPPER, O_WRONLY);
	if (ufd >= 0 && how == CU_DATA)
		lfd = ovl_node_fd_get_locked(node, OVL_DATA);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (ufd < 0)
		return ufd;
	if (lfd < 0 && how == CU_DATA) {
		err = lfd;
		goto out_close;
	}
	err = ovl_fstat(ufd, &ust);
	if (err)
		goto out_close;
	/*
	 * Writing data drops setuid/setgid and a file capability (the
	 * kernel's file_remove_privs): the copy must keep what the metadata
	 * copy-up gave the file.
	 */
	ncap = ovl_fd_getxattr(ufd, "security.capability", cap, sizeof(cap));
	if (how == CU_DATA) {
		src = ovl_reopen(lfd, O_RDONLY | O_NOATIME);
		if (src == -EPERM)
			src = ovl_reopen(lfd, O_RDONLY);
		if (src < 0) {
			err = src;
			goto out_close;
		}
		err = ovl_copy_data(src, ufd, ust.st_size);
		close(src);
		/*
		 * Failed (ENOSPC): give back what the partial copy took, the
		 * size kept (the marker still stands), where the upper can.
		 */
		if (err && fallocate(ufd, FALLOC_FL_PUNCH_HOLE |
				     FALLOC_FL_KEEP_SIZE, 0, ust.st_size) == 0) {
			struct timespec ts[2] = { ust.st_atim, ust.st_mtim };

			utimensat(ufd, "", ts, AT_EMPTY_PATH);
		}
	} else {
		err = ftruncate(ufd, 0) < 0 ? -errno : 0;
	}
	/* The data must be on disk before the marker's removal can be. */
	if (!err && !ofs->no_sync && fdatasync(ufd) < 0)
		err = -errno;
	if (err)
		goto out_close;
	if (ncap > 0)
		ovl_fd_setxattr(ufd, "security.capability", cap, ncap, 0);
	if (ust.st_mode & (S_ISUID | S_ISGID))
		ovl_fchmod_any(ufd, ust.st_mode & 07777);
	{
		struct timespec ts[2] = { ust.st_atim, ust.st_mtim };

		if (utimensat(ufd, "", ts, AT_EMPTY_PATH) < 0) {
			err = -errno;
			goto out_close;
		}
	}
	/*
	 * A renamed one: its redirect served the data. Under ns_lock, so a
	 * rename cannot write one after it went.
	 */
	pthread_rwlock_wrlock(&ofs->ns_lock);
	err = ovl_redirect_clear(&ofs->fmt, ufd);
	if (!err)
		err = ovl_metacopy_clear(&ofs->fmt, ufd);
	if (!err)
		atomic_store(&node->metacopy, false);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		goto out_close;
	ovl_tell_attr_changed(ofs, node);
out_close:
	ovl_node_fd_put(node, lfd);
	close(ufd);
	return err;
}

static int copy_up(struct ovl_fs *ofs, struct ovl_node *node,
		   enum cu_data how, struct ovl_xchange *xc, bool replied)
{
	int err = 0;

	if (ovl_node_has_upper(node) &&
	    (how == CU_META || !atomic_load(&node->metacopy)))
		return 0;
	if (ofs->read_only)
		return -EROFS;
	if (!node->parent)
		return -EIO;	/* the root always has an upper */
	pthread_mutex_lock(&node->copyup_lock);
	if (!ovl_node_has_upper(node))
		err = copy_up_one(ofs, node, how, xc, replied);
	else if (how != CU_META && atomic_load(&node->metacopy))
		err = copy_up_data(ofs, node, how);
	pthread_mutex_unlock(&node->copyup_lock);
	/* A refused xattr change is its caller's to report. */
	if (err && !(xc && xc->tried))
		copy_up_failed(ofs, node, err);
	return err;
}

int ovl_copy_up(struct ovl_fs *ofs, struct ovl_node *node)
{
	return copy_up(ofs, node, CU_DATA, NULL, false);
}

int ovl_copy_up_meta(struct ovl_fs *ofs, struct ovl_node *node)
{
	return copy_up(ofs, node, CU_META, NULL, false);
}

int ovl_copy_up_xattr(struct ovl_fs *ofs, struct ovl_node *node,
		      struct ovl_xchange *xc)
{
	xc->tried = false;
	return copy_up(ofs, node, CU_META, xc, false);
}

int ovl_copy_up_nodata(struct ovl_fs *ofs, struct ovl_node *node)
{
	return copy_up(ofs, node, CU_NODATA, NULL, false);
}

int ovl_copy_up_setattr(struct ovl_fs *ofs, struct ovl_node *node,
			bool resize, off_t size)
{
	/* Truncating to zero needs no data copied; metadata alone none. */
	return copy_up(ofs, node, !resize ? CU_META : size == 0 ? CU_NODATA
							    : CU_DATA,
		       NULL, true);
}

/*
 * A tree copy-up (of a directory about to be renamed) that fails, the
 * upper full, must leave the upper as it was: its file copies are staged
 * under temporary names beside their final ones, and put in place only
 * once the whole tree is copied, or removed. Directories, symlinks,
 * devices and hard-linked files (whose other names are linked at once,
 * hardlink.c) go up as they come: they take next to no space, and an
 * upper directory not yet opaque changes nothing in the merged view.
 */
struct staged {
	struct ovl_node *node;		/* ref */
	struct ovl_node *dir;		/* ref: its upper holds the copy */
	char tmpname[64];		/* "" once in place or removed */
};

struct stage {
	struct staged *v;
	size_t n, cap;
	struct ovl_node **dirs;		/* refs: to mark opaque at the end */
	size_t ndirs, dcap;
};

/*
 * Stage a copy of CHILD, a child of DIR (in the upper): 1 if staged, 0 if
 * CHILD takes a plain copy-up instead (not a lone regular file of the
 * lower), or -errno.
 */
static int stage_file(struct ovl_fs *ofs, struct ovl_node *dir,
		      struct ovl_node *child, struct stage *sg)
{
	int pufd = atomic_load(&dir->upper_fd), lfd, fd, err;
	struct staged *s;
	struct stat st;

	if (child->type != S_IFREG || pufd < 0)
		return 0;
	err = ovl_grow((void **)&sg->v, &sg->cap, sg->n, sizeof(*sg->v), 64);
	if (err)
		return err;
	s = &sg->v[sg->n];
	pthread_rwlock_rdlock(&ofs->ns_lock);
	lfd = child->deleted || child->parent != dir || ovl_node_has_upper(child)
		      ? -ENOENT : ovl_node_fd_get_locked(child, OVL_LOWER);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (lfd < 0)
		return lfd == -ENOENT ? 0 : lfd;
	err = ovl_fstat(lfd, &st);
	if (err || !S_ISREG(st.st_mode) || st.st_nlink > 1) {
		ovl_node_fd_put(child, lfd);
		return err;
	}
	fd = build_copy(ofs, pufd, lfd,
			child->data_fd >= 0 ? child->data_fd : lfd, &st,
			s->tmpname, CU_DATA);
	ovl_node_fd_put(child, lfd);
	if (fd < 0)
		return fd;
	if (!s->tmpname[0]) {
		ovl_tmp_name(&ofs->tmp_counter, s->tmpname);
		err = ovl_link_fd(fd, pufd, s->tmpname);
	}
	close(fd);
	if (err)
		return err;
	ovl_node_get(ofs, child);
	ovl_node_get(ofs, dir);
	s->node = child;
	s->dir = dir;
	sg->n++;
	return 1;
}

/*
 * Remove the copies still staged (nobody saw them, and the directory
 * gets its times back) and drop the references.
 */
static void stage_free(struct ovl_fs *ofs, struct stage *sg)
{
	for (size_t i = 0; i < sg->n; i++) {
		struct staged *s = &sg->v[i];
		int pufd = atomic_load(&s->dir->upper_fd);
		struct stat pst;

		if (s->tmpname[0]) {
			pthread_rwlock_wrlock(&ofs->ns_lock);
			if (ovl_fstat(pufd, &pst) == 0 &&
			    unlinkat(pufd, s->tmpname, 0) == 0)
				restore_times(pufd, &pst);
			pthread_rwlock_unlock(&ofs->ns_lock);
		}
		ovl_node_put(ofs, s->node);
		ovl_node_put(ofs, s->dir);
	}
	for (size_t i = 0; i < sg->ndirs; i++)
		ovl_node_put(ofs, sg->dirs[i]);
	free(sg->v);
	free(sg->dirs);
}

/*
 * Put the staged copies in place, each as its own copy-up would have
 * (one overtaken by another copy-up, or deleted meanwhile, is dropped),
 * then mark the directories opaque. On an error the rest stays staged.
 */
static int stage_install(struct ovl_fs *ofs, struct stage *sg)
{
	int err = 0;

	for (size_t i = 0; i < sg->n && !err; i++) {
		struct staged *s = &sg->v[i];
		struct ovl_node *node = s->node;
		int pufd = atomic_load(&s->dir->upper_fd);
		struct stat pst0;
		bool done = false;

		pthread_mutex_lock(&node->copyup_lock);
		pthread_rwlock_wrlock(&ofs->ns_lock);
		if (ovl_fstat(pufd, &pst0) < 0)
			pst0.st_mtim.tv_nsec = UTIME_OMIT;
		if (!node->deleted && node->parent == s->dir &&
		    !ovl_node_has_upper(node)) {
			err = install_copy(ofs, node, pufd, -1, s->tmpname,
					   &pst0, true, false);
			done = !err;
		}
		if (!done && unlinkat(pufd, s->tmpname, 0) == 0 &&
		    pst0.st_mtim.tv_nsec != UTIME_OMIT)
			restore_times(pufd, &pst0);
		s->tmpname[0] = '\0';
		pthread_rwlock_unlock(&ofs->ns_lock);
		pthread_mutex_unlock(&node->copyup_lock);
		if (done) {
			ovl_tell_attr_changed(ofs, node);
			ovl_tell_attr_changed(ofs, s->dir);
		}
	}
	/* Everything is in the upper now: the lower may go dark. */
	for (size_t i = 0; i < sg->ndirs && !err; i++) {
		struct ovl_node *dir = sg->dirs[i];

		pthread_rwlock_wrlock(&ofs->ns_lock);
		if (!dir->opaque) {
			err = ovl_opaque_set(&ofs->fmt,
					     atomic_load(&dir->upper_fd));
			if (!err)
				dir->opaque = true;
		}
		pthread_rwlock_unlock(&ofs->ns_lock);
	}
	return err;
}

/*
 * Copy up directory NODE and its subtree, staging file copies in SG and
 * listing the directories to mark opaque, deepest first.
 */
static int copy_up_tree(struct ovl_fs *ofs, struct ovl_node *node,
			struct stage *sg)
{
	struct ovl_rdent *ents = NULL;
	struct stat pst0, pst;
	struct timespec after = { 0, UTIME_OMIT };
	size_t n = 0;
	int err;

	err = ovl_copy_up(ofs, node);
	if (err || !ovl_node_lower_visible(node))
		return err;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	err = ovl_dir_list(ofs, node, &ents, &n, false);
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		return err;
	if (ovl_fstat(atomic_load(&node->upper_fd), &pst0) < 0)
		pst0.st_mtim.tv_nsec = UTIME_OMIT;
	/* Files first, then the directory's times; subdirectories last. */
	for (int pass = 0; pass < 2 && !err; pass++) {
		for (size_t i = 0; i < n && !err; i++) {
			struct ovl_node *child;

			pthread_rwlock_rdlock(&ofs->ns_lock);
			err = ovl_lookup_locked(ofs, node, ents[i].name,
						&child);
			pthread_rwlock_unlock(&ofs->ns_lock);
			if (err == -ENOENT) {
				err = 0;	/* gone meanwhile */
				continue;
			}
			if (err)
				break;
			if ((child->type == S_IFDIR) != (pass == 1)) {
				ovl_node_put(ofs, child);
				continue;
			}
			if (pass == 1) {
				err = copy_up_tree(ofs, child, sg);
			} else {
				err = stage_file(ofs, node, child, sg);
				if (err < 0)
					copy_up_failed(ofs, child, err);
				else if (err == 0)
					err = ovl_copy_up(ofs, child);
				else if (ovl_fstat(atomic_load(&node->upper_fd),
						   &pst) == 0)
					after = pst.st_mtim;
				err = err > 0 ? 0 : err;
			}
			ovl_node_put(ofs, child);
		}
		/* The staged names were no change the user made. */
		if (pass == 0 && after.tv_nsec != UTIME_OMIT &&
		    pst0.st_mtim.tv_nsec != UTIME_OMIT) {
			int pufd = atomic_load(&node->upper_fd);

			pthread_rwlock_wrlock(&ofs->ns_lock);
			if (ovl_fstat(pufd, &pst) == 0 &&
			    pst.st_mtim.tv_sec == after.tv_sec &&
			    pst.st_mtim.tv_nsec == after.tv_nsec)
				restore_times(pufd, &pst0);
			pthread_rwlock_unlock(&ofs->ns_lock);
		}
	}
	ovl_dir_list_free(ents, n);
	/* NOLINTBEGIN(bugprone-sizeof-expression): an array of pointers */
	if (!err)
		err = ovl_grow((void **)&sg->dirs, &sg->dcap, sg->ndirs,
			       sizeof(*sg->dirs), 64);
	/* NOLINTEND(bugprone-sizeof-expression) */
	if (err)
		return err;
	ovl_node_get(ofs, node);
	sg->dirs[sg->ndirs++] = node;
	return 0;
}

int ovl_copy_up_tree(struct ovl_fs *ofs, struct ovl_node *node)
{
	struct stage sg = { 0 };
	int err = copy_up_tree(ofs, node, &sg);

	if (!err)
		err = stage_install(ofs, &sg);
	stage_free(ofs, &sg);
	return err;
}
