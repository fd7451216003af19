/*
 * inode.c: the node table and the inode numbers shown to users.
 *
 * Nodes are found by (parent, name) in one hash table under table_lock. A
 * node lives while the kernel holds lookups on it (nlookup) or anything else
 * holds a reference (children keep their parent, open handles keep their
 * node, operations take temporary refs); the last put frees it.
 *
 * Inode numbers. Every object has a 64-bit key derived from where it
 * originated: the lower object it was copied up from (recorded in an origin
 * xattr at copy-up, so it survives copy-up and rename), otherwise its own
 * layer object:
 *
 *	bit 63      layer (0 lower, 1 upper)
 *	bits 56-62  device index: 0 = the layer root's filesystem, 1..126 =
 *	            other filesystems mounted inside the layer, in order of
 *	            first sight; 127 = overflow
 *	bits 0-55   the layer's own st_ino
 *
 * Two objects of one filesystem never share an st_ino, and the layer bit
 * keeps the layers apart, so keys are unique. An object whose st_ino does
 * not fit 56 bits, or a 127th device, gets a key from a per-mount counter
 * under index 127 instead (unique, but not stable across remounts).
 * Persistent mode shows the key itself; virtual mode maps keys to numbers
 * handed out in order (root = 1), remembered for the life of the mount so
 * that readdir and stat always agree.
 */
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"

#define INO_BITS 56
#define DEV_OVERFLOW 127ULL

