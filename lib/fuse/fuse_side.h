/*
 * fuse/fuse_side.h: the FUSE side, above fs/.
 *
 * Owns everything that speaks FUSE: the low-level adapters that turn a
 * request into a call of fs/ and its result into a reply (ops.c); the
 * transport: the session, the request loop, the io hooks and the read
 * pipes, and notifications to the kernel (session.c); and passthrough
 * (passthrough.c). Its state is ofs->fuse (struct ovl_fuse_state, in
 * fs/fs.h only so that struct ovl_fs can hold it). This folder is the
 * one place that includes <fuse_lowlevel.h>.
 *
 * Its locks (their place in the whole order: fs/fs.h):
 *  - io_lock (ofs->fuse, mutex): the io-mode counters of nodes and open
 *    files (n_cached, n_pt, backing_id; pt_id, io_counted), so each open
 *    is answered in the mode the kernel's inode is in (passthrough.c).
 *    Taken with no fs/ lock held; registering or dropping a backing file
 *    under it takes notify_lock.
 *  - notify_lock (ofs->fuse, rwlock, a leaf): held for reading around a
 *    notify or backing ioctl on the session fd by a worker, for writing
 *    by unmount (api/mount.c) to set notify_off before libfuse closes
 *    that fd; so none lands on a closed (or reused) fd number.
 *  - the request loop's lock (struct loop in session.c, a leaf): never
 *    held while serving a request, nor while logging.
 * No lock is held across a reply: an adapter replies after the fs/ call
 * returned and dropped its locks.
 */
#ifndef OVL_FUSE_SIDE_H
#define OVL_FUSE_SIDE_H

#include <sys/uio.h>

#include "fs/fs.h"

/* ===== passthrough.c: the kernel does the I/O of upper files ===== */

/*
 * Decide whether this mount may use passthrough (before the session
 * starts): the caller did not turn it off and we hold CAP_SYS_ADMIN
 * (ovl_global_sys_admin); else log that it is off.
 */
int ovl_pt_init(struct ovl_fs *ofs, bool enable);
void ovl_pt_destroy(struct ovl_fs *ofs);
/*
 * Count open file F in its node's io mode and say how to answer the open:
 * a backing id (> 0) for a passthrough reply, or 0 for the daemon path.
 */
int ovl_pt_open(struct ovl_fs *ofs, struct ovl_file *f);
/* Uncount F (ovl_release calls it); the last passthrough user unregisters. */
void ovl_pt_release(struct ovl_fs *ofs, struct ovl_file *f);

/* ===== both: nodeids ===== */

/*
 * A nodeid is the address of its struct ovl_node, and 1 (FUSE_ROOT_ID) for
 * the root: the node of NODEID, and the nodeid of NODE.
 */
static inline struct ovl_node *ovl_fuse_node(struct ovl_fs *ofs,
					     uint64_t nodeid)
{
	if (nodeid == 1)
		return ofs->root;
	return (struct ovl_node *)(uintptr_t)nodeid;
}

static inline uint64_t ovl_fuse_nodeid(struct ovl_fs *ofs,
				       struct ovl_node *node)
{
	return node == ofs->root ? 1 : (uint64_t)(uintptr_t)node;
}

/* ===== uring.c: the FUSE-over-io_uring transport ===== */

/*
 * Before the session: take MODE (ovlfs_set_io_uring). ON fails (with the
 * handle's error set, naming the mount point MP) when the kernel cannot do it; AUTO falls back to
 * /dev/fuse, saying so in the log.
 */
int ovl_uring_init(struct ovl_fs *ofs, enum ovlfs_io_uring mode,
		   const char *mp);
bool ovl_uring_wanted(const struct ovl_fs *ofs);
/* INIT reply: may it say FUSE_OVER_IO_URING (wanted and offered)? */
bool ovl_uring_accept(struct ovl_fs *ofs);
/*
 * The INIT reply went out, saying FUSE_OVER_IO_URING if ACCEPTED, with
 * MAX_WRITE and MAX_PAGES (which size the payload buffers): start the
 * queues. Called by the thread that answered INIT.
 */
void ovl_uring_start(struct ovl_fs *ofs, bool accepted, uint32_t max_write,
		     uint32_t max_pages);
