/*
 * uring.c: the FUSE-over-io_uring transport (kernel 6.14+, module
 * parameter fuse.enable_uring), next to the classic /dev/fuse loop of
 * session.c, which keeps INIT, FORGET, INTERRUPT and our notifications.
 *
 * The protocol (the kernel's uapi fuse.h and fs/fuse/dev_uring.c): the
 * INIT reply says FUSE_OVER_IO_URING; then for each possible CPU a queue
 * of entries, each a header buffer and a payload buffer handed to the
 * kernel by an IORING_OP_URING_CMD (REGISTER) on /dev/fuse in a ring of
 * 128-byte SQEs. A request completes the command of a free entry of the
 * queue of the CPU the caller runs on, with the request in the entry's
 * buffers; the answer goes back in the same buffers with COMMIT_AND_FETCH,
 * which also offers the entry for the next request. The kernel uses the
 * rings only once every queue has an entry registered.
 *
 * libfuse 3.14 knows nothing of this, so each request is rebuilt in the
 * classic layout (in header, op header, payload: the payload stays where
 * the kernel put it, the two headers are copied in front of it) and given
 * to fuse_session_process_buf; the reply comes back through the session's
 * writev hook (session.c io_writev), which calls ovl_uring_reply: a
 * thread-specific pointer says which entry the thread is answering.
 *
 * Threads, as the classic loop (session.c) and for the same reasons: per
 * queue one thread, pinned on its CPU, holds the queue's turn (the only
 * thread that touches its ring) and serves quick requests itself, so a
 * caller is answered on its own CPU by a warm thread; slow requests go to
 * a pool of workers, whose answers the turn holder commits (they hand the
 * entry back and wake it through an eventfd read armed in the ring). A
 * monitor takes the turn from a holder stuck on one request for
 * OVL_STUCK_MS and starts a new holder; the old one, when its
 * request ends, hands the entry back as a worker would and stays in the
 * pool (a thread that submitted commands must live as long as the ring:
 * the kernel runs the next request's copy in the submitter's context).
 *
 * Locks: u->lock (the pool, the state, which queue needs a holder), then
 * q->lock (a queue's turn, done list and counters; per queue, so that the
 * holders of two CPUs do not share one): never held while serving a
 * request or in a ring syscall.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fuse_lowlevel.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fuse/fuse_side.h"

/* From the kernel's uapi fuse.h (protocol 7.42); Debian's is older. */
#define OVL_FUSE_OVER_IO_URING_FLAGS2 (1U << 9)	/* FUSE_OVER_IO_URING >> 32 */
#define OVL_URING_CMD_REGISTER 1
#define OVL_URING_CMD_COMMIT_AND_FETCH 2
struct ovl_uring_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};
struct ovl_uring_req_header {
	char in_out[128];		/* fuse_in_header / fuse_out_header */
	char op_in[128];		/* the op's own header (in_args[0]) */
	struct ovl_uring_ent_in_out ent;
};
struct ovl_uring_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

#define OVL_URING_DEPTH 8		/* entries per queue */
#define OVL_URING_MAX_ENTS (4 * OVL_URING_DEPTH)	/* after steals */
#define OVL_URING_HEAD 4096		/* header page before each payload */
#define OVL_URING_WORKERS 16
#define OVL_URING_QUICK_IO (128 * 1024)	/* bigger writes go to a worker */
#define OVL_URING_EFD_TAG 1		/* user_data of the eventfd read */
#define OVL_URING_ENABLE "/sys/module/fuse/parameters/enable_uring"

struct uq;

/*
 * ThreadSanitizer sees the order that read(2)/write(2) on /dev/fuse give
 * (it models file descriptors), not the one the rings give: a node one
 * ring thread made in a CREATE is used by the next request, on another
 * thread, with the kernel between them. These say so.
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define tsan_acquire(p) __tsan_acquire(p)
#define tsan_release(p) __tsan_release(p)
#else
#define tsan_acquire(p) ((void)(p))
#define tsan_release(p) ((void)(p))
#endif

struct ent {
	struct uq *q;
	char *base;			/* OVL_URING_HEAD + payload, mmap'ed */
	struct ovl_uring_req_header *hdr;	/* at base */
	char *payload;			/* base + OVL_URING_HEAD */
	struct iovec iov[2];		/* what REGISTER handed the kernel */
	struct fuse_buf fbuf;		/* the request, classic layout */
	uint64_t unique;		/* of the request being answered */
	bool replied;			/* its reply is in the buffers */
	bool dead;			/* the kernel let go of it */
	struct ent *next;		/* done list (q->lock), jobs (u->lock) */
};

