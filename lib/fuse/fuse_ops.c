/*
 * fuse_ops.c: the FUSE low-level adapters, and the only file that includes
 * fuse_lowlevel.h. Each handler turns the request into a core call and
 * replies exactly once, after the core has returned and dropped its locks.
 *
 * A nodeid is the address of its struct ovl_node (the root is 1). A file
 * handle is a struct ovl_file; a directory handle a struct ovl_dirhandle.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>
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

static struct ovl_node *node_of(struct ovl_fs *ofs, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return ofs->root;
	return (struct ovl_node *)(uintptr_t)ino;
}

static fuse_ino_t nodeid_of(struct ovl_fs *ofs, struct ovl_node *node)
{
	return node == ofs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)node;
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
	fe.ino = nodeid_of(ofs, e->node);
	fe.generation = e->node->generation;
	fe.attr = e->st;
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
	int err = ovl_lookup(ofs, node_of(ofs, parent), name, &e);

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

	ovl_node_forget(ofs, node_of(ofs, ino), nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *forgets)
{
	struct ovl_fs *ofs = ofs_of(req);

	for (size_t i = 0; i < count; i++)
		ovl_node_forget(ofs, node_of(ofs, forgets[i].ino),
				forgets[i].nlookup);
	ovl_nodes_trim(ofs);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_node *node = node_of(ofs, ino);
	struct stat st;
	int err = ovl_node_stat(ofs, node, &st);

	(void)fi;
	if (err)
		fuse_reply_err(req, -err);
	else
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
	err = ovl_setattr(ofs, node_of(ofs, ino), attr, valid,
			  fi ? fd_of(req, fi) : -1, &st);
	if (err)
		fuse_reply_err(req, -err);
	else
		fuse_reply_attr(req, &st, attr_timeout(node_of(ofs, ino), &st));
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct ovl_fs *ofs = ofs_of(req);
	char buf[PATH_MAX + 1];
	int err = ovl_readlink(ofs, node_of(ofs, ino), buf, sizeof(buf));

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
	err = ovl_mknod(ofs, &ctx, node_of(ofs, parent), name, mode, rdev,
			target, &e);
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
	int err = ovl_link(ofs, node_of(ofs, ino), node_of(ofs, newparent),
			   newname, &e);

	reply_entry(req, ofs, err, &e);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_unlink(ofs, node_of(ofs, parent), name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_rmdir(ofs, node_of(ofs, parent), name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_rename(ofs, node_of(ofs, parent), name,
					node_of(ofs, newparent), newname,
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
	if (id)
		pthread_setspecific(ofs->pt_key, (void *)(intptr_t)id);
	r = fe ? fuse_reply_create(req, fe, fi) : fuse_reply_open(req, fi);
	if (id)
		pthread_setspecific(ofs->pt_key, NULL);
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

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_file *f;
	int err = ovl_open(ofs, node_of(ofs, ino), open_flags(ofs, fi), &f);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
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
	err = ovl_create(ofs, &ctx, node_of(ofs, parent), name, mode,
			 open_flags(ofs, fi), &e, &f);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	f->sync_io = ofs->no_sync && (fi->flags & O_DSYNC);
	memset(&fe, 0, sizeof(fe));
	fe.ino = nodeid_of(ofs, e.node);
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
 * Reads: the data goes file -> pipe -> /dev/fuse by splice, never through
 * our memory. The pipe is ours (one per thread), not libfuse's: only then
 * does an error after part of the data is read come back as an error (in
 * libfuse's splice path it becomes a short read, which the kernel takes
 * for EOF). Files that cannot splice take the copy path.
 */
struct read_pipe {
	int r, w;
	size_t cap;
};

static void read_pipe_free(void *p)
{
	struct read_pipe *rp = p;

	if (!rp)
		return;
	close(rp->r);
	close(rp->w);
	free(rp);
}

/* This thread's pipe, holding at least SIZE bytes; NULL if none can be had. */
static struct read_pipe *read_pipe(struct ovl_fs *ofs, size_t size)
{
	struct read_pipe *rp = pthread_getspecific(ofs->pipe_key);
	int fds[2], cap;

