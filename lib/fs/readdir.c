/*
 * readdir.c: merged directory listings.
 *
 * A listing is built once per open directory (and again on rewind), so a
 * reader walking it with offsets sees a consistent snapshot: no entry twice
 * and none missing while others come and go. Upper entries come first;
 * lower entries follow unless hidden by an upper entry of the same name, a
 * whiteout, or an opaque upper directory.
 *
 * Offsets are stable across snapshots (struct ovl_dirslots): a name keeps
 * the offset it was first listed at for as long as it stays in the
 * directory, and a new name gets a higher one than any before, as tmpfs's
 * stable offsets. The kernel's readdir cache (FOPEN_CACHE_DIR) needs it: it
 * holds one listing per directory, filled by whichever open handle reads at
 * its end, and a reader whose cache went stale finds its place again in a
 * listing built by another handle, by offset (fs/fuse/readdir.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"

/* A set of names, open addressing; just enough for merging two listings. */
struct strset {
	const char **slots;
	size_t size, count;
};

static size_t str_hash(const char *s)
{
	size_t h = 5381;

	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h;
}

static int strset_add(struct strset *set, const char *s)
{
	size_t j;

	if ((set->count + 1) * 2 > set->size) {
		size_t nsize = set->size ? set->size * 2 : 64;
		const char **ns = calloc(nsize, sizeof(*ns));

		if (!ns)
			return -ENOMEM;
		for (size_t i = 0; i < set->size; i++) {
			if (!set->slots[i])
				continue;
			j = str_hash(set->slots[i]) & (nsize - 1);
			while (ns[j])
				j = (j + 1) & (nsize - 1);
			ns[j] = set->slots[i];
		}
		free(set->slots);
		set->slots = ns;
		set->size = nsize;
	}
	j = str_hash(s) & (set->size - 1);
	while (set->slots[j]) {
		if (!strcmp(set->slots[j], s))
			return 0;
		j = (j + 1) & (set->size - 1);
	}
	set->slots[j] = s;
	set->count++;
	return 0;
}

static bool strset_has(const struct strset *set, const char *s)
{
	size_t j;

	if (!set->size)
		return false;
	j = str_hash(s) & (set->size - 1);
	while (set->slots[j]) {
		if (!strcmp(set->slots[j], s))
			return true;
		j = (j + 1) & (set->size - 1);
	}
	return false;
}

/*
 * The offsets of one directory's names: V[i] is a name listed by the last
 * snapshot and its offset, the names in one allocation (NAMES); IDX an
 * open-addressing index of V (position + 1, 0 free). Offsets 1 and 2 are
 * "." and "..", NEXT is the next unused.
 */
struct ovl_dirslots {
	struct ovl_dirslot {
		const char *name;
		uint64_t off;
	} *v;
	size_t n;
	char *names;
	uint32_t *idx;
	size_t isize;
	uint64_t next;
};

#define OVL_OFF_FIRST 3

void ovl_dirslots_free(struct ovl_dirslots *s)
{
	if (!s)
		return;
	free(s->v);
	free(s->names);
	free(s->idx);
	free(s);
}

/* The offset of NAME in S, or 0. */
static uint64_t slot_find(const struct ovl_dirslots *s, const char *name)
{
	size_t j;

	if (!s->isize)
		return 0;
	j = str_hash(name) & (s->isize - 1);
	while (s->idx[j]) {
		if (!strcmp(s->v[s->idx[j] - 1].name, name))
			return s->v[s->idx[j] - 1].off;
		j = (j + 1) & (s->isize - 1);
	}
	return 0;
}

/*
 * Give each of the N entries of a new snapshot of DIR its offset, and make
 * the snapshot's names DIR's names (a name gone from it gives its offset up
 * for good). Called in the ns_lock read section that listed them: snapshots
 * taken by concurrent fills are then of the same namespace, and those of
 * later fills come after, so a name's offset never goes back.
 */