struct uq {
	struct ovl_uring *u;
	uint64_t efd_val;		/* the armed read's target */
	struct io_uring ring;
	struct ent ents[OVL_URING_MAX_ENTS];
	int qid;
	int efd;			/* wakes the holder */
	bool ring_made;
	bool fixed;			/* /dev/fuse is the ring's file 0 */
	/* u->lock: (one int: a wider load would take in the fields above) */
	int reg;			/* 0 registering, 1 done, or -errno */
	bool need_holder;		/* the monitor took the turn */
	/* lock: */
	pthread_mutex_t lock;
	uint64_t turn_gen;		/* bumped when the turn is taken */
	uint64_t served;		/* requests the holder began */
	struct ent *done;		/* handed back, to commit */
	int nents;			/* set up so far */
	int away;			/* entries a worker will hand back */
	int live;			/* entries the kernel still holds */
	bool serving;			/* the holder serves a request */
};

enum uring_state { U_PENDING, U_STARTING, U_READY, U_FAILED, U_UNUSED };

struct ovl_uring {
	struct ovl_fs *ofs;
	struct fuse_session *se;
	int dev_fd;
	size_t payload;
	int nq;
	struct uq *qs;
	pthread_key_t cur_key;		/* the struct ent this thread answers */
	char kernel_order;		/* tsan_acquire/release's address */
	cpu_set_t cpus;			/* the mount's affinity at start */
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* state changes, jobs, stop */
	pthread_cond_t mon_cond;	/* wakes the monitor at the end */
	enum uring_state state;		/* lock */
	char why[160];			/* lock: why not READY */
	struct ent *jobs, *jobs_tail;	/* lock */
	int idle;			/* lock: workers waiting for a job */
	_Atomic bool stop;		/* set under lock */
	pthread_t *threads;		/* lock: nq + workers + monitor */
	int nthreads;			/* lock */
	int nworkers;			/* lock: pool threads started */
	uint64_t stuck;			/* lock: turns the monitor took */
};

static int possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	int lo = 0, hi = -1, n = 0;
	char c;

	if (f) {
		/* "0-3" or "0-3,8-11": the kernel counts every one. */
		while (fscanf(f, "%d", &lo) == 1) {
			hi = lo;
			if (fscanf(f, "%c", &c) == 1 && c == '-') {
				if (fscanf(f, "%d", &hi) != 1)
					break;
				if (fscanf(f, "%c", &c) != 1)
					c = '\n';
			}
			n = hi + 1 > n ? hi + 1 : n;
			if (c != ',')
				break;
		}
		fclose(f);
	}
	return n > 0 ? n : (int)sysconf(_SC_NPROCESSORS_CONF);
}

/* Is the kernel's switch on? 1 yes, 0 no, -errno unknown. */
static int enable_uring_param(void)
{
	FILE *f = fopen(OVL_URING_ENABLE, "re");
	int c;

	if (!f)
		return -errno;
	c = fgetc(f);
	fclose(f);
	return c == 'Y' || c == '1';
}

/*
 * The transport's state, made before the session exists (so no thread
 * ever sees ofs->fuse.uring change), PENDING until the INIT reply decides.
 */
static int uring_new(struct ovl_fs *ofs)
{
	struct ovl_uring *u = calloc(1, sizeof(*u));
	pthread_condattr_t ca;

	if (!u)
		return -ENOMEM;
	if (pthread_key_create(&u->cur_key, NULL)) {
		free(u);
		return -EAGAIN;
	}
	pthread_mutex_init(&u->lock, NULL);
	pthread_cond_init(&u->cond, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&u->mon_cond, &ca);
	pthread_condattr_destroy(&ca);
	u->ofs = ofs;
	u->state = U_PENDING;
	ofs->fuse.uring = u;
	return 0;
}

