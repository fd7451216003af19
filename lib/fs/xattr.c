/*
 * xattr.c: extended attributes of merged objects.
 *
 * Reads go to the upper object if there is one, else the lower; changes copy
 * up first. ovlfs's own bookkeeping (the origin of a copied-up file, the
 * format version) lives in "*.ovlfs.*" xattrs of the upper and never shows
 * through the mount, nor can users set it.
 *
 * O_PATH fds cannot take f*xattr calls, so the object is named through
 * /proc/self/fd/N: the magic link resolves to the object the fd holds
 * (even a symlink), with no path walk a symlink in a layer could divert.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "fs/fs.h"

int ovl_getxattr(struct ovl_fs *ofs, struct ovl_node *node, const char *name,
		 void *buf, size_t size)
{
	int fd, n;

	bool caps = !strcmp(name, "security.capability");
	unsigned int gen = atomic_load(&node->xgen);

	if (ovl_xattr_is_private(name) ||
	    (caps && ovl_xattr_none(node, &node->caps_none)))
		return -ENODATA;
	fd = ovl_node_fd_get(ofs, node, OVL_TOP);
	if (fd < 0)
		return fd;
	n = (int)ovl_fd_getxattr(fd, name, buf, size);
	ovl_node_fd_put(node, fd);
	if (caps && n == -ENODATA)
		ovl_xattr_set_none(&node->caps_none, gen);
	return n;
}

/* The list of FD without ovlfs's private names, as listxattr(2) gives it. */
static int list_public(int fd, char *buf, size_t size)
{
	ssize_t len, out = 0;
	char *all = NULL;

	/* Fetch the whole list (it may change between calls), then filter. */
	for (;;) {
		len = ovl_fd_listxattr(fd, NULL, 0);
		if (len <= 0) {
			free(all);
			return (int)len;
		}
		free(all);
		all = malloc(len);
		if (!all)
			return -ENOMEM;
		len = ovl_fd_listxattr(fd, all, len);
		if (len != -ERANGE)
			break;
	}
	if (len < 0) {
		free(all);
		return (int)len;
	}
	for (char *n = all; n < all + len; n += strlen(n) + 1) {
		size_t l = strlen(n) + 1;

		if (ovl_xattr_is_private(n))
			continue;
		if (size) {
			if (out + l > size) {
				free(all);
				return -ERANGE;
			}
			memcpy(buf + out, n, l);
		}
		out += l;
	}
	free(all);
	return (int)out;
}

int ovl_listxattr(struct ovl_fs *ofs, struct ovl_node *node, char *buf,
		  size_t size)
{
	int fd = ovl_node_fd_get(ofs, node, OVL_TOP), n;

	if (fd < 0)
		return fd;
	n = list_public(fd, buf, size);
	ovl_node_fd_put(node, fd);
	return n;
}

/*
 * Set NAME to VALUE (SIZE bytes, FLAGS) on NODE's upper object, or remove
 * NAME if REMOVE; a lower object is copied up with the change made to its
 * copy, so one the upper refuses leaves nothing behind.
 */
static int change_upper(struct ovl_fs *ofs, struct ovl_node *node,
			const char *name, const void *value, size_t size,
			int flags, bool remove)
{
	struct ovl_xchange xc = { .name = name, .value = value, .size = size,
				  .flags = flags, .remove = remove };
	char path[1024];
	int fd, err;

	/*
	 * What XATTR_CREATE and XATTR_REPLACE refuse needs no copy-up to
	 * know: one made and thrown away changed the parent's mtime.
	 */
	if (!remove && (flags & (XATTR_CREATE | XATTR_REPLACE)) &&
	    !ovl_node_has_upper(node)) {
		err = ovl_getxattr(ofs, node, name, NULL, 0);
		if ((flags & XATTR_REPLACE) && err == -ENODATA)
			return err;
		if ((flags & XATTR_CREATE) && err >= 0)
			return -EEXIST;
	}
	err = ovl_copy_up_xattr(ofs, node, &xc);

	if (err && !xc.tried)
		return err;
	if (!xc.tried) {
		fd = ovl_node_fd_get(ofs, node, OVL_UPPER);
		if (fd < 0)
			return fd;
		err = remove ? ovl_fd_removexattr(fd, name)
			     : ovl_fd_setxattr(fd, name, value, size, flags);
		ovl_node_fd_put(node, fd);
	}
	/* Remembered absences (ovl_xattr_none) are stale from now on. */
	atomic_fetch_add(&node->xgen, 1);
	/*
	 * What the kernel let through and the upper refused (no ACL support,
	 * no room, a value it will not take): say which, and where. Not the
	 * answers XATTR_CREATE, XATTR_REPLACE and removal ask for.
	 */
	if (err && err != -EEXIST && err != -ENODATA) {
		ovl_node_path(ofs, node, path, sizeof(path));
		ovl_log(ofs->pub, OVLFS_LOG_WARNING, "%s %s on %s: %s",
			remove ? "removexattr" : "setxattr", name, path,
			strerror(-err));
	}
	return err;
}

int ovl_setxattr(struct ovl_fs *ofs, struct ovl_node *node, const char *name,
		 const void *value, size_t size, int flags)
{
	if (ovl_xattr_is_private(name))
		return -EPERM;
	return change_upper(ofs, node, name, value, size, flags, false);
}

int ovl_removexattr(struct ovl_fs *ofs, struct ovl_node *node,
		    const char *name)
{
	int err;

	if (ovl_xattr_is_private(name))
		return -EPERM;
	/* Nothing to copy up for if the attribute is not there at all. */
	err = ovl_getxattr(ofs, node, name, NULL, 0);
	/*
	 * The kernel removes an ACL also to set an empty one, which a local
	 * filesystem takes as done when there is none.
	 */
	if (err == -ENODATA && !strncmp(name, "system.posix_acl_", 17))
		return 0;
	if (err < 0)
		return err;
	return change_upper(ofs, node, name, NULL, 0, 0, true);
}