static int assign_offsets(struct ovl_fs *ofs, struct ovl_node *dir,
			  struct ovl_rdent *ents, size_t n)
{
	struct ovl_dirslots *s, ns = { 0 };
	size_t total = 1;
	char *p;
	int err = 0;

	if (n >= UINT32_MAX / 2)
		return -EOVERFLOW;
	for (size_t i = 0; i < n; i++)
		total += strlen(ents[i].name) + 1;
	pthread_mutex_lock(&ofs->slots_lock);
	s = dir->slots;
	if (!s) {
		s = calloc(1, sizeof(*s));
		if (!s) {
			err = -ENOMEM;
			goto out;
		}
		s->next = OVL_OFF_FIRST;
		dir->slots = s;
	}
	ns.isize = 16;
	while (ns.isize < 2 * n)
		ns.isize *= 2;
	ns.v = malloc((n ? n : 1) * sizeof(*ns.v));
	ns.names = malloc(total);
	ns.idx = calloc(ns.isize, sizeof(*ns.idx));
	if (!ns.v || !ns.names || !ns.idx) {
		free(ns.v);
		free(ns.names);
		free(ns.idx);
		err = -ENOMEM;
		goto out;
	}
	ns.next = s->next;
	p = ns.names;
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(ents[i].name) + 1, j;
		uint64_t off = slot_find(s, ents[i].name);

		ents[i].off = off ? off : ns.next++;
		ns.v[i].off = ents[i].off;
		ns.v[i].name = memcpy(p, ents[i].name, len);
		p += len;
		j = str_hash(ents[i].name) & (ns.isize - 1);
		while (ns.idx[j])
			j = (j + 1) & (ns.isize - 1);
		ns.idx[j] = (uint32_t)(i + 1);
	}
	ns.n = n;
	free(s->v);
	free(s->names);
	free(s->idx);
	*s = ns;
out:
	pthread_mutex_unlock(&ofs->slots_lock);
	return err;
}