int ovl_uring_init(struct ovl_fs *ofs, enum ovlfs_io_uring mode,
		   const char *mp)
{
	struct io_uring probe;
	int on, err;

	ofs->fuse.uring_mode = mode;
	if (mode == OVLFS_IO_URING_OFF)
		return 0;
	on = enable_uring_param();
	if (on <= 0) {
		if (mode == OVLFS_IO_URING_ON)
			return ovl_set_error(ofs->pub, -EOPNOTSUPP,
					     "mount point %s: io_uring transport unavailable: %s (as root: echo 1 > %s)",
					     mp, on == 0 ? "the fuse module's enable_uring parameter is off" :
					     "this kernel has no FUSE-over-io_uring (no " OVL_URING_ENABLE ")",
					     OVL_URING_ENABLE);
		ofs->fuse.uring_mode = OVLFS_IO_URING_OFF;
		ovl_log(ofs->pub, OVLFS_LOG_INFO,
			"transport: /dev/fuse (FUSE-over-io_uring is off: %s)",
			on == 0 ? OVL_URING_ENABLE " is N" :
			"the kernel has no " OVL_URING_ENABLE);
		return 0;
	}
	/* io_uring itself may be turned off (kernel.io_uring_disabled). */
	err = io_uring_queue_init(2, &probe, IORING_SETUP_SQE128);
	if (err < 0) {
		if (mode == OVLFS_IO_URING_ON)
			return ovl_set_error(ofs->pub, err,
					     "mount point %s: io_uring transport unavailable: cannot create a ring: %s (kernel.io_uring_disabled?)",
					     mp, strerror(-err));
		ofs->fuse.uring_mode = OVLFS_IO_URING_OFF;
		ovl_log(ofs->pub, OVLFS_LOG_INFO,
			"transport: /dev/fuse (cannot create an io_uring: %s)",
			strerror(-err));
		return 0;
	}
	io_uring_queue_exit(&probe);
	err = uring_new(ofs);
	if (err && mode == OVLFS_IO_URING_ON)
		return ovl_set_error(ofs->pub, err,
				     "mount point %s: io_uring transport unavailable: %s",
				     mp, strerror(-err));
	if (err)
		ofs->fuse.uring_mode = OVLFS_IO_URING_OFF;
	return 0;
}

bool ovl_uring_wanted(const struct ovl_fs *ofs)
{
	return ofs->fuse.uring_mode != OVLFS_IO_URING_OFF;
}

/* Start a thread running FN(ARG), signals blocked; u->lock held. */
static int spawn(struct ovl_uring *u, void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	int err;

	if (u->nthreads >= u->nq + OVL_URING_WORKERS + 1)
		return -EAGAIN;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	err = pthread_create(&u->threads[u->nthreads], NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err)
		return -err;
	u->nthreads++;
	return 0;
}

/* Map N more entries for Q; how many could be had. */
static int add_ents(struct uq *q, int n)
{
	struct ovl_uring *u = q->u;
	size_t len = OVL_URING_HEAD + u->payload;
	int made = 0;

	while (made < n && q->nents < OVL_URING_MAX_ENTS) {
		struct ent *e = &q->ents[q->nents];

		/* Untouched pages cost nothing: only what requests use. */
		e->base = mmap(NULL, len, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (e->base == MAP_FAILED) {
			e->base = NULL;
			break;
		}
		e->q = q;
		e->hdr = (struct ovl_uring_req_header *)e->base;
		e->payload = e->base + OVL_URING_HEAD;
		e->iov[0].iov_base = e->hdr;
		e->iov[0].iov_len = sizeof(*e->hdr);
		e->iov[1].iov_base = e->payload;
		e->iov[1].iov_len = u->payload;
		pthread_mutex_lock(&q->lock);
		q->nents++;
		pthread_mutex_unlock(&q->lock);
		made++;
	}
	return made;
}

static int queue_setup(struct uq *q)
{
	int err;

	err = io_uring_queue_init(OVL_URING_MAX_ENTS + 4, &q->ring,
				  IORING_SETUP_SQE128);
	if (err < 0)
		return err;
	q->ring_made = true;
	/* A registered file spares the kernel a reference per command. */
	q->fixed = io_uring_register_files(&q->ring, &q->u->dev_fd, 1) == 0;
	q->efd = eventfd(0, EFD_CLOEXEC);
	if (q->efd < 0)
		return -errno;
	return add_ents(q, OVL_URING_DEPTH) == OVL_URING_DEPTH ? 0 : -ENOMEM;
}

/* Queue a REGISTER or COMMIT_AND_FETCH of E on its ring (holder only). */
static int prep_cmd(struct ent *e, uint32_t op)
{
	struct uq *q = e->q;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	struct ovl_uring_cmd_req *req;

	if (!sqe) {
		io_uring_submit(&q->ring);
		sqe = io_uring_get_sqe(&q->ring);
		if (!sqe)
			return -EBUSY;
	}
	memset(sqe, 0, 128);
	sqe->opcode = IORING_OP_URING_CMD;
	if (q->fixed) {
		sqe->flags = IOSQE_FIXED_FILE;
		sqe->fd = 0;
	} else {
		sqe->fd = q->u->dev_fd;
	}
	sqe->addr = (uint64_t)(uintptr_t)e->iov;
	sqe->len = 2;
	sqe->cmd_op = op;
	req = (struct ovl_uring_cmd_req *)sqe->cmd;
	req->qid = (uint16_t)q->qid;
	req->commit_id = op == OVL_URING_CMD_COMMIT_AND_FETCH ? e->unique : 0;
	io_uring_sqe_set_data(sqe, e);
	return 0;
}

static void arm_efd(struct uq *q)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);

	if (!sqe) {
		io_uring_submit(&q->ring);
		sqe = io_uring_get_sqe(&q->ring);
	}
	if (!sqe)
		return;		/* cannot happen: the SQ is twice the entries */
	io_uring_prep_read(sqe, q->efd, &q->efd_val, sizeof(q->efd_val), 0);
	io_uring_sqe_set_data64(sqe, OVL_URING_EFD_TAG);
}

