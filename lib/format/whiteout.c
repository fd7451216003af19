/*
 * whiteout.c: the markers ovlfs keeps in the upper (docs/format.md).
 *
 * OCI format (FMT NULL or !kernel): a lower name X is hidden by an empty
 * regular file ".wh.X" (OCI image layer format). A name of 252..255 bytes
 * leaves no room for the prefix within NAME_MAX; its whiteout is
 * ".wh..wh.lng.<sha256(X) in hex>" and holds X itself as content, so a
 * reader can verify it and commit knows which name to delete. A directory
 * that must not show its lower counterpart holds ".wh..wh..opq".
 *
 * Kernel format (the kernel's overlayfs): the whiteout of X is a 0/0
 * character device named X, and an opaque directory carries the xattr
 * FMT->opaque_xattr = "y".
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nettle/sha2.h>

#include "format/format.h"

void ovl_sha256(const void *data, size_t len, uint8_t out[32])
{
	struct sha256_ctx ctx;

	sha256_init(&ctx);
	sha256_update(&ctx, len, data);
	sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

bool ovl_wh_name(const char *name, char *buf)
{
	size_t len = strlen(name);
	uint8_t h[32];

	if (len + OVL_WH_PREFIX_LEN <= NAME_MAX) {
		/* NOLINTNEXTLINE(bugprone-not-null-terminated-result): the next memcpy adds NAME and its NUL */
		memcpy(buf, OVL_WH_PREFIX, OVL_WH_PREFIX_LEN);
		memcpy(buf + OVL_WH_PREFIX_LEN, name, len + 1);
		return false;
	}
	ovl_sha256(name, len, h);
	strcpy(buf, OVL_LONGWH_PREFIX);
	for (int i = 0; i < 32; i++)
		sprintf(buf + strlen(OVL_LONGWH_PREFIX) + 2 * i, "%02x", h[i]);
	return true;
}

int ovl_wh_long_target(int dirfd, const char *whname, char *buf)
{
	int fd = openat(dirfd, whname, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, NAME_MAX + 1);
	close(fd);
	if (n < 0)
		return -errno;
	if (n == 0 || n > NAME_MAX || memchr(buf, '\0', n) ||
	    memchr(buf, '/', n))
		return -EUCLEAN;
	buf[n] = '\0';
	return 0;
}

struct ovl_fmt ovl_fmt_of(bool kernel)
{
	/*
	 * As the kernel does: trusted.* where it may be used (root, not in a
	 * user namespace), else user.* (its userxattr mode).
	 */
	bool trusted = ovl_global_sys_admin();

	return (struct ovl_fmt){
		.kernel = kernel,
		.opaque_xattr = trusted ? "trusted.overlay.opaque" :
					  "user.overlay.opaque",
		.redirect_xattr = kernel ? (trusted ? "trusted.overlay.redirect" :
						      "user.overlay.redirect") :
				  trusted ? OVL_XATTR_REDIRECT_TRUSTED :
					    OVL_XATTR_REDIRECT_USER,
		.metacopy_xattr = kernel ? (trusted ? "trusted.overlay.metacopy" :
						      "user.overlay.metacopy") :
				  trusted ? OVL_XATTR_METACOPY_TRUSTED :
					    OVL_XATTR_METACOPY_USER,
	};
}

static bool kernel_fmt(const struct ovl_fmt *f)
{
	return f && f->kernel;
}

int ovl_wh_exists(const struct ovl_fmt *f, int dirfd, const char *name)
{
	char wh[NAME_MAX + 1], target[NAME_MAX + 2];
	struct stat st;
	bool is_long;
	int err;

	if (kernel_fmt(f)) {
		if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return errno == ENOENT ? 0 : -errno;
		return ovl_is_kernel_wh(&st);
	}
	is_long = ovl_wh_name(name, wh);
	if (fstatat(dirfd, wh, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISREG(st.st_mode))
		return 0;
	if (!is_long)
		return 1;
	/* A hash match alone is not proof: compare the recorded name. */
	err = ovl_wh_long_target(dirfd, wh, target);
	if (err)
		return err == -EUCLEAN ? 0 : err;
	return strcmp(target, name) == 0;
}

#define KWH_TMP OVL_TMP_PREFIX "wh"

/*
 * Kernel format: NAME becomes a whiteout. An entry standing there is
 * replaced in one step (a directory by exchange, then removed), so no
 * instant shows the lower again. 1 if an entry was replaced, 0 or -errno.
 */
static int kernel_wh_create(int dirfd, const char *name)
{
	struct stat st;
	int err;

	if (mknodat(dirfd, name, S_IFCHR | 0000, 0) == 0)
		return 0;
	if (errno != EEXIST)
		return -errno;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (ovl_is_kernel_wh(&st))
		return 0;
	/* Callers hold ns_lock for writing: one temporary name will do. */
	unlinkat(dirfd, KWH_TMP, 0);
	if (mknodat(dirfd, KWH_TMP, S_IFCHR | 0000, 0) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode)) {
		if (renameat(dirfd, KWH_TMP, dirfd, name) < 0)
			goto out_errno;
		return 1;
	}
	if (renameat2(dirfd, KWH_TMP, dirfd, name, RENAME_EXCHANGE) < 0)
		goto out_errno;
	err = ovl_remove_tree(dirfd, KWH_TMP);
	return err ? err : 1;

out_errno:
	err = -errno;
	unlinkat(dirfd, KWH_TMP, 0);
	return err;
}