static int by_off(const void *a, const void *b)
{
	const struct ovl_rdent *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

size_t ovl_readdir_seek(const struct ovl_dirhandle *dh, uint64_t off)
{
	size_t lo = 0, hi = dh->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (dh->ents[mid].off <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static mode_t dtype_to_mode(unsigned char t)
{
	return t == DT_UNKNOWN ? 0 : (mode_t)DTTOIF(t);
}

static int push(struct ovl_rdent **ents, size_t *n, size_t *cap,
		const char *name, uint64_t ino, mode_t type)
{
	if (ovl_grow((void **)ents, cap, *n, sizeof(**ents), 64))
		return -ENOMEM;
	(*ents)[*n].name = strdup(name);
	if (!(*ents)[*n].name)
		return -ENOMEM;
	(*ents)[*n].ino = ino;
	(*ents)[*n].type = type;
	(*ents)[*n].off = 0;
	(*n)++;
	return 0;
}

/*
 * Inode number and type of entry DE of layer LAYER (directory fd DFD),
 * computed exactly as a lookup would, so readdir and stat agree.
 */
static int entry_ino(struct ovl_fs *ofs, struct ovl_node *dir, int layer,
		     int dfd, dev_t ddev, const struct ovl_dirent *de,
		     uint64_t *ino, mode_t *type)
{
	struct ovl_node *n = ovl_node_find(ofs, dir, de->name);
	struct stat st;
	uint64_t key;

	if (n) {
		*ino = n->ino;
		*type = n->type;
		ovl_node_put(ofs, n);
		return 0;
	}
	if (layer == 1 && ovl_origin_get_at(ofs, dfd, de->name, &key) == 0) {
		*ino = ovl_number_for_key(ofs, key);
		return 0;
	}
	/*
	 * d_ino of a directory that is a mount point names the directory
	 * under it, not the mounted root a lookup sees: stat those.
	 */
	if (de->type == DT_DIR || de->type == DT_UNKNOWN) {
		if (fstatat(dfd, de->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return -errno;
		*type = st.st_mode & S_IFMT;
		*ino = ovl_ino_for(ofs, layer, st.st_dev, st.st_ino);
		return 0;
	}
	/* A non-directory lives on its directory's filesystem. */
	*ino = ovl_ino_for(ofs, layer, ddev, de->ino);
	return 0;
}

/* Copy *T into the list KEPT (strset keeps pointers) and point *T at it. */
static int keep_name(char ***kept, size_t *n, const char **t)
{
	char **p = realloc(*kept, (*n + 1) * sizeof(**kept));

	if (!p)
		return -ENOMEM;
	*kept = p;
	p[*n] = strdup(*t);
	if (!p[*n])
		return -ENOMEM;
	*t = p[(*n)++];
	return 0;
}

int ovl_dir_list(struct ovl_fs *ofs, struct ovl_node *dir,
		 struct ovl_rdent **out, size_t *nout, bool want_ino)
{
	struct ovl_dirlist ul = { 0 }, ll = { 0 };
	struct strset seen = { 0 }, wh = { 0 };
	struct ovl_rdent *ents = NULL;
	size_t n = 0, cap = 0;
	int ufd = atomic_load(&dir->upper_fd);
	bool lower = ovl_node_lower_visible(dir);
	/* Targets of long whiteouts: strset keeps pointers, so one alloc each. */
	char **longwh = NULL;
	size_t nlong = 0;
	struct stat dst;
	size_t nwh_layer;
	int err = 0;

	if (ufd >= 0) {
		err = ovl_fstat(ufd, &dst);
		if (!err)
			err = ovl_dirlist_read(ufd, &ul);
		if (err)
			goto out;
	}
	for (size_t i = 0; i < ul.n && !err; i++) {
		const struct ovl_dirent *de = &ul.ents[i];
		uint64_t ino = 0;
		mode_t type = dtype_to_mode(de->type);
		char target[NAME_MAX + 2];
		const char *t;
		int m = ovl_marker(&ofs->fmt, ufd, de, target, &t);

		if (m) {
			if (m < 0)
				err = m;
			if (m < 0 || !lower || !t)
				continue;
			/* strset keeps the pointer: one allocation each. */
			if (t == target)
				err = keep_name(&longwh, &nlong, &t);
			if (!err)
				err = strset_add(&wh, t);
			continue;
		}
		if (want_ino || !type)
			err = entry_ino(ofs, dir, 1, ufd, dst.st_dev, de, &ino,
					&type);
		if (!err)
			err = push(&ents, &n, &cap, de->name, ino, type);
		if (!err && lower)
			err = strset_add(&seen, ents[n - 1].name);
	}
	if (err || !lower)
		goto out;

	/*
	 * The lowers, top to bottom: the first layer with a name shows it; a
	 * whiteout hides the name in the layers beneath its own.
	 */
	for (int k = dir->lidx; k < ofs->nlower && !err; k++) {
		int lfd = ovl_dir_lfd(dir, k);
		bool more = k + 1 < ofs->nlower;

		if (lfd < 0)
			continue;
		ovl_dirlist_free(&ll);
		err = ovl_fstat(lfd, &dst);
		if (!err)
			err = ovl_dirlist_read(lfd, &ll);
		nwh_layer = 0;
		for (size_t i = 0; i < ll.n && !err; i++) {
			const struct ovl_dirent *de = &ll.ents[i];
			uint64_t ino = 0;
			mode_t type = dtype_to_mode(de->type);
			char target[NAME_MAX + 2];
			const char *t;
			int m = ovl_marker(&ofs->fmt, lfd, de, target, &t);

			if (m) {
				/*
				 * Hides names beneath this layer only: an
				 * entry beside it here still shows.
				 */
				if (m < 0)
					err = m;
				else if (t && more &&
					 !(err = keep_name(&longwh, &nlong, &t)))
					nwh_layer++;
				continue;
			}
			if (strset_has(&seen, de->name) ||
			    strset_has(&wh, de->name))
				continue;
			if (want_ino || !type)
				err = entry_ino(ofs, dir, 0, lfd, dst.st_dev,
						de, &ino, &type);
			if (!err)
				err = push(&ents, &n, &cap, de->name, ino, type);
			if (!err && more)
				err = strset_add(&seen, ents[n - 1].name);
		}
		/* The last NWH_LAYER kept names are this layer's whiteouts. */
		for (size_t i = nlong - nwh_layer; i < nlong && !err; i++)
			err = strset_add(&wh, longwh[i]);
	}
out:
	free(seen.slots);
	free(wh.slots);
	for (size_t i = 0; i < nlong; i++)
		free(longwh[i]);
	free(longwh);
	ovl_dirlist_free(&ul);
	ovl_dirlist_free(&ll);
	if (err) {
		ovl_dir_list_free(ents, n);
		return err;
	}
	*out = ents;
	*nout = n;
	return 0;
}

void ovl_dir_list_free(struct ovl_rdent *ents, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ents[i].name);
	free(ents);
}

int ovl_dir_is_empty(struct ovl_fs *ofs, struct ovl_node *node)
{
	struct ovl_rdent *ents;
	size_t n;
	int err = ovl_dir_list(ofs, node, &ents, &n, false);

	if (err)
		return err;
	ovl_dir_list_free(ents, n);
	return n == 0;
}

int ovl_opendir(struct ovl_fs *ofs, struct ovl_node *node,
		struct ovl_dirhandle **out)
{
	struct ovl_dirhandle *dh;

	if (node->type != S_IFDIR)
		return -ENOTDIR;
	dh = calloc(1, sizeof(*dh));
	if (!dh)
		return -ENOMEM;
	ovl_node_get(ofs, node);
	dh->node = node;
	pthread_mutex_init(&dh->lock, NULL);
	ovl_handle_add(ofs, &dh->link, true);
	*out = dh;
	return 0;
}

int ovl_readdir_fill(struct ovl_fs *ofs, struct ovl_dirhandle *dh)
{
	struct ovl_node *dir = dh->node;
	struct ovl_rdent *ents = NULL;
	size_t n = 0, cap = 0;
	struct ovl_rdent *merged;
	size_t nm;
	uint64_t pino;
	int err;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	if (dir->deleted) {
		/* An open but removed directory lists as empty. */
		merged = NULL;
		nm = 0;
		err = 0;
	} else {
		err = ovl_dir_list(ofs, dir, &merged, &nm, true);
		if (!err) {
			err = assign_offsets(ofs, dir, merged, nm);
			if (err)
				ovl_dir_list_free(merged, nm);
		}
	}
	pino = dir->parent ? dir->parent->ino : dir->ino;
	pthread_rwlock_unlock(&ofs->ns_lock);
	if (err)
		return err;
	if (nm)
		qsort(merged, nm, sizeof(*merged), by_off);

	err = push(&ents, &n, &cap, ".", dir->ino, S_IFDIR);
	if (!err)
		err = push(&ents, &n, &cap, "..", pino, S_IFDIR);
	if (!err) {
		ents[0].off = 1;
		ents[1].off = 2;
	}
	if (err) {
		ovl_dir_list_free(ents, n);
		ovl_dir_list_free(merged, nm);
		return err;
	}
	/* Splice the dot entries in front without copying the names again. */
	if (nm) {
		void *p = realloc(ents, (n + nm) * sizeof(*ents));

		if (!p) {
			ovl_dir_list_free(ents, n);
			ovl_dir_list_free(merged, nm);
			return -ENOMEM;
		}
		ents = p;
		memcpy(ents + n, merged, nm * sizeof(*merged));
		n += nm;
	}
	free(merged);

	ovl_dir_list_free(dh->ents, dh->n);
	dh->ents = ents;
	dh->n = n;
	dh->valid = true;
	return 0;
}

void ovl_releasedir(struct ovl_fs *ofs, struct ovl_dirhandle *dh)
{
	ovl_handle_del(ofs, &dh->link);
	ovl_dir_list_free(dh->ents, dh->n);
	pthread_mutex_destroy(&dh->lock);
	ovl_node_put(ofs, dh->node);
	free(dh);
}
