// SPDX-License-Identifier: MIT
/*
 * cmd-compat.c: `ovlfs [-f] [-d] -o lowerdir=...  MOUNTPOINT`, the syntax of
 * mount(8) and fuse-overlayfs (docs/compat.md), turned into a mount.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovlfs.h"
#include "cli.h"

/* ---------------------------------------------------------------------- */
/* The mount(8) / fuse-overlayfs syntax (docs/compat.md) */

static const char compat_usage[] =
"usage: ovlfs [-f] [-d] -o lowerdir=A[:B...][,upperdir=U][,workdir=W][,OPT...]\n"
"             [SOURCE] MOUNTPOINT\n"
"\n"
"The syntax of the kernel's overlayfs and of fuse-overlayfs, as mount(8)\n"
"runs it for 'mount -t fuse.ovlfs' and fstab lines of type fuse.ovlfs\n"
"(SOURCE, the fstab's first field, is shown as the mount's source;\n"
"without it, 'ovlfs'). -o may be repeated and\n"
"may come before or after the other arguments.\n"
"\n"
"  lowerdir=A:B:C   read-only layers, leftmost on top ('\\:' for a colon\n"
"                   in a name, '\\\\' for a backslash, '\\,' for a comma)\n"
"  upperdir=U       the writable layer (must exist); without it the\n"
"                   mount is read-only\n"
"  workdir=W        checked (an existing directory outside the layers)\n"
"                   and otherwise unused: ovlfs needs no work directory\n"
"  ro               read-only mount\n"
"  inode=MODE       virtual (default) or persistent, as for 'ovlfs mount'\n"
"  format=FORMAT    auto (default), oci or kernel\n"
"  log=FILE         as 'ovlfs mount --log FILE'\n"
"  debug            as -d, but stays in the background\n"
"  volatile         no fsync reaches the layers (as the kernel's)\n"
"  volatile_dirty=refuse|discard|keep\n"
"                   an upper a volatile mount left unclean: refused\n"
"                   (default), emptied, or taken as it is\n"
"  io_uring=auto|on|off\n"
"                   the transport, as 'ovlfs mount --io-uring'\n"
"\n"
"FUSE options (allow_other, default_permissions, fsname=, ...) and the\n"
"kernel's mount flags (nosuid, nodev, noexec, ...) are passed on; as\n"
"root, allow_other and suid are added (nodev stays, as in\n"
"fuse-overlayfs; 'dev' and 'nosuid' change that). Options of fuse-overlayfs or the kernel's\n"
"overlayfs that would change what the mount shows are refused.\n"
"\n"
"  -f               stay in the foreground\n"
"  -d, --debug      print every FUSE request; implies -f\n"
"  -h, --help       show this help\n";

struct compat {
	char **lowers;		/* unescaped, topmost first */
	size_t n_lowers;
	char *upper, *work;	/* unescaped, or NULL */
	bool read_only;		/* no upperdir: a read-only merged view */
	bool ro;		/* the "ro" flag was given */
	bool allow_other;	/* given, so not to be added again */
	bool suid_set;		/* suid or nosuid given */
	const char *source;	/* the fstab's SOURCE, or NULL */
	enum ovlfs_format format;
	bool format_set;
};

enum compat_kind {
	CO_LOWER, CO_UPPER, CO_WORK, CO_RO, CO_INODE, CO_FORMAT, CO_LOG,
	CO_DEBUG, CO_VOLATILE, CO_VOLATILE_DIRTY, CO_IO_URING,
	CO_FUSE,	/* libfuse takes it: a FUSE option or a mount flag */
	CO_DROP,	/* mount(8)'s own, or no meaning for a FUSE mount */
	CO_IGNORE,	/* tuning of fuse-overlayfs: no effect on what is shown */
	CO_OFF_ONLY,	/* a feature ovlfs lacks: only its "off" values */
	CO_REDIRECT,	/* redirect_dir=: on|follow, or off|nofollow */
	CO_METACOPY,	/* metacopy=: on or off */
	CO_REFUSE,	/* would change what the mount shows: not implemented */
};

/*
 * NAME ending in '=' or '-' matches by prefix (its value follows), any
 * other exactly. OK: for CO_OFF_ONLY, the accepted values, '|' separated.
 */