/*
 * After the mount answered its first request: wait until the queues are
 * registered; log the transport in use. -EOPNOTSUPP (error set) if the
 * mode is ON and the rings did not start.
 */
int ovl_uring_wait(struct ovl_fs *ofs, const char *mp);
/*
 * The writev hook's first stop: if this thread is answering a ring
 * request and IOV is that reply, put it in the entry: bytes "written",
 * or -1 and errno. 0: not for the ring, write it to /dev/fuse.
 */
ssize_t ovl_uring_reply(struct ovl_fs *ofs, const struct iovec *iov,
			int count);
/*
 * The ring's payload buffer of the request this thread answers, if it
 * holds SIZE bytes (a reply built there is not copied); NULL otherwise.
 */
void *ovl_uring_reply_buf(struct ovl_fs *ofs, size_t size);
/*
 * The /dev/fuse reader got a request: what the ring threads answered
 * before is ordered before it (for ThreadSanitizer; nothing otherwise).
 */
void ovl_uring_kernel_order(struct ovl_fs *ofs);
/*
 * After the loop ended (and again when the session is destroyed, for a
 * mount that failed before): stop and join the queues' threads, free all.
 */
void ovl_uring_stop(struct ovl_fs *ofs);

/* ===== ops.c: the FUSE adapters (request -> fs/ call -> reply) ===== */

struct fuse_lowlevel_ops;
/* The adapters, for the session to serve (ovl_fuse_session_new). */
const struct fuse_lowlevel_ops *ovl_fuse_ops(void);

/* ===== session.c: session, request loop, io hooks, notifications ===== */

/*
 * Create the session for OFS serving OPS (ovl_fuse_ops(): the caller
 * joins the two, so the transport does not depend on the adapters) with
 * ARGV-style options, and fill in OFS's hooks (struct ovl_fs_hooks);
 * NULL on error.
 */
void *ovl_fuse_session_new(struct ovl_fs *ofs,
			   const struct fuse_lowlevel_ops *ops, int argc,
			   char **argv);
/* Mount OFS->fuse.se at MOUNT_POINT, with the passthrough hooks if wanted. */
int ovl_fuse_session_mount(struct ovl_fs *ofs, const char *mount_point);
/*
 * Is the request in B cheap and sure not to wait on file data (served by
 * the thread that read it)? Both transports ask.
 */
struct fuse_buf;
bool ovl_fuse_request_is_quick(struct ovl_fs *ofs, const struct fuse_buf *b);
/*
 * The monitors of both transports: a request in service for OVL_STUCK_MS
 * (a slow layer) loses its thread's turn to another thread.
 * ovl_fuse_monitor_wait waits on COND (MUTEX held) that long, or until
 * signalled; ovl_fuse_log_stuck logs the STUCK-th such request, at the
 * 1st, 2nd, 4th, 8th... only.
 */
#define OVL_STUCK_MS 50
void ovl_fuse_monitor_wait(pthread_cond_t *cond, pthread_mutex_t *mutex);
void ovl_fuse_log_stuck(struct ovl_fs *ofs, uint64_t stuck);
/* Run the multithreaded loop until unmounted; returns its result. */
int ovl_fuse_loop(struct ovl_fs *ofs);
void ovl_fuse_session_exit(void *se);
void ovl_fuse_session_unmount(void *se);
void ovl_fuse_session_destroy(struct ovl_fs *ofs);

/*
 * Reads: the data goes file -> pipe -> /dev/fuse by splice, never through
 * our memory. The pipe is ours (one per thread), not libfuse's: only then
 * does an error after part of the data is read come back as an error (in
 * libfuse's splice path it becomes a short read, which the kernel takes
 * for EOF). Files that cannot splice take the copy path.
 */
struct ovl_read_pipe {
	int r, w;
	size_t cap;
};
/*
 * This thread's pipe, holding at least SIZE bytes; NULL if none can be had
 * (op_read then copies). It stays the thread's until the session ends.
 */
struct ovl_read_pipe *ovl_fuse_read_pipe(struct ovl_fs *ofs, size_t size);
/* Throw away this thread's pipe RP (it may hold stray data). */
void ovl_fuse_read_pipe_drop(struct ovl_fs *ofs, struct ovl_read_pipe *rp);
#endif /* OVL_FUSE_SIDE_H */
