/*
 * fs/fs.h: the live filesystem, above format/.
 *
 * Owns the merged view while mounted: the node table and inode numbers
 * (inode.c), lookup across layers (lookup.c), copy-up (copyup.c) and of
 * hard-linked lower files (hardlink.c), namespace changes (dir.c),
 * attributes and open files (file.c), merged listings (readdir.c) and
 * xattrs through the mount (xattr.c). It knows nothing of FUSE: what it
 * must tell the kernel goes through struct ovl_fs_hooks, which the side
 * serving it (fuse/) fills in.
 *
 * Lock order (take left before right, never the reverse). Each lock is
 * named here once, with the folder that owns it; that folder's header
 * says what it guards:
 *
 *	[fs/]    file copyup_lock  >  hardlink_lock  >  dir copyup_lock
 *	           >  handle locks  >  ns_lock  >  table_lock, slots_lock
 *	[fuse/]  io_lock  >  notify_lock;  the request loop's lock
 *
 * The two rows meet in one place only: notify_lock, a leaf, is taken with
 * a copy-up's copyup_lock (and hardlink_lock) held, by the attr_changed
 * hook. io_lock is taken with no fs/ lock held, the loop's lock with no
 * other lock at all (fuse/fuse_side.h).
 *
 * fs/'s locks:
 *  - copyup_lock (per node, mutex): serialises copy-up of one object, held
 *    across the data copy, which runs outside ns_lock so a slow copy-up
 *    blocks nothing but other writers of the same file. A copy-up takes
 *    the copyup_lock of the node first and then, for its parent chain, the
 *    ancestors' in child-to-root order; nobody takes a descendant's
 *    copyup_lock while holding an ancestor's.
 *  - hardlink_lock (mutex): one copy-up of a multiply-linked lower file at
 *    a time (hardlink.c); taken with the file's copyup_lock held, after
 *    its parents are copied up, and held while the file's other names get
 *    their parents copied up (directories: they never take it).
 *  - handle locks (mutexes): struct ovl_file's lock (the move of an open
 *    file to the upper copy, file.c) and struct ovl_dirhandle's (its
 *    listing; fuse/ops.c holds it while reading one out); taken with no
 *    other lock held, never with a copy-up's.
 *  - ns_lock (rwlock): the namespace. Written by every operation that
 *    changes names in a layer (create, mkdir, mknod, symlink, link, unlink,
 *    rmdir, rename, the link-into-place step of copy-up, opaque marking);
 *    read by lookup and readdir, which must not see half a change.
 *  - table_lock (mutex): the node hash table and reference counts; a leaf.
 *  - slots_lock (mutex): the directories' readdir offsets (node->slots,
 *    readdir.c); a leaf, taken with ns_lock read held.
 * No lock is held across a FUSE reply (fuse/ops.c replies after the fs/
 * call returned and dropped its locks). read/write/fsync use the backing fd
 * of the file handle and take no lock at all.
 */
#ifndef OVL_FS_H
#define OVL_FS_H

#include "format/format.h"

/*
 * Open file and directory handles, listed so that teardown can free what
 * the kernel never released (it need not, once the mount is gone).
 */
struct ovl_hlink {
	struct ovl_hlink *prev, *next;
	bool is_dir;
};

/*
 * What the live filesystem tells the side that serves it. The FUSE side
 * (fuse/) fills the table in before the first request; a NULL table or
 * member does nothing (the unit tests run without one).
 */
struct ovl_fs_hooks {
	/*
	 * NODE's attributes changed behind the kernel's cache (copy-up
	 * touches the parent directory). Called with no ns_lock or
	 * table_lock held, but maybe a copy-up's copyup_lock and
	 * hardlink_lock: it may take only leaf locks.
	 */
	void (*attr_changed)(struct ovl_fs *ofs, struct ovl_node *node);
	/* Open file F goes away (ovl_release): undo what its open set up. */
	void (*file_released)(struct ovl_fs *ofs, struct ovl_file *f);
};

/* ===== inode.c: the node table and inode numbers ===== */

