// SPDX-License-Identifier: MIT
/*
 * cli.h: the private header of tools/, what the files of the ovlfs command
 * share. One file per command or family (cmd-*.c, dispatched from the
 * table in ovlfs.c), the rest: options.c (option parsing and messages),
 * log.c (--log and syslog), progress.c (the progress line).
 */
#ifndef OVLFS_CLI_H
#define OVLFS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ovlfs.h"

/* The exit status for bad usage (1 is a failed operation). */
#define EXIT_USAGE 2

/* ---------------------------------------------------------------------- */
/* ovlfs.c: the command table */

/* One subcommand: its cmd_* function gets the command's own argc/argv. */
struct command {
	const char *name;
	int (*fn)(const struct command *cmd, int argc, char **argv);
	const char *summary;
	const char *usage;
};

/* The table entry of command NAME (for its usage text), or NULL. */
const struct command *find_command(const char *name);

/* The subcommands, each in the cmd-*.c file of its family. */
int cmd_mount(const struct command *cmd, int argc, char **argv);	/* cmd-mount.c */
int cmd_umount(const struct command *cmd, int argc, char **argv);	/* cmd-mount.c */
int cmd_run(const struct command *cmd, int argc, char **argv);	/* cmd-run.c */
int cmd_diff(const struct command *cmd, int argc, char **argv);	/* cmd-diff.c */
int cmd_commit(const struct command *cmd, int argc, char **argv);	/* cmd-finish.c */
int cmd_discard(const struct command *cmd, int argc, char **argv);	/* cmd-finish.c */
int cmd_recover(const struct command *cmd, int argc, char **argv);	/* cmd-finish.c */
int cmd_flatten(const struct command *cmd, int argc, char **argv);	/* cmd-layers.c */
int cmd_convert(const struct command *cmd, int argc, char **argv);	/* cmd-layers.c */
int cmd_export(const struct command *cmd, int argc, char **argv);	/* cmd-tar.c */
int cmd_apply(const struct command *cmd, int argc, char **argv);	/* cmd-tar.c */

/* ---------------------------------------------------------------------- */
/* options.c: messages */

