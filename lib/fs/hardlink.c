/*
 * hardlink.c: lower hard links stay one file across copy-up.
 *
 * In a private copy of the lower, two names of one file are one file:
 * writing through one shows through the other. The kernel's overlayfs needs
 * its index feature for that. ovlfs does it at copy-up: when the lower
 * file has several links, the lower is searched for its other names, and
 * the copy is linked in the upper at every one of them that is visible in
 * the merged view. The upper then holds a real hard link set (commit and
 * diff need no index), and the copy keeps the lower's inode number (its
 * origin), which every name shows.
 *
 * The search reads the lower's directories (fds only, never following a
 * symlink, never leaving the file's filesystem) and stops once every link
 * is found. It runs once per such copy-up, under ofs->hardlink_lock, which
 * also keeps two names of one file from being copied up as two files.
 * Names that are hidden (whited out, shadowed, under an opaque directory)
 * stay unlinked: a hidden lower name never becomes visible again.
 *
 * Link counts follow from this. A lower file shows its lower count, which
 * is right while all its names are visible. Before one of its names is
 * hidden (unlink, or replaced by a rename) while another stays visible,
 * the file is copied up (ovl_lower_alias_visible tells when): its upper
 * names then count themselves, in this mount and the next, as in a plain
 * directory (the kernel's overlayfs does the same with index=on; without
 * it, it keeps showing the lower count). A lower name deleted while open
 * counts 0 (lookup.c): no other name is left once it is gone, or the file
 * would have been copied up.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/fs.h"

#define MAX_DEPTH 2048

struct alias_scan {
	dev_t dev;
	ino_t ino;
	nlink_t want;		/* stop once this many names are found */
	nlink_t found;
	char **paths;		/* relative paths, '/'-separated */
	size_t n;
	int err;
};

static void add_path(struct alias_scan *sc, const char *path)
{
	char **p = realloc(sc->paths, (sc->n + 1) * sizeof(*p));

	if (!p) {
		sc->err = -ENOMEM;
		return;
	}
	sc->paths = p;
	p[sc->n] = strdup(path);
	if (!p[sc->n]) {
		sc->err = -ENOMEM;
		return;
	}
	sc->n++;
}

static void scan_dir(int dfd, char *path, size_t plen, struct alias_scan *sc,
		     int depth)
{
	struct ovl_dirlist dl;
	struct stat st;

	if (depth > MAX_DEPTH || ovl_dirlist_read(dfd, &dl) < 0)
		return;	/* unreadable parts of the lower hold no visible name */
	for (size_t i = 0; i < dl.n && !sc->err && sc->found < sc->want; i++) {
		const struct ovl_dirent *de = &dl.ents[i];
		size_t nlen = strlen(de->name);
		int cfd;

		if (ovl_is_wh_name(de->name) || plen + nlen + 2 >= PATH_MAX)
			continue;
		if (de->type != DT_DIR && de->type != DT_UNKNOWN &&
		    de->ino != sc->ino)
			continue;
		if (fstatat(dfd, de->name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    st.st_dev != sc->dev)
			continue;
		if (plen)
			path[plen] = '/';
		memcpy(path + plen + (plen ? 1 : 0), de->name, nlen + 1);
		if (!S_ISDIR(st.st_mode)) {
			if (st.st_ino == sc->ino) {
				sc->found++;
				add_path(sc, path);
			}
		} else {
			cfd = openat(dfd, de->name, O_PATH | O_DIRECTORY |
				     O_NOFOLLOW | O_CLOEXEC);
			if (cfd >= 0) {
				scan_dir(cfd, path, plen + nlen + (plen ? 1 : 0),
					 sc, depth + 1);
				close(cfd);
			}
		}
		path[plen] = '\0';
	}
	ovl_dirlist_free(&dl);
}

/*
 * The renamed directories of the upper: the lower path each one's lower
 * part has ("a/sub") and where the merged view shows it ("n/s2"), so a
 * lower name under one is looked for where it shows now.
 */
struct moved {
	struct moved_ent {
		char *lower, *merged;
	} *v;
	size_t n, cap;
	int err;
};

static char *join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = malloc(la + lb + 2);

	if (s)
		snprintf(s, la + lb + 2, la ? "%s/%s" : "%s%s", a, b);
	return s;
}