/*
 * A node is one object of the merged view (like a dentry+inode of the
 * kernel's overlayfs). Its FUSE nodeid is its address (1 for the root).
 * A node is found in the table by (parent, name) while it is linked; an
 * unlinked node (deleted or replaced) stays alive while the kernel or an
 * open file refers to it.
 *
 * How a node reaches its layer objects. A directory holds O_PATH fds of
 * them (children are looked up relative to those). Any other object is
 * reached by its name in its parent's fd, under ns_lock (which keeps the
 * name and the layer in step), so a tree of any size costs no fds per
 * file: the kernel may cache millions of inodes. A non-directory holds an
 * fd only where its name cannot lead to it: deleted while open, or a fifo,
 * socket or device (whose opens we never see) that is deleted (pinned by
 * the unlink or rename that removes the name, see ovl_node_pin) or one of
 * several upper links (indexed, see inext).
 */
struct ovl_node {
	/* table_lock */
	struct ovl_node *hnext;		/* hash chain */
	uint64_t nlookup;		/* kernel's lookup count */
	uint64_t refs;			/* children, handles, temporary refs */
	bool hashed;

	/* ns_lock (write to change, read to use) */
	struct ovl_node *parent;	/* holds a ref; NULL for root */
	char *name;
	bool deleted;			/* no longer has a name */
	bool opaque;			/* dir: lower is hidden */

	/*
	 * Which layers hold the object: has_upper goes from false to true
	 * once (copy-up), under ns_lock write; has_lower is immutable. The
	 * fds are -1 unless pinned (see above); each is set at most once
	 * (from -1) under ns_lock write and then kept until the node is
	 * freed, so readers may load them without a lock.
	 */
	_Atomic bool has_upper;
	bool has_lower;
	/*
	 * Metacopy (copyup.c): the upper object holds the metadata only and
	 * the data is still the lower's, which such a node keeps reaching
	 * (by name, as before copy-up, or pinned once a rename moved it away
	 * from that name: dir.c set_file_redirect; a link copies the data up
	 * first). Set with has_upper, under ns_lock write; cleared,
	 * once the data is in, under copyup_lock and ns_lock write; never set
	 * again. Readers load it without a lock.
	 */
	_Atomic bool metacopy;
	/* immutable: lower layer (0 = topmost) of the lower object */
	uint16_t lidx;
	/*
	 * immutable, directories of a mount with several lowers: the O_PATH
	 * fds of this directory in the lower layers beneath lidx that merge
	 * into it (lstack[k] for layer k > lidx, -1 where it is absent or
	 * hidden), or NULL. lower_fd is the one in layer lidx.
	 */
	int *lstack;
	_Atomic int upper_fd;		/* O_PATH, or -1 */
	_Atomic int lower_fd;		/* O_PATH, or -1 */
	/*
	 * immutable (set before the node is inserted, closed when it is
	 * freed): when the lower object in layer lidx is itself a metacopy
	 * file (an upper of an earlier mount, stacked as a lower), an O_PATH
	 * fd of its data, found in the layers beneath (lookup.c
	 * lower_data_in); else -1. The lower object keeps the metadata (and
	 * keys the inode number); reads and copy-ups take the data from here
	 * (OVL_DATA).
	 */
	int data_fd;
	/* open files of the node: changed under ns_lock read, read under
	   ns_lock write (an unlink pins the node if any is open) */
	_Atomic int nopen;
	/*
	 * Remembered "no such xattr" answers: the kernel asks for
	 * security.capability before every write (file_remove_privs), and a
	 * create asks for the parent's default ACL. Only ovlfs changes a
	 * layer object's xattrs, and every change bumps xgen; a remembered
	 * answer holds while it equals xgen + 1 (see ovl_xattr_none).
	 */
	_Atomic unsigned int xgen, caps_none, dacl_none;

	/*
	 * fuse/'s (passthrough.c), under ofs->fuse.io_lock; fs/ never reads
	 * them: how the kernel sees the node's open files.
	 */
	uint32_t n_cached;		/* handles answered without passthrough */
	uint32_t n_pt;			/* handles answered with passthrough */
	int backing_id;			/* registered while n_pt > 0 */

	/*
	 * Another node may stand for the same file (lower hard links, or
	 * names linked at copy-up): the kernel must not cache its attributes
	 * or pages for long. Set once, never cleared.
	 */
	_Atomic bool aliased;

	/* immutable after creation */
	mode_t type;			/* S_IFMT bits */
	uint64_t ino;			/* number shown to users */
	uint64_t generation;

	pthread_mutex_t copyup_lock;