static const struct compat_opt {
	const char *name;
	enum compat_kind kind;
	const char *ok;
} compat_opts[] = {
	{ "lowerdir=", CO_LOWER, NULL },
	{ "upperdir=", CO_UPPER, NULL },
	{ "workdir=", CO_WORK, NULL },
	{ "ro", CO_RO, NULL },
	{ "inode=", CO_INODE, NULL },
	{ "format=", CO_FORMAT, NULL },
	{ "log=", CO_LOG, NULL },
	{ "debug", CO_DEBUG, NULL },
	{ "volatile", CO_VOLATILE, NULL },
	{ "volatile_dirty=", CO_VOLATILE_DIRTY, NULL },
	{ "io_uring=", CO_IO_URING, NULL },
	/* What libfuse 3.14's fuse_session_new/mount accept. */
	{ "rw", CO_FUSE, NULL },
	{ "dev", CO_FUSE, NULL },
	{ "nodev", CO_FUSE, NULL },
	{ "suid", CO_FUSE, NULL },
	{ "nosuid", CO_FUSE, NULL },
	{ "exec", CO_FUSE, NULL },
	{ "noexec", CO_FUSE, NULL },
	{ "atime", CO_FUSE, NULL },
	{ "noatime", CO_FUSE, NULL },
	{ "sync", CO_FUSE, NULL },
	{ "async", CO_FUSE, NULL },
	{ "dirsync", CO_FUSE, NULL },
	{ "allow_other", CO_FUSE, NULL },
	{ "allow_root", CO_FUSE, NULL },
	{ "default_permissions", CO_FUSE, NULL },
	{ "auto_unmount", CO_FUSE, NULL },
	{ "fsname=", CO_FUSE, NULL },
	{ "subtype=", CO_FUSE, NULL },
	{ "user=", CO_FUSE, NULL },
	{ "context=", CO_FUSE, NULL },
	{ "fscontext=", CO_FUSE, NULL },
	{ "defcontext=", CO_FUSE, NULL },
	{ "rootcontext=", CO_FUSE, NULL },
	/* mount(8)'s, or flags libfuse 3.14 refuses and FUSE has no use for */
	{ "defaults", CO_DROP, NULL },
	{ "auto", CO_DROP, NULL },
	{ "noauto", CO_DROP, NULL },
	{ "user", CO_DROP, NULL },
	{ "nouser", CO_DROP, NULL },
	{ "users", CO_DROP, NULL },
	{ "owner", CO_DROP, NULL },
	{ "group", CO_DROP, NULL },
	{ "nofail", CO_DROP, NULL },
	{ "_netdev", CO_DROP, NULL },
	{ "x-", CO_DROP, NULL },
	{ "comment=", CO_DROP, NULL },
	{ "relatime", CO_DROP, NULL },
	{ "norelatime", CO_DROP, NULL },
	{ "strictatime", CO_DROP, NULL },
	{ "nostrictatime", CO_DROP, NULL },
	{ "diratime", CO_DROP, NULL },
	{ "nodiratime", CO_DROP, NULL },
	{ "lazytime", CO_DROP, NULL },
	{ "nolazytime", CO_DROP, NULL },
	/* fuse-overlayfs' tuning */
	{ "fsync=", CO_IGNORE, NULL },
	{ "threaded=", CO_IGNORE, NULL },
	{ "fast_ino=", CO_IGNORE, NULL },
	{ "timeout=", CO_IGNORE, NULL },
	{ "writeback=", CO_IGNORE, NULL },
	{ "clone_fd", CO_IGNORE, NULL },
	{ "max_threads=", CO_IGNORE, NULL },
	{ "max_idle_threads=", CO_IGNORE, NULL },
	/* features of the kernel's or fuse-overlayfs, off: what ovlfs does */
	{ "redirect_dir=", CO_REDIRECT, NULL },
	{ "index=", CO_OFF_ONLY, "off" },
	{ "metacopy=", CO_METACOPY, NULL },
	{ "nfs_export=", CO_OFF_ONLY, "off" },
	{ "xino=", CO_OFF_ONLY, "off" },
	{ "noxattrs=", CO_OFF_ONLY, "0" },
	{ "xattr_permissions=", CO_OFF_ONLY, "0" },
	/* would change what the mount shows */
	{ "uidmapping=", CO_REFUSE, NULL },
	{ "gidmapping=", CO_REFUSE, NULL },
	{ "squash_to_root", CO_REFUSE, NULL },
	{ "squash_to_uid=", CO_REFUSE, NULL },
	{ "squash_to_gid=", CO_REFUSE, NULL },
	{ "static_nlink", CO_REFUSE, NULL },
	{ "noacl", CO_REFUSE, NULL },
	{ "plugins=", CO_REFUSE, NULL },
	{ "userxattr", CO_REFUSE, NULL },
	{ "max_read=", CO_REFUSE, NULL },
	{ "blkdev", CO_REFUSE, NULL },
	{ "blksize=", CO_REFUSE, NULL },
};