/* Answer E with ERR (negative errno) and nothing else. */
static void reply_err(struct ent *e, int err)
{
	struct fuse_out_header oh = {
		.len = sizeof(oh), .error = err, .unique = e->unique,
	};

	memcpy(e->hdr->in_out, &oh, sizeof(oh));
	e->hdr->ent.payload_sz = 0;
	e->replied = true;
}

/*
 * Rebuild the request the kernel put in E in the classic layout, the
 * headers copied just before the payload; false if it makes no sense.
 */
static bool rebuild(struct ent *e)
{
	struct fuse_in_header in;
	uint32_t psz = e->hdr->ent.payload_sz;
	size_t oplen;
	char *start;

	memcpy(&in, e->hdr->in_out, sizeof(in));
	e->unique = in.unique;
	e->replied = false;
	if (psz > e->q->u->payload || in.len < sizeof(in) + psz)
		return false;
	oplen = in.len - sizeof(in) - psz;
	if (oplen > sizeof(e->hdr->op_in))
		return false;
	start = e->payload - oplen - sizeof(in);
	memcpy(start, &in, sizeof(in));
	memcpy(start + sizeof(in), e->hdr->op_in, oplen);
	e->fbuf.mem = start;
	e->fbuf.size = in.len;
	e->fbuf.flags = 0;
	return true;
}

/* Serve E in this thread; it ends replied, whatever the op did. */
static void serve(struct ovl_uring *u, struct ent *e)
{
	pthread_setspecific(u->cur_key, e);
	fuse_session_process_buf(u->se, &e->fbuf);
	pthread_setspecific(u->cur_key, NULL);
	if (!e->replied)
		reply_err(e, -EIO);	/* no op of ours answers later */
}

static void *pool_main(void *arg);

/*
 * Work is waiting (a job, or a queue needing a holder) and no pool thread
 * is idle: start one. u->lock held.
 */
static void start_worker(struct ovl_uring *u)
{
	if (u->idle > 0)
		pthread_cond_signal(&u->cond);
	else if (u->nworkers < OVL_URING_WORKERS &&
		 spawn(u, pool_main, u) == 0)
		u->nworkers++;
	/* else: the next worker to finish takes it */
}

/* Give E to the pool. u->lock held. */
static void push_job(struct ovl_uring *u, struct ent *e)
{
	e->next = NULL;
	if (u->jobs_tail)
		u->jobs_tail->next = e;
	else
		u->jobs = e;
	u->jobs_tail = e;
	pthread_mutex_lock(&e->q->lock);
	e->q->away++;
	pthread_mutex_unlock(&e->q->lock);
	start_worker(u);
}

/* Hand E, answered by a thread that is not its queue's holder, back. */
static void hand_back(struct ovl_uring *u, struct ent *e)
{
	uint64_t one = 1;
	struct uq *q = e->q;

	pthread_mutex_lock(&q->lock);
	e->next = q->done;
	q->done = e;
	pthread_mutex_unlock(&q->lock);
	if (write(q->efd, &one, sizeof(one)) < 0)
		ovl_log(u->ofs->pub, OVLFS_LOG_WARNING,
			"io_uring queue %d: cannot wake its thread: %s",
			q->qid, strerror(errno));
}

/*
 * Served by the holder itself? The classic loop passes the turn before
 * anything but its quick requests (ovl_fuse_request_is_quick) so that
 * other callers' requests go on meanwhile. A ring only has the requests
 * of callers on its own CPU, which cannot run while the holder works on
 * that CPU anyway: handing a request to a worker only adds two wakeups on
 * the caller's path (worker, then the holder to commit), unless the
 * request waits for a disk, when the CPU could run other callers. So the
 * holder serves everything except what may copy data up or sync: opens
 * for writing and truncates of files not yet in the upper, fsync,
 * fallocate, copy_file_range, renames and links (which may copy up a
 * tree), big reads and writes. One that blocks all the same (a slow
 * lower) is what the monitor is for.
 */
static bool ring_quick(struct ovl_fs *ofs, const struct fuse_buf *b)
{
	const struct fuse_in_header *h = b->mem;
	const void *arg = h + 1;

	if (ovl_fuse_request_is_quick(ofs, b))
		return true;
	switch (h->opcode) {
	case FUSE_READDIR:
	case FUSE_READDIRPLUS:
	case FUSE_RMDIR:
	case FUSE_LSEEK:
	case FUSE_POLL:
		return true;
	case FUSE_WRITE:
		return b->size >= sizeof(*h) + sizeof(struct fuse_write_in) &&
		       ((const struct fuse_write_in *)arg)->size <=
			       OVL_URING_QUICK_IO;
	case FUSE_OPEN:		/* for writing: copies up unless upper */
	case FUSE_SETATTR:	/* truncate: the same */
		return ovl_node_has_upper(ovl_fuse_node(ofs, h->nodeid));
	default:
		return false;
	}
}