/* A uint64 -> uint64 open-addressing map; key 0 marks a free slot. */
struct ovl_inomap {
	uint64_t *keys, *vals;
	size_t size, count;
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static int inomap_grow(struct ovl_inomap *m)
{
	size_t nsize = m->size ? m->size * 2 : 1024;
	uint64_t *nk = calloc(nsize, sizeof(*nk));
	uint64_t *nv = calloc(nsize, sizeof(*nv));

	if (!nk || !nv) {
		free(nk);
		free(nv);
		return -ENOMEM;
	}
	for (size_t i = 0; i < m->size; i++) {
		size_t j;

		if (!m->keys[i])
			continue;
		j = mix64(m->keys[i]) & (nsize - 1);
		while (nk[j])
			j = (j + 1) & (nsize - 1);
		nk[j] = m->keys[i];
		nv[j] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = nk;
	m->vals = nv;
	m->size = nsize;
	return 0;
}

/* Value for KEY, inserting NEWVAL if absent; 0 on ENOMEM. */
static uint64_t inomap_get_or_put(struct ovl_inomap *m, uint64_t key,
				  uint64_t newval, bool *inserted)
{
	size_t j;

	*inserted = false;
	if ((m->count + 1) * 2 > m->size && inomap_grow(m) < 0)
		return 0;
	j = mix64(key) & (m->size - 1);
	while (m->keys[j]) {
		if (m->keys[j] == key)
			return m->vals[j];
		j = (j + 1) & (m->size - 1);
	}
	m->keys[j] = key;
	m->vals[j] = newval;
	m->count++;
	*inserted = true;
	return newval;
}

static uint64_t dev_index(struct ovl_fs *ofs, int layer, dev_t dev)
{
	struct ovl_layer *l = layer ? &ofs->upper : &ofs->lowers[0];
	int i;

	if (dev == l->dev)
		return 0;
	for (i = 0; i < ofs->n_extra_devs[layer]; i++)
		if (ofs->extra_devs[layer][i] == dev)
			return i + 1;
	if (i >= (int)DEV_OVERFLOW - 1)
		return DEV_OVERFLOW;
	ofs->extra_devs[layer][i] = dev;
	ofs->n_extra_devs[layer]++;
	return i + 1;
}

/* The persistent key of (LAYER, DEV, INO); caller holds table_lock. */
static uint64_t key_locked(struct ovl_fs *ofs, int layer, dev_t dev, ino_t ino)
{
	uint64_t di = dev_index(ofs, layer, dev);
	uint64_t hi = (uint64_t)layer << 63;

	if (di != DEV_OVERFLOW && (uint64_t)ino < (1ULL << INO_BITS))
		return hi | (di << INO_BITS) | (uint64_t)ino;
	/* Not representable: a unique number for this mount only. */
	return hi | (DEV_OVERFLOW << INO_BITS) | ofs->next_overflow++;
}

static uint64_t number_for_key_locked(struct ovl_fs *ofs, uint64_t key)
{
	bool inserted;
	uint64_t v;

	if (ofs->inode_mode == OVLFS_INODE_PERSISTENT)
		return key;
	v = inomap_get_or_put(ofs->inomap, key, ofs->next_ino, &inserted);
	if (inserted)
		ofs->next_ino++;
	return v ? v : key;
}

uint64_t ovl_key_for(struct ovl_fs *ofs, int layer_idx, dev_t dev, ino_t ino)
{
	uint64_t k;

	pthread_mutex_lock(&ofs->table_lock);
	k = key_locked(ofs, layer_idx, dev, ino);
	pthread_mutex_unlock(&ofs->table_lock);
	return k;
}

uint64_t ovl_number_for_key(struct ovl_fs *ofs, uint64_t key)
{
	uint64_t v;

	pthread_mutex_lock(&ofs->table_lock);
	v = number_for_key_locked(ofs, key);
	pthread_mutex_unlock(&ofs->table_lock);
	return v;
}

uint64_t ovl_ino_for(struct ovl_fs *ofs, int layer_idx, dev_t dev, ino_t ino)
{
	uint64_t v;

	pthread_mutex_lock(&ofs->table_lock);
	v = number_for_key_locked(ofs, key_locked(ofs, layer_idx, dev, ino));
	pthread_mutex_unlock(&ofs->table_lock);
	return v;
}

static const char *origin_xattr(struct ovl_fs *ofs)
{
	return ofs->trusted ? OVL_XATTR_ORIGIN_TRUSTED : OVL_XATTR_ORIGIN_USER;
}

static int origin_parse(const char *buf, ssize_t n, uint64_t *key)
{
	char tmp[32];
	char *end;

	if (n <= 0 || n >= (ssize_t)sizeof(tmp))
		return -ENODATA;
	memcpy(tmp, buf, n);
	tmp[n] = '\0';
	errno = 0;
	*key = strtoull(tmp, &end, 16);
	if (errno || *end || !*key)
		return -ENODATA;
	return 0;
}

int ovl_origin_get(struct ovl_fs *ofs, int fd, uint64_t *key)
{
	char buf[32];
	ssize_t n = ovl_fd_getxattr(fd, origin_xattr(ofs), buf, sizeof(buf));

	if (n < 0)
		return (int)n;
	return origin_parse(buf, n, key);
}

int ovl_origin_get_at(struct ovl_fs *ofs, int dirfd, const char *name,
		      uint64_t *key)
{
	char buf[32];
	ssize_t n = ovl_at_getxattr(dirfd, name, origin_xattr(ofs), buf,
				    sizeof(buf));

	if (n < 0)
		return (int)n;
	return origin_parse(buf, n, key);
}

int ovl_origin_set(struct ovl_fs *ofs, int fd, uint64_t key)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%llx", (unsigned long long)key);

	return ovl_fd_setxattr(fd, origin_xattr(ofs), buf, n, 0);
}

/* The number of an upper object (stat ST) whose origin query gave ERR, KEY. */
static uint64_t upper_number(struct ovl_fs *ofs, int err, uint64_t key,
			     const struct stat *st)
{
	if (err == 0)
		return ovl_number_for_key(ofs, key);
	return ovl_ino_for(ofs, 1, st->st_dev, st->st_ino);
}

uint64_t ovl_ino_upper(struct ovl_fs *ofs, int fd, const struct stat *st)
{
	uint64_t key = 0;
	int err = ovl_origin_get(ofs, fd, &key);

	return upper_number(ofs, err, key, st);
}

uint64_t ovl_ino_upper_at(struct ovl_fs *ofs, int dirfd, const char *name,
			  const struct stat *st)
{
	uint64_t key = 0;
	int err = ovl_origin_get_at(ofs, dirfd, name, &key);

	return upper_number(ofs, err, key, st);
}

/* ---- the node table ---- */

static size_t inode_slot(dev_t dev, ino_t ino)
{
	return mix64((uint64_t)ino ^ ((uint64_t)dev << 32)) & 1023;
}


static size_t node_hash(const struct ovl_node *parent, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)(uintptr_t)parent;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
		h ^= *p;
		h *= 0x100000001b3ULL;
	}
	return (size_t)mix64(h);
}