	/* table_lock: every live node, for teardown */
	struct ovl_node *all_prev, *all_next;

	/*
	 * table_lock: in ofs->inodes when this is a non-directory whose
	 * upper object has several links: every name of it found by lookup
	 * then gets this node, so the kernel sees one inode (one pipe for a
	 * fifo, one set of locks), as on a local filesystem.
	 */
	struct ovl_node *inext;
	dev_t idev;
	ino_t iino;
	bool indexed;

	/* slots_lock: a directory's readdir offsets, or NULL (readdir.c) */
	struct ovl_dirslots *slots;
};

/*
 * The FUSE side's state of a mount: owned by fuse/ (the session, the loop,
 * passthrough), which reads and changes it, and by api/mount.c, which
 * starts and stops the session. Defined here only so that struct ovl_fs
 * can hold it: fs/ never reads it, and tells fuse/ things through
 * struct ovl_fs_hooks instead. The locks are described in fuse/fuse_side.h.
 */
struct ovl_fuse_state {
	void *se;			/* the session (struct fuse_session) */
	pthread_rwlock_t notify_lock;	/* see fuse/fuse_side.h */
	pthread_t loop_thread;
	dev_t conn_dev;			/* st_dev of the mount */
	pthread_key_t pipe_key;		/* each thread's read pipe */
	int loop_result;
	bool notify_off;		/* notify_lock */
	bool pipe_key_made;

	/* passthrough.c */
	_Atomic uint64_t init_unique;	/* of the INIT request, once seen */
	pthread_mutex_t io_lock;	/* see fuse/fuse_side.h */
	pthread_key_t pt_key;		/* backing id of the reply this
					   thread is sending, or 0 */
	int pt_depth;			/* max_stack_depth asked at INIT */
	int dev_fd;			/* the session fd (notify_lock) */
	bool pt_want;			/* allowed: option, CAP_SYS_ADMIN */
	_Atomic bool pt_offered;	/* the kernel's INIT offered it */
	_Atomic bool pt_on;		/* negotiated, no failure since */
	bool pt_key_made;

	/* uring.c */
	enum ovlfs_io_uring uring_mode;	/* as asked; OFF if unavailable */
	_Atomic bool uring_offered;	/* the kernel's INIT offered it */
	struct ovl_uring *uring;	/* the transport, once INIT accepted */
};

struct ovl_fs {
	struct ovlfs *pub;
	const struct ovl_fs_hooks *hooks;	/* set by fuse/ before serving */
	struct ovl_layer upper;		/* root_fd -1 when read-only */
	struct ovl_layer *lowers;	/* nlower of them, topmost first */
	int nlower;
	bool read_only;			/* no upper: every change is EROFS */
	bool no_sync;			/* volatile: no fsync reaches a layer */
	bool no_redirect;		/* directory renames copy the tree */
	bool metacopy;			/* metadata-only copy-up (copyup.c) */
	bool volatile_marked;		/* we set OVL_XATTR_VOLATILE: a clean
					   end removes it */
	int upper_lock_fd;		/* LOCK_EX for the mount's lifetime */
	/*
	 * The mount point's own directory (under the mount), LOCK_SH until
	 * every other lock is let go: ovlfs_unmount_path waits on it.
	 */
	int mp_lock_fd;
	struct ovl_fmt fmt;		/* markers of every layer */
	enum ovlfs_inode_mode inode_mode;
	bool is_root;			/* may chown */
	bool trusted;			/* may use trusted.* (ovl_global_sys_admin) */
	mode_t umask;			/* process umask at mount time */
	bool no_tmpfile;		/* upper lacks O_TMPFILE */

	pthread_rwlock_t ns_lock;
	pthread_mutex_t hardlink_lock;

	pthread_mutex_t table_lock;
	pthread_mutex_t slots_lock;
	struct ovl_node **table;	/* table_lock */
	size_t table_size, table_count;	/* table_lock */
	struct ovl_node *root;