static const struct compat_opt *compat_find(const char *opt)
{
	size_t i, n;

	for (i = 0; i < sizeof(compat_opts) / sizeof(compat_opts[0]); i++) {
		const char *name = compat_opts[i].name;

		n = strlen(name);
		if (name[n - 1] == '=' || name[n - 1] == '-') {
			if (strncmp(opt, name, n) == 0)
				return &compat_opts[i];
		} else if (strcmp(opt, name) == 0) {
			return &compat_opts[i];
		}
	}
	return NULL;
}

/* Is VAL one of the '|' separated values in LIST? */
static bool in_list(const char *val, const char *list)
{
	size_t n = strlen(val);

	while (list && *list) {
		const char *end = strchrnul(list, '|');

		if ((size_t)(end - list) == n && strncmp(list, val, n) == 0)
			return true;
		list = *end ? end + 1 : NULL;
	}
	return false;
}

/* S with the kernel's escapes undone ("\x" is x), in place. */
static char *unescape(char *s)
{
	char *r = s, *w = s;

	for (; *r; r++) {
		if (*r == '\\' && r[1])
			r++;
		*w++ = *r;
	}
	*w = '\0';
	return s;
}

static void compat_free(struct compat *c)
{
	for (size_t i = 0; i < c->n_lowers; i++)
		free(c->lowers[i]);
	free(c->lowers);
	free(c->upper);
	free(c->work);
	memset(c, 0, sizeof(*c));
}

/*
 * lowerdir=VAL (escapes still in) into C->lowers: -1 to go on, or the exit
 * status. A later lowerdir= replaces an earlier one, as for the kernel.
 */
static int compat_lowers(const char *val, struct compat *c)
{
	const char *p = val, *q;
	char *l, **v;

	for (size_t i = 0; i < c->n_lowers; i++)
		free(c->lowers[i]);
	c->n_lowers = 0;
	for (;;) {
		for (q = p; *q && *q != ':'; q++)
			if (*q == '\\' && q[1])
				q++;
		if (q == p)
			return usage_error(NULL,
					   "lowerdir=%s: empty layer (a ':' at either end or '::')",
					   val);
		l = strndup(p, q - p);
		v = l ? realloc(c->lowers, (c->n_lowers + 1) * sizeof(*v)) : NULL;
		if (!v) {
			free(l);
			err_msg("out of memory");
			return 1;
		}
		c->lowers = v;
		c->lowers[c->n_lowers++] = unescape(l);
		if (!*q)
			return -1;
		p = q + 1;
	}
}

/* A path option's value, unescaped, into *FIELD: -1, or the exit status. */
static int compat_path(const char *opt, const char *val, char **field)
{
	free(*field);
	*field = NULL;
	if (!*val)
		return usage_error(NULL, "%s: empty path", opt);
	*field = strdup(val);
	if (!*field) {
		err_msg("out of memory");
		return 1;
	}
	unescape(*field);
	return -1;
}