int ovl_inode_table_init(struct ovl_fs *ofs)
{
	ofs->table_size = 4096;
	/* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
	ofs->table = calloc(ofs->table_size, sizeof(*ofs->table));
	ofs->inomap = calloc(1, sizeof(*ofs->inomap));
	if (!ofs->table || !ofs->inomap) {
		free(ofs->table);
		free(ofs->inomap);
		return -ENOMEM;
	}
	ofs->next_ino = 1;
	ofs->next_overflow = 1;
	ofs->handles.next = ofs->handles.prev = &ofs->handles;
	pthread_mutex_init(&ofs->table_lock, NULL);
	pthread_mutex_init(&ofs->slots_lock, NULL);
	return 0;
}

void ovl_lstack_free(struct ovl_fs *ofs, int *lstack)
{
	if (!lstack)
		return;
	for (int k = 0; k < ofs->nlower; k++)
		if (lstack[k] >= 0)
			close(lstack[k]);
	free(lstack);
}

static void node_free_locked(struct ovl_fs *ofs, struct ovl_node *node);

void ovl_handle_add(struct ovl_fs *ofs, struct ovl_hlink *h, bool is_dir)
{
	pthread_mutex_lock(&ofs->table_lock);
	h->is_dir = is_dir;
	h->next = ofs->handles.next;
	h->prev = &ofs->handles;
	ofs->handles.next->prev = h;
	ofs->handles.next = h;
	pthread_mutex_unlock(&ofs->table_lock);
}

void ovl_handle_del(struct ovl_fs *ofs, struct ovl_hlink *h)
{
	pthread_mutex_lock(&ofs->table_lock);
	h->prev->next = h->next;
	h->next->prev = h->prev;
	pthread_mutex_unlock(&ofs->table_lock);
}

void ovl_inode_table_destroy(struct ovl_fs *ofs)
{
	/*
	 * Forced teardown at unmount: every node goes, whatever its counts
	 * (the kernel need not forget everything before it disconnects).
	 */
	while (ofs->all_nodes) {
		struct ovl_node *n = ofs->all_nodes;

		n->hashed = false;
		n->parent = NULL;
		node_free_locked(ofs, n);
	}
	ofs->root = NULL;
	free(ofs->table);
	ofs->table = NULL;
	if (ofs->inomap) {
		free(ofs->inomap->keys);
		free(ofs->inomap->vals);
		free(ofs->inomap);
		ofs->inomap = NULL;
	}
	pthread_mutex_destroy(&ofs->table_lock);
	pthread_mutex_destroy(&ofs->slots_lock);
}

struct ovl_node *ovl_node_new(struct ovl_fs *ofs, struct ovl_node *parent,
			      const char *name, unsigned int layers,
			      int upper_fd, int lower_fd, mode_t type,
			      uint64_t ino)
{
	struct ovl_node *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->name = strdup(name);
	if (!n->name) {
		free(n);
		return NULL;
	}
	n->refs = 1;
	n->parent = parent;
	atomic_init(&n->has_upper, (layers & OVL_IN_UPPER) != 0);
	n->has_lower = (layers & OVL_IN_LOWER) != 0;
	atomic_init(&n->upper_fd, upper_fd);
	atomic_init(&n->lower_fd, lower_fd);
	n->data_fd = -1;
	atomic_init(&n->nopen, 0);
	n->type = type & S_IFMT;
	n->ino = ino;
	n->generation = atomic_fetch_add(&ofs->next_gen, 1);
	pthread_mutex_init(&n->copyup_lock, NULL);
	pthread_mutex_lock(&ofs->table_lock);
	if (parent)
		parent->refs++;
	n->all_next = ofs->all_nodes;
	if (ofs->all_nodes)
		ofs->all_nodes->all_prev = n;
	ofs->all_nodes = n;
	if (++ofs->n_nodes > ofs->trim_peak)
		ofs->trim_peak = ofs->n_nodes;
	pthread_mutex_unlock(&ofs->table_lock);
	return n;
}

static void unhash_locked(struct ovl_fs *ofs, struct ovl_node *node)
{
	struct ovl_node **pp;

	if (!node->hashed)
		return;
	pp = &ofs->table[node_hash(node->parent, node->name) &
			 (ofs->table_size - 1)];
	for (; *pp; pp = &(*pp)->hnext) {
		if (*pp == node) {
			*pp = node->hnext;
			break;
		}
	}
	node->hnext = NULL;
	node->hashed = false;
	ofs->table_count--;
}

/*
 * Free NODE and drop its hold on the parent chain. Iterative, since a long
 * chain of otherwise unreferenced ancestors may go at once.
 */