/* The turn holder's loop for queue Q, entered with turn generation GEN. */
static void hold(struct uq *q, uint64_t gen)
{
	struct ovl_uring *u = q->u;
	struct io_uring_cqe *cqe;
	struct ent *batch[OVL_URING_MAX_ENTS];
	int n, err;

	for (;;) {
		unsigned head, seen = 0;
		bool efd = false, stop;

		tsan_release(&u->kernel_order);
		err = io_uring_submit_and_wait(&q->ring, 1);
		tsan_acquire(&u->kernel_order);
		if (err < 0 && err != -EINTR && err != -EAGAIN &&
		    err != -EBUSY) {
			ovl_log(u->ofs->pub, OVLFS_LOG_WARNING,
				"io_uring queue %d: %s", q->qid, strerror(-err));
			break;
		}
		n = 0;
		io_uring_for_each_cqe(&q->ring, head, cqe) {
			seen++;
			if (cqe->user_data == OVL_URING_EFD_TAG) {
				efd = true;
				continue;
			}
			{
				struct ent *e = io_uring_cqe_get_data(cqe);

				if (cqe->res < 0) {
					/* ENOTCONN: the connection ended */
					e->dead = true;
					pthread_mutex_lock(&q->lock);
					q->live--;
					pthread_mutex_unlock(&q->lock);
					continue;
				}
				if (n < OVL_URING_MAX_ENTS)
					batch[n++] = e;
			}
		}
		io_uring_cq_advance(&q->ring, seen);
		if (efd) {
			struct ent *d;

			int k = 0;

			pthread_mutex_lock(&q->lock);
			d = q->done;
			q->done = NULL;
			for (struct ent *x = d; x; x = x->next)
				k++;
			q->away -= k;
			pthread_mutex_unlock(&q->lock);
			for (; d; d = d->next)
				prep_cmd(d, OVL_URING_CMD_COMMIT_AND_FETCH);
			arm_efd(q);
		}
		for (int i = 0; i < n; i++) {
			struct ent *e = batch[i];
			bool mine, quick;

			if (!rebuild(e)) {
				reply_err(e, -EIO);
				prep_cmd(e, OVL_URING_CMD_COMMIT_AND_FETCH);
				continue;
			}
			quick = ring_quick(u->ofs, &e->fbuf);
			if (!quick) {
				pthread_mutex_lock(&u->lock);
				push_job(u, e);
				pthread_mutex_unlock(&u->lock);
				continue;
			}
			pthread_mutex_lock(&q->lock);
			q->serving = true;
			q->served++;
			pthread_mutex_unlock(&q->lock);
			serve(u, e);
			pthread_mutex_lock(&q->lock);
			mine = q->turn_gen == gen;
			if (mine)
				q->serving = false;
			pthread_mutex_unlock(&q->lock);
			if (mine) {
				prep_cmd(e, OVL_URING_CMD_COMMIT_AND_FETCH);
				continue;
			}
			/*
			 * The monitor gave the turn to another thread while
			 * we served E: the ring is not ours to touch. E and
			 * the rest of the batch go back as workers' would.
			 */
			hand_back(u, e);
			pthread_mutex_lock(&u->lock);
			for (i++; i < n; i++)
				push_job(u, batch[i]);
			pthread_mutex_unlock(&u->lock);
			return;
		}
		if (atomic_load(&u->stop)) {
			pthread_mutex_lock(&q->lock);
			stop = q->away == 0;
			pthread_mutex_unlock(&q->lock);
			if (stop)
				break;
		}
	}
}

static void pin(struct ovl_uring *u, int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	if (cpu >= 0) {
		CPU_SET(cpu, &set);
	} else {
		set = u->cpus;		/* back to where the mount may run */
	}
	/* Best effort: an offline CPU or a cpuset without it says no. */
	(void)sched_setaffinity(0, sizeof(set), &set);
}

