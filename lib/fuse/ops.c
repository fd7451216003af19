/*
 * ops.c: the FUSE low-level adapters. Each handler turns the request into a
 * call of fs/ and replies exactly once, after fs/ has returned and dropped
 * its locks. Its own file because it is the request -> fs/ -> reply
 * mapping only: how requests arrive and replies leave (the session, the
 * loop, the io hooks) is session.c's.
 *
 * A nodeid is the address of its struct ovl_node (the root is 1). A file
 * handle is a struct ovl_file; a directory handle a struct ovl_dirhandle.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "fuse/fuse_side.h"

/*
 * Names and attributes may be cached for long: nothing but ovlfs changes
 * the layers while mounted (they are locked), the kernel knows about every
 * change made through it, and what ovlfs changes on its own (copy-up's
 * effect on ctimes and parents) it reports with notify_inval_inode.
 */
#define OVL_TIMEOUT 86400.0

/*
 * A file with several names may change through a name whose kernel inode
 * is another (nodes are per name): do not cache its attributes. Nor once
 * it ever had (node->aliased): the other node lives on after a name goes.
 */
static double attr_timeout(const struct ovl_node *node, const struct stat *st)
{
	if (S_ISDIR(st->st_mode))
		return OVL_TIMEOUT;
	return st->st_nlink > 1 || atomic_load(&node->aliased) ? 0.0
							       : OVL_TIMEOUT;
}

/*
 * Directories report a 1 MiB block size: glibc's opendir sizes its
 * getdents buffer from st_blksize (at least 32 KiB, at most 1 MiB), and
 * since Linux 6.16 FUSE asks for as much per READDIR(PLUS), up to
 * max_pages (1 MiB with libfuse's default max_write), so listing a big
 * directory takes a few requests instead of one per 32 KiB. Only
 * directories: for a file st_blksize is the I/O size hint of cp and stdio.
 */
#define OVL_DIR_BLKSIZE (1 << 20)

static void dir_blksize(struct stat *st)
{
	if (S_ISDIR(st->st_mode))
		st->st_blksize = OVL_DIR_BLKSIZE;
}

static struct ovl_fs *ofs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct ovl_file *file_of(const struct fuse_file_info *fi)
{
	return (struct ovl_file *)(uintptr_t)fi->fh;
}

/* The backing fd of an open file, as it stands now. */
static int fd_of(fuse_req_t req, const struct fuse_file_info *fi)
{
	return ovl_file_fd(fuse_req_userdata(req), file_of(fi));
}

/*
 * The caller's supplementary groups only where a check needs them (ACCESS):
 * libfuse reads them from /proc/PID/task/TID/status, three syscalls and a
 * procfs rendering per request, a third of a create's own cost in an untar.
 */
static void get_ctx(fuse_req_t req, struct ovl_ctx *ctx, bool groups)
{
	const struct fuse_ctx *fc = fuse_req_ctx(req);
	int n = 0;

	ctx->uid = fc->uid;
	ctx->gid = fc->gid;
	ctx->pid = fc->pid;
	ctx->umask = fc->umask;
	if (groups)
		n = fuse_req_getgroups(req, 64, ctx->groups);
	ctx->ngroups = n < 0 ? 0 : (n > 64 ? 64 : n);
}