	/* virtual inode numbers: key -> number, under table_lock */
	struct ovl_inomap *inomap;
	uint64_t next_ino;		/* table_lock */
	uint64_t next_overflow;		/* table_lock */
	struct ovl_node *all_nodes;	/* table_lock */
	size_t n_nodes;			/* table_lock: live nodes */
	size_t trim_peak;		/* table_lock: n_nodes high-water mark
					   since memory was last given back */
	struct ovl_hlink handles;	/* table_lock: list head */
	struct ovl_node *inodes[1024];	/* table_lock: see ovl_node.inext */
	_Atomic uint64_t next_gen;
	_Atomic uint64_t tmp_counter;
	/* nested-mount devices seen in a layer, for persistent numbers */
	dev_t extra_devs[2][126];	/* table_lock */
	int n_extra_devs[2];		/* table_lock */

	/* fuse/'s: fs/ never reads it (see struct ovl_fuse_state) */
	struct ovl_fuse_state fuse;
};

/* Bits of LAYERS for ovl_node_new: which layers hold the object. */
#define OVL_IN_UPPER 1U
#define OVL_IN_LOWER 2U
/*
 * A new node (one ref) for NAME in PARENT. UPPER_FD and LOWER_FD are fds
 * to pin (the node owns them from now on), or -1.
 */
struct ovl_node *ovl_node_new(struct ovl_fs *ofs, struct ovl_node *parent,
			      const char *name, unsigned int layers,
			      int upper_fd, int lower_fd, mode_t type,
			      uint64_t ino);
/* Find a linked node by (parent, name) and take a ref; NULL if absent. */
struct ovl_node *ovl_node_find(struct ovl_fs *ofs, struct ovl_node *parent,
			       const char *name);
/*
 * Does the kernel hold a lookup of the node at (PARENT, NAME), with
 * attributes that cannot have changed behind it (not aliased)?
 */
bool ovl_node_known(struct ovl_fs *ofs, struct ovl_node *parent,
		    const char *name);
/* Insert NODE, or return the node already there (ref taken, NODE freed). */
struct ovl_node *ovl_node_insert(struct ovl_fs *ofs, struct ovl_node *node);
void ovl_node_get(struct ovl_fs *ofs, struct ovl_node *node);
void ovl_node_put(struct ovl_fs *ofs, struct ovl_node *node);
/* The kernel learned of NODE (lookup/create reply): nlookup++. */
void ovl_node_lookup_ref(struct ovl_fs *ofs, struct ovl_node *node);
void ovl_node_forget(struct ovl_fs *ofs, struct ovl_node *node, uint64_t n);
/*
 * After a batch of forgets: once the nodes have shrunk to under half their
 * peak, hand the freed memory back to the system (malloc keeps it).
 */
void ovl_nodes_trim(struct ovl_fs *ofs);
/* Move NODE to (NEWPARENT, NEWNAME); caller holds ns_lock for write. */
int ovl_node_move(struct ovl_fs *ofs, struct ovl_node *node,
		  struct ovl_node *newparent, const char *newname);
/*
 * NAME in PARENT went away: if that is NODE's own name, unhash NODE and
 * mark it deleted (an indexed node reached through another of its names
 * keeps its own). Caller holds ns_lock for write.
 */
void ovl_node_unlink(struct ovl_fs *ofs, struct ovl_node *node,
		     struct ovl_node *parent, const char *name);
/*
 * The node standing for upper inode (DEV, INO), with a ref, or NULL; and
 * adding NODE, whose upper fd is pinned, to that index.
 */
struct ovl_node *ovl_node_by_inode(struct ovl_fs *ofs, dev_t dev, ino_t ino);
void ovl_node_index(struct ovl_fs *ofs, struct ovl_node *node, dev_t dev,
		    ino_t ino);
void ovl_handle_add(struct ovl_fs *ofs, struct ovl_hlink *h, bool is_dir);
void ovl_handle_del(struct ovl_fs *ofs, struct ovl_hlink *h);
/* Close the fds of an lstack and free it (NULL is fine). */
void ovl_lstack_free(struct ovl_fs *ofs, int *lstack);
int ovl_inode_table_init(struct ovl_fs *ofs);
void ovl_inode_table_destroy(struct ovl_fs *ofs);
/*
 * The key (see inode.c) of an object that originated in layer LAYER_IDX as
 * (DEV, INO), and the number shown for a key in the mount's inode mode.
 */
