// SPDX-License-Identifier: MIT
/*
 * options.c: what the commands share to read their arguments and to say
 * what went wrong: the messages (err_msg, usage_error, report_failure),
 * --help alone, the layer list of --lower, the values of --format,
 * --inode-mode and --volatile-dirty, and the options mount and run share.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ovlfs.h"
#include "cli.h"

/* ---------------------------------------------------------------------- */
/* Messages */

void err_msg(const char *fmt, ...)
{
	va_list ap;

	fputs("ovlfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Bad usage of command CMD (NULL: of ovlfs itself); returns 2. */
int usage_error(const struct command *cmd, const char *fmt, ...)
{
	va_list ap;

	if (fmt) {
		fputs("ovlfs: ", stderr);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	if (cmd)
		fprintf(stderr, "try 'ovlfs %s --help'\n", cmd->name);
	else
		fputs("try 'ovlfs --help'\n", stderr);
	return EXIT_USAGE;
}

/* The text of the bad option getopt just rejected, for messages. */
static const char *bad_option(char **argv, char *buf, size_t len)
{
	if (optopt) {
		snprintf(buf, len, "-%c", optopt);
		return buf;
	}
	return argv[optind - 1];
}

int option_error(const struct command *cmd, int c, char **argv)
{
	char obuf[8];

	if (c == ':')
		return usage_error(cmd, "option '%s' needs an argument",
				   argv[optind - 1]);
	return usage_error(cmd, "unknown option '%s'",
			   bad_option(argv, obuf, sizeof(obuf)));
}

/* The library's message for FS, or a generic one built from ERR. */
const char *fs_error(const struct ovlfs *fs, int err, char *buf, size_t len)
{
	const char *msg = fs ? ovlfs_error(fs) : "";

	if (msg && *msg)
		return msg;
	snprintf(buf, len, "%s", strerror(err < 0 ? -err : err));
	return buf;
}

/* Print "ovlfs: <library message>", or WHAT and ERR if there is none. */
int report_failure(const struct ovlfs *fs, int err, const char *what)
{
	char buf[128];
	const char *msg = fs_error(fs, err, buf, sizeof(buf));

	if (msg == buf)
		err_msg("%s: %s", what, buf);
	else
		err_msg("%s", msg);
	return 1;
}

/* ---------------------------------------------------------------------- */
/* help */

/*
 * getopt_long loop helper for commands that only take --help: returns -1 to
 * go on, or the exit status to return.
 */
int parse_help_only(const struct command *cmd, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(cmd->usage, stdout);
			return 0;
		default:
			return option_error(cmd, c, argv);
		}
	}
	return -1;
}

/* ---------------------------------------------------------------------- */
/* Layers and option values */

void lowers_free(struct lowers *l)
{
	for (unsigned i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* Split SPEC into L; 0, or -EINVAL for an empty layer, -ENOMEM. */
int lowers_add(struct lowers *l, const char *spec)
{
	const char *s = spec;

	for (;;) {
		char *one = malloc(strlen(s) + 1), **v;
		size_t k = 0;

		if (!one)
			return -ENOMEM;
		for (; *s && *s != ':'; s++) {
			if (*s == '\\' && s[1])
				s++;
			one[k++] = *s;
		}
		one[k] = '\0';
		v = k ? realloc(l->v, (l->n + 1) * sizeof(*v)) : NULL;
		if (!v) {
			free(one);
			return k ? -ENOMEM : -EINVAL;
		}
		v[l->n++] = one;
		l->v = v;
		if (!*s)
			return 0;
		s++;
	}
}

/* A word of an option's value and the value it stands for. */
struct choice {
	const char *name;
	int value;
};

/* The value of S among the N CHOICES into *V; false if S is none. */
static bool parse_choice(const char *s, const struct choice *c, size_t n,
			 int *v)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(s, c[i].name) == 0) {
			*v = c[i].value;
			return true;
		}
	return false;
}

#define PARSE_CHOICE(s, table, out)                                         \
	({                                                                  \
		int v_;                                                     \
		bool ok_ = parse_choice((s), (table),                       \
					sizeof(table) / sizeof((table)[0]),     \
					&v_);                                   \
		if (ok_)                                                    \
			*(out) = v_;                                        \
		ok_;                                                        \
	})

bool parse_format(const char *s, enum ovlfs_format *f)
{
	static const struct choice c[] = {
		{ "oci", OVLFS_FORMAT_OCI }, { "kernel", OVLFS_FORMAT_KERNEL },
	};

	return PARSE_CHOICE(s, c, f);
}

/* Add the layers of L beneath FS's first (L->v[0]); 0 or -errno. */
int add_lowers(struct ovlfs *fs, const struct lowers *l)
{
	int ret = 0;

	for (unsigned i = 1; i < l->n && !ret; i++)
		ret = ovlfs_add_lower(fs, l->v[i]);
	return ret;
}

bool parse_io_uring(const char *s, enum ovlfs_io_uring *mode)
{
	static const struct choice c[] = {
		{ "auto", OVLFS_IO_URING_AUTO },
		{ "on", OVLFS_IO_URING_ON },
		{ "off", OVLFS_IO_URING_OFF },
	};

	return PARSE_CHOICE(s, c, mode);
}

bool parse_volatile_dirty(const char *s, enum ovlfs_volatile_dirty *w)
{
	static const struct choice c[] = {
		{ "refuse", OVLFS_VOLATILE_DIRTY_REFUSE },
		{ "discard", OVLFS_VOLATILE_DIRTY_DISCARD },
		{ "keep", OVLFS_VOLATILE_DIRTY_KEEP },
	};

	return PARSE_CHOICE(s, c, w);
}

bool parse_inode_mode(const char *s, enum ovlfs_inode_mode *mode)
{
	static const struct choice c[] = {
		{ "virtual", OVLFS_INODE_VIRTUAL },
		{ "persistent", OVLFS_INODE_PERSISTENT },
	};

	return PARSE_CHOICE(s, c, mode);
}

/* Append OPT to the comma separated *OPTS; false when out of memory. */
bool append_fuse_option(char **opts, const char *opt)
{
	size_t old = *opts ? strlen(*opts) : 0;
	char *p;

	if (!*opt)
		return true;
	p = realloc(*opts, old + strlen(opt) + 2);
	if (!p)
		return false;
	if (old)
		p[old++] = ',';
	strcpy(p + old, opt);
	*opts = p;
	return true;
}

/* ---------------------------------------------------------------------- */
/* The options of mount and run */

void mount_opts_free(struct mount_opts *o)
{
	free(o->fuse_options);
	o->fuse_options = NULL;
	lowers_free(&o->lowers);
}

/*
 * An option shared by mount and run (-u, -i, -o) into O: -1 when taken,
 * else the exit status to return (the caller frees O's options).
 */
int overlay_option(const struct command *cmd, int c, struct mount_opts *o)
{
	switch (c) {
	case 'u':
		o->upper = optarg;
		return -1;
	case 'i':
		if (!parse_inode_mode(optarg, &o->inode_mode))
			return usage_error(
				cmd,
				"invalid inode mode '%s' (expected virtual or persistent)",
				optarg);
		o->inode_mode_set = true;
		return -1;
	case OPT_NO_PASSTHROUGH:
		o->no_passthrough = true;
		return -1;
	case OPT_NO_REDIRECT_DIR:
		o->no_redirect = true;
		return -1;
	case OPT_NO_METACOPY:
		o->no_metacopy = true;
		return -1;
	case OPT_IO_URING:
		if (!parse_io_uring(optarg, &o->io_uring))
			return usage_error(
				cmd, "invalid --io-uring '%s' (expected auto, on or off)",
				optarg);
		o->io_uring_set = true;
		return -1;
	case OPT_LOWER:
		switch (lowers_add(&o->lowers, optarg)) {
		case 0:
			o->lower = o->lowers.v[0];
			return -1;
		case -EINVAL:
			return usage_error(cmd, "empty layer in --lower '%s'",
					   optarg);
		default:
			err_msg("out of memory");
			return 1;
		}
	case OPT_READ_ONLY:
		o->read_only = true;
		return -1;
	case OPT_FORMAT:
		if (!parse_format(optarg, &o->format))
			return usage_error(
				cmd, "invalid format '%s' (expected oci or kernel)",
				optarg);
		return -1;
	case OPT_INTO:
		o->into = optarg;
		return -1;
	case OPT_LOG:
		o->log_path = optarg;
		return -1;
	case OPT_VOLATILE:
		o->volatile_mount = true;
		return -1;
	case OPT_VOLATILE_DIRTY:
		if (!parse_volatile_dirty(optarg, &o->volatile_dirty))
			return usage_error(
				cmd,
				"invalid --volatile-dirty '%s' (expected refuse, discard or keep)",
				optarg);
		return -1;
	default:	/* 'o' */
		if (!append_fuse_option(&o->fuse_options, optarg)) {
			err_msg("out of memory");
			return 1;
		}
		return -1;
	}
}