static void node_free_locked(struct ovl_fs *ofs, struct ovl_node *node)
{
	while (node) {
		struct ovl_node *parent = node->parent;
		int ufd = atomic_load(&node->upper_fd);
		int lfd = atomic_load(&node->lower_fd);

		unhash_locked(ofs, node);
		if (node->indexed) {
			struct ovl_node **pp =
				&ofs->inodes[inode_slot(node->idev, node->iino)];

			while (*pp && *pp != node)
				pp = &(*pp)->inext;
			if (*pp)
				*pp = node->inext;
		}
		if (node->all_prev)
			node->all_prev->all_next = node->all_next;
		else
			ofs->all_nodes = node->all_next;
		if (node->all_next)
			node->all_next->all_prev = node->all_prev;
		ofs->n_nodes--;
		if (ufd >= 0)
			close(ufd);
		if (lfd >= 0)
			close(lfd);
		if (node->data_fd >= 0)
			close(node->data_fd);
		ovl_lstack_free(ofs, node->lstack);
		ovl_dirslots_free(node->slots);
		pthread_mutex_destroy(&node->copyup_lock);
		free(node->name);
		free(node);
		node = NULL;
		if (parent && parent != ofs->root) {
			if (--parent->refs == 0 && parent->nlookup == 0)
				node = parent;
		} else if (parent) {
			parent->refs--;
		}
	}
}

static void grow_table_locked(struct ovl_fs *ofs)
{
	size_t nsize = ofs->table_size * 2;
	/* NOLINTNEXTLINE(bugprone-sizeof-expression): an array of pointers */
	struct ovl_node **nt = calloc(nsize, sizeof(*nt));

	if (!nt)
		return;	/* longer chains, still correct */
	for (size_t i = 0; i < ofs->table_size; i++) {
		struct ovl_node *n = ofs->table[i], *next;

		for (; n; n = next) {
			size_t j = node_hash(n->parent, n->name) & (nsize - 1);

			next = n->hnext;
			n->hnext = nt[j];
			nt[j] = n;
		}
	}
	free(ofs->table);
	ofs->table = nt;
	ofs->table_size = nsize;
}

static struct ovl_node *find_locked(struct ovl_fs *ofs,
				    struct ovl_node *parent, const char *name)
{
	struct ovl_node *n = ofs->table[node_hash(parent, name) &
					(ofs->table_size - 1)];

	for (; n; n = n->hnext)
		if (n->parent == parent && strcmp(n->name, name) == 0)
			return n;
	return NULL;
}

struct ovl_node *ovl_node_find(struct ovl_fs *ofs, struct ovl_node *parent,
			       const char *name)
{
	struct ovl_node *n;

	pthread_mutex_lock(&ofs->table_lock);
	n = find_locked(ofs, parent, name);
	if (n)
		n->refs++;
	pthread_mutex_unlock(&ofs->table_lock);
	return n;
}

bool ovl_node_known(struct ovl_fs *ofs, struct ovl_node *parent,
		    const char *name)
{
	struct ovl_node *n;
	bool known;

	pthread_mutex_lock(&ofs->table_lock);
	n = find_locked(ofs, parent, name);
	/* An aliased node's attributes may have changed through another. */
	known = n && n->nlookup > 0 && !atomic_load(&n->aliased);
	pthread_mutex_unlock(&ofs->table_lock);
	return known;
}

static void hash_locked(struct ovl_fs *ofs, struct ovl_node *node)
{
	size_t j;

	if (ofs->table_count * 2 > ofs->table_size)
		grow_table_locked(ofs);
	j = node_hash(node->parent, node->name) & (ofs->table_size - 1);
	node->hnext = ofs->table[j];
	ofs->table[j] = node;
	node->hashed = true;
	ofs->table_count++;
}

struct ovl_node *ovl_node_insert(struct ovl_fs *ofs, struct ovl_node *node)
{
	struct ovl_node *old;

	pthread_mutex_lock(&ofs->table_lock);
	old = find_locked(ofs, node->parent, node->name);
	if (old) {
		old->refs++;
		node->refs = 0;
		node_free_locked(ofs, node);
		pthread_mutex_unlock(&ofs->table_lock);
		return old;
	}
	hash_locked(ofs, node);
	pthread_mutex_unlock(&ofs->table_lock);
	return node;
}

void ovl_node_get(struct ovl_fs *ofs, struct ovl_node *node)
{
	pthread_mutex_lock(&ofs->table_lock);
	node->refs++;
	pthread_mutex_unlock(&ofs->table_lock);
}

void ovl_node_put(struct ovl_fs *ofs, struct ovl_node *node)
{
	if (!node)
		return;
	pthread_mutex_lock(&ofs->table_lock);
	if (--node->refs == 0 && node->nlookup == 0 && node != ofs->root)
		node_free_locked(ofs, node);
	pthread_mutex_unlock(&ofs->table_lock);
}