uint64_t ovl_key_for(struct ovl_fs *ofs, int layer_idx, dev_t dev, ino_t ino);
uint64_t ovl_number_for_key(struct ovl_fs *ofs, uint64_t key);
/* Both in one: the number shown for (LAYER_IDX, DEV, INO). */
uint64_t ovl_ino_for(struct ovl_fs *ofs, int layer_idx, dev_t dev, ino_t ino);
/* Origin key recorded on an upper object at copy-up: 0 or -errno. */
int ovl_origin_get(struct ovl_fs *ofs, int fd, uint64_t *key);
int ovl_origin_get_at(struct ovl_fs *ofs, int dirfd, const char *name,
		      uint64_t *key);
int ovl_origin_set(struct ovl_fs *ofs, int fd, uint64_t key);
/* Inode number for an upper object reached by O_PATH fd FD with stat ST. */
uint64_t ovl_ino_upper(struct ovl_fs *ofs, int fd, const struct stat *st);
/* The same for the object NAME in directory fd DIRFD. */
uint64_t ovl_ino_upper_at(struct ovl_fs *ofs, int dirfd, const char *name,
			  const struct stat *st);
/*
 * NODE's path in the merged view ("/etc/passwd") into BUF (LEN bytes, at
 * least 16), for messages only: "..." stands for what did not fit, and a
 * deleted node's last name gets " (deleted)". Takes ns_lock for reading.
 */
void ovl_node_path(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
		   size_t len);

/* ===== lookup.c: lookup across layers ===== */

/* Caller identity of a request. */
struct ovl_ctx {
	uid_t uid;
	gid_t gid;
	pid_t pid;
	mode_t umask;
	int ngroups;
	gid_t groups[64];
};

/* What a lookup/create replies with. */
struct ovl_entry {
	struct ovl_node *node;		/* lookup ref taken */
	struct stat st;
};

/* Valid user-visible name? -EINVAL for ".wh.*", -ENAMETOOLONG. */
int ovl_check_name(const char *name);
/*
 * Look NAME up in directory PARENT and fill E (taking a kernel lookup ref
 * on success). -ENOENT if absent, whited out, or a marker.
 */
int ovl_lookup(struct ovl_fs *ofs, struct ovl_node *parent, const char *name,
	       struct ovl_entry *e);
/*
 * Like ovl_lookup but takes a plain ref instead of a lookup ref and expects
 * ns_lock to be held (read or write) by the caller.
 */
int ovl_lookup_locked(struct ovl_fs *ofs, struct ovl_node *parent,
		      const char *name, struct ovl_node **out);
/*
 * Like ovl_lookup_locked, filling ST (if not NULL) with the stat shown, as
 * ovl_node_stat_locked would, at no extra cost for a new node.
 */
int ovl_lookup_stat_locked(struct ovl_fs *ofs, struct ovl_node *parent,
			   const char *name, struct ovl_node **out,
			   struct stat *st);

/*
 * Reaching a node's layer objects (see struct ovl_node). WHICH is a layer,
 * or OVL_TOP: the upper object if there is one, else the lower.
 */
enum ovl_which { OVL_LOWER = 0, OVL_UPPER = 1, OVL_TOP = 2, OVL_DATA = 3 };
/*
 * OVL_DATA is where a regular file's data is: the upper object once it has
 * its data, else the lower's data (data_fd, or the lower object itself).
 * OVL_LOWER is the lower object, which holds its metadata.
 */
/*
 * Where NODE's object in WHICH is, for *at() calls: in *DIRFD under *NAME,
 * or, with *NAME "", the pinned fd *DIRFD itself (use AT_EMPTY_PATH).
 * ns_lock held, and the answer is good only while it stays held. -ENOENT if
 * there is no such object or it lost its name.
 */
int ovl_node_at(struct ovl_node *node, enum ovl_which which, int *dirfd,
		const char **name);
/*
 * An O_PATH fd of NODE's object in WHICH (or -errno): its pinned fd, or one
 * opened for the caller. Either way, hand it back with ovl_node_fd_put.
 * The _locked form is for callers holding ns_lock.
 */
int ovl_node_fd_get(struct ovl_fs *ofs, struct ovl_node *node,
		    enum ovl_which which);
int ovl_node_fd_get_locked(struct ovl_node *node, enum ovl_which which);
void ovl_node_fd_put(struct ovl_node *node, int fd);
/* A new fd of NODE's object in WHICH opened with FLAGS; ns_lock held. */
int ovl_node_open_locked(struct ovl_node *node, enum ovl_which which,
			 int flags);