/* "ovlfs: <message>" and a newline on stderr. */
void err_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Bad usage of command CMD (NULL: of ovlfs itself); returns 2. */
int usage_error(const struct command *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * The usage error for what getopt just rejected (C: ':' a missing
 * argument, else an unknown option), for CMD (NULL: the compat syntax).
 */
int option_error(const struct command *cmd, int c, char **argv);

/* The library's message for FS, or a generic one built from ERR. */
const char *fs_error(const struct ovlfs *fs, int err, char *buf, size_t len);

/* Print "ovlfs: <library message>", or WHAT and ERR if there is none; 1. */
int report_failure(const struct ovlfs *fs, int err, const char *what);

/* ---------------------------------------------------------------------- */
/* options.c: option parsing */

/* Long options without a short form. */
enum {
	OPT_NO_PASSTHROUGH = 1000,
	OPT_LOWER,
	OPT_READ_ONLY,
	OPT_FORMAT,
	OPT_INTO,
	OPT_TO,
	OPT_LOG,
	OPT_VOLATILE,
	OPT_VOLATILE_DIRTY,
	OPT_IO_URING,
	OPT_NO_REDIRECT_DIR,
	OPT_NO_METACOPY,
};

/*
 * Lower layers: --lower A:B:C, leftmost on top, as the kernel's lowerdir=
 * (a backslash escapes a colon or itself); repeated --lower append.
 */
struct lowers {
	char **v;
	unsigned n;
};

/* The extras of the mount(8) syntax; its fields are cmd-compat.c's. */
struct compat;

/* What mount, run and the mount(8) syntax ask of a mount. */
struct mount_opts {
	const char *lower;
	struct lowers lowers;	 /* --lower; lower is then lowers.v[0] */
	const char *mount_point; /* NULL: library default */
	const char *upper;	 /* NULL: library default */
	const char *into;	 /* --into, or NULL */
	enum ovlfs_inode_mode inode_mode;
	bool inode_mode_set;
	enum ovlfs_format format;
	char *fuse_options; /* joined -o values, NULL if none */
	bool no_passthrough;
	bool no_redirect;	/* -o redirect_dir=off|nofollow */
	bool no_metacopy;	/* --no-metacopy, -o metacopy=off */
	enum ovlfs_io_uring io_uring;	/* --io-uring, -o io_uring= */
	bool io_uring_set;
	bool read_only;
	bool volatile_mount;	/* --volatile, -o volatile */
	enum ovlfs_volatile_dirty volatile_dirty;
	bool foreground;
	bool debug;
	const char *log_path;		/* --log, or NULL */
	const struct compat *compat;	/* the mount(8) syntax's extras */
	/* Applies COMPAT's extra layers, read-only and format to the handle
	   before it mounts (cmd-compat.c's compat_setup); 0 or -errno. */
	int (*apply_compat)(struct ovlfs *fs, const struct compat *c);
	/* Called by do_mount with the handle set up, just before it mounts
	   (cmd-run.c: the watchdog learns the mount point); may be NULL. */
	void (*before_mount)(struct ovlfs *fs, void *arg);
	void *before_mount_arg;
};

/* A command's getopt loop when it takes only --help: -1, or the status. */
int parse_help_only(const struct command *cmd, int argc, char **argv);

/* Free L's layers and empty it. */
void lowers_free(struct lowers *l);

/* Split SPEC into L; 0, or -EINVAL for an empty layer, -ENOMEM. */
int lowers_add(struct lowers *l, const char *spec);

/* Add the layers of L beneath FS's first (L->v[0]); 0 or -errno. */
int add_lowers(struct ovlfs *fs, const struct lowers *l);

/* "oci" or "kernel" into *F; false for anything else. */
bool parse_format(const char *s, enum ovlfs_format *f);

/* "virtual" or "persistent" into *MODE; false for anything else. */
bool parse_inode_mode(const char *s, enum ovlfs_inode_mode *mode);

/* "auto", "on" or "off" into *MODE; false for anything else. */
bool parse_io_uring(const char *s, enum ovlfs_io_uring *mode);

/* "refuse", "discard" or "keep" into *W; false for anything else. */
bool parse_volatile_dirty(const char *s, enum ovlfs_volatile_dirty *w);

/* Append OPT to the comma separated *OPTS; false when out of memory. */
bool append_fuse_option(char **opts, const char *opt);

/* An option shared by mount and run into O: -1 when taken, or the status. */
int overlay_option(const struct command *cmd, int c, struct mount_opts *o);

/* Free what O's options allocated (-o values, --lower layers). */
void mount_opts_free(struct mount_opts *o);

/* ---------------------------------------------------------------------- */
/* cmd-mount.c: making and serving a mount */

/* Set in the background process of a mount; owned by cmd-mount.c. */
extern bool in_daemon;

/* Create the handle from O and mount it; NULL with a message in ERR. */
struct ovlfs *do_mount(const struct mount_opts *o, char *err, size_t errlen);

/* Mount O and serve it in this process until unmounted; the status. */
int mount_foreground(const struct mount_opts *o);

/* Mount O, serve it from a background process; the status once it is up. */
int mount_daemon(const struct mount_opts *o);

/* ---------------------------------------------------------------------- */
/* cmd-compat.c: the mount(8) / fuse-overlayfs syntax */

/* Is ARGV `ovlfs [SOURCE] MOUNTPOINT -o ...` rather than a command? */
bool compat_invocation(int argc, char **argv);

/* ovlfs in the mount(8) syntax (the whole argv); the exit status. */
int compat_main(int argc, char **argv);


/* ---------------------------------------------------------------------- */
/* log.c: --log FILE, or syslog in the background */

/* Open FILE for --log: 0 or -errno. */
int log_open(const char *path);

/* Route FS's log lines as O asks, just before the mount; 0 or -errno. */
int log_attach(struct ovlfs *fs, const struct mount_opts *o);

/* In the daemon once the mount is up: libfuse's lines to syslog too. */
void log_daemon_started(const struct mount_opts *o);

/* All of BUF to FD, across EINTR and short writes: 0, or -1 and errno. */
int write_all(int fd, const void *buf, size_t len);

/* ---------------------------------------------------------------------- */
/* progress.c */

/* Show progress of ovlfs_finish()/ovlfs_recover() on a terminal. */
void progress_begin(struct ovlfs *fs, bool quiet);

/* End the progress line, if one is drawn. */
void progress_end(void);

/* ---------------------------------------------------------------------- */
/* cmd-finish.c: the options and handle of the offline commands */

/* Options of commit, discard, recover and diff. */
enum {
	FIN_UPPER = 1 << 0,
	FIN_ATOMIC = 1 << 1,
	FIN_QUIET = 1 << 2,
	FIN_JSON = 1 << 3,
	FIN_LAYERS = 1 << 4,	/* --lower, --into */
	FIN_DEST = 1 << 5,	/* a DEST argument after LOWER */
	FIN_FORMAT = 1 << 6,	/* --format */
	FIN_TO = 1 << 7,	/* --to */
};

/* What parse_fin_opts found. */
struct fin_opts {
	const char *lower;
	struct lowers lowers;	/* --lower; lower is then lowers.v[0] */
	const char *upper; /* NULL: library default */
	const char *into;  /* --into, or NULL */
	const char *dest;  /* FIN_DEST */
	enum ovlfs_format format, to;
	bool atomic, quiet, json;
};

/* The FIN_* options in ALLOWED and LOWER into O: -1, or the exit status. */
int parse_fin_opts(const struct command *cmd, unsigned allowed, int argc,
		   char **argv, struct fin_opts *o);

/* A handle for O's layers, upper and --into; NULL after a message. */
struct ovlfs *open_handle(struct fin_opts *o);

/* ---------------------------------------------------------------------- */
/* cmd-diff.c: counting (and printing) the changes, for diff and run */

/* The counts of a diff, and where its lines go. */
struct diff_state {
	FILE *out;	/* NULL: only count */
	bool json;
	bool started;	/* JSON: the opening is written */
	uint64_t added, modified, deleted, renamed, bytes;
};

/* ovlfs_diff()'s callback: count E, print it to D->out as text or JSON. */
int diff_cb(const struct ovlfs_diff_entry *e, void *arg);

/* The summary line of D ("N added, ...") to OUT. */
void put_summary(FILE *out, const struct diff_state *d);

#endif /* OVLFS_CLI_H */