/*
 * Upper directory UFD shows merged path MPATH, its lower part lower path
 * LPATH (NULL: none); record the redirected directories under it.
 */
static void scan_moved(struct ovl_fs *ofs, int ufd, const char *lpath,
		       const char *mpath, struct moved *mv, int depth)
{
	char redir[OVL_REDIRECT_MAX + 1];
	struct ovl_dirlist dl;

	if (depth > MAX_DEPTH || ovl_dirlist_read(ufd, &dl) < 0)
		return;
	for (size_t i = 0; i < dl.n && !mv->err; i++) {
		const char *name = dl.ents[i].name;
		char *clp = NULL, *cmp;
		bool moved = false;
		int cfd, r;

		if (ovl_is_wh_name(name) || (dl.ents[i].type != DT_DIR &&
					     dl.ents[i].type != DT_UNKNOWN))
			continue;
		cfd = ovl_open_child(ufd, name);
		if (cfd < 0)
			continue;
		r = ovl_opaque_get(&ofs->fmt, cfd);
		if (r == 0 && ovl_redirect_get(&ofs->fmt, cfd, redir) > 0) {
			moved = true;
			clp = redir[0] == '/' ? strdup(redir + 1) :
			      lpath ? join(lpath, redir) : NULL;
		} else if (r == 0 && lpath) {
			clp = join(lpath, name);
		}
		cmp = join(mpath, name);
		if (moved && clp && cmp) {
			mv->err = ovl_grow((void **)&mv->v, &mv->cap, mv->n,
					   sizeof(*mv->v), 8);
			if (!mv->err) {
				mv->v[mv->n].lower = strdup(clp);
				mv->v[mv->n].merged = strdup(cmp);
				mv->n++;
			}
		}
		if (cmp)
			scan_moved(ofs, cfd, clp, cmp, mv, depth + 1);
		free(clp);
		free(cmp);
		close(cfd);
	}
	ovl_dirlist_free(&dl);
}

static void free_moved(struct moved *mv)
{
	for (size_t i = 0; i < mv->n; i++) {
		free(mv->v[i].lower);
		free(mv->v[i].merged);
	}
	free(mv->v);
}

/*
 * Lower path PATH as the merged view shows it: under the renamed
 * directory whose lower part holds it (the deepest), or where it is. A
 * new string, or NULL (no memory).
 */
static char *moved_path(const struct moved *mv, const char *path)
{
	const struct moved_ent *best = NULL;
	size_t blen = 0;

	for (size_t i = 0; i < mv->n; i++) {
		const char *l = mv->v[i].lower;
		size_t len = l ? strlen(l) : 0;

		if (l && mv->v[i].merged && len >= blen &&
		    !strncmp(path, l, len) && (path[len] == '/' || !path[len])) {
			best = &mv->v[i];
			blen = len;
		}
	}
	if (!best)
		return strdup(path);
	return path[blen] ? join(best->merged, path + blen + 1) :
			    strdup(best->merged);
}

/* MV for OFS's upper, read under ns_lock. */
static void find_moved(struct ovl_fs *ofs, struct moved *mv)
{
	int ufd = ofs->upper.root_fd;

	memset(mv, 0, sizeof(*mv));
	if (ufd < 0)
		return;
	pthread_rwlock_rdlock(&ofs->ns_lock);
	scan_moved(ofs, ufd, "", "", mv, 0);
	pthread_rwlock_unlock(&ofs->ns_lock);
}

/*
 * The node at relative lower path LPATH in the merged view (ref), or
 * NULL; through the renamed directories of MV.
 */
static struct ovl_node *resolve(struct ovl_fs *ofs, const char *lpath,
				const struct moved *mv)
{
	struct ovl_node *dir = ofs->root, *child = NULL;
	char *save = NULL, *comp, *path = moved_path(mv, lpath), *p0 = path;

	if (!path)
		return NULL;
	ovl_node_get(ofs, dir);
	pthread_rwlock_rdlock(&ofs->ns_lock);
	for (comp = strtok_r(path, "/", &save); comp;
	     comp = strtok_r(NULL, "/", &save)) {
		int err = ovl_lookup_locked(ofs, dir, comp, &child);

		ovl_node_put(ofs, dir);
		if (err) {
			dir = NULL;
			break;
		}
		dir = child;
	}
	pthread_rwlock_unlock(&ofs->ns_lock);
	free(p0);
	return dir;
}