/*
 * NODE's name is about to go (unlink, or replaced by a rename): if files
 * are open on it, pin its object so they keep working. ns_lock held for
 * writing, the name still in place.
 */
int ovl_node_pin(struct ovl_node *node);
/* Pin NODE's upper object (it is about to be indexed); ns_lock held. */
int ovl_node_pin_upper(struct ovl_node *node);
/* Pin metacopy NODE's lower object (it is about to move); ns_lock held. */
int ovl_node_pin_lower(struct ovl_node *node);
/* stat of NODE as shown through the mount (ino replaced). */
int ovl_node_stat(struct ovl_fs *ofs, struct ovl_node *node, struct stat *st);
int ovl_node_stat_locked(struct ovl_fs *ofs, struct ovl_node *node,
			 struct stat *st);
/* stat of NODE's own object in layer WHICH (ino not replaced). */
int ovl_node_layer_stat(struct ovl_fs *ofs, struct ovl_node *node,
			enum ovl_which which, struct stat *st);
static inline bool ovl_node_has_upper(struct ovl_node *node)
{
	return atomic_load(&node->has_upper);
}
/*
 * Would a change of NODE's metadata copy no file data: NODE is in the
 * upper already, or is not a regular file (a directory's copy-up is its
 * metadata), or is a lone regular file that becomes a metacopy file
 * (aliased is set at lookup for a lower file with several links)? A hint
 * read without a lock, for the FUSE side to serve such a request on the
 * thread that read it.
 */
static inline bool ovl_node_meta_change_is_cheap(const struct ovl_fs *ofs,
						 struct ovl_node *node)
{
	return ovl_node_has_upper(node) || node->type != S_IFREG ||
	       (ofs->metacopy && !atomic_load(&node->aliased));
}
/* Does directory NODE have a visible lower part (lower dir, not opaque)? */
bool ovl_node_lower_visible(struct ovl_node *node);
/* Does the visible lower of PARENT have NAME? 1 (ST filled if given), 0. */
int ovl_lower_has(struct ovl_fs *ofs, struct ovl_node *parent,
		  const char *name, struct stat *st);
/*
 * Where the lower part of directory NODE stands in the lower, as "/a/b"
 * from its root (its ancestors' redirects followed), into BUF (SIZE
 * bytes): the kernel's absolute redirect. ns_lock held. -ENAMETOOLONG if
 * it does not fit.
 */
int ovl_node_lower_path(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
			size_t size);
/* The root's lstack (NULL with one lower), or -errno. */
int ovl_lower_root_stack(struct ovl_fs *ofs, int **out);
/*
 * The fd of directory DIR in lower layer K, or -1 if the layer has no part
 * of it (or it is hidden). Lock-free: the fds of a directory are fixed.
 */
static inline int ovl_dir_lfd(const struct ovl_node *dir, int k)
{
	if (!dir->has_lower || k < dir->lidx)
		return -1;
	if (k == dir->lidx)
		return atomic_load(&dir->lower_fd);
	return dir->lstack ? dir->lstack[k] : -1;
}

/* ===== copyup.c ===== */

/*
 * Make NODE exist in the upper (parents first), with its data: a metacopy
 * upper gets its data now. Idempotent.
 */
int ovl_copy_up(struct ovl_fs *ofs, struct ovl_node *node);
/* The same without the file data (the caller truncates it to 0 anyway). */
int ovl_copy_up_nodata(struct ovl_fs *ofs, struct ovl_node *node);
/*
 * For a change of metadata only (chmod, chown, utimes): a lower regular
 * file with one link becomes a metacopy upper where the mount allows it
 * (ofs->metacopy), anything else is copied up in full.
 */
int ovl_copy_up_meta(struct ovl_fs *ofs, struct ovl_node *node);
/*
 * For a SETATTR (RESIZE: to SIZE): metadata only as ovl_copy_up_meta, no
 * data for a truncation to 0, else all of it. The caller replies with
 * NODE's new attributes, so the kernel is not told they changed.
 */
int ovl_copy_up_setattr(struct ovl_fs *ofs, struct ovl_node *node,
			bool resize, off_t size);