/* Make Q's ring and register its entries; 0 or -errno. */
static int queue_start(struct uq *q)
{
	struct io_uring_cqe *cqe;
	int err;

	err = queue_setup(q);
	if (!err) {
		arm_efd(q);
		for (int i = 0; i < OVL_URING_DEPTH && !err; i++)
			err = prep_cmd(&q->ents[i], OVL_URING_CMD_REGISTER);
	}
	if (!err) {
		err = io_uring_submit(&q->ring);
		err = err < 0 ? err : 0;
	}
	/*
	 * A REGISTER that fails completes at once, within the submit; one
	 * that works completes only with a request, which may already be
	 * here: look, but leave those to hold().
	 */
	if (!err) {
		unsigned head;

		io_uring_for_each_cqe(&q->ring, head, cqe) {
			if (cqe->user_data != OVL_URING_EFD_TAG &&
			    cqe->res < 0) {
				err = cqe->res;
				break;
			}
		}
	}
	return err;
}

/*
 * A new holder of Q (its old one is stuck) registers entries of its own.
 * The kernel copies a request into an entry in the context of the thread
 * that last submitted the entry's command, so the stuck thread's entries
 * are of no use until it comes back; the kernel hands out the entry
 * freed (or registered) last first, so these take the load meanwhile.
 */
static void grow(struct uq *q)
{
	int first = q->nents, n = add_ents(q, OVL_URING_DEPTH);

	for (int i = first; i < first + n; i++)
		if (prep_cmd(&q->ents[i], OVL_URING_CMD_REGISTER) < 0)
			break;
	pthread_mutex_lock(&q->lock);
	q->live += n;
	pthread_mutex_unlock(&q->lock);
}

/*
 * Every thread but the monitor: start queue Q (if not NULL) and hold its
 * turn; then serve jobs, and hold the turn of a queue whose holder the
 * monitor gave up on, until the transport stops.
 */
static void pool(struct ovl_uring *u, struct uq *q)
{
	uint64_t gen;
	int err;

	if (q) {
		pin(u, q->qid);
		err = queue_start(q);
		pthread_mutex_lock(&q->lock);
		q->live = err ? 0 : OVL_URING_DEPTH;
		gen = q->turn_gen;
		pthread_mutex_unlock(&q->lock);
		pthread_mutex_lock(&u->lock);
		q->reg = err ? err : 1;
		pthread_cond_broadcast(&u->cond);
		pthread_mutex_unlock(&u->lock);
		if (!err)
			hold(q, gen);
		pin(u, -1);
	}
	pthread_mutex_lock(&u->lock);
	for (;;) {
		struct uq *want = NULL;
		struct ent *e;

		for (int i = 0; i < u->nq && !want; i++)
			if (u->qs[i].need_holder)
				want = &u->qs[i];
		if (want) {
			want->need_holder = false;
			pthread_mutex_lock(&want->lock);
			gen = want->turn_gen;
			pthread_mutex_unlock(&want->lock);
			pthread_mutex_unlock(&u->lock);
			pin(u, want->qid);
			grow(want);
			hold(want, gen);
			pin(u, -1);
			pthread_mutex_lock(&u->lock);
			continue;
		}
		if (!u->jobs) {
			if (u->stop)
				break;
			u->idle++;
			pthread_cond_wait(&u->cond, &u->lock);
			u->idle--;
			continue;
		}
		e = u->jobs;
		u->jobs = e->next;
		if (!u->jobs)
			u->jobs_tail = NULL;
		pthread_mutex_unlock(&u->lock);
		serve(u, e);
		hand_back(u, e);
		pthread_mutex_lock(&u->lock);
	}
	pthread_mutex_unlock(&u->lock);
}

static void *pool_main(void *arg)
{
	pool(arg, NULL);
	return NULL;
}

static void *first_holder_main(void *arg)
{
	struct uq *q = arg;

	pool(q->u, q);
	return NULL;
}

static void *monitor_main(void *arg)
{
	struct ovl_uring *u = arg;
	uint64_t *seen = calloc(u->nq, sizeof(*seen)), stuck;

	if (!seen)
		return NULL;	/* no monitor: a stuck layer holds its queue */

	pthread_mutex_lock(&u->lock);
	while (!u->stop) {
		ovl_fuse_monitor_wait(&u->mon_cond, &u->lock);
		stuck = 0;
		for (int i = 0; i < u->nq && !u->stop; i++) {
			struct uq *q = &u->qs[i];
			bool took = false;

			pthread_mutex_lock(&q->lock);
			/* The same request in service since the last look. */
			if (q->serving && q->served == seen[i]) {
				q->turn_gen++;
				q->serving = false;
				q->away++;	/* the old holder hands it back */
				took = true;
			}
			seen[i] = q->served;
			pthread_mutex_unlock(&q->lock);
			if (took) {
				q->need_holder = true;
				start_worker(u);
				stuck = ++u->stuck;
			}
		}
		if (stuck) {
			pthread_mutex_unlock(&u->lock);
			ovl_fuse_log_stuck(u->ofs, stuck);
			pthread_mutex_lock(&u->lock);
		}
	}
	pthread_mutex_unlock(&u->lock);
	free(seen);
	return NULL;
}

