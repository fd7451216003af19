/*
 * session.c: the FUSE transport. Creating, mounting and destroying the
 * session, the request loop and its threads, the per-thread read pipes
 * replies are spliced from, the session io hooks that see the kernel's
 * INIT and patch replies for passthrough, and notifications to the kernel
 * (the struct ovl_fs_hooks that fs/ calls). Its own file because it is
 * how requests arrive and replies leave, apart from what they do (ops.c):
 * another transport (io_uring) belongs next to it.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <inttypes.h>
#include <linux/fuse.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fuse/fuse_side.h"

/* The read pipes of op_read: see struct ovl_read_pipe. */
static void read_pipe_free(void *p)
{
	struct ovl_read_pipe *rp = p;

	if (!rp)
		return;
	close(rp->r);
	close(rp->w);
	free(rp);
}

/* This thread's pipe, holding at least SIZE bytes; NULL if none can be had. */
struct ovl_read_pipe *ovl_fuse_read_pipe(struct ovl_fs *ofs, size_t size)
{
	struct ovl_read_pipe *rp = pthread_getspecific(ofs->fuse.pipe_key);
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
	if (!rp || cap < (int)size || pthread_setspecific(ofs->fuse.pipe_key, rp)) {
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
void ovl_fuse_read_pipe_drop(struct ovl_fs *ofs, struct ovl_read_pipe *rp)
{
	pthread_setspecific(ofs->fuse.pipe_key, NULL);
	read_pipe_free(rp);
}

static void notify_attr_changed(struct ovl_fs *ofs, struct ovl_node *node);

/* What fs/ tells the kernel through us (struct ovl_fs_hooks). */
static const struct ovl_fs_hooks fuse_hooks = {
	.attr_changed = notify_attr_changed,
	.file_released = ovl_pt_release,
};

void *ovl_fuse_session_new(struct ovl_fs *ofs,
			   const struct fuse_lowlevel_ops *ops, int argc,
			   char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_session *se;

	if (!ofs->fuse.pipe_key_made) {
		if (pthread_key_create(&ofs->fuse.pipe_key, read_pipe_free))
			return NULL;
		ofs->fuse.pipe_key_made = true;
	}
	ofs->hooks = &fuse_hooks;
	se = fuse_session_new(&args, ops, sizeof(*ops), ofs);
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
#define OVL_FUSE_OVER_IO_URING_FLAGS2 (1U << 9) /* FUSE_OVER_IO_URING >> 32 */

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	struct ovl_fs *ofs = userdata;
	ssize_t n = read(fd, buf, len);
	const struct fuse_in_header *h = buf;

	ovl_uring_kernel_order(ofs);
	if (n >= (ssize_t)(sizeof(*h) + sizeof(struct fuse_init_in)) &&
	    !atomic_load(&ofs->fuse.init_unique) && h->opcode == FUSE_INIT) {
		const struct fuse_init_in *in = (const void *)(h + 1);
		bool ext = in->flags & FUSE_INIT_EXT;

		atomic_store(&ofs->fuse.pt_offered,
			     ext && (in->flags2 & OVL_FUSE_PASSTHROUGH_FLAGS2));
		atomic_store(&ofs->fuse.uring_offered,
			     ext && (in->flags2 & OVL_FUSE_OVER_IO_URING_FLAGS2));
		atomic_store(&ofs->fuse.init_unique, h->unique);
	}
	return n;
}

/*
 * The INIT reply in IOV (header + fuse_init_out): accept passthrough and
 * FUSE-over-io_uring where wanted and offered, send it, then start the
 * rings (they can register only once the kernel has taken the reply).
 */
static ssize_t init_reply(struct ovl_fs *ofs, int fd, struct iovec *iov)
{
	struct fuse_init_out o;
	struct iovec v[2];
	bool pt = false, ring = ovl_uring_accept(ofs);
	ssize_t r;

	memcpy(&o, iov[1].iov_base, sizeof(o));
	/* The kernel will not combine passthrough with the writeback cache. */
	if (ofs->fuse.pt_want && atomic_load(&ofs->fuse.pt_offered) &&
	    !(o.flags & FUSE_WRITEBACK_CACHE)) {
		o.flags |= FUSE_INIT_EXT;
		o.flags2 |= OVL_FUSE_PASSTHROUGH_FLAGS2;
		o.unused[0] = ofs->fuse.pt_depth;	/* max_stack_depth */
		pt = true;
	}
	if (ring) {
		o.flags |= FUSE_INIT_EXT;
		o.flags2 |= OVL_FUSE_OVER_IO_URING_FLAGS2;
	}
	v[0] = iov[0];
	v[1].iov_base = &o;
	v[1].iov_len = sizeof(o);
	r = writev(fd, v, 2);
	if (r > 0 && pt)
		atomic_store(&ofs->fuse.pt_on, true);
	ovl_uring_start(ofs, r > 0 && ring, o.max_write,
			(o.flags & FUSE_MAX_PAGES) ? o.max_pages : 0);
	return r;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct ovl_fs *ofs = userdata;
	const struct fuse_out_header *oh = iov[0].iov_base;
	intptr_t id = (intptr_t)pthread_getspecific(ofs->fuse.pt_key);
	struct iovec v[3];
	struct fuse_open_out o;
	ssize_t r;

	if (count == 2 && iov[0].iov_len == sizeof(*oh) && !oh->error) {
		if (id > 0 && iov[1].iov_len >= sizeof(o)) {
			/* fuse_open_out ends both the OPEN and the CREATE reply. */
			size_t head = iov[1].iov_len - sizeof(o);

			memcpy(&o, (char *)iov[1].iov_base + head, sizeof(o));
			o.open_flags |= OVL_FOPEN_PASSTHROUGH;
			o.padding = (uint32_t)id;	/* backing_id since 7.40 */
			v[0] = iov[0];
			v[1].iov_base = iov[1].iov_base;
			v[1].iov_len = head;
			v[2].iov_base = &o;
			v[2].iov_len = sizeof(o);
			iov = v;
			count = 3;
		} else if (oh->unique &&
			   oh->unique == atomic_load(&ofs->fuse.init_unique) &&
			   iov[1].iov_len == sizeof(struct fuse_init_out)) {
			return init_reply(ofs, fd, iov);
		}
	}
	r = ovl_uring_reply(ofs, iov, count);
	return r ? r : writev(fd, iov, count);
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

	if (fuse_session_mount(ofs->fuse.se, mount_point) < 0)
		return -EIO;
	ofs->fuse.dev_fd = fuse_session_fd(ofs->fuse.se);
	if ((ofs->fuse.pt_want || ovl_uring_wanted(ofs)) &&
	    fuse_session_custom_io(ofs->fuse.se, &io, ofs->fuse.dev_fd) < 0) {
		ofs->fuse.pt_want = false;
		ofs->fuse.uring_mode = OVLFS_IO_URING_OFF;
		ovl_log(ofs->pub, OVLFS_LOG_WARNING,
			"passthrough and io_uring off: libfuse refused our session i/o hooks");
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
 * holds the reader's turn. A quick request (see ovl_fuse_request_is_quick) is
 * served by the reader itself, which keeps the turn, so a sequential
 * client talks to one warm thread. Before anything that may take long
 * (copying data, fsync, big reads, listing a directory, anything that
 * may copy up a file) the reader passes the turn to an idle follower,
 * or starts one (up to OVL_MAX_THREADS), so slow requests still run in
 * parallel with everything else. A quick request that turns out slow all
 * the same (a lower on a stuck network filesystem) must not hold up the
 * mount: a monitor thread, waking every OVL_STUCK_MS, takes the turn
 * away from a reader stuck on one request for that long.
 *
 * CPU locality: a warm thread is not enough when it runs on the other
 * CPU. The scheduler puts a woken reader back on the CPU it last ran on
 * if that one is idle, so on an idle machine the reader and a caller
 * taskset to one CPU settle on different CPUs and every request costs
 * two cross-CPU wakeups (3x a same-CPU round trip on a 2-CPU VM, see
 * docs/performance.md). So the reader runs on the CPUs its caller may run
 * on (its affinity mask, taken every OVL_FOLLOW_EVERY requests and for
 * every new caller), when that is a part of ours; a caller that may run
 * anywhere leaves the reader free, as following the CPU such a caller
 * last ran on measured no better with one caller and worse with two: the
 * caller, woken while the reader still holds that CPU, moves to the idle
 * one. Slow requests drop the
 * pin first, or they would queue behind the reader instead of running in
 * parallel. Per-CPU readers on cloned /dev/fuse fds would not do it: the
 * kernel hands a request to the reader that has waited longest, whatever
 * CPU it is on.
 */
#define OVL_MAX_THREADS 16
#define OVL_QUICK_READ (128 * 1024)
#define OVL_FOLLOW_EVERY 64

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
	cpu_set_t cpus;			/* the CPUs the loop may use */
	int ncpus;			/* how many: with one, nothing to follow */
};

/* Where one loop thread runs and whose CPUs it follows. */
struct reader {
	cpu_set_t on;			/* pinned to these */
	bool pinned;			/* else any of the loop's CPUs */
	uint32_t pid;			/* the caller last looked at */
	unsigned int since;		/* its requests since */
	cpu_set_t want;			/* the CPUs of the callers so far */
	uint64_t n;			/* quick requests served */
	uint64_t changed;		/* n when the callers' CPUs last changed */
	uint64_t mixed;			/* n when they changed twice in a row */
};

bool ovl_fuse_request_is_quick(struct ovl_fs *ofs, const struct fuse_buf *b)
{
	const struct fuse_in_header *h = b->mem;
	const void *arg = h + 1;

	if ((b->flags & FUSE_BUF_IS_FD) || b->size < sizeof(*h))
		return false;
	switch (h->opcode) {
	case FUSE_SETATTR:	/* no size change, no data copied up */
		return b->size >= sizeof(*h) + sizeof(struct fuse_setattr_in) &&
		       !(((const struct fuse_setattr_in *)arg)->valid &
			 FATTR_SIZE) &&
		       ovl_node_meta_change_is_cheap(
			       ofs, ovl_fuse_node(ofs, h->nodeid));
	case FUSE_SETXATTR:
	case FUSE_REMOVEXATTR:
		return ovl_node_meta_change_is_cheap(
			ofs, ovl_fuse_node(ofs, h->nodeid));
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

/* Run on the CPUs in SET, or anywhere the loop may if SET is NULL. */
static void reader_pin(struct loop *L, struct reader *me, const cpu_set_t *set)
{
	if (L->ncpus < 2 || (!set && !me->pinned))
		return;
	if (set && me->pinned && CPU_EQUAL(set, &me->on))
		return;
	/* Failing (a cpuset changed under us) only costs speed. */
	if (sched_setaffinity(0, sizeof(cpu_set_t), set ? set : &L->cpus) == 0) {
		me->pinned = set != NULL;
		if (set)
			me->on = *set;
	}
}

/* The reader is to serve the quick request in B: go where its caller runs. */
static void reader_follow(struct loop *L, struct reader *me,
			  const struct fuse_buf *b)
{
	const struct fuse_in_header *h = b->mem;
	cpu_set_t set;

	me->n++;
	/* pid 0: the kernel's own (forgets) or a caller out of our sight. */
	if (L->ncpus < 2 || !h->pid)
		return;
	if (h->pid == me->pid && ++me->since < OVL_FOLLOW_EVERY)
		return;
	me->pid = h->pid;
	me->since = 0;
	if (sched_getaffinity((pid_t)h->pid, sizeof(set), &set) < 0)
		return;
	CPU_AND(&set, &set, &L->cpus);
	if (CPU_COUNT(&set) == 0)
		set = L->cpus;
	/*
	 * Callers on different CPUs taking turns (the CPUs change twice
	 * within OVL_FOLLOW_EVERY requests): moving to each in turn cost
	 * more than the cross-CPU wakeups it saves (twice as slow with two
	 * callers pinned to two CPUs), so run anywhere until one kind of
	 * caller has had the reader to itself for a while.
	 */
	if (me->n > 1 && !CPU_EQUAL(&set, &me->want)) {
		if (me->changed && me->n - me->changed < OVL_FOLLOW_EVERY)
			me->mixed = me->n;
		me->changed = me->n;
	}
	me->want = set;
	if (CPU_EQUAL(&set, &L->cpus) ||
	    (me->mixed && me->n - me->mixed < OVL_FOLLOW_EVERY))
		reader_pin(L, me, NULL);
	else
		reader_pin(L, me, &set);
}

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

void ovl_fuse_monitor_wait(pthread_cond_t *cond, pthread_mutex_t *mutex)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_nsec += OVL_STUCK_MS * 1000000L;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(cond, mutex, &t);
}

void ovl_fuse_log_stuck(struct ovl_fs *ofs, uint64_t stuck)
{
	/*
	 * A slow layer makes every request wait: worth a line, but at the
	 * 1st, 2nd, 4th, 8th... time only, or it floods.
	 */
	if (stuck && !(stuck & (stuck - 1)))
		ovl_log(ofs->pub, OVLFS_LOG_WARNING,
			"a request took over %d ms (%" PRIu64
			" so far): a layer is slow to answer",
			OVL_STUCK_MS, stuck);
}

static void *loop_monitor(void *arg)
{
	struct loop *L = arg;
	uint64_t seen = 0, stuck;

	pthread_mutex_lock(&L->lock);
	while (!L->done) {
		ovl_fuse_monitor_wait(&L->stop, &L->lock);
		/* The same request in service since the last look: stuck. */
		stuck = 0;
		if (L->busy && L->served == seen && !L->done) {
			loop_pass_turn(L);
			stuck = ++L->stuck;
		}
		seen = L->served;
		if (stuck) {
			pthread_mutex_unlock(&L->lock);
			ovl_fuse_log_stuck(L->ofs, stuck);
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
	/* Pinned to nothing known: a thread inherits its creator's pin. */
	struct reader me = { .pinned = true };
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
			if (!ovl_fuse_request_is_quick(L->ofs, &fbuf)) {
				loop_pass_turn(L);
				pthread_mutex_unlock(&L->lock);
				break;
			}
			L->busy = true;
			L->served++;
			pthread_mutex_unlock(&L->lock);
			reader_follow(L, &me, &fbuf);
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
		reader_pin(L, &me, NULL);
		fuse_session_process_buf(L->se, &fbuf);
next:;
	}
out:
	free(fbuf.mem);
	return NULL;
}

int ovl_fuse_loop(struct ovl_fs *ofs)
{
	struct loop L = { .ofs = ofs, .se = ofs->fuse.se };
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
	if (sched_getaffinity(0, sizeof(L.cpus), &L.cpus) == 0)
		L.ncpus = CPU_COUNT(&L.cpus);
	monitoring = pthread_create(&monitor, NULL, loop_monitor, &L) == 0;
	loop_thread(&L);
	if (monitoring)
		pthread_join(monitor, NULL);
	ovl_uring_stop(ofs);
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
	pthread_rwlock_rdlock(&ofs->fuse.notify_lock);
	if (!ofs->fuse.notify_off)
		fuse_lowlevel_notify_inval_inode(ofs->fuse.se,
						 ovl_fuse_nodeid(ofs, node), -1, 0);
	pthread_rwlock_unlock(&ofs->fuse.notify_lock);
}

void ovl_fuse_session_destroy(struct ovl_fs *ofs)
{
	ovl_uring_stop(ofs);	/* if the loop never ran to stop it */
	if (ofs->fuse.se)
		fuse_session_destroy(ofs->fuse.se);
	ofs->fuse.se = NULL;
	if (ofs->fuse.pipe_key_made) {
		pthread_key_delete(ofs->fuse.pipe_key);
		ofs->fuse.pipe_key_made = false;
	}
}