void ovl_node_lookup_ref(struct ovl_fs *ofs, struct ovl_node *node)
{
	pthread_mutex_lock(&ofs->table_lock);
	node->nlookup++;
	pthread_mutex_unlock(&ofs->table_lock);
}

void ovl_node_forget(struct ovl_fs *ofs, struct ovl_node *node, uint64_t n)
{
	pthread_mutex_lock(&ofs->table_lock);
	node->nlookup = node->nlookup > n ? node->nlookup - n : 0;
	if (node->nlookup == 0 && node->refs == 0 && node != ofs->root)
		node_free_locked(ofs, node);
	pthread_mutex_unlock(&ofs->table_lock);
}

void ovl_nodes_trim(struct ovl_fs *ofs)
{
	bool trim;

	pthread_mutex_lock(&ofs->table_lock);
	/* Small heaps are not worth a trim; big drops are. */
	trim = ofs->trim_peak >= 4096 && ofs->n_nodes < ofs->trim_peak / 2;
	if (trim)
		ofs->trim_peak = ofs->n_nodes;
	pthread_mutex_unlock(&ofs->table_lock);
	if (trim)
		malloc_trim(0);
}

int ovl_node_move(struct ovl_fs *ofs, struct ovl_node *node,
		  struct ovl_node *newparent, const char *newname)
{
	char *nn = strdup(newname);
	struct ovl_node *oldparent;

	if (!nn)
		return -ENOMEM;
	pthread_mutex_lock(&ofs->table_lock);
	unhash_locked(ofs, node);
	oldparent = node->parent;
	newparent->refs++;
	node->parent = newparent;
	free(node->name);
	node->name = nn;
	node->deleted = false;
	hash_locked(ofs, node);
	if (oldparent && --oldparent->refs == 0 && oldparent->nlookup == 0 &&
	    oldparent != ofs->root)
		node_free_locked(ofs, oldparent);
	pthread_mutex_unlock(&ofs->table_lock);
	return 0;
}

void ovl_node_unlink(struct ovl_fs *ofs, struct ovl_node *node,
		     struct ovl_node *parent, const char *name)
{
	pthread_mutex_lock(&ofs->table_lock);
	if (node->parent == parent && !strcmp(node->name, name)) {
		unhash_locked(ofs, node);
		node->deleted = true;
	}
	pthread_mutex_unlock(&ofs->table_lock);
}

struct ovl_node *ovl_node_by_inode(struct ovl_fs *ofs, dev_t dev, ino_t ino)
{
	struct ovl_node *n;

	pthread_mutex_lock(&ofs->table_lock);
	for (n = ofs->inodes[inode_slot(dev, ino)]; n; n = n->inext)
		if (n->idev == dev && n->iino == ino)
			break;
	if (n)
		n->refs++;
	pthread_mutex_unlock(&ofs->table_lock);
	return n;
}

/*
 * The upper inode cannot be reused for another file while NODE holds its
 * fd (pinned by the caller), so an entry stays right while NODE lives.
 */
void ovl_node_index(struct ovl_fs *ofs, struct ovl_node *node, dev_t dev,
		    ino_t ino)
{
	size_t j = inode_slot(dev, ino);

	/* Its other names may have nodes of their own from before. */
	atomic_store(&node->aliased, true);
	pthread_mutex_lock(&ofs->table_lock);
	if (!node->indexed) {
		node->idev = dev;
		node->iino = ino;
		node->inext = ofs->inodes[j];
		ofs->inodes[j] = node;
		node->indexed = true;
	}
	pthread_mutex_unlock(&ofs->table_lock);
}

void ovl_node_path(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
		   size_t len)
{
	size_t pos = len - 1, n;
	bool deleted;

	buf[pos] = '\0';
	pthread_rwlock_rdlock(&ofs->ns_lock);
	deleted = node->deleted;
	for (struct ovl_node *p = node; p && p->parent; p = p->parent) {
		n = strlen(p->name);
		/* Room for "/NAME" and a "..." still: pos stays >= 3. */
		if (n + 4 > pos) {
			/* Too deep for BUF: keep the end, the telling part. */
			pos -= 3;
			memcpy(buf + pos, "...", 3);
			break;
		}
		pos -= n;
		memcpy(buf + pos, p->name, n);
		buf[--pos] = '/';
	}
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (pos == len - 1)
		buf[--pos] = '/';	/* the root */
	memmove(buf, buf + pos, len - pos);
	if (deleted)
		snprintf(buf + strlen(buf), len - strlen(buf), " (deleted)");
}