bool ovl_uring_accept(struct ovl_fs *ofs)
{
	return ovl_uring_wanted(ofs) && ofs->fuse.uring_offered;
}

static void uring_free(struct ovl_uring *u)
{
	size_t len = OVL_URING_HEAD + u->payload;

	for (int i = 0; u->qs && i < u->nq; i++) {
		struct uq *q = &u->qs[i];

		if (q->ring_made)
			io_uring_queue_exit(&q->ring);
		if (q->efd >= 0)
			close(q->efd);
		if (q->u)
			pthread_mutex_destroy(&q->lock);
		for (int k = 0; k < q->nents; k++)
			if (q->ents[k].base)
				munmap(q->ents[k].base, len);
	}
	free(u->qs);
	free(u->threads);
	pthread_key_delete(u->cur_key);
	pthread_cond_destroy(&u->mon_cond);
	pthread_cond_destroy(&u->cond);
	pthread_mutex_destroy(&u->lock);
	free(u);
}

void ovl_uring_start(struct ovl_fs *ofs, bool accepted, uint32_t max_write,
		     uint32_t max_pages)
{
	struct ovl_uring *u = ofs->fuse.uring;
	size_t payload;
	int err = 0;

	if (!u)
		return;
	pthread_mutex_lock(&u->lock);
	if (u->state != U_PENDING) {
		pthread_mutex_unlock(&u->lock);
		return;
	}
	if (!accepted) {
		u->state = U_UNUSED;
		snprintf(u->why, sizeof(u->why), "%s",
			 ofs->fuse.uring_offered ?
			 "the INIT reply could not be patched" :
			 "the kernel did not offer it at INIT (enable_uring off?)");
		pthread_cond_broadcast(&u->cond);
		pthread_mutex_unlock(&u->lock);
		return;
	}
	u->se = ofs->fuse.se;
	u->dev_fd = ofs->fuse.dev_fd;
	/* The kernel's own rule: max(8 KiB, max_write, max_pages pages). */
	payload = max_write > 8192 ? max_write : 8192;
	if ((size_t)max_pages * 4096 > payload)
		payload = (size_t)max_pages * 4096;
	u->payload = payload;
	u->nq = possible_cpus();
	u->qs = calloc(u->nq, sizeof(*u->qs));
	u->threads = calloc(u->nq + OVL_URING_WORKERS + 1, sizeof(*u->threads));
	/* The process's, not this thread's: the /dev/fuse reader follows
	   its callers' CPUs (session.c) and may be pinned now. */
	sched_getaffinity(getpid(), sizeof(u->cpus), &u->cpus);
	if (!u->qs || !u->threads) {
		u->state = U_FAILED;
		snprintf(u->why, sizeof(u->why), "out of memory");
		pthread_cond_broadcast(&u->cond);
		pthread_mutex_unlock(&u->lock);
		return;
	}
	u->state = U_STARTING;
	for (int i = 0; i < u->nq; i++) {
		u->qs[i].u = u;
		u->qs[i].qid = i;
		u->qs[i].efd = -1;
		pthread_mutex_init(&u->qs[i].lock, NULL);
	}
	for (int i = 0; i < u->nq && !err; i++)
		err = spawn(u, first_holder_main, &u->qs[i]);
	if (!err)
		err = spawn(u, monitor_main, u);
	if (err) {
		u->state = U_FAILED;
		snprintf(u->why, sizeof(u->why), "cannot start its threads: %s",
			 strerror(-err));
		u->stop = true;
		pthread_cond_broadcast(&u->cond);
	}
	pthread_mutex_unlock(&u->lock);
}

