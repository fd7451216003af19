/*
 * passthrough.c: FUSE passthrough, the kernel doing read/write/mmap of an
 * open file straight on its upper object, with no request reaching us.
 *
 * The design and its reasons are in docs/passthrough.md. In short:
 *  - only files opened on their upper object get it (a writer copies up
 *    first, so every write open qualifies); lower-only readers stay on the
 *    daemon path, where handles follow a copy-up;
 *  - the kernel keeps one io mode per inode (= node): while any file of a
 *    node is open in passthrough, every open of it must be, with the same
 *    backing id; while any is open cached, none may be passthrough. The
 *    node counts both kinds (io_lock) and answers each open in the mode
 *    the kernel is in;
 *  - only with CAP_SYS_ADMIN (the kernel's rule); the first failure turns
 *    it off for the mount and everything goes the daemon path, as before.
 * session.c negotiates it at INIT and patches the open replies that ops.c
 * marks.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "fuse/fuse_side.h"

/* From the kernel's fuse.h (protocol 7.40); Debian's headers are older. */
struct ovl_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define OVL_DEV_IOC_BACKING_OPEN _IOW(229, 1, struct ovl_backing_map)
#define OVL_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

#define OVERLAYFS_MAGIC 0x794c7630
#define FUSE_MAGIC 0x65735546
#define ECRYPTFS_MAGIC 0xf15f

int ovl_pt_init(struct ovl_fs *ofs, bool enable)
{
	struct statfs sf;
	int err;

	ofs->fuse.dev_fd = -1;
	pthread_mutex_init(&ofs->fuse.io_lock, NULL);
	err = pthread_key_create(&ofs->fuse.pt_key, NULL);
	if (err)
		return -err;
	ofs->fuse.pt_key_made = true;
	ofs->fuse.pt_want = enable && ovl_global_sys_admin();
	if (enable && !ofs->fuse.pt_want)
		ovl_log(ofs->pub, OVLFS_LOG_INFO,
			"passthrough off: it needs CAP_SYS_ADMIN%s; files are served through ovlfs",
			ovl_init_userns() ? "" :
			" in the initial user namespace, and this is a user namespace");
	/*
	 * Depth 1 keeps the mount usable as a layer of a kernel overlay;
	 * an upper that is itself stacked needs 2 (and loses that).
	 */
	ofs->fuse.pt_depth = 1;
	if (fstatfs(ofs->upper.root_fd, &sf) == 0 &&
	    (sf.f_type == OVERLAYFS_MAGIC || sf.f_type == FUSE_MAGIC ||
	     sf.f_type == ECRYPTFS_MAGIC))
		ofs->fuse.pt_depth = 2;
	return 0;
}

void ovl_pt_destroy(struct ovl_fs *ofs)
{
	if (!ofs->fuse.pt_key_made)
		return;
	pthread_key_delete(ofs->fuse.pt_key);
	pthread_mutex_destroy(&ofs->fuse.io_lock);
	ofs->fuse.pt_key_made = false;
}

/* Register FD as a backing file: its id, or -errno. io_lock held. */
static int backing_open(struct ovl_fs *ofs, int fd)
{
	struct ovl_backing_map map = { .fd = fd };
	int id = -ENOTCONN;

	pthread_rwlock_rdlock(&ofs->fuse.notify_lock);
	if (!ofs->fuse.notify_off && ofs->fuse.dev_fd >= 0) {
		id = ioctl(ofs->fuse.dev_fd, OVL_DEV_IOC_BACKING_OPEN, &map);
		if (id < 0)
			id = -errno;
		else if (id == 0)
			id = -EPROTO;
	}
	pthread_rwlock_unlock(&ofs->fuse.notify_lock);
	return id;
}

static void backing_close(struct ovl_fs *ofs, int id)
{
	uint32_t bid = (uint32_t)id;

	/* After unmount the fd number may be another file's: leave it. */
	pthread_rwlock_rdlock(&ofs->fuse.notify_lock);
	if (!ofs->fuse.notify_off && ofs->fuse.dev_fd >= 0)
		ioctl(ofs->fuse.dev_fd, OVL_DEV_IOC_BACKING_CLOSE, &bid);
	pthread_rwlock_unlock(&ofs->fuse.notify_lock);
}

int ovl_pt_open(struct ovl_fs *ofs, struct ovl_file *f)
{
	struct ovl_node *n = f->node;
	int id = 0;

	pthread_mutex_lock(&ofs->fuse.io_lock);
	if (n->n_pt > 0) {
		/* The kernel's inode is in passthrough: so is this open. */
		id = n->backing_id;
	} else if (n->n_cached == 0 && !f->on_lower && n->type == S_IFREG &&
		   !f->sync_io && atomic_load(&ofs->fuse.pt_on)) {
		id = backing_open(ofs, atomic_load(&f->fd));
		if (id > 0) {
			n->backing_id = id;
		} else {
			ovl_log(ofs->pub, OVLFS_LOG_WARNING,
				"passthrough off: cannot register a backing file: %s; files are served through ovlfs",
				strerror(-id));
			atomic_store(&ofs->fuse.pt_on, false);
			id = 0;
		}
	}
	if (id > 0)
		n->n_pt++;
	else
		n->n_cached++;
	f->pt_id = id;
	f->io_counted = true;
	pthread_mutex_unlock(&ofs->fuse.io_lock);
	return id;
}

void ovl_pt_release(struct ovl_fs *ofs, struct ovl_file *f)
{
	struct ovl_node *n = f->node;

	if (!ofs->fuse.pt_key_made)
		return;
	pthread_mutex_lock(&ofs->fuse.io_lock);
	if (f->io_counted && f->pt_id > 0) {
		if (--n->n_pt == 0) {
			backing_close(ofs, n->backing_id);
			n->backing_id = 0;
		}
	} else if (f->io_counted) {
		n->n_cached--;
	}
	f->io_counted = false;
	pthread_mutex_unlock(&ofs->fuse.io_lock);
}