/* An xattr change (xattr.c): set NAME to VALUE with FLAGS, or remove it. */
struct ovl_xchange {
	const char *name;
	const void *value;
	size_t size;
	int flags;
	bool remove;
	bool tried;	/* out: made on a copy-up's copy (its result returned) */
};
/*
 * Copy NODE up (metadata only where it may, as ovl_copy_up_meta) with
 * change XC made to the copy before it is put in place:
 * a change the upper refuses leaves no copy behind. XC->tried false: NODE
 * was in the upper already (or its copy-up failed before the change).
 */
int ovl_copy_up_xattr(struct ovl_fs *ofs, struct ovl_node *node,
		      struct ovl_xchange *xc);
/* Copy up a directory and everything under it; mark it opaque. */
int ovl_copy_up_tree(struct ovl_fs *ofs, struct ovl_node *node);

/* ===== hardlink.c ===== */

/*
 * NODE, a regular file whose lower (stat LST) has several links, was just
 * copied up as COPY: link COPY at its other lower names that are visible.
 * Caller holds hardlink_lock and no other lock.
 */
int ovl_link_lower_aliases(struct ovl_fs *ofs, struct ovl_node *node,
			   const struct stat *lst, int copy);
/*
 * Does the lower file of NODE (stat LST) show in the merged view under a
 * name other than NODE's? 1, 0 or -errno. No lock held.
 */
int ovl_lower_alias_visible(struct ovl_fs *ofs, struct ovl_node *node,
			    const struct stat *lst);

/* ===== dir.c: namespace operations ===== */

int ovl_mknod(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
	      struct ovl_node *parent, const char *name, mode_t mode,
	      dev_t rdev, const char *link_target, struct ovl_entry *e);
int ovl_link(struct ovl_fs *ofs, struct ovl_node *node,
	     struct ovl_node *newparent, const char *newname,
	     struct ovl_entry *e);
int ovl_unlink(struct ovl_fs *ofs, struct ovl_node *parent, const char *name);
int ovl_rmdir(struct ovl_fs *ofs, struct ovl_node *parent, const char *name);
int ovl_rename(struct ovl_fs *ofs, struct ovl_node *parent, const char *name,
	       struct ovl_node *newparent, const char *newname,
	       unsigned int flags);
/* create+open: the fd is returned in *FD (O_RDWR as asked by FLAGS). */
int ovl_create(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
	       struct ovl_node *parent, const char *name, mode_t mode,
	       int flags, struct ovl_entry *e, struct ovl_file **out);

/* ===== file.c: attributes and open files ===== */

/* Attribute changes, as the FUSE_SET_ATTR_* bits say (mapped in fuse/ops.c). */
enum {
	OVL_SET_MODE = 1 << 0,
	OVL_SET_UID = 1 << 1,
	OVL_SET_GID = 1 << 2,
	OVL_SET_SIZE = 1 << 3,
	OVL_SET_ATIME = 1 << 4,
	OVL_SET_MTIME = 1 << 5,
	OVL_SET_ATIME_NOW = 1 << 6,
	OVL_SET_MTIME_NOW = 1 << 7,
	OVL_SET_CTIME = 1 << 8,
};
int ovl_setattr(struct ovl_fs *ofs, struct ovl_node *node,
		const struct stat *attr, int valid, int fh, struct stat *out);
/*
 * An open file. Opened on the lower, it moves to the upper copy at its next
 * use once the file has been copied up, so it sees what was written through
 * other descriptors, as with a private copy.
 */
struct ovl_file {
	struct ovl_hlink link;		/* first: see ovl_handles_free */
	struct ovl_node *node;		/* ref held */
	_Atomic int fd;			/* current backing fd */
	int old_fd;			/* the lower fd after a move, or -1:
					   kept open until release, as other
					   threads may still be using it */
	int flags;			/* open flags, for the move */
	bool on_lower;			/* opened on the lower object */
	/* fuse/'s (passthrough.c), under ofs->fuse.io_lock */
	int pt_id;			/* backing id if passthrough */
	bool io_counted;		/* counted in the node */
	bool sync_io;			/* opened O_SYNC/O_DSYNC on a volatile
					   mount: kept off passthrough, whose
					   writes would sync the layer */
	pthread_mutex_t lock;		/* serialises the move; taken
					   before ns_lock */
};
int ovl_open(struct ovl_fs *ofs, struct ovl_node *node, int flags,
	     struct ovl_file **out);