int ovl_uring_wait(struct ovl_fs *ofs, const char *mp)
{
	struct ovl_uring *u = ofs->fuse.uring;
	enum ovlfs_io_uring mode = ofs->fuse.uring_mode;
	struct timespec t;
	char why[200];
	int done = 0;

	if (mode == OVLFS_IO_URING_OFF)
		return 0;
	if (!u) {
		snprintf(why, sizeof(why), "not set up");
		goto off;
	}
	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_sec += 10;
	pthread_mutex_lock(&u->lock);
	/* PENDING: the INIT reply is on its way (ovl_uring_start decides). */
	while (u->state == U_PENDING) {
		if (pthread_cond_timedwait(&u->cond, &u->lock, &t) == ETIMEDOUT &&
		    u->state == U_PENDING) {
			u->state = U_FAILED;
			snprintf(u->why, sizeof(u->why),
				 "the kernel's INIT was not answered within 10 s");
		}
	}
	while (u->state == U_STARTING) {
		done = 0;
		for (int i = 0; i < u->nq; i++) {
			struct uq *q = &u->qs[i];

			if (q->reg) {
				done++;
				if (q->reg < 0 && u->state == U_STARTING) {
					u->state = U_FAILED;
					snprintf(u->why, sizeof(u->why),
						 "registering queue %d: %s",
						 i, strerror(-q->reg));
				}
			}
		}
		if (u->state != U_STARTING)
			break;
		if (done == u->nq) {
			u->state = U_READY;
			break;
		}
		if (pthread_cond_timedwait(&u->cond, &u->lock, &t) == ETIMEDOUT) {
			u->state = U_FAILED;
			snprintf(u->why, sizeof(u->why),
				 "its queues did not register within 10 s");
		}
	}
	if (u->state == U_READY) {
		int nq = u->nq;
		size_t kib = u->payload / 1024;

		/* U is the loop's to free once unlocked (an unmount racing us). */
		pthread_mutex_unlock(&u->lock);
		ovl_log(ofs->pub, OVLFS_LOG_INFO,
			"transport: FUSE-over-io_uring (%d queues of %d entries, %zu KiB each)",
			nq, OVL_URING_DEPTH, kib);
		return 0;
	}
	snprintf(why, sizeof(why), "%s", u->why);
	pthread_mutex_unlock(&u->lock);
off:
	if (mode == OVLFS_IO_URING_ON)
		return ovl_set_error(ofs->pub, -EOPNOTSUPP,
				     "mount point %s: io_uring transport unavailable: %s",
				     mp, why);
	ovl_log(ofs->pub, OVLFS_LOG_INFO,
		"transport: /dev/fuse (FUSE-over-io_uring did not start: %s)",
		why);
	return 0;
}

ssize_t ovl_uring_reply(struct ovl_fs *ofs, const struct iovec *iov,
			int count)
{
	struct ovl_uring *u = ofs->fuse.uring;
	struct fuse_out_header oh;
	struct ent *e;
	size_t total = 0, len;

	/* Only ring threads have an entry: others read nothing more of U. */
	e = u ? pthread_getspecific(u->cur_key) : NULL;
	if (!e || count < 1 || iov[0].iov_len != sizeof(oh))
		return 0;
	memcpy(&oh, iov[0].iov_base, sizeof(oh));
	/* Notifications (unique 0) and the like still take /dev/fuse. */
	if (oh.unique != e->unique || e->replied)
		return 0;
	for (int i = 1; i < count; i++)
		total += iov[i].iov_len;
	if (total > u->payload) {
		errno = EINVAL;
		return -1;
	}
	len = 0;
	for (int i = 1; i < count; i++) {
		/* ovl_uring_reply_buf's data is in place already. */
		if (iov[i].iov_base != e->payload + len)
			memmove(e->payload + len, iov[i].iov_base,
				iov[i].iov_len);
		len += iov[i].iov_len;
	}
	memcpy(e->hdr->in_out, &oh, sizeof(oh));
	e->hdr->ent.payload_sz = (uint32_t)total;
	e->replied = true;
	return (ssize_t)(total + sizeof(oh));
}

void *ovl_uring_reply_buf(struct ovl_fs *ofs, size_t size)
{
	struct ovl_uring *u = ofs->fuse.uring;
	struct ent *e;

	e = u ? pthread_getspecific(u->cur_key) : NULL;
	return e && size <= u->payload ? e->payload : NULL;
}

void ovl_uring_kernel_order(struct ovl_fs *ofs)
{
	struct ovl_uring *u = ofs->fuse.uring;

	if (u)
		tsan_acquire(&u->kernel_order);
}

void ovl_uring_stop(struct ovl_fs *ofs)
{
	struct ovl_uring *u = ofs->fuse.uring;
	uint64_t one = 1;
	int n;

	if (!u)
		return;
	pthread_mutex_lock(&u->lock);
	u->stop = true;
	pthread_cond_broadcast(&u->cond);
	pthread_cond_broadcast(&u->mon_cond);
	pthread_mutex_unlock(&u->lock);
	for (int i = 0; u->qs && i < u->nq; i++)
		if (u->qs[i].efd >= 0 &&
		    write(u->qs[i].efd, &one, sizeof(one)) < 0)
			ovl_log(ofs->pub, OVLFS_LOG_WARNING,
				"io_uring queue %d: cannot wake its thread: %s",
				i, strerror(errno));
	/* A holder may still start a worker for a last job: recount. */
	for (int i = 0;; i++) {
		pthread_t t;

		pthread_mutex_lock(&u->lock);
		n = u->nthreads;
		if (i < n)
			t = u->threads[i];
		pthread_mutex_unlock(&u->lock);
		if (i >= n)
			break;
		pthread_join(t, NULL);
	}
	ofs->fuse.uring = NULL;
	uring_free(u);
}