/* One option OPT of -o: -1 to go on, or the exit status. */
static int compat_option(char *opt, struct mount_opts *o, struct compat *c)
{
	const struct compat_opt *e = compat_find(opt);
	char *val = strchr(opt, '=');

	/* "" for a flag: only options named with '=' look at it. */
	val = val ? val + 1 : opt + strlen(opt);
	if (!e)
		return usage_error(NULL, "unknown mount option '%s'", opt);
	switch (e->kind) {
	case CO_LOWER:
		return compat_lowers(val, c);
	case CO_UPPER:
		return compat_path("upperdir", val, &c->upper);
	case CO_WORK:
		return compat_path("workdir", val, &c->work);
	case CO_RO:
		c->ro = true;
		return -1;
	case CO_INODE:
		if (!parse_inode_mode(val, &o->inode_mode))
			return usage_error(NULL,
					   "invalid inode mode '%s' (expected virtual or persistent)",
					   val);
		o->inode_mode_set = true;
		return -1;
	case CO_FORMAT:
		if (strcmp(val, "auto") == 0)
			c->format = OVLFS_FORMAT_AUTO;
		else if (strcmp(val, "oci") == 0)
			c->format = OVLFS_FORMAT_OCI;
		else if (strcmp(val, "kernel") == 0)
			c->format = OVLFS_FORMAT_KERNEL;
		else
			return usage_error(NULL,
					   "invalid format '%s' (expected auto, oci or kernel)",
					   val);
		c->format_set = true;
		return -1;
	case CO_LOG:
		if (!*val)
			return usage_error(NULL, "log: empty path");
		o->log_path = unescape(val);
		return -1;
	case CO_DEBUG:
		o->debug = true;
		return -1;
	case CO_VOLATILE:
		o->volatile_mount = true;
		return -1;
	case CO_IO_URING:
		if (!parse_io_uring(val, &o->io_uring))
			return usage_error(NULL,
					   "invalid io_uring '%s' (expected auto, on or off)",
					   val);
		o->io_uring_set = true;
		return -1;
	case CO_VOLATILE_DIRTY:
		if (!parse_volatile_dirty(val, &o->volatile_dirty))
			return usage_error(NULL,
					   "invalid volatile_dirty '%s' (expected refuse, discard or keep)",
					   val);
		return -1;
	case CO_FUSE:
		if (strcmp(opt, "allow_other") == 0)
			c->allow_other = true;
		if (strcmp(opt, "suid") == 0 || strcmp(opt, "nosuid") == 0)
			c->suid_set = true;
		if (!append_fuse_option(&o->fuse_options, opt)) {
			err_msg("out of memory");
			return 1;
		}
		return -1;
	case CO_DROP:
	case CO_IGNORE:
		return -1;
	case CO_OFF_ONLY:
		if (in_list(val, e->ok))
			return -1;
		break;
	case CO_REDIRECT:
		/* ovlfs always follows redirects; "off" stops writing them. */
		if (in_list(val, "on|follow|off|nofollow")) {
			o->no_redirect = in_list(val, "off|nofollow");
			return -1;
		}
		return usage_error(NULL,
				   "invalid redirect_dir '%s' (expected on, follow, off or nofollow)",
				   val);
	case CO_METACOPY:
		if (in_list(val, "on|off")) {
			o->no_metacopy = in_list(val, "off");
			return -1;
		}
		return usage_error(NULL,
				   "invalid metacopy '%s' (expected on or off)",
				   val);
	case CO_REFUSE:
		break;
	}
	return usage_error(NULL,
			   "mount option '%s' is not supported: ovlfs does not implement it",
			   opt);
}

/*
 * fsname=SOURCE into *OPTS, commas and backslashes escaped for libfuse: the
 * fstab's first field shows as the mount's source, as for other mounts.
 * Before the caller's options, so an fsname= given there wins.
 */
static bool append_source(char **opts, const char *source)
{
	char *o = malloc(strlen(source) * 2 + 8), *p;
	bool ok;

	if (!o)
		return false;
	p = o + sprintf(o, "fsname=");
	for (; *source; source++) {
		if (*source == ',' || *source == '\\')
			*p++ = '\\';
		*p++ = *source;
	}
	*p = '\0';
	if (*opts) {
		ok = append_fuse_option(&o, *opts);
		if (ok) {
			free(*opts);
			*opts = o;
		} else {
			free(o);
		}
		return ok;
	}
	*opts = o;
	return true;
}

/* Every option of the joined -o values OPTS: -1, or the exit status. */
static int compat_options(char *opts, struct mount_opts *o, struct compat *c)
{
	char *p = opts, *q;
	bool last = !p || !*p;
	int ret;

	/*
	 * Metacopy is the kernel's opt-in here too: whoever mounts through
	 * this syntax may read the upper itself (containers/storage takes a
	 * mount program's upper as the layer's diff, which would hold a
	 * metacopy file's holes for its data), and the kernel's overlayfs
	 * with its default metacopy=off refuses metacopy files (EPERM).
	 */
	o->no_metacopy = true;
	while (!last) {
		/* A comma ends an option unless escaped ("\,"). */
		for (q = p; *q && *q != ','; q++)
			if (*q == '\\' && q[1])
				q++;
		last = !*q;
		*q = '\0';
		if (*p && (ret = compat_option(p, o, c)) >= 0)
			return ret;
		p = q + 1;
	}
	c->read_only = !c->upper;
	if ((c->ro || c->read_only) &&
	    !append_fuse_option(&o->fuse_options, "ro")) {
		err_msg("out of memory");
		return 1;
	}
	/*
	 * As fuse-overlayfs: root mounts for everyone, as the kernel's
	 * overlayfs does; the kernel checks the modes (the library always
	 * asks for default_permissions).
	 */
	if (geteuid() == 0 && !c->allow_other &&
	    !append_fuse_option(&o->fuse_options, "allow_other")) {
		err_msg("out of memory");
		return 1;
	}
	/*
	 * As fuse-overlayfs and the kernel's overlayfs: setuid programs work
	 * in a container's root (containers/storage passes no "suid"), and
	 * devices stay off (libfuse's nodev) unless "dev" is given.
	 */
	if (geteuid() == 0 && !c->suid_set &&
	    !append_fuse_option(&o->fuse_options, "suid")) {
		err_msg("out of memory");
		return 1;
	}
	if (c->source && !append_source(&o->fuse_options, c->source)) {
		err_msg("out of memory");
		return 1;
	}
	return -1;
}