/*
 * Wrap FD, open on NODE's lower object (ON_LOWER) or upper; the caller has
 * counted it in NODE->nopen, under ns_lock, and ovl_release uncounts it.
 */
int ovl_file_new(struct ovl_fs *ofs, struct ovl_node *node, int fd, int flags,
		 bool on_lower, struct ovl_file **out);
/* The fd to use now (follows a copy-up that happened since open). */
int ovl_file_fd(struct ovl_fs *ofs, struct ovl_file *f);
void ovl_release(struct ovl_fs *ofs, struct ovl_file *f);
/* Teardown (file.c): free every handle still open (before the node table goes). */
void ovl_handles_free(struct ovl_fs *ofs);
int ovl_readlink(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
		 size_t size);
int ovl_access(struct ovl_fs *ofs, const struct ovl_ctx *ctx,
	       struct ovl_node *node, int mask);
int ovl_statfs(struct ovl_fs *ofs, struct statvfs *st);

/* ===== readdir.c: merged directory listings ===== */

struct ovl_dirhandle {
	struct ovl_hlink link;		/* first: see ovl_handles_free */
	struct ovl_node *node;		/* ref held */
	pthread_mutex_t lock;		/* protects the fields below */
	struct ovl_rdent {
		char *name;
		uint64_t ino;
		mode_t type;
		uint64_t off;		/* its readdir offset (readdir.c) */
	} *ents;			/* in order of off */
	size_t n;
	bool valid;
};
int ovl_opendir(struct ovl_fs *ofs, struct ovl_node *node,
		struct ovl_dirhandle **out);
/* (Re)build the merged listing of DH->node (offset 0 rebuilds). */
int ovl_readdir_fill(struct ovl_fs *ofs, struct ovl_dirhandle *dh);
/* The index in DH->ents of the first entry after readdir offset OFF. */
size_t ovl_readdir_seek(const struct ovl_dirhandle *dh, uint64_t off);
void ovl_dirslots_free(struct ovl_dirslots *s);
void ovl_releasedir(struct ovl_fs *ofs, struct ovl_dirhandle *dh);
/*
 * The merged listing of directory DIR (no "." or ".."), with inode numbers
 * if WANT_INO; ns_lock held by the caller. Free with ovl_dir_list_free.
 */
int ovl_dir_list(struct ovl_fs *ofs, struct ovl_node *dir,
		 struct ovl_rdent **out, size_t *n, bool want_ino);
void ovl_dir_list_free(struct ovl_rdent *ents, size_t n);
/* Is directory NODE empty in the merged view? 1, 0 or -errno. */
int ovl_dir_is_empty(struct ovl_fs *ofs, struct ovl_node *node);

/* ===== xattr.c ===== */

/*
 * Is the absence of an xattr remembered in SLOT (&node->caps_none, ...)
 * still good? And remembering one, found by a query begun at generation
 * GEN (read with atomic_load(&node->xgen) before asking the layer).
 */
static inline bool ovl_xattr_none(struct ovl_node *n, _Atomic unsigned int *slot)
{
	unsigned int v = atomic_load(slot);

	return v && v == atomic_load(&n->xgen) + 1;
}
static inline void ovl_xattr_set_none(_Atomic unsigned int *slot,
				      unsigned int gen)
{
	atomic_store(slot, gen + 1);
}
int ovl_getxattr(struct ovl_fs *ofs, struct ovl_node *node, const char *name,
		 void *buf, size_t size);	/* size or -errno */
int ovl_listxattr(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
		  size_t size);			/* size or -errno */
int ovl_setxattr(struct ovl_fs *ofs, struct ovl_node *node, const char *name,
		 const void *value, size_t size, int flags);
int ovl_removexattr(struct ovl_fs *ofs, struct ovl_node *node,
		    const char *name);

/* ===== the hooks, called by the files above ===== */

static inline void ovl_tell_attr_changed(struct ovl_fs *ofs,
					 struct ovl_node *node)
{
	if (ofs->hooks && ofs->hooks->attr_changed)
		ofs->hooks->attr_changed(ofs, node);
}

static inline void ovl_tell_file_released(struct ovl_fs *ofs,
					  struct ovl_file *f)
{
	if (ofs->hooks && ofs->hooks->file_released)
		ofs->hooks->file_released(ofs, f);
}

#endif /* OVL_FS_H */
