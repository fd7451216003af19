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
 * Where a renamed directory took lower path PATH: the nearest ancestor A
 * of NODE whose lower part is a prefix of PATH (a directory that moved
 * by redirect shows its lower names under its new one), with *REST the
 * remainder of PATH. The root (REST = PATH) if none. ns_lock held.
 */
static struct ovl_node *moved_prefix(struct ovl_fs *ofs,
				     struct ovl_node *node, char *path,
				     char **rest)
{
	char *lp = malloc(PATH_MAX);
	struct ovl_node *a;

	*rest = path;
	for (a = node ? node->parent : NULL; lp && a && a->parent;
	     a = a->parent) {
		size_t len;

		if (!ovl_node_lower_visible(a) ||
		    ovl_node_lower_path(ofs, a, lp, PATH_MAX))
			continue;
		len = strlen(lp + 1);
		if (!strncmp(path, lp + 1, len) && path[len] == '/') {
			*rest = path + len + 1;
			break;
		}
	}
	free(lp);
	return a && a->parent ? a : ofs->root;
}

/*
 * The node at relative lower path PATH in the merged view (ref), or NULL:
 * looked up from the root, or under the directory that moved there
 * (moved_prefix) if a lower alias of NODE's file is looked for.
 */
static struct ovl_node *resolve(struct ovl_fs *ofs, char *path,
				struct ovl_node *node)
{
	struct ovl_node *dir, *child = NULL;
	char *save = NULL, *comp;

	pthread_rwlock_rdlock(&ofs->ns_lock);
	dir = moved_prefix(ofs, node, path, &path);
	ovl_node_get(ofs, dir);
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

	err = find_aliases(ofs, node->lidx, &sc);
	if (err)
		return err;
	for (size_t i = 0; i < sc.n && !sc.err && !found; i++) {
		struct ovl_node *alias = resolve(ofs, sc.paths[i], node);

		if (!alias)
			continue;
		found = alias != node &&
			is_lower_alias(ofs, alias, sc.dev, sc.ino);
		ovl_node_put(ofs, alias);
	}
	free_aliases(&sc);
	return sc.err ? sc.err : found;
}

int ovl_link_lower_aliases(struct ovl_fs *ofs, struct ovl_node *node,
			   const struct stat *lst, int copy)
{
	struct alias_scan sc = { .dev = lst->st_dev, .ino = lst->st_ino,
				 .want = lst->st_nlink };
	int err = find_aliases(ofs, node->lidx, &sc);

	if (err)
		return err;
	for (size_t i = 0; i < sc.n && !err && !sc.err; i++) {
		struct ovl_node *alias = resolve(ofs, sc.paths[i], node);

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
	return err ? err : sc.err;
}