/* WHAT (PATH) must be an existing directory: 0, or 1 after a message. */
static int need_dir(const char *what, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0) {
		err_msg("%s %s: %s", what, path, strerror(errno));
		return 1;
	}
	if (!S_ISDIR(st.st_mode)) {
		err_msg("%s %s: %s", what, path, strerror(ENOTDIR));
		return 1;
	}
	return 0;
}

/*
 * What the kernel checks before it mounts, with messages naming the
 * layer; the library checks the rest. 0, or 1 after a message.
 */
static int compat_check(const struct mount_opts *o, const struct compat *c)
{
	size_t i;
	int ret = 0;

	for (i = 0; i < c->n_lowers && !ret; i++)
		ret = need_dir("lowerdir", c->lowers[i]);
	if (!ret && c->upper)
		ret = need_dir("upperdir", c->upper);
	if (!ret)
		ret = need_dir("mount point", o->mount_point);
	/*
	 * Unused, but the kernel would refuse one that overlaps a layer, and
	 * so a line that works here works there too: do_mount() checks that.
	 */
	if (!ret && c->work)
		ret = need_dir("workdir", c->work);
	return ret;
}

static int compat_setup(struct ovlfs *fs, const struct compat *c)
{
	size_t i;
	int ret = 0;

	for (i = 1; i < c->n_lowers && !ret; i++)
		ret = ovlfs_add_lower(fs, c->lowers[i]);
	if (!ret && c->read_only)
		ret = ovlfs_set_read_only(fs, true);
	if (!ret && c->format_set)
		ret = ovlfs_set_format(fs, c->format);
	/* compat_check()'s overlap half, now that FS knows the layers. */
	if (!ret && c->work)
		ret = ovlfs_check_apart(fs, "workdir", c->work);
	return ret;
}

/*
 * Is this `ovlfs [SOURCE] MOUNTPOINT -o ...` (ARGV[1] is no command)?
 * The -o is what tells it from a mistyped command.
 */
bool compat_invocation(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "-o", 2) == 0)
			return true;
	return false;
}

int compat_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct mount_opts o = { 0 };
	struct compat c = { 0 };
	char *opts = NULL;
	int nargs = 0, ch, ret = -1;

	optind = 1;
	opterr = 0;
	/* "-": arguments in order, so options may follow MOUNTPOINT. */
	while (ret < 0 &&
	       (ch = getopt_long(argc, argv, "-:o:fdh", longopts, NULL)) != -1) {
		switch (ch) {
		case 1:
			/* With two, the first is the fstab's source. */
			if (++nargs > 2)
				ret = usage_error(NULL, "too many arguments");
			if (nargs == 2)
				c.source = o.mount_point;
			o.mount_point = optarg;
			break;
		case 'o':
			if (!append_fuse_option(&opts, optarg)) {
				err_msg("out of memory");
				ret = 1;
			}
			break;
		case 'f':
			o.foreground = true;
			break;
		case 'd':
			o.debug = o.foreground = true;
			break;
		case 'h':
			fputs(compat_usage, stdout);
			ret = 0;
			break;
		case ':':
		default:
			ret = option_error(NULL, ch, argv);
		}
	}
	if (ret >= 0)
		goto out;
	if (!o.mount_point) {
		ret = usage_error(NULL, "missing MOUNTPOINT");
		goto out;
	}
	ret = compat_options(opts, &o, &c);
	if (ret >= 0)
		goto out;
	if (!c.n_lowers || !c.lowers) {
		ret = usage_error(NULL, "missing lowerdir= option");
		goto out;
	}
	if (compat_check(&o, &c)) {
		ret = 1;
		goto out;
	}
	o.lower = c.lowers[0];
	o.upper = c.upper;
	o.compat = &c;
	o.apply_compat = compat_setup;
	ret = o.foreground ? mount_foreground(&o) : mount_daemon(&o);
out:
	compat_free(&c);
	free(o.fuse_options);
	free(opts);
	return ret;
}