static void reply_entry(fuse_req_t req, struct ovl_fs *ofs, int err,
			struct ovl_entry *e)
{
	struct fuse_entry_param fe;

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	memset(&fe, 0, sizeof(fe));
	fe.ino = ovl_fuse_nodeid(ofs, e->node);
	fe.generation = e->node->generation;
	fe.attr = e->st;
	dir_blksize(&fe.attr);
	fe.attr_timeout = attr_timeout(e->node, &e->st);
	fe.entry_timeout = OVL_TIMEOUT;
	if (fuse_reply_entry(req, &fe) == -ENOENT)
		ovl_node_forget(ofs, e->node, 1);	/* request was interrupted */
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_SPLICE_MOVE)
		conn->want |= FUSE_CAP_SPLICE_MOVE;
	if (conn->capable & FUSE_CAP_SPLICE_READ)
		conn->want |= FUSE_CAP_SPLICE_READ;
	/*
	 * POSIX ACLs, checked by the kernel (default_permissions is always
	 * on). It also makes the VFS hand us the raw mode and the caller's
	 * umask: under a default ACL the umask must not apply, and only we
	 * can see the upper's ACL.
	 */
	if (conn->capable & FUSE_CAP_POSIX_ACL)
		conn->want |= FUSE_CAP_POSIX_ACL;
	if (conn->capable & FUSE_CAP_DONT_MASK)
		conn->want |= FUSE_CAP_DONT_MASK;
	/* flock() and POSIX locks stay local to the kernel. */
	conn->want &= ~(FUSE_CAP_FLOCK_LOCKS | FUSE_CAP_POSIX_LOCKS);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_entry e;
	int err = ovl_lookup(ofs, ovl_fuse_node(ofs, parent), name, &e);

	if (err == -ENOENT) {
		/*
		 * Cache the miss as the kernel's own filesystems do: a name
		 * appears in the merged view only by a create the kernel
		 * sees (the layers change under ovlfs alone), so compilers
		 * and interpreters probing paths ask once.
		 */
		struct fuse_entry_param fe;

		memset(&fe, 0, sizeof(fe));
		fe.entry_timeout = OVL_TIMEOUT;
		fuse_reply_entry(req, &fe);
		return;
	}
	reply_entry(req, ofs, err, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct ovl_fs *ofs = ofs_of(req);

	ovl_node_forget(ofs, ovl_fuse_node(ofs, ino), nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *forgets)
{
	struct ovl_fs *ofs = ofs_of(req);

	for (size_t i = 0; i < count; i++)
		ovl_node_forget(ofs, ovl_fuse_node(ofs, forgets[i].ino),
				forgets[i].nlookup);
	ovl_nodes_trim(ofs);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_node *node = ovl_fuse_node(ofs, ino);
	struct stat st;
	int err = ovl_node_stat(ofs, node, &st);

	(void)fi;
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	dir_blksize(&st);
	fuse_reply_attr(req, &st, attr_timeout(node, &st));
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	static const struct {
		int fuse, ovl;
	} map[] = {
		{ FUSE_SET_ATTR_MODE, OVL_SET_MODE },
		{ FUSE_SET_ATTR_UID, OVL_SET_UID },
		{ FUSE_SET_ATTR_GID, OVL_SET_GID },
		{ FUSE_SET_ATTR_SIZE, OVL_SET_SIZE },
		{ FUSE_SET_ATTR_ATIME, OVL_SET_ATIME },
		{ FUSE_SET_ATTR_MTIME, OVL_SET_MTIME },
		{ FUSE_SET_ATTR_ATIME_NOW, OVL_SET_ATIME_NOW },
		{ FUSE_SET_ATTR_MTIME_NOW, OVL_SET_MTIME_NOW },
		{ FUSE_SET_ATTR_CTIME, OVL_SET_CTIME },
	};
	struct ovl_fs *ofs = ofs_of(req);
	struct stat st;
	int valid = 0, err;

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (to_set & map[i].fuse)
			valid |= map[i].ovl;
	err = ovl_setattr(ofs, ovl_fuse_node(ofs, ino), attr, valid,
			  fi ? fd_of(req, fi) : -1, &st);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	dir_blksize(&st);
	fuse_reply_attr(req, &st, attr_timeout(ovl_fuse_node(ofs, ino), &st));
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct ovl_fs *ofs = ofs_of(req);
	char buf[PATH_MAX + 1];
	int err = ovl_readlink(ofs, ovl_fuse_node(ofs, ino), buf, sizeof(buf));

	if (err)
		fuse_reply_err(req, -err);
	else
		fuse_reply_readlink(req, buf);
}

static void make_node(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, dev_t rdev, const char *target)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_ctx ctx;
	struct ovl_entry e;
	int err;

	get_ctx(req, &ctx, false);
	err = ovl_mknod(ofs, &ctx, ovl_fuse_node(ofs, parent), name, mode,
			rdev, target, &e);
	reply_entry(req, ofs, err, &e);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	make_node(req, parent, name, mode, rdev, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	make_node(req, parent, name, S_IFDIR | (mode & 07777), 0, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	make_node(req, parent, name, S_IFLNK | 0777, 0, link);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_entry e;
	int err = ovl_link(ofs, ovl_fuse_node(ofs, ino),
			   ovl_fuse_node(ofs, newparent), newname, &e);

	reply_entry(req, ofs, err, &e);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_unlink(ofs, ovl_fuse_node(ofs, parent), name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_rmdir(ofs, ovl_fuse_node(ofs, parent), name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_rename(ofs, ovl_fuse_node(ofs, parent), name,
					ovl_fuse_node(ofs, newparent), newname,
					flags));
}

/*
 * Keep the page cache across opens: the data changes only through the
 * kernel. Not for a file with several names: each name is a kernel inode
 * of its own, with its own cache, and a write through one is not seen in
 * the others' pages.
 */
static bool keep_cache(struct ovl_fs *ofs, struct ovl_file *f)
{
	struct stat st;

	if (atomic_load(&f->node->aliased))
		return false;
	/* The lower does not change while mounted: its count was seen. */
	if (f->on_lower && !ovl_node_has_upper(f->node))
		return true;
	return ovl_fstat(ovl_file_fd(ofs, f), &st) == 0 && st.st_nlink <= 1;
}

/*
 * Answer an OPEN (FE NULL) or CREATE of F: in passthrough if the node's io
 * mode says so (the writev hook below puts the backing id in the reply),
 * else on the daemon path with the page cache kept where that is safe.
 */
static int reply_open(fuse_req_t req, struct ovl_fs *ofs, struct ovl_file *f,
		      struct fuse_file_info *fi,
		      const struct fuse_entry_param *fe)
{
	int id = ovl_pt_open(ofs, f), r;

	/* The kernel refuses keep_cache with passthrough. */
	fi->keep_cache = id ? 0 : keep_cache(ofs, f);
	/* No FLUSH at close: there is no .flush (see ovl_ops). */
	fi->noflush = 1;
	if (id)
		pthread_setspecific(ofs->fuse.pt_key, (void *)(intptr_t)id);
	r = fe ? fuse_reply_create(req, fe, fi) : fuse_reply_open(req, fi);
	if (id)
		pthread_setspecific(ofs->fuse.pt_key, NULL);
	return r;
}

/*
 * The flags the backing file is opened with: on a volatile mount without
 * O_SYNC/O_DSYNC, as the kernel overlayfs drops them from volatile writes.
 */
static int open_flags(const struct ovl_fs *ofs, const struct fuse_file_info *fi)
{
	return ofs->no_sync ? fi->flags & ~(O_SYNC | O_DSYNC) : fi->flags;
}

/* Does the caller of REQ hold CAP_FSETID (its effective set)? */
static bool caller_has_fsetid(fuse_req_t req)
{
	char path[64], line[128];
	unsigned long long caps = 0;
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status",
		 (int)fuse_req_ctx(req)->pid);
	f = fopen(path, "re");
	if (!f)
		return false;	/* gone or hidden: kill, as for anyone */
	while (!found && fgets(line, sizeof(line), f))
		found = sscanf(line, "CapEff: %llx", &caps) == 1;
	fclose(f);
	return found && (caps & (1ULL << 4));	/* CAP_FSETID */
}

/*
 * An O_TRUNC open by a caller without CAP_FSETID kills setuid, and setgid
 * where the VFS would (group execute, or a caller outside the group): the
 * kernel computes that, but with atomic O_TRUNC it sends no SETATTR (the
 * OPEN truncated already), so the kill is lost unless we do it. Its
 * cached mode is then stale: tell it.
 */
static void kill_suid_on_trunc(fuse_req_t req, struct ovl_fs *ofs,
			       struct ovl_node *node, struct ovl_file *f)
{
	struct stat st, attr, out;
	mode_t kill = 0;
	struct ovl_ctx ctx;

	if (fstat(atomic_load(&f->fd), &st) < 0 || !S_ISREG(st.st_mode) ||
	    !(st.st_mode & (S_ISUID | S_ISGID)))
		return;
	if (st.st_mode & S_ISUID)
		kill |= S_ISUID;
	if ((st.st_mode & S_ISGID) && (st.st_mode & S_IXGRP))
		kill |= S_ISGID;
	else if (st.st_mode & S_ISGID) {
		bool member;

		get_ctx(req, &ctx, true);
		member = ctx.gid == st.st_gid;
		for (int i = 0; i < ctx.ngroups && !member; i++)
			member = ctx.groups[i] == st.st_gid;
		if (!member)
			kill |= S_ISGID;
	}
	if (!kill || caller_has_fsetid(req))
		return;
	memset(&attr, 0, sizeof(attr));
	attr.st_mode = st.st_mode & ~kill;
	if (ovl_setattr(ofs, node, &attr, OVL_SET_MODE, atomic_load(&f->fd),
			&out) == 0)
		ovl_tell_attr_changed(ofs, node);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_file *f;
	int err = ovl_open(ofs, ovl_fuse_node(ofs, ino), open_flags(ofs, fi),
			   &f);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	if (fi->flags & O_TRUNC)
		kill_suid_on_trunc(req, ofs, ovl_fuse_node(ofs, ino), f);
	f->sync_io = ofs->no_sync && (fi->flags & O_DSYNC);
	fi->fh = (uint64_t)(uintptr_t)f;
	if (reply_open(req, ofs, f, fi, NULL) == -ENOENT)
		ovl_release(ofs, f);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct fuse_entry_param fe;
	struct ovl_ctx ctx;
	struct ovl_entry e;
	struct ovl_file *f;
	int err;

	get_ctx(req, &ctx, false);
	err = ovl_create(ofs, &ctx, ovl_fuse_node(ofs, parent), name, mode,
			 open_flags(ofs, fi), &e, &f);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	f->sync_io = ofs->no_sync && (fi->flags & O_DSYNC);
	memset(&fe, 0, sizeof(fe));
	fe.ino = ovl_fuse_nodeid(ofs, e.node);
	fe.generation = e.node->generation;
	fe.attr = e.st;
	fe.attr_timeout = attr_timeout(e.node, &e.st);
	fe.entry_timeout = OVL_TIMEOUT;
	fi->fh = (uint64_t)(uintptr_t)f;
	if (reply_open(req, ofs, f, fi, &fe) == -ENOENT) {
		ovl_release(ofs, f);
		ovl_node_forget(ofs, e.node, 1);
	}
}

/*
 * The copy path: pread into memory, then reply. Over io_uring that memory
 * is the ring's own buffer (ovl_uring_reply_buf), so the data is read
 * where the kernel takes it and never copied.
 */
static void read_copy(fuse_req_t req, int fd, size_t size, off_t off)
{
	char *ring = ovl_uring_reply_buf(ofs_of(req), size);
	char *buf = ring ? ring : malloc(size ? size : 1);
	size_t got = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	while (got < size) {
		ssize_t n = pread(fd, buf + got, size - got, off + got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fuse_reply_err(req, errno);
			if (!ring)
				free(buf);
			return;
		}
		if (n == 0)
			break;
		got += n;
	}
	fuse_reply_buf(req, buf, got);
	if (!ring)
		free(buf);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	int fd = fd_of(req, fi), left;
	struct ovl_read_pipe *rp;
	size_t got = 0;

	(void)ino;
	/*
	 * Small reads are cheaper copied than spliced, and over io_uring the
	 * copy goes straight into the ring's buffer.
	 */
	rp = size >= 16384 && !ovl_uring_reply_buf(ofs, size) ?
		     ovl_fuse_read_pipe(ofs, size) : NULL;
	if (!rp) {
		read_copy(req, fd, size, off);
		return;
	}
	while (got < size) {
		loff_t pos = off + got;
		ssize_t n = splice(fd, &pos, rp->w, NULL, size - got,
				   SPLICE_F_MOVE);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && got == 0 && (errno == EINVAL || errno == ENOSYS)) {
			read_copy(req, fd, size, off);	/* cannot splice */
			return;
		}
		if (n < 0) {
			int err = errno;

			ovl_fuse_read_pipe_drop(ofs, rp);
			fuse_reply_err(req, err);
			return;
		}
		if (n == 0) {
			/*
			 * splice may stop short where read fails (seen with
			 * a FUSE lower): only read(2)'s word counts for EOF.
			 */
			char c;
			ssize_t r = pread(fd, &c, 1, off + got);

			if (r == 0)
				break;
			/* An error or more data: let read(2) answer. */
			ovl_fuse_read_pipe_drop(ofs, rp);
			read_copy(req, fd, size, off);
			return;
		}
		got += n;
	}
	if (got == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	{
		struct fuse_bufvec bv = FUSE_BUFVEC_INIT(got);

		bv.buf[0].flags = FUSE_BUF_IS_FD;
		bv.buf[0].fd = rp->r;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
	}
	/* Whatever libfuse did not take (a failed reply) must not leak into
	   the next one. */
	if (ioctl(rp->r, FIONREAD, &left) < 0 || left > 0)
		ovl_fuse_read_pipe_drop(ofs, rp);
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_bufvec *in, off_t off,
			 struct fuse_file_info *fi)
{
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
	ssize_t n;

	(void)ino;
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = fd_of(req, fi);
	out.buf[0].pos = off;
	n = fuse_buf_copy(&out, in, 0);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else
		fuse_reply_write(req, (size_t)n);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	(void)ino;
	ovl_release(ofs_of(req), file_of(fi));
	fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	int fd;

	(void)ino;
	/* Volatile: the kernel overlayfs's meaning, no sync of the upper. */
	if (ofs_of(req)->no_sync) {
		fuse_reply_err(req, 0);
		return;
	}
	fd = fd_of(req, fi);
	fuse_reply_err(req, (datasync ? fdatasync(fd) : fsync(fd)) < 0 ? errno : 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_dirhandle *dh;
	int err = ovl_opendir(ofs, ovl_fuse_node(ofs, ino), &dh);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)dh;
	/*
	 * Listings stay in the kernel's cache across opens. It drops one at
	 * the next listing from offset 0 after an entry came or went through
	 * the mount (the only way one can: the layers are ovlfs's alone); a
	 * reader in the middle of it then finds its place in the new listing
	 * by offset, which only stable offsets make right (readdir.c).
	 */
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	if (fuse_reply_open(req, fi) == -ENOENT)
		ovl_releasedir(ofs, dh);
}

static bool is_dot(const char *name)
{
	return name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]));
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_dirhandle *dh = (void *)(uintptr_t)fi->fh;
	char *buf = malloc(size), *p;
	size_t rem = size;
	int err = 0;

	(void)ino;
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_mutex_lock(&dh->lock);
	/* Offset 0 (open or rewinddir) takes a fresh snapshot. */
	if (off == 0 || !dh->valid)
		err = ovl_readdir_fill(ofs, dh);
	p = buf;
	for (size_t i = err ? 0 : ovl_readdir_seek(dh, off); !err && i < dh->n;
	     i++) {
		struct ovl_rdent *d = &dh->ents[i];
		size_t len;

		if (plus) {
			struct fuse_entry_param fe;
			struct ovl_entry e;
			bool bare;

			memset(&fe, 0, sizeof(fe));
			if (is_dot(d->name)) {
				/* The kernel takes no lookup for these. */
				fe.attr.st_ino = d->ino;
				fe.attr.st_mode = d->type;
				len = fuse_add_direntry_plus(req, p, rem, d->name,
							     &fe, d->off);
				if (len > rem)
					break;
			} else {
				len = fuse_add_direntry_plus(req, NULL, 0, d->name,
							     NULL, 0);
				if (len > rem)
					break;
				/*
				 * Known to the kernel already: nodeid 0 says
				 * "no attributes here", which spares a stat
				 * per entry on every listing of a warm tree
				 * (its cached attributes are kept right by
				 * timeouts and our invalidations anyway).
				 * So is an entry that is there but cannot be
				 * looked up (EIO: a metacopy file with no
				 * data): the kernel's own LOOKUP of it gives
				 * the error to whoever stats it, as ls shows
				 * it. Dropped, it vanished from listings, and
				 * flatten and cp -a went on without it as if
				 * all was copied.
				 */
				bare = ovl_node_known(ofs, dh->node, d->name);
				if (!bare) {
					err = ovl_lookup(ofs, dh->node, d->name,
							 &e);
					if (err == -ENOENT) {
						err = 0;
						continue;	/* gone since the
								   snapshot */
					}
					bare = err < 0;
					err = 0;
				}
				if (bare) {
					fe.attr.st_ino = d->ino;
					fe.attr.st_mode = d->type;
					len = fuse_add_direntry_plus(
						req, p, rem, d->name, &fe, d->off);
					p += len;
					rem -= len;
					continue;
				}
				fe.ino = ovl_fuse_nodeid(ofs, e.node);
				fe.generation = e.node->generation;
				fe.attr = e.st;
				dir_blksize(&fe.attr);
				fe.attr_timeout = attr_timeout(e.node, &e.st);
				fe.entry_timeout = OVL_TIMEOUT;
				len = fuse_add_direntry_plus(req, p, rem, d->name,
							     &fe, d->off);
			}
		} else {
			struct stat st = { .st_ino = d->ino, .st_mode = d->type };

			len = fuse_add_direntry(req, p, rem, d->name, &st,
						d->off);
			if (len > rem)
				break;
		}
		p += len;
		rem -= len;
	}
	pthread_mutex_unlock(&dh->lock);
	if (err && p == buf)
		fuse_reply_err(req, -err);
	else
		fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t off, struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
			  struct fuse_file_info *fi)
{
	(void)ino;
	ovl_releasedir(ofs_of(req), (void *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_node *node = ovl_fuse_node(ofs, ino);
	int fd, err = 0;

	(void)fi;
	/* Only the upper can hold unsynced changes; volatile syncs none. */
	if (ovl_node_has_upper(node) && !ofs->no_sync) {
		fd = ovl_reopen(atomic_load(&node->upper_fd),
				O_RDONLY | O_DIRECTORY);
		if (fd < 0) {
			err = -fd;
		} else {
			if ((datasync ? fdatasync(fd) : fsync(fd)) < 0)
				err = errno;
			close(fd);
		}
	}
	fuse_reply_err(req, err);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st;
	int err = ovl_statfs(ofs_of(req), &st);

	(void)ino;
	if (err)
		fuse_reply_err(req, -err);
	else
		fuse_reply_statfs(req, &st);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_setxattr(ofs, ovl_fuse_node(ofs, ino), name,
					  value, size, flags));
}

static void reply_xattr(fuse_req_t req, size_t size, const char *buf, int n)
{
	if (n < 0)
		fuse_reply_err(req, -n);
	else if (size == 0)
		fuse_reply_xattr(req, n);
	else
		fuse_reply_buf(req, buf, n);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	struct ovl_fs *ofs = ofs_of(req);
	char *buf = size ? malloc(size) : NULL;
	int n;

	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	/*
	 * `ovlfs umount` asks this of a FUSE mount whose type is not
	 * fuse.ovlfs (mounted with -o subtype=...): only ovlfs answers.
	 */
	if (ino == FUSE_ROOT_ID && !strcmp(name, OVL_XATTR_MOUNT)) {
		n = sizeof(OVL_MOUNT_MARK) - 1;
		if (size && size < (size_t)n)
			n = -ERANGE;
		else if (size)
			memcpy(buf, OVL_MOUNT_MARK, n);
	} else {
		n = ovl_getxattr(ofs, ovl_fuse_node(ofs, ino), name, buf, size);
	}
	reply_xattr(req, size, buf, n);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct ovl_fs *ofs = ofs_of(req);
	char *buf = size ? malloc(size) : NULL;
	int n;

	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = ovl_listxattr(ofs, ovl_fuse_node(ofs, ino), buf, size);
	reply_xattr(req, size, buf, n);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req,
		       -ovl_removexattr(ofs, ovl_fuse_node(ofs, ino), name));
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_ctx ctx;