int ovl_wh_create(const struct ovl_fmt *f, int dirfd, const char *name)
{
	char wh[NAME_MAX + 1];
	bool is_long;
	size_t len = strlen(name);
	int fd, err = 0;

	if (kernel_fmt(f))
		return kernel_wh_create(dirfd, name);
	is_long = ovl_wh_name(name, wh);
	/* An empty marker in one call (rm -rf makes one per lower file). */
	if (!is_long) {
		if (mknodat(dirfd, wh, S_IFREG | 0000, 0) == 0 || errno == EEXIST)
			return 0;
		if (errno != EPERM && errno != EINVAL && errno != EOPNOTSUPP)
			return -errno;
	}
	fd = openat(dirfd, wh, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
		    O_CLOEXEC, 0000);
	if (fd < 0)
		return errno == EEXIST ? 0 : -errno;
	if (is_long && write(fd, name, len) != (ssize_t)len)
		err = errno ? -errno : -EIO;
	if (close(fd) < 0 && !err)
		err = -errno;
	if (err)
		unlinkat(dirfd, wh, 0);
	return err;
}

int ovl_wh_remove(const struct ovl_fmt *f, int dirfd, const char *name)
{
	char wh[NAME_MAX + 1];

	if (kernel_fmt(f)) {
		struct stat st;

		/* Only the marker: a real entry may stand at NAME already. */
		if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return errno == ENOENT ? 0 : -errno;
		if (ovl_is_kernel_wh(&st) && unlinkat(dirfd, name, 0) < 0 &&
		    errno != ENOENT)
			return -errno;
		return 0;
	}
	ovl_wh_name(name, wh);
	if (unlinkat(dirfd, wh, 0) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int ovl_opaque_get(const struct ovl_fmt *f, int dirfd)
{
	struct stat st;

	if (kernel_fmt(f)) {
		char v[2];
		ssize_t n = ovl_fd_getxattr(dirfd, f->opaque_xattr, v, sizeof(v));

		if (n == -ENODATA || n == -EOPNOTSUPP || n == -ERANGE)
			return 0;
		return n < 0 ? (int)n : n == 1 && v[0] == 'y';
	}
	if (fstatat(dirfd, OVL_OPAQUE_NAME, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	return S_ISREG(st.st_mode);
}

int ovl_opaque_set(const struct ovl_fmt *f, int dirfd)
{
	struct stat st;
	bool keep;
	int fd;

	if (kernel_fmt(f))
		return ovl_fd_setxattr(dirfd, f->opaque_xattr, "y", 1, 0);
	/* A marker is bookkeeping, not a change the user made: same times. */
	keep = fstatat(dirfd, "", &st, AT_EMPTY_PATH) == 0;
	fd = openat(dirfd, OVL_OPAQUE_NAME,
		    O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0000);
	if (fd < 0)
		return -errno;
	close(fd);
	if (keep) {
		struct timespec ts[2] = { st.st_atim, st.st_mtim };

		utimensat(dirfd, "", ts, AT_EMPTY_PATH);
	}
	return 0;
}

int ovl_opaque_clear(const struct ovl_fmt *f, int dirfd)
{
	struct timespec ts[2];
	struct stat st;
	int err;

	if (kernel_fmt(f)) {
		err = ovl_fd_removexattr(dirfd, f->opaque_xattr);
		return err == -ENODATA || err == -EOPNOTSUPP ? 0 : err;
	}
	if (fstatat(dirfd, "", &st, AT_EMPTY_PATH) < 0)
		return -errno;
	if (unlinkat(dirfd, OVL_OPAQUE_NAME, 0) < 0)
		return errno == ENOENT ? 0 : -errno;
	/* As in ovl_opaque_set: bookkeeping, not a change to the directory. */
	ts[0] = st.st_atim;
	ts[1] = st.st_mtim;
	utimensat(dirfd, "", ts, AT_EMPTY_PATH);
	return 0;
}

bool ovl_redirect_valid(const char *v)
{
	const char *s = v, *next;

	if (!v[0] || strlen(v) > OVL_REDIRECT_MAX)
		return false;
	if (v[0] != '/')
		return !strchr(v, '/') && strcmp(v, ".") && strcmp(v, "..");
	/*
	 * Absolute: "/a/b", each component a name. The kernel refuses empty
	 * ones; "." and ".." it could not look up, and they would leave the
	 * layer.
	 */
	while (*s == '/') {
		s++;
		next = strchrnul(s, '/');
		if (next == s || (next - s == 1 && s[0] == '.') ||
		    (next - s == 2 && s[0] == '.' && s[1] == '.'))
			return false;
		s = next;
	}
	return true;
}

/* The xattr a redirect is written to: F's, or this process's OCI one. */
static const char *redirect_xattr(const struct ovl_fmt *f)
{
	if (f && f->redirect_xattr)
		return f->redirect_xattr;
	return ovl_global_sys_admin() ? OVL_XATTR_REDIRECT_TRUSTED :
					OVL_XATTR_REDIRECT_USER;
}

/* ovl_redirect_get of NAME in DIRFD ("": DIRFD itself). */
/*
 * Xattr NAME of DIRFD's child CHILD (or of DIRFD itself, CHILD ""), into
 * BUF of SIZE bytes. An OCI upper written without privilege holds USER
 * instead of the trusted one, which a privileged reader (commit as root)
 * must see too.
 */
static ssize_t marker_read(const struct ovl_fmt *f, int dirfd, const char *child,
			   const char *name, const char *trusted,
			   const char *user, char *buf, size_t size)
{
	ssize_t n = child[0] ? ovl_at_getxattr(dirfd, child, name, buf, size)
			     : ovl_fd_getxattr(dirfd, name, buf, size);

	if (n == -ENODATA && !kernel_fmt(f) && !strcmp(name, trusted))
		n = child[0] ? ovl_at_getxattr(dirfd, child, user, buf, size)
			     : ovl_fd_getxattr(dirfd, user, buf, size);
	return n;
}

static int redirect_read(const struct ovl_fmt *f, int dirfd, const char *name,
			 char *buf)
{
	ssize_t n = marker_read(f, dirfd, name, redirect_xattr(f),
				OVL_XATTR_REDIRECT_TRUSTED,
				OVL_XATTR_REDIRECT_USER, buf, OVL_REDIRECT_MAX);

	if (n == -ENODATA || n == -EOPNOTSUPP || n == -ERANGE || n == 0)
		return 0;
	if (n < 0)
		return (int)n;
	buf[n] = '\0';
	return ovl_redirect_valid(buf) && (size_t)n == strlen(buf);
}

int ovl_redirect_get(const struct ovl_fmt *f, int dirfd, char *buf)
{
	return redirect_read(f, dirfd, "", buf);
}

int ovl_redirect_set(const struct ovl_fmt *f, int dirfd, const char *v)
{
	return ovl_fd_setxattr(dirfd, redirect_xattr(f), v, strlen(v), 0);
}

int ovl_redirect_clear(const struct ovl_fmt *f, int dirfd)
{
	int err = ovl_fd_removexattr(dirfd, redirect_xattr(f));

	if (!kernel_fmt(f) && (!err || err == -ENODATA))
		err = ovl_fd_removexattr(dirfd, OVL_XATTR_REDIRECT_USER);
	return err == -ENODATA || err == -EOPNOTSUPP ? 0 : err;
}

/* The xattr a metacopy marker is written to, as redirect_xattr. */
static const char *metacopy_xattr(const struct ovl_fmt *f)
{
	if (f && f->metacopy_xattr)
		return f->metacopy_xattr;
	return ovl_global_sys_admin() ? OVL_XATTR_METACOPY_TRUSTED :
					OVL_XATTR_METACOPY_USER;
}

int ovl_metacopy_get(const struct ovl_fmt *f, int dirfd, const char *name)
{
	/* A digest (verity) is 1 + 4 + 64 bytes at most; ERANGE is "set". */
	char buf[128];
	ssize_t n = marker_read(f, dirfd, name, metacopy_xattr(f),
				OVL_XATTR_METACOPY_TRUSTED,
				OVL_XATTR_METACOPY_USER, buf, sizeof(buf));

	if (n == -ENODATA || n == -EOPNOTSUPP)
		return 0;
	if (n < 0 && n != -ERANGE)
		return (int)n;
	return 1;
}

int ovl_metacopy_redirect(const struct ovl_fmt *f, int dirfd, const char *name,
			  char *redir)
{
	int r = ovl_metacopy_get(f, dirfd, name);

	redir[0] = '\0';
	if (r <= 0)
		return r;
	r = redirect_read(f, dirfd, name, redir);
	if (r < 0)
		return r;
	if (!r)
		redir[0] = '\0';	/* none, or one not valid: ignored */
	return 1;
}

int ovl_metacopy_set(const struct ovl_fmt *f, int fd)
{
	return ovl_fd_setxattr(fd, metacopy_xattr(f), "", 0, 0);
}

int ovl_metacopy_clear(const struct ovl_fmt *f, int fd)
{
	int err = ovl_fd_removexattr(fd, metacopy_xattr(f));

	if (!kernel_fmt(f) && (!err || err == -ENODATA))
		err = ovl_fd_removexattr(fd, OVL_XATTR_METACOPY_USER);
	return err == -ENODATA || err == -EOPNOTSUPP ? 0 : err;
}

/*
 * Is marker DE of upper directory DFD a whiteout lookup would honour? Then
 * the hidden name goes to *TARGET (pointing into DE or into BUF). A plain
 * whiteout hides the rest of its name; a long one the name it holds, but
 * only if that name really has this marker, as in ovl_wh_exists: lookup,
 * readdir, diff and commit must all read an upper the same way.
 */
int ovl_wh_target(int dfd, const struct ovl_dirent *de, char *buf,
		  const char **target)
{
	char expect[NAME_MAX + 1];
	struct stat st;
	int err;

	*target = NULL;
	if (de->type == DT_UNKNOWN) {
		if (fstatat(dfd, de->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			return errno == ENOENT ? 0 : -errno;
		if (!S_ISREG(st.st_mode))
			return 0;
	} else if (de->type != DT_REG) {
		return 0;
	}
	if (strncmp(de->name, OVL_META_PREFIX, OVL_META_PREFIX_LEN)) {
		*target = de->name + OVL_WH_PREFIX_LEN;
		return 0;
	}
	if (strncmp(de->name, OVL_LONGWH_PREFIX, strlen(OVL_LONGWH_PREFIX)))
		return 0;	/* opaque marker or temp debris */
	err = ovl_wh_long_target(dfd, de->name, buf);
	if (err)
		return err == -EUCLEAN || err == -ENOENT ? 0 : err;
	/* NOLINTNEXTLINE(readability-suspicious-call-argument): BUF holds the target name here */
	if (ovl_wh_name(buf, expect) && !strcmp(expect, de->name))
		*target = buf;
	return 0;
}

int ovl_marker(const struct ovl_fmt *f, int dfd, const struct ovl_dirent *de,
	       char *buf, const char **target)
{
	struct stat st;
	int err;

	*target = NULL;
	if (ovl_is_wh_name(de->name)) {
		/* In the kernel format, only ovlfs's own (temporary) names. */
		if (kernel_fmt(f))
			return 1;
		err = ovl_wh_target(dfd, de, buf, target);
		return err ? err : 1;
	}
	if (!kernel_fmt(f) || (de->type != DT_CHR && de->type != DT_UNKNOWN))
		return 0;
	if (fstatat(dfd, de->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 1 : -errno;
	if (!ovl_is_kernel_wh(&st))
		return 0;
	*target = de->name;
	return 1;
}

int ovl_open_dir_abs(int root, const char *path)
{
	char comp[NAME_MAX + 1];
	const char *s = path, *e;
	int fd = dup(root), next;

	if (fd < 0)
		return -errno;
	while (*s) {
		while (*s == '/')
			s++;
		e = strchrnul(s, '/');
		if (e == s)
			break;
		if ((size_t)(e - s) > NAME_MAX) {
			close(fd);
			return -ENOENT;
		}
		memcpy(comp, s, e - s);
		comp[e - s] = '\0';
		next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			      O_CLOEXEC);
		close(fd);
		if (next < 0)
			return -errno;
		fd = next;
		s = e;
	}
	return fd;
}