	if (rp && rp->cap >= size)
		return rp;
	if (rp) {
		cap = fcntl(rp->w, F_SETPIPE_SZ, (int)size);
		if (cap >= (int)size) {
			rp->cap = cap;
			return rp;
		}
		return NULL;
	}
	if (pipe2(fds, O_CLOEXEC) < 0)
		return NULL;
	rp = malloc(sizeof(*rp));
	cap = fcntl(fds[1], F_SETPIPE_SZ, (int)(size > (1 << 20) ? size : 1 << 20));
	if (!rp || cap < (int)size || pthread_setspecific(ofs->pipe_key, rp)) {
		close(fds[0]);
		close(fds[1]);
		free(rp);
		return NULL;
	}
	rp->r = fds[0];
	rp->w = fds[1];
	rp->cap = cap;
	return rp;
}

/* Throw away this thread's pipe (it may hold stray data). */
static void read_pipe_drop(struct ovl_fs *ofs, struct read_pipe *rp)
{
	pthread_setspecific(ofs->pipe_key, NULL);
	read_pipe_free(rp);
}

/* The copy path: pread into memory, then reply. */
static void read_copy(fuse_req_t req, int fd, size_t size, off_t off)
{
	char *buf = malloc(size ? size : 1);
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
			free(buf);
			return;
		}
		if (n == 0)
			break;
		got += n;
	}
	fuse_reply_buf(req, buf, got);
	free(buf);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct ovl_fs *ofs = ofs_of(req);
	int fd = fd_of(req, fi), left;
	struct read_pipe *rp;
	size_t got = 0;

	(void)ino;
	/* Small reads are cheaper copied than spliced. */
	rp = size >= 16384 ? read_pipe(ofs, size) : NULL;
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

			read_pipe_drop(ofs, rp);
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
			read_pipe_drop(ofs, rp);
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
		read_pipe_drop(ofs, rp);
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
	int err = ovl_opendir(ofs, node_of(ofs, ino), &dh);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)dh;
	/*
	 * No cache_readdir: when an entry comes or goes during a listing the
	 * kernel drops its cache and reads again from offset 0, which takes
	 * a new snapshot here and shows entries twice to a reader in the
	 * middle (tests/test_concurrency.py).
	 */
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
	for (size_t i = off; !err && i < dh->n; i++) {
		struct ovl_rdent *d = &dh->ents[i];
		size_t len;

		if (plus) {
			struct fuse_entry_param fe;
			struct ovl_entry e;

			memset(&fe, 0, sizeof(fe));
			if (is_dot(d->name)) {
				/* The kernel takes no lookup for these. */
				fe.attr.st_ino = d->ino;
				fe.attr.st_mode = d->type;
				len = fuse_add_direntry_plus(req, p, rem, d->name,
							     &fe, i + 1);
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
				 */
				if (ovl_node_known(ofs, dh->node, d->name)) {
					fe.attr.st_ino = d->ino;
					fe.attr.st_mode = d->type;
					len = fuse_add_direntry_plus(
						req, p, rem, d->name, &fe, i + 1);
					p += len;
					rem -= len;
					continue;
				}
				if (ovl_lookup(ofs, dh->node, d->name, &e) < 0)
					continue;	/* gone since the snapshot */
				fe.ino = nodeid_of(ofs, e.node);
				fe.generation = e.node->generation;
				fe.attr = e.st;
				fe.attr_timeout = attr_timeout(e.node, &e.st);
				fe.entry_timeout = OVL_TIMEOUT;
				len = fuse_add_direntry_plus(req, p, rem, d->name,
							     &fe, i + 1);
			}
		} else {
			struct stat st = { .st_ino = d->ino, .st_mode = d->type };

			len = fuse_add_direntry(req, p, rem, d->name, &st, i + 1);
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
	struct ovl_node *node = node_of(ofs, ino);
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

	fuse_reply_err(req, -ovl_setxattr(ofs, node_of(ofs, ino), name, value,
					  size, flags));
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
		n = ovl_getxattr(ofs, node_of(ofs, ino), name, buf, size);
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
	n = ovl_listxattr(ofs, node_of(ofs, ino), buf, size);
	reply_xattr(req, size, buf, n);
	free(buf);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct ovl_fs *ofs = ofs_of(req);

	fuse_reply_err(req, -ovl_removexattr(ofs, node_of(ofs, ino), name));
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct ovl_fs *ofs = ofs_of(req);
	struct ovl_ctx ctx;

	get_ctx(req, &ctx, true);
	fuse_reply_err(req, -ovl_access(ofs, &ctx, node_of(ofs, ino), mask));
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
	 * FLUSH on every close would be a round trip for nothing; answered
	 * ENOSYS once, the kernel stops sending them.
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

static void notify_attr_changed(struct ovl_fs *ofs, struct ovl_node *node);

/* What fs/ tells the kernel through us (struct ovl_fs_hooks). */
static const struct ovl_fs_hooks fuse_hooks = {
	.attr_changed = notify_attr_changed,
	.file_released = ovl_pt_release,
};

void *ovl_fuse_session_new(struct ovl_fs *ofs, int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_session *se;

	if (!ofs->pipe_key_made) {
		if (pthread_key_create(&ofs->pipe_key, read_pipe_free))
			return NULL;
		ofs->pipe_key_made = true;
	}
	ofs->hooks = &fuse_hooks;
	se = fuse_session_new(&args, &ovl_ops, sizeof(ovl_ops), ofs);
	fuse_opt_free_args(&args);
	return se;
}

/*
 * Passthrough with libfuse 3.14, which has no API for it: the session's
 * reads and writes go through these hooks, which see the kernel's INIT
 * (does it offer passthrough?) and patch two kinds of replies on their
 * way out (libfuse writes each reply synchronously, in the thread that
 * answers, as header + argument): the INIT reply, to accept passthrough,
 * and the OPEN/CREATE replies that reply_open marked with a backing id.
 * docs/passthrough.md has the why; with libfuse >= 3.17 this becomes
 * FUSE_CAP_PASSTHROUGH and fi->backing_id.
 */
#define OVL_FUSE_PASSTHROUGH_FLAGS2 (1U << 5)	/* FUSE_PASSTHROUGH >> 32 */
#define OVL_FOPEN_PASSTHROUGH (1U << 7)

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	struct ovl_fs *ofs = userdata;
	ssize_t n = read(fd, buf, len);
	const struct fuse_in_header *h = buf;

	if (n >= (ssize_t)(sizeof(*h) + sizeof(struct fuse_init_in)) &&
	    !atomic_load(&ofs->init_unique) && h->opcode == FUSE_INIT) {
		const struct fuse_init_in *in = (const void *)(h + 1);

		atomic_store(&ofs->pt_offered,
			     (in->flags & FUSE_INIT_EXT) &&
			     (in->flags2 & OVL_FUSE_PASSTHROUGH_FLAGS2));
		atomic_store(&ofs->init_unique, h->unique);
	}
	return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct ovl_fs *ofs = userdata;
	const struct fuse_out_header *oh = iov[0].iov_base;
	intptr_t id = (intptr_t)pthread_getspecific(ofs->pt_key);
	struct iovec v[3];

	if (count != 2 || iov[0].iov_len != sizeof(*oh) || oh->error)
		return writev(fd, iov, count);
	if (id > 0 && iov[1].iov_len >= sizeof(struct fuse_open_out)) {
		/* fuse_open_out ends both the OPEN and the CREATE reply. */
		struct fuse_open_out o;
		size_t head = iov[1].iov_len - sizeof(o);

		memcpy(&o, (char *)iov[1].iov_base + head, sizeof(o));
		o.open_flags |= OVL_FOPEN_PASSTHROUGH;
		o.padding = (uint32_t)id;	/* backing_id since 7.40 */
		v[0] = iov[0];
		v[1].iov_base = iov[1].iov_base;
		v[1].iov_len = head;
		v[2].iov_base = &o;
		v[2].iov_len = sizeof(o);
		return writev(fd, v, 3);
	}
	if (oh->unique && oh->unique == atomic_load(&ofs->init_unique) &&
	    ofs->pt_want &&
	    atomic_load(&ofs->pt_offered) &&
	    iov[1].iov_len == sizeof(struct fuse_init_out)) {
		struct fuse_init_out o;
		ssize_t r;

		memcpy(&o, iov[1].iov_base, sizeof(o));
		/* The kernel will not combine it with the writeback cache. */
		if (!(o.flags & FUSE_WRITEBACK_CACHE)) {
			o.flags |= FUSE_INIT_EXT;
			o.flags2 |= OVL_FUSE_PASSTHROUGH_FLAGS2;
			o.unused[0] = ofs->pt_depth;	/* max_stack_depth */
		}
		v[0] = iov[0];
		v[1].iov_base = &o;
		v[1].iov_len = sizeof(o);
		r = writev(fd, v, 2);
		if (r > 0 && !(o.flags & FUSE_WRITEBACK_CACHE))
			atomic_store(&ofs->pt_on, true);
		return r;
	}
	return writev(fd, iov, count);
}

static ssize_t io_splice(int fdin, off_t *offin, int fdout, off_t *offout,
			 size_t len, unsigned int flags, void *userdata)
{
	(void)userdata;
	return splice(fdin, offin, fdout, offout, len, flags);
}

int ovl_fuse_session_mount(struct ovl_fs *ofs, const char *mount_point)
{
	/*
	 * No splice_receive: requests are read by io_read, which must see
	 * the INIT. Writes to passthrough files never come here anyway.
	 */
	static const struct fuse_custom_io io = {
		.read = io_read,
		.writev = io_writev,
		.splice_send = io_splice,
	};

	if (fuse_session_mount(ofs->se, mount_point) < 0)
		return -EIO;
	ofs->dev_fd = fuse_session_fd(ofs->se);
	if (ofs->pt_want &&
	    fuse_session_custom_io(ofs->se, &io, ofs->dev_fd) < 0) {
		ofs->pt_want = false;
		ovl_log(ofs->pub, OVLFS_LOG_WARNING,
			"passthrough off: libfuse refused our session i/o hooks");
	}
	return 0;
}

/*
 * The request loop: leader/followers instead of libfuse's pool.
 *
 * With libfuse's multithreaded loop every worker sleeps in read() on
 * /dev/fuse and the kernel wakes the one that has waited longest, so a
 * program doing one thing after another (stat, open, read, close...)
 * has each request served by another, cold thread, most often on the
 * other CPU: a cross-CPU wakeup per request, which on a 2-CPU machine
 * cost more than the work itself (open+read+close of small files ran at
 * a third of the single-threaded speed). Here one thread at a time
 * holds the reader's turn. A quick request (see request_is_quick) is
 * served by the reader itself, which keeps the turn, so a sequential
 * client talks to one warm thread. Before anything that may take long
 * (copying data, fsync, big reads, listing a directory, anything that
 * may copy up a file) the reader passes the turn to an idle follower,
 * or starts one (up to OVL_MAX_THREADS), so slow requests still run in
 * parallel with everything else. A quick request that turns out slow all
 * the same (a lower on a stuck network filesystem) must not hold up the
 * mount: a monitor thread, waking every OVL_STUCK_MS, takes the turn
 * away from a reader stuck on one request for that long.
 */
#define OVL_MAX_THREADS 16
#define OVL_QUICK_READ (128 * 1024)
#define OVL_STUCK_MS 50

struct loop {
	struct ovl_fs *ofs;
	struct fuse_session *se;
	pthread_mutex_t lock;
	pthread_cond_t turn;		/* the reader's turn is free, or done */
	pthread_cond_t stop;		/* wakes the monitor at the end */
	bool reading;			/* lock: someone holds the turn */
	bool done;			/* lock: the session ended */
	bool busy;			/* lock: the turn's holder serves a
					   quick request */
	uint64_t turn_gen;		/* lock: bumped when the turn passes */
	uint64_t served;		/* lock: quick requests begun */
	uint64_t stuck;			/* lock: turns the monitor took */
	int idle;			/* lock: followers waiting for the turn */
	int nthreads;			/* lock: started besides the first */
	pthread_t threads[OVL_MAX_THREADS];	/* lock */
	int result;			/* lock */
};

/* Is the request in B cheap and sure not to wait on file data? */
static bool request_is_quick(struct ovl_fs *ofs, const struct fuse_buf *b)
{
	const struct fuse_in_header *h = b->mem;
	const void *arg = h + 1;

	if ((b->flags & FUSE_BUF_IS_FD) || b->size < sizeof(*h))
		return false;
	switch (h->opcode) {
	case FUSE_SETATTR:	/* no copy-up, no size change */
		return b->size >= sizeof(*h) + sizeof(struct fuse_setattr_in) &&
		       !(((const struct fuse_setattr_in *)arg)->valid &
			 FATTR_SIZE) &&
		       ovl_node_has_upper(node_of(ofs, h->nodeid));
	case FUSE_SETXATTR:
	case FUSE_REMOVEXATTR:
		return ovl_node_has_upper(node_of(ofs, h->nodeid));
	case FUSE_LOOKUP:
	case FUSE_FORGET:
	case FUSE_BATCH_FORGET:
	case FUSE_GETATTR:
	case FUSE_READLINK:
	case FUSE_RELEASE:
	case FUSE_RELEASEDIR:
	case FUSE_OPENDIR:
	case FUSE_STATFS:
	case FUSE_GETXATTR:
	case FUSE_LISTXATTR:
	case FUSE_FLUSH:
	case FUSE_ACCESS:
	case FUSE_INTERRUPT:
	case FUSE_CREATE:	/* parents' copy-up is metadata only */
	case FUSE_MKDIR:
	case FUSE_MKNOD:
	case FUSE_SYMLINK:
	case FUSE_UNLINK:
		return true;
	case FUSE_OPEN:		/* unless it copies up */
		return b->size >= sizeof(*h) + sizeof(struct fuse_open_in) &&
		       (((const struct fuse_open_in *)arg)->flags &
			(O_ACCMODE | O_TRUNC)) == O_RDONLY;
	case FUSE_READ:
		return b->size >= sizeof(*h) + sizeof(struct fuse_read_in) &&
		       ((const struct fuse_read_in *)arg)->size <=
			       OVL_QUICK_READ;
	default:
		return false;
	}
}

static void *loop_thread(void *arg);

/* The session is over: wake everyone to leave. Caller holds L->lock. */
static void loop_finish(struct loop *L, int res)
{
	if (!L->done && res < 0)
		L->result = res;
	L->done = true;
	L->reading = false;
	pthread_cond_broadcast(&L->turn);
	pthread_cond_signal(&L->stop);
}

/* Someone else is to read: wake a follower or start one. L->lock held. */
static void loop_pass_turn(struct loop *L)
{
	L->reading = false;
	L->busy = false;
	L->turn_gen++;
	if (L->idle > 0) {
		pthread_cond_signal(&L->turn);
	} else if (L->nthreads < OVL_MAX_THREADS &&
		   pthread_create(&L->threads[L->nthreads], NULL, loop_thread,
				  L) == 0) {
		L->nthreads++;
	}
	/* else: the next one to finish takes the turn */
}

static void *loop_monitor(void *arg)
{
	struct loop *L = arg;
	uint64_t seen = 0, stuck;
	struct timespec t;

	pthread_mutex_lock(&L->lock);
	while (!L->done) {
		clock_gettime(CLOCK_MONOTONIC, &t);
		t.tv_nsec += OVL_STUCK_MS * 1000000L;
		if (t.tv_nsec >= 1000000000L) {
			t.tv_sec++;
			t.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&L->stop, &L->lock, &t);
		/* The same request in service since the last look: stuck. */
		stuck = 0;
		if (L->busy && L->served == seen && !L->done) {
			loop_pass_turn(L);
			stuck = ++L->stuck;
		}
		seen = L->served;
		/*
		 * A slow layer makes every request wait: worth a line, but
		 * at the 1st, 2nd, 4th, 8th... time only, or it floods.
		 */
		if (stuck && !(stuck & (stuck - 1))) {
			pthread_mutex_unlock(&L->lock);
			ovl_log(L->ofs->pub, OVLFS_LOG_WARNING,
				"a request took over %d ms (%" PRIu64
				" so far): a layer is slow to answer",
				OVL_STUCK_MS, stuck);
			pthread_mutex_lock(&L->lock);
		}
	}
	pthread_mutex_unlock(&L->lock);
	return NULL;
}

static void *loop_thread(void *arg)
{
	struct loop *L = arg;
	struct fuse_buf fbuf = { .mem = NULL };
	uint64_t gen;
	bool mine;
	int res;

	for (;;) {
		pthread_mutex_lock(&L->lock);
		while (L->reading && !L->done) {
			L->idle++;
			pthread_cond_wait(&L->turn, &L->lock);
			L->idle--;
		}
		if (L->done) {
			pthread_mutex_unlock(&L->lock);
			break;
		}
		L->reading = true;
		gen = L->turn_gen;
		pthread_mutex_unlock(&L->lock);
		/* Our turn: read and serve quick requests until a slow one. */
		for (;;) {
			res = fuse_session_receive_buf(L->se, &fbuf);
			if (res == -EINTR || res == -EAGAIN)
				continue;
			pthread_mutex_lock(&L->lock);
			if (res <= 0 || fuse_session_exited(L->se)) {
				loop_finish(L, res);
				pthread_mutex_unlock(&L->lock);
				goto out;
			}
			if (!request_is_quick(L->ofs, &fbuf)) {
				loop_pass_turn(L);
				pthread_mutex_unlock(&L->lock);
				break;
			}
			L->busy = true;
			L->served++;
			pthread_mutex_unlock(&L->lock);
			fuse_session_process_buf(L->se, &fbuf);
			pthread_mutex_lock(&L->lock);
			/* The monitor may have passed the turn on meanwhile. */
			mine = L->turn_gen == gen;
			if (mine)
				L->busy = false;
			pthread_mutex_unlock(&L->lock);
			if (!mine)
				goto next;
		}
		fuse_session_process_buf(L->se, &fbuf);
next:;
	}
out:
	free(fbuf.mem);
	return NULL;
}

int ovl_fuse_loop(struct ovl_fs *ofs)
{
	struct loop L = { .ofs = ofs, .se = ofs->se };
	pthread_condattr_t ca;
	pthread_t monitor;
	bool monitoring;
	int n;

	pthread_mutex_init(&L.lock, NULL);
	pthread_cond_init(&L.turn, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&L.stop, &ca);
	pthread_condattr_destroy(&ca);
	monitoring = pthread_create(&monitor, NULL, loop_monitor, &L) == 0;
	loop_thread(&L);
	if (monitoring)
		pthread_join(monitor, NULL);
	/* No thread starts once done is set: the count is final. */
	pthread_mutex_lock(&L.lock);
	n = L.nthreads;
	pthread_mutex_unlock(&L.lock);
	for (int i = 0; i < n; i++)
		pthread_join(L.threads[i], NULL);
	pthread_cond_destroy(&L.stop);
	pthread_cond_destroy(&L.turn);
	pthread_mutex_destroy(&L.lock);
	return L.result;
}

void ovl_fuse_session_exit(void *se)
{
	fuse_session_exit(se);
}

void ovl_fuse_session_unmount(void *se)
{
	fuse_session_unmount(se);
}

static void notify_attr_changed(struct ovl_fs *ofs, struct ovl_node *node)
{
	/* Attributes only (offset < 0): takes no page lock, safe anywhere. */
	pthread_rwlock_rdlock(&ofs->notify_lock);
	if (!ofs->notify_off)
		fuse_lowlevel_notify_inval_inode(ofs->se, nodeid_of(ofs, node),
						 -1, 0);
	pthread_rwlock_unlock(&ofs->notify_lock);
}

void ovl_fuse_session_destroy(struct ovl_fs *ofs)
{
	if (ofs->se)
		fuse_session_destroy(ofs->se);
	ofs->se = NULL;
	if (ofs->pipe_key_made) {
		pthread_key_delete(ofs->pipe_key);
		ofs->pipe_key_made = false;
	}
}