	get_ctx(req, &ctx, true);
	fuse_reply_err(req,
		       -ovl_access(ofs, &ctx, ovl_fuse_node(ofs, ino), mask));
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
			 off_t len, struct fuse_file_info *fi)
{
	(void)ino;
	fuse_reply_err(req, fallocate(fd_of(req, fi), mode, off, len) < 0 ? errno : 0);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	off_t r = lseek(fd_of(req, fi), off, whence);

	(void)ino;
	if (r < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, r);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
			       struct fuse_file_info *fi_in, fuse_ino_t ino_out,
			       off_t off_out, struct fuse_file_info *fi_out,
			       size_t len, int flags)
{
	loff_t in = off_in, out = off_out;
	ssize_t n;

	(void)ino_in;
	(void)ino_out;
	n = copy_file_range(fd_of(req, fi_in), &in, fd_of(req, fi_out), &out, len,
			    (unsigned)flags);
	if (n < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_write(req, (size_t)n);
}

static const struct fuse_lowlevel_ops ovl_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write_buf = op_write_buf,
	/*
	 * No .flush: the backing files are local and written through, so a
	 * FLUSH on every close would be a round trip for nothing. Opens
	 * answer FOPEN_NOFLUSH, so not even the first one is sent (before,
	 * it was answered ENOSYS once, after which the kernel sent none).
	 */
	.release = op_release,
	.fsync = op_fsync,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.access = op_access,
	.fallocate = op_fallocate,
	.lseek = op_lseek,
	.copy_file_range = op_copy_file_range,
};

const struct fuse_lowlevel_ops *ovl_fuse_ops(void)
{
	return &ovl_ops;
}