/* Is NODE, as the merged view shows it, still the lower file (DEV, INO)? */
static bool is_lower_alias(struct ovl_fs *ofs, struct ovl_node *node,
			   dev_t dev, ino_t ino)
{
	struct stat st;

	if (node->type == S_IFDIR || ovl_node_has_upper(node) ||
	    ovl_node_layer_stat(ofs, node, OVL_LOWER, &st) < 0)
		return false;
	return st.st_dev == dev && st.st_ino == ino;
}

/* Link the copy (fd COPY) in at ALIAS's name; ns_lock held for writing. */
static int link_alias(struct ovl_node *alias, int copy)
{
	int pufd = atomic_load(&alias->parent->upper_fd), err;
	struct stat pst;
	bool keep;

	if (alias->deleted || ovl_node_has_upper(alias) || pufd < 0)
		return 0;
	/* As for any copy-up: the directory did not change for the user. */
	keep = ovl_fstat(pufd, &pst) == 0;
	err = ovl_link_fd(copy, pufd, alias->name);
	if (err)
		return err;
	if (keep) {
		struct timespec ts[2] = { pst.st_atim, pst.st_mtim };

		utimensat(pufd, "", ts, AT_EMPTY_PATH);
	}
	atomic_store(&alias->aliased, true);
	atomic_store(&alias->has_upper, true);
	return 0;
}

/* Fill SC with the names of its file in lower layer LIDX. */
static int find_aliases(struct ovl_fs *ofs, int lidx, struct alias_scan *sc)
{
	char *path = malloc(PATH_MAX);

	if (!path)
		return -ENOMEM;
	path[0] = '\0';
	scan_dir(ofs->lowers[lidx].root_fd, path, 0, sc, 0);
	free(path);
	return 0;
}

static void free_aliases(struct alias_scan *sc)
{
	for (size_t i = 0; i < sc->n; i++)
		free(sc->paths[i]);
	free(sc->paths);
}

int ovl_lower_alias_visible(struct ovl_fs *ofs, struct ovl_node *node,
			    const struct stat *lst)
{
	struct alias_scan sc = { .dev = lst->st_dev, .ino = lst->st_ino,
				 .want = lst->st_nlink };
	int found = 0, err;
	struct moved mv;

	err = find_aliases(ofs, node->lidx, &sc);
	if (err)
		return err;
	find_moved(ofs, &mv);
	for (size_t i = 0; i < sc.n && !sc.err && !found; i++) {
		struct ovl_node *alias = resolve(ofs, sc.paths[i], &mv);

		if (!alias)
			continue;
		found = alias != node &&
			is_lower_alias(ofs, alias, sc.dev, sc.ino);
		ovl_node_put(ofs, alias);
	}
	free_aliases(&sc);
	free_moved(&mv);
	return sc.err ? sc.err : found;
}

int ovl_link_lower_aliases(struct ovl_fs *ofs, struct ovl_node *node,
			   const struct stat *lst, int copy)
{
	struct alias_scan sc = { .dev = lst->st_dev, .ino = lst->st_ino,
				 .want = lst->st_nlink };
	int err = find_aliases(ofs, node->lidx, &sc);
	struct moved mv;

	if (err)
		return err;
	find_moved(ofs, &mv);
	for (size_t i = 0; i < sc.n && !err && !sc.err; i++) {
		struct ovl_node *alias = resolve(ofs, sc.paths[i], &mv);

		if (!alias)
			continue;	/* hidden in the merged view */
		if (alias != node && is_lower_alias(ofs, alias, sc.dev, sc.ino)) {
			err = ovl_copy_up(ofs, alias->parent);
			if (!err) {
				pthread_rwlock_wrlock(&ofs->ns_lock);
				err = link_alias(alias, copy);
				pthread_rwlock_unlock(&ofs->ns_lock);
			}
			if (!err) {
				ovl_tell_attr_changed(ofs, alias);
				ovl_tell_attr_changed(ofs, alias->parent);
			}
		}
		ovl_node_put(ofs, alias);
	}
	free_aliases(&sc);
	free_moved(&mv);
	return err ? err : sc.err;
}
