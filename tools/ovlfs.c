// SPDX-License-Identifier: MIT
/*
 * ovlfs: the command-line tool.
 *
 * This file only turns argv into calls of the library (include/ovlfs.h);
 * it has no filesystem logic of its own. Every subcommand is one entry of
 * the `commands` table below: a name, a function taking the subcommand's
 * own argc/argv (argv[0] is the command name), a one-line summary and a
 * usage text. A new command is one function and one table row.
 *
 * Exit status: 0 success, 1 the operation failed (a message
 * "ovlfs: <what failed>" on stderr), 2 bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <fuse_log.h>
#include <inttypes.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "ovlfs.h"

#define EXIT_USAGE 2

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
	const char *usage;
};

static const struct command *find_command(const char *name);
static int cmd_help(int argc, char **argv);
static int cmd_mount(int argc, char **argv);
static int cmd_umount(int argc, char **argv);
static int cmd_run(int argc, char **argv);
static int cmd_diff(int argc, char **argv);
static int cmd_commit(int argc, char **argv);
static int cmd_discard(int argc, char **argv);
static int cmd_recover(int argc, char **argv);
static int cmd_flatten(int argc, char **argv);
static int cmd_convert(int argc, char **argv);
static int cmd_export(int argc, char **argv);
static int cmd_apply(int argc, char **argv);

/* Logging and the mount(8) syntax, at the end of the file. */
struct mount_opts;
struct compat;
static int log_open(const char *path);
static int log_attach(struct ovlfs *fs, const struct mount_opts *o);
static void log_daemon_started(const struct mount_opts *o);
static int compat_setup(struct ovlfs *fs, const struct compat *c);
static bool compat_invocation(int argc, char **argv);
static int compat_main(int argc, char **argv);

/* clang-format off */
static const struct command commands[] = {
	{
		.name = "mount",
		.fn = cmd_mount,
		.summary = "mount an overlay of LOWER with a writable upper",
		.usage =
"usage: ovlfs mount [OPTIONS] LOWER [MOUNTPOINT]\n"
"       ovlfs mount [OPTIONS] --lower A:B:C [MOUNTPOINT]\n"
"\n"
"Mount LOWER (never modified) under a writable upper directory at\n"
"MOUNTPOINT. Changes land in the upper; deletions are recorded as\n"
"'.wh.<name>' whiteouts. The upper and the mount point are created if\n"
"missing. Without -f the command returns once the mount is live and the\n"
"filesystem keeps running in the background until 'ovlfs umount'.\n"
"\n"
"Defaults for LOWER /b/x: upper /b/x.upper, mount point /b/x.mountpoint.\n"
"\n"
"options:\n"
"  -u, --upper DIR          upper (writable) directory\n"
"  -i, --inode-mode MODE    'virtual' (default): inode numbers handed out\n"
"                           in order of first sight; 'persistent': derived\n"
"                           from the layers, stable across remounts\n"
"      --lower A:B:C        several lower layers instead of LOWER, leftmost\n"
"                           on top (as the kernel's lowerdir=; '\\:' is a\n"
"                           colon in a name); may be repeated\n"
"      --format FORMAT      markers written to the upper and read in every\n"
"                           layer: 'oci' (.wh.NAME files; the default for a\n"
"                           new upper) or 'kernel' (0/0 character devices,\n"
"                           overlay.opaque xattrs); default: the upper's own\n"
"      --read-only          no upper at all: a read-only merged view\n"
"  -o OPTS                  extra FUSE mount options, comma separated\n"
"                           (may be given several times)\n"
"      --no-passthrough     serve all file I/O through ovlfs (by default,\n"
"                           with CAP_SYS_ADMIN on Linux 6.9+, the kernel\n"
"                           reads and writes upper files directly)\n"
"      --volatile           no fsync reaches the layers (fast, but a crash\n"
"                           may lose changes); an upper left by a volatile\n"
"                           mount that was not cleanly unmounted is refused\n"
"      --volatile-dirty WHAT  what to do with such an upper: 'refuse' (the\n"
"                           default), 'discard' (empty it, then mount) or\n"
"                           'keep' (mount it as it is)\n"
"  -f, --foreground         stay in the foreground until unmounted;\n"
"                           SIGINT/SIGTERM unmount cleanly\n"
"  -d, --debug              print every FUSE request to stderr (in the\n"
"                           background, stderr is kept open for this), or\n"
"                           to the --log file\n"
"      --log FILE           append what happens while mounted (copy-up\n"
"                           failures, fallbacks) to FILE, one line each:\n"
"                           'YYYY-MM-DDTHH:MM:SS.mmm LEVEL message'; by\n"
"                           default it goes to syslog in the background,\n"
"                           to stderr with -f\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "umount",
		.fn = cmd_umount,
		.summary = "unmount an ovlfs mount point",
		.usage =
"usage: ovlfs umount MOUNTPOINT\n"
"\n"
"Unmount the ovlfs mount at MOUNTPOINT. The process serving it exits; the\n"
"upper directory and the mount point are left in place. Other filesystems\n"
"are refused, and so is a mount made by another user.\n"
"\n"
"options:\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "run",
		.fn = cmd_run,
		.summary = "run a command in an overlay of LOWER, then finish it",
		.usage =
"usage: ovlfs run [OPTIONS] LOWER -- COMMAND [ARGS...]\n"
"       ovlfs run [OPTIONS] --lower A:B:C -- COMMAND [ARGS...]\n"
"\n"
"Mount an overlay of LOWER (in this process, in the foreground), run\n"
"COMMAND with the mount point as its working directory, wait for it,\n"
"unmount, print a summary of the changes to stderr (as the last line of\n"
"'ovlfs diff'), then finish the upper as --on-exit says.\n"
"\n"
"Defaults for LOWER /b/x: upper /b/x.upper, mount point /b/x.mountpoint;\n"
"a mount point created by ovlfs is removed again once empty.\n"
"\n"
"While COMMAND runs, ovlfs ignores SIGINT and SIGQUIT (COMMAND gets them\n"
"from the terminal) and passes SIGTERM and SIGHUP on to COMMAND; the\n"
"mount is always unmounted before ovlfs exits.\n"
"\n"
"options:\n"
"  -u, --upper DIR          upper (writable) directory\n"
"  -i, --inode-mode MODE    'virtual' (default) or 'persistent', as for\n"
"                           'ovlfs mount'\n"
"      --lower A:B:C        several lower layers instead of LOWER, leftmost\n"
"                           on top (as the kernel's lowerdir=; '\\:' is a\n"
"                           colon in a name); may be repeated\n"
"      --format FORMAT      markers written to the upper and read in every\n"
"                           layer: 'oci' (.wh.NAME files; the default for a\n"
"                           new upper) or 'kernel' (0/0 character devices,\n"
"                           overlay.opaque xattrs); default: the upper's own\n"
"      --into DIR           with several lowers, the one --on-exit commit\n"
"                           merges the upper into\n"
"  -o OPTS                  extra FUSE mount options, comma separated\n"
"                           (may be given several times)\n"
"      --no-passthrough     serve all file I/O through ovlfs (by default,\n"
"                           with CAP_SYS_ADMIN on Linux 6.9+, the kernel\n"
"                           reads and writes upper files directly)\n"
"      --log FILE           append what happens while mounted to FILE, as\n"
"                           for 'ovlfs mount' (by default: stderr)\n"
"  --on-exit ACTION         what to do with the changes once COMMAND ended:\n"
"                             ask            ask on the terminal (the\n"
"                                            default when stdin and stderr\n"
"                                            are terminals)\n"
"                             preserve       keep the upper for a later\n"
"                                            mount, commit or discard (the\n"
"                                            default otherwise)\n"
"                             discard        delete the upper; the lower\n"
"                                            is unchanged\n"
"                             commit         merge the upper into the\n"
"                                            lower, then delete it\n"
"                             commit-atomic  as commit, all or nothing\n"
"                                            even across a crash\n"
"                           'ask' reads the answer from stdin; end of input,\n"
"                           SIGINT or SIGTERM at the prompt mean preserve.\n"
"                           After SIGTERM or SIGHUP during COMMAND, 'ask'\n"
"                           preserves without asking.\n"
"  -h, --help               show this help\n"
"\n"
"Exit status: COMMAND's (128+N if it was killed by signal N; 127 if it\n"
"could not be found, 126 if it could not be started); 1 if the mount or\n"
"the action failed (the upper is then kept); 2 on bad usage.\n",
	},
	{
		.name = "diff",
		.fn = cmd_diff,
		.summary = "list what committing the upper would change in LOWER",
		.usage =
"usage: ovlfs diff [OPTIONS] LOWER\n"
"\n"
"List every path that committing the upper into LOWER would change, in\n"
"path order (a directory before its contents), one per line:\n"
"\n"
"  A /path                  added\n"
"  D /path                  deleted\n"
"  M /path (WHAT, ...)      modified; WHAT is one or more of content,\n"
"                           mode, owner, mtime, xattr, type\n"
"\n"
"then a summary line such as\n"
"\n"
"  3 added, 1 modified, 2 deleted; 12345 bytes added or changed\n"
"\n"
"where the bytes are the total size of the regular files added, changed\n"
"in content or replacing another type. An added or deleted directory is\n"
"listed with everything inside it. Works on a mounted overlay too.\n"
"\n"
"Paths are escaped so that one path is one line: a backslash is written\n"
"as \\\\, a newline as \\n, and every other control byte, every byte that is\n"
"not part of valid UTF-8, and the bytes of C1 controls (U+0080-U+009F),\n"
"line and paragraph separators and invisible format characters (zero\n"
"width, bidi controls, U+FEFF) as \\xHH. Nothing else is quoted.\n"
"\n"
"With --json the output is one JSON object:\n"
"\n"
"  {\"changes\": [{\"path\": \"/etc/hostname\", \"change\": \"M\",\n"
"                \"what\": [\"content\", \"mtime\"], \"type\": \"file\",\n"
"                \"size\": 7}, ...],\n"
"   \"summary\": {\"added\": 0, \"modified\": 1, \"deleted\": 0,\n"
"               \"bytes\": 7}}\n"
"\n"
"\"change\" is A, M or D; \"what\" is empty unless M; \"type\" is one of\n"
"file, dir, symlink, fifo, socket, chardev, blockdev (the new type, or the\n"
"old one for D); \"size\" likewise. Strings are valid JSON: valid UTF-8 is\n"
"written as it is (U+2028 and U+2029 as \\u2028 and \\u2029), control\n"
"characters are escaped as JSON requires, and a byte that is not part of\n"
"valid UTF-8 is written as \\u00XX with XX its value (so \\u0080-\\u00ff\n"
"in the text always stands for one raw byte; a JSON parser turns it into\n"
"the character U+00XX, i.e. decodes such names as Latin-1).\n"
"\n"
"The JSON is printed only once complete: a diff that fails midway prints\n"
"nothing on stdout. Without an upper the diff is empty. Refused while\n"
"LOWER holds an interrupted 'commit --atomic' (run 'ovlfs recover').\n"
"\n"
"The exit status is 0 whether or not there are changes.\n"
"\n"
"options:\n"
"  -u, --upper DIR          upper directory (default LOWER.upper)\n"
"      --lower A:B:C        the lower layers (leftmost on top) instead of\n"
"                           LOWER, as given to mount\n"
"      --into DIR           with several lowers, the one to work on\n"
"  --json                   print JSON instead of text\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "commit",
		.fn = cmd_commit,
		.summary = "merge the upper of LOWER into LOWER and remove it",
		.usage =
"usage: ovlfs commit [OPTIONS] LOWER\n"
"\n"
"Merge the upper into LOWER: whiteouts delete, opaque directories replace,\n"
"new and changed entries are written with their metadata. The upper is\n"
"removed only once everything succeeded; if the commit fails the upper\n"
"stays and the merged view is unchanged, so it can be retried. Refused\n"
"while the upper or LOWER is used by an ovlfs mount.\n"
"\n"
"Without --atomic a crash during the commit may leave part of it applied.\n"
"With --atomic it is all or nothing: after a crash or power cut, recovery\n"
"('ovlfs recover LOWER', or automatically the next mount or commit of\n"
"LOWER) yields the old LOWER or the fully committed one, never a mix.\n"
"An interrupted atomic commit is recovered before committing. Without an\n"
"upper there is nothing to commit (said on stderr, exit 0).\n"
"\n"
"options:\n"
"  --atomic                 commit all or nothing, even across a crash\n"
"  -u, --upper DIR          upper directory (default LOWER.upper)\n"
"      --lower A:B:C        the lower layers (leftmost on top) instead of\n"
"                           LOWER, as given to mount\n"
"      --into DIR           with several lowers, the one to work on\n"
"  -q, --quiet              no progress line (shown only when stderr is a\n"
"                           terminal)\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "discard",
		.fn = cmd_discard,
		.summary = "delete the upper of LOWER, leaving LOWER as it is",
		.usage =
"usage: ovlfs discard [OPTIONS] LOWER\n"
"\n"
"Delete the upper directory (whatever the modes inside it); LOWER is not\n"
"touched. Refused while the upper is used by an ovlfs mount.\n"
"\n"
"options:\n"
"  -u, --upper DIR          upper directory (default LOWER.upper)\n"
"      --lower A:B:C        the lower layers (leftmost on top) instead of\n"
"                           LOWER, as given to mount\n"
"      --into DIR           with several lowers, the one to work on\n"
"  -q, --quiet              no progress line (shown only when stderr is a\n"
"                           terminal)\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "recover",
		.fn = cmd_recover,
		.summary = "finish or roll back an interrupted atomic commit",
		.usage =
"usage: ovlfs recover [OPTIONS] LOWER\n"
"\n"
"Finish or roll back an interrupted 'ovlfs commit --atomic' of LOWER:\n"
"rolled forward if the commit had reached its commit point, else rolled\n"
"back. Prints 'recovered an interrupted commit of LOWER', or\n"
"'nothing to recover' if there was none. The next mount or commit of\n"
"LOWER also recovers by itself. A committed upper is removed only if it\n"
"is the one the commit was for: LOWER.upper, or DIR given with --upper.\n"
"\n"
"options:\n"
"  -u, --upper DIR          the upper the interrupted commit was for\n"
"  -q, --quiet              print nothing on success, and no progress\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "flatten",
		.fn = cmd_flatten,
		.summary = "write the merged view of the layers to a new directory",
		.usage =
"usage: ovlfs flatten [OPTIONS] LOWER DEST\n"
"       ovlfs flatten [OPTIONS] --lower A:B:C DEST\n"
"\n"
"Write the merged view of every lower layer and the upper (if it exists)\n"
"to DEST, a directory that must not exist yet: what a mount would show,\n"
"with owners, modes, times, xattrs and hard links. Neither the layers nor\n"
"the upper change. A DEST that cannot be completed is removed again.\n"
"\n"
"options:\n"
"  -u, --upper DIR          upper directory (default LOWER.upper)\n"
"      --lower A:B:C        the lower layers (leftmost on top) instead of\n"
"                           LOWER, as given to mount\n"
"      --format FORMAT      the layers' markers: 'oci' or 'kernel' (default:\n"
"                           the upper's own, else oci)\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "convert",
		.fn = cmd_convert,
		.summary = "rewrite an upper's markers in the oci or the kernel format",
		.usage =
"usage: ovlfs convert --to FORMAT [OPTIONS] LOWER\n"
"\n"
"Rewrite the whiteouts and opaque markers of the upper of LOWER in FORMAT:\n"
"'oci' (.wh.NAME files, .wh..wh..opq) or 'kernel' (0/0 character devices,\n"
"the overlay.opaque xattr), so the kernel's overlayfs (or OCI tooling)\n"
"reads it. The merged view does not change. Refused while the upper is\n"
"mounted. An interrupted conversion is finished by running it again.\n"
"\n"
"options:\n"
"      --to FORMAT          'oci' or 'kernel'\n"
"  -u, --upper DIR          upper directory (default LOWER.upper)\n"
"      --lower A:B:C        the lower layers instead of LOWER, as given to\n"
"                           mount\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "export",
		.fn = cmd_export,
		.summary = "write the upper of LOWER as an OCI layer tarball",
		.usage =
"usage: ovlfs export --tar FILE [OPTIONS] LOWER\n"
"\n"
"Write the upper of LOWER to FILE ('-': standard output) as an OCI\n"
"image-layer tarball (POSIX pax): every upper entry with its owner, mode,\n"
"mtime and xattrs, whiteouts as '.wh.NAME', opaque directories as\n"
"'.wh..wh..opq', in path order; hard links between upper files stay hard\n"
"links. Reads either upper format (OCI or kernel overlayfs). ovlfs's own\n"
"bookkeeping is left out. Refused while the upper is used by an ovlfs\n"
"mount. FILE is replaced only once the tarball is complete (written beside\n"
"it as .FILE.export-XXXXXX, then renamed over it), so a failed export\n"
"leaves it as it was; a symlink at FILE stays and its target is replaced.\n"
"\n"
"options:\n"
"      --tar FILE           the tarball to write ('-': standard output)\n"
"  -u, --upper DIR          upper directory (default LOWER.upper)\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "apply",
		.fn = cmd_apply,
		.summary = "apply an OCI layer tarball to the upper (or LOWER)",
		.usage =
"usage: ovlfs apply --tar FILE [OPTIONS] LOWER\n"
"\n"
"Apply the OCI image-layer tarball FILE ('-': standard input; gzip, zstd,\n"
"xz and bzip2 compressed too) on top of the upper of LOWER, which is\n"
"created if missing: '.wh.NAME' deletes NAME, '.wh..wh..opq' hides what\n"
"lies beneath a directory, other entries replace what the upper has at\n"
"their path (a directory over a directory merges). Markers are written in\n"
"the upper's own format. Entries with absolute paths or '..', reserved\n"
"'.wh.' names, hard links to anything but an earlier entry, a path\n"
"through a symlink, paths longer than PATH_MAX or names longer than\n"
"NAME_MAX, and (in a kernel-format upper) 0/0 character devices are\n"
"refused; the tar is read through first, so such a tar writes nothing.\n"
"\n"
"With --commit the tarball is applied to LOWER instead: into a fresh\n"
"upper next to LOWER, which is then committed as 'ovlfs commit' does. If\n"
"the tarball is refused, LOWER is not touched.\n"
"Refused while the upper or LOWER is used by an ovlfs mount.\n"
"\n"
"options:\n"
"      --tar FILE           the tarball to read ('-': standard input)\n"
"      --commit             apply to LOWER, not to the upper\n"
"  -u, --upper DIR          upper directory (default LOWER.upper)\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "help",
		.fn = cmd_help,
		.summary = "show help for ovlfs or one command",
		.usage =
"usage: ovlfs help [COMMAND]\n"
"\n"
"Show the help of COMMAND (the same as 'ovlfs COMMAND --help'), or without\n"
"COMMAND the list of commands (the same as 'ovlfs --help').\n"
"\n"
"options:\n"
"  -h, --help               show this help\n",
	},
};
/* clang-format on */

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* ---------------------------------------------------------------------- */
/* Messages */

static void err_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void err_msg(const char *fmt, ...)
{
	va_list ap;

	fputs("ovlfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void main_usage(FILE *out)
{
	size_t i;

	fputs("usage: ovlfs [--help] [--version] COMMAND [ARGS]\n"
	      "\n"
	      "A user-space overlay (copy-on-write) filesystem.\n"
	      "\n"
	      "commands:\n",
	      out);
	for (i = 0; i < N_COMMANDS; i++)
		fprintf(out, "  %-10s %s\n", commands[i].name,
			commands[i].summary);
	fputs("\n'ovlfs COMMAND --help' describes one command.\n"
	      "\n"
	      "Also, as mount(8) and fuse-overlayfs have it (docs/compat.md):\n"
	      "  ovlfs [-f] [-d] -o lowerdir=A[:B...][,upperdir=U,workdir=W]"
	      " MOUNTPOINT\n"
	      "  mount -t fuse.ovlfs ovlfs MOUNTPOINT -o lowerdir=A,...\n",
	      out);
}

/* Bad usage of command CMD (NULL: of ovlfs itself); returns 2. */
static int usage_error(const struct command *cmd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int usage_error(const struct command *cmd, const char *fmt, ...)
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

/* The library's message for FS, or a generic one built from ERR. */
static const char *fs_error(const struct ovlfs *fs, int err, char *buf,
			    size_t len)
{
	const char *msg = fs ? ovlfs_error(fs) : "";

	if (msg && *msg)
		return msg;
	snprintf(buf, len, "%s", strerror(err < 0 ? -err : err));
	return buf;
}

/* ---------------------------------------------------------------------- */
/* help */

static int parse_help_only(const struct command *cmd, int argc, char **argv);

static int cmd_help(int argc, char **argv)
{
	const struct command *cmd;
	int ret;

	/* As every command: --help describes it, other options are errors. */
	ret = parse_help_only(find_command("help"), argc, argv);
	if (ret >= 0)
		return ret;
	if (argc - optind < 1) {
		main_usage(stdout);
		return 0;
	}
	if (argc - optind > 1)
		return usage_error(find_command("help"), "too many arguments");
	cmd = find_command(argv[optind]);
	if (!cmd)
		return usage_error(NULL, "unknown command '%s'", argv[optind]);
	fputs(cmd->usage, stdout);
	return 0;
}

/*
 * getopt_long loop helper for commands that only take --help: returns -1 to
 * go on, or the exit status to return.
 */
static int parse_help_only(const struct command *cmd, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char obuf[8];
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'h':
			fputs(cmd->usage, stdout);
			return 0;
		default:
			return usage_error(cmd, "unknown option '%s'",
					   bad_option(argv, obuf,
						      sizeof(obuf)));
		}
	}
	return -1;
}

/* ---------------------------------------------------------------------- */
/* umount */

static int cmd_umount(int argc, char **argv)
{
	const struct command *cmd = find_command("umount");
	char err[512] = "";
	int ret;

	ret = parse_help_only(cmd, argc, argv);
	if (ret >= 0)
		return ret;
	if (argc - optind != 1)
		return usage_error(cmd, argc - optind < 1 ?
						"missing MOUNTPOINT" :
						"too many arguments");

	ret = ovlfs_unmount_path(argv[optind], err, sizeof(err));
	if (ret < 0) {
		if (err[0])
			err_msg("%s", err);
		else
			err_msg("cannot unmount %s: %s", argv[optind],
				strerror(-ret));
		return 1;
	}
	return 0;
}

/* ---------------------------------------------------------------------- */
/* mount */

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
};

/*
 * Lower layers: --lower A:B:C, leftmost on top, as the kernel's lowerdir=
 * (a backslash escapes a colon or itself); repeated --lower append.
 */
struct lowers {
	char **v;
	unsigned n;
};

static void lowers_free(struct lowers *l)
{
	for (unsigned i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* Split SPEC into L; 0, or -EINVAL for an empty layer, -ENOMEM. */
static int lowers_add(struct lowers *l, const char *spec)
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

static bool parse_format(const char *s, enum ovlfs_format *f)
{
	if (strcmp(s, "oci") == 0)
		*f = OVLFS_FORMAT_OCI;
	else if (strcmp(s, "kernel") == 0)
		*f = OVLFS_FORMAT_KERNEL;
	else
		return false;
	return true;
}

/* Add the layers of L beneath FS's first (L->v[0]); 0 or -errno. */
static int add_lowers(struct ovlfs *fs, const struct lowers *l)
{
	int ret = 0;

	for (unsigned i = 1; i < l->n && !ret; i++)
		ret = ovlfs_add_lower(fs, l->v[i]);
	return ret;
}

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
	bool read_only;
	bool volatile_mount;	/* --volatile, -o volatile */
	enum ovlfs_volatile_dirty volatile_dirty;
	bool foreground;
	bool debug;
	const char *log_path;		/* --log, or NULL */
	const struct compat *compat;	/* the mount(8) syntax's extras */
};

static void mount_opts_free(struct mount_opts *o)
{
	free(o->fuse_options);
	o->fuse_options = NULL;
	lowers_free(&o->lowers);
}

/*
 * Signals that end a mount cleanly. They are blocked in every thread
 * (blocked before ovlfs_mount() starts the library's threads, which inherit
 * the mask) and taken by sigwait() in signal_thread only.
 */
static sigset_t stop_signals;
static atomic_bool serving_done;
static bool in_daemon;		/* the background process of mount_daemon */
static char *served_mount_point;

static void *signal_thread(void *arg)
{
	char err[512];
	int sig, ret;

	(void)arg;
	for (;;) {
		if (sigwait(&stop_signals, &sig) != 0)
			continue;
		if (atomic_load(&serving_done))
			return NULL;
		if (sig == SIGUSR1)
			continue; /* only used to wake us at the end */
		/*
		 * Unmount from outside the handle: ovlfs_wait() runs on the
		 * main thread and calls on one handle must not overlap. The
		 * unmount makes ovlfs_wait() return, and the main thread
		 * frees the handle.
		 */
		err[0] = '\0';
		ret = ovlfs_unmount_path(served_mount_point, err, sizeof(err));
		if (ret < 0 && !atomic_load(&serving_done))
			err_msg("%s", err[0] ? err : "unmount failed");
	}
}

/*
 * Serve a mounted FS until it is unmounted, from outside or through one of
 * the stop signals. Frees FS. Returns the exit status.
 */
static int serve(struct ovlfs *fs)
{
	pthread_t thr;
	int ret, tret;

	served_mount_point = strdup(ovlfs_mount_point(fs));
	if (!served_mount_point) {
		err_msg("out of memory");
		ovlfs_free(fs);
		return 1;
	}
	tret = pthread_create(&thr, NULL, signal_thread, NULL);
	if (tret != 0)
		err_msg("cannot start the signal thread: %s; "
			"signals will not unmount",
			strerror(tret));

	ret = ovlfs_wait(fs);
	/*
	 * Free first: the signal thread may be inside ovlfs_unmount_path(),
	 * which may wait until this handle let go of the upper.
	 */
	ovlfs_free(fs);
	atomic_store(&serving_done, true);
	if (tret == 0) {
		struct timespec ts;

		pthread_kill(thr, SIGUSR1);
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 5;
		if (pthread_timedjoin_np(thr, NULL, &ts) != 0)
			return ret < 0 ? 1 : 0; /* exit() ends it */
	}
	free(served_mount_point);
	served_mount_point = NULL;
	return ret < 0 ? 1 : 0;
}

/*
 * Create the handle from OPTS and mount it. On failure write the message
 * into ERR and return NULL.
 */
static struct ovlfs *do_mount(const struct mount_opts *o, char *err,
			      size_t errlen)
{
	struct ovlfs *fs;
	const char *msg;
	char buf[128];
	int ret = 0;

	fs = ovlfs_new(o->lower);
	if (!fs) {
		snprintf(err, errlen, "%s: %s", o->lower, strerror(errno));
		return NULL;
	}
	if (o->upper && (ret = ovlfs_set_upper(fs, o->upper)) < 0)
		goto fail;
	if (o->mount_point &&
	    (ret = ovlfs_set_mount_point(fs, o->mount_point)) < 0)
		goto fail;
	if (o->inode_mode_set &&
	    (ret = ovlfs_set_inode_mode(fs, o->inode_mode)) < 0)
		goto fail;
	if (o->fuse_options &&
	    (ret = ovlfs_set_fuse_options(fs, o->fuse_options)) < 0)
		goto fail;
	if (o->debug && (ret = ovlfs_set_debug(fs, true)) < 0)
		goto fail;
	if (o->no_passthrough && (ret = ovlfs_set_passthrough(fs, false)) < 0)
		goto fail;
	if ((ret = add_lowers(fs, &o->lowers)) < 0)
		goto fail;
	if (o->read_only && (ret = ovlfs_set_read_only(fs, true)) < 0)
		goto fail;
	if (o->volatile_mount && (ret = ovlfs_set_volatile(fs, true)) < 0)
		goto fail;
	if (o->volatile_dirty &&
	    (ret = ovlfs_set_volatile_dirty(fs, o->volatile_dirty)) < 0)
		goto fail;
	if (o->format && (ret = ovlfs_set_format(fs, o->format)) < 0)
		goto fail;
	if (o->into && (ret = ovlfs_set_commit_into(fs, o->into)) < 0)
		goto fail;
	if (o->compat && (ret = compat_setup(fs, o->compat)) < 0)
		goto fail;
	/*
	 * A log file in a layer or the mount point (also through a bind
	 * mount or a symlink) is refused before it is created: one in the
	 * lower would be written into it while mounted.
	 */
	if (o->log_path &&
	    (ret = ovlfs_check_apart(fs, "log file", o->log_path)) < 0)
		goto fail;
	if (o->log_path && (ret = log_open(o->log_path)) < 0) {
		snprintf(err, errlen, "cannot open log file %s: %s",
			 o->log_path, strerror(-ret));
		ovlfs_free(fs);
		return NULL;
	}
	if ((ret = log_attach(fs, o)) < 0)
		goto fail;
	ret = ovlfs_mount(fs);
	if (ret < 0)
		goto fail;
	return fs;

fail:
	msg = fs_error(fs, ret, buf, sizeof(buf));
	if (msg == buf)
		snprintf(err, errlen, "cannot mount %s: %s", o->lower, buf);
	else
		snprintf(err, errlen, "%s", msg);
	ovlfs_free(fs);
	return NULL;
}

static bool parse_volatile_dirty(const char *s, enum ovlfs_volatile_dirty *w)
{
	if (strcmp(s, "refuse") == 0)
		*w = OVLFS_VOLATILE_DIRTY_REFUSE;
	else if (strcmp(s, "discard") == 0)
		*w = OVLFS_VOLATILE_DIRTY_DISCARD;
	else if (strcmp(s, "keep") == 0)
		*w = OVLFS_VOLATILE_DIRTY_KEEP;
	else
		return false;
	return true;
}

static bool parse_inode_mode(const char *s, enum ovlfs_inode_mode *mode)
{
	if (strcmp(s, "virtual") == 0)
		*mode = OVLFS_INODE_VIRTUAL;
	else if (strcmp(s, "persistent") == 0)
		*mode = OVLFS_INODE_PERSISTENT;
	else
		return false;
	return true;
}

/* Append OPT to the comma separated *OPTS; false when out of memory. */
static bool append_fuse_option(char **opts, const char *opt)
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

static void block_stop_signals(void)
{
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGHUP);
	sigaddset(&stop_signals, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	/* A reader of a closed pipe must get EPIPE, not kill the server. */
	signal(SIGPIPE, SIG_IGN);
}

static int mount_foreground(const struct mount_opts *o)
{
	char err[1024];
	struct ovlfs *fs;

	block_stop_signals();
	fs = do_mount(o, err, sizeof(err));
	if (!fs) {
		err_msg("%s", err);
		return 1;
	}
	return serve(fs);
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= n;
	}
	return 0;
}

/*
 * Daemon mode. The child starts a new session, mounts, and reports on a
 * pipe: one byte '0' for success, or '1' followed by the error message.
 * The parent exits once it has the report, so when `ovlfs mount` returns 0
 * the mount is live.
 */
static int mount_daemon(const struct mount_opts *o)
{
	int pfd[2];
	pid_t pid;

	if (pipe2(pfd, O_CLOEXEC) < 0) {
		err_msg("cannot create a pipe: %s", strerror(errno));
		return 1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		err_msg("cannot fork: %s", strerror(errno));
		close(pfd[0]);
		close(pfd[1]);
		return 1;
	}

	if (pid > 0) {
		/* Parent: wait for the child's report. */
		char buf[1100];
		size_t len = 0;
		ssize_t n;
		int status;

		close(pfd[1]);
		while (len < sizeof(buf) - 1) {
			n = read(pfd[0], buf + len, sizeof(buf) - 1 - len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			len += n;
		}
		close(pfd[0]);
		buf[len] = '\0';
		if (len >= 1 && buf[0] == '0')
			return 0;
		if (len >= 1 && buf[0] == '1') {
			/* The child is exiting; reap it. */
			waitpid(pid, NULL, 0);
			err_msg("%s", buf + 1);
			return 1;
		}
		if (waitpid(pid, &status, 0) == pid && WIFSIGNALED(status))
			err_msg("cannot mount %s: the mount process was killed "
				"by signal %d",
				o->lower, WTERMSIG(status));
		else
			err_msg("cannot mount %s: the mount process exited "
				"unexpectedly",
				o->lower);
		return 1;
	}

	/* Child. */
	{
		char err[1024];
		struct ovlfs *fs;
		int fd;

		close(pfd[0]);
		in_daemon = true;
		if (setsid() < 0) {
			/* Only fails if already a group leader: not after fork. */
		}
		block_stop_signals();
		fs = do_mount(o, err, sizeof(err));
		if (!fs) {
			write_all(pfd[1], "1", 1);
			write_all(pfd[1], err, strlen(err));
			close(pfd[1]);
			exit(1);
		}

		if (chdir("/") < 0) {
			/* "/" always exists; nothing sensible to do. */
		}
		fd = open("/dev/null", O_RDWR);
		if (fd >= 0) {
			dup2(fd, STDIN_FILENO);
			dup2(fd, STDOUT_FILENO);
			/* -d's traces need stderr, unless --log takes them. */
			if (!o->debug || o->log_path)
				dup2(fd, STDERR_FILENO);
			if (fd > STDERR_FILENO)
				close(fd);
		}
		log_daemon_started(o);
		write_all(pfd[1], "0", 1);
		close(pfd[1]);
		exit(serve(fs));
	}
}

/*
 * An option shared by mount and run (-u, -i, -o) into O: -1 when taken,
 * else the exit status to return (the caller frees O's options).
 */
static int overlay_option(const struct command *cmd, int c,
			  struct mount_opts *o)
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

static int cmd_mount(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "upper", required_argument, NULL, 'u' },
		{ "inode-mode", required_argument, NULL, 'i' },
		{ "no-passthrough", no_argument, NULL, OPT_NO_PASSTHROUGH },
		{ "lower", required_argument, NULL, OPT_LOWER },
		{ "read-only", no_argument, NULL, OPT_READ_ONLY },
		{ "format", required_argument, NULL, OPT_FORMAT },
		{ "log", required_argument, NULL, OPT_LOG },
		{ "volatile", no_argument, NULL, OPT_VOLATILE },
		{ "volatile-dirty", required_argument, NULL, OPT_VOLATILE_DIRTY },
		{ "foreground", no_argument, NULL, 'f' },
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct command *cmd = find_command("mount");
	struct mount_opts o = { 0 };
	char obuf[8];
	int c, ret;

	optind = 1;
	opterr = 0;
	for (;;) {
		c = getopt_long(argc, argv, ":u:i:o:fdh", longopts, NULL);
		if (c == -1)
			break;
		switch (c) {
		case 'u':
		case 'i':
		case 'o':
		case OPT_NO_PASSTHROUGH:
		case OPT_LOWER:
		case OPT_READ_ONLY:
		case OPT_FORMAT:
		case OPT_LOG:
		case OPT_VOLATILE:
		case OPT_VOLATILE_DIRTY:
			ret = overlay_option(cmd, c, &o);
			if (ret >= 0) {
				mount_opts_free(&o);
				return ret;
			}
			break;
		case 'f':
			o.foreground = true;
			break;
		case 'd':
			o.debug = true;
			break;
		case 'h':
			mount_opts_free(&o);
			fputs(cmd->usage, stdout);
			return 0;
		case ':':
			mount_opts_free(&o);
			return usage_error(cmd, "option '%s' needs an argument",
					   argv[optind - 1]);
		default:
			mount_opts_free(&o);
			return usage_error(cmd, "unknown option '%s'",
					   bad_option(argv, obuf,
						      sizeof(obuf)));
		}
	}

	/* With --lower, the one positional argument is the mount point. */
	if (o.lowers.n && argc - optind <= 1) {
		if (argc - optind == 1)
			o.mount_point = argv[optind];
	} else if (argc - optind < 1 || argc - optind > 2 || o.lowers.n) {
		mount_opts_free(&o);
		return usage_error(cmd, argc - optind < 1 ?
						"missing LOWER" :
						"too many arguments");
	} else {
		o.lower = argv[optind];
		if (argc - optind == 2)
			o.mount_point = argv[optind + 1];
	}
	ret = o.foreground ? mount_foreground(&o) : mount_daemon(&o);
	mount_opts_free(&o);
	return ret;
}

/* ---------------------------------------------------------------------- */
/* Shared by the finalization commands */

/* Print "ovlfs: <library message>", or WHAT and ERR if there is none. */
static int report_failure(const struct ovlfs *fs, int err, const char *what)
{
	char buf[128];
	const char *msg = fs_error(fs, err, buf, sizeof(buf));

	if (msg == buf)
		err_msg("%s: %s", what, buf);
	else
		err_msg("%s", msg);
	return 1;
}

struct fin_opts;
static struct ovlfs *open_handle(struct fin_opts *o);

/*
 * Progress: one line on stderr, redrawn in place ("\r"), ended with a
 * newline when the phase changes and once the call is done.
 */
struct progress_line {
	bool open;	   /* a line is drawn and not ended yet */
	int len;	   /* its length, to blank out leftovers */
	char phase[32];	   /* its phase */
};

static void progress_cb(const struct ovlfs_progress *p, void *arg)
{
	struct progress_line *pl = arg;
	const char *phase = p->phase && *p->phase ? p->phase : "progress";
	char line[200];
	int n;

	if (pl->open && strcmp(pl->phase, phase) != 0) {
		fputc('\n', stderr);
		pl->open = false;
		pl->len = 0;
	}
	n = snprintf(line, sizeof(line),
		     "%s: %" PRIu64 "/%" PRIu64 " entries, %.1f/%.1f MiB", phase,
		     p->entries_done, p->entries_total,
		     p->bytes_done / 1048576.0, p->bytes_total / 1048576.0);
	if (n < 0)
		return;
	if (n >= (int)sizeof(line))
		n = sizeof(line) - 1;
	fprintf(stderr, "\r%s%*s", line, pl->len > n ? pl->len - n : 0, "");
	fflush(stderr);
	pl->open = true;
	pl->len = n;
	snprintf(pl->phase, sizeof(pl->phase), "%s", phase);
}

static struct progress_line progress_state;

/* Show progress of ovlfs_finish()/ovlfs_recover() on a terminal. */
static void progress_begin(struct ovlfs *fs, bool quiet)
{
	memset(&progress_state, 0, sizeof(progress_state));
	if (!quiet && isatty(STDERR_FILENO))
		ovlfs_set_progress(fs, progress_cb, &progress_state);
}

static void progress_end(void)
{
	if (progress_state.open) {
		fputc('\n', stderr);
		fflush(stderr);
	}
	progress_state.open = false;
}

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

struct fin_opts {
	const char *lower;
	struct lowers lowers;	/* --lower; lower is then lowers.v[0] */
	const char *upper; /* NULL: library default */
	const char *into;  /* --into, or NULL */
	const char *dest;  /* FIN_DEST */
	enum ovlfs_format format, to;
	bool atomic, quiet, json;
};

/*
 * A handle for O's layers with its upper (NULL: default) and --into set;
 * NULL after a message. O's --lower list is freed either way.
 */
static struct ovlfs *open_handle(struct fin_opts *o)
{
	struct ovlfs *fs;
	int ret = 0;

	fs = ovlfs_new(o->lower);
	if (!fs) {
		err_msg("%s: %s", o->lower, strerror(errno));
		lowers_free(&o->lowers);
		return NULL;
	}
	if (o->upper && (ret = ovlfs_set_upper(fs, o->upper)) < 0)
		report_failure(fs, ret, o->upper);
	else if ((ret = add_lowers(fs, &o->lowers)) < 0)
		report_failure(fs, ret, "lower");
	else if (o->into && (ret = ovlfs_set_commit_into(fs, o->into)) < 0)
		report_failure(fs, ret, o->into);
	lowers_free(&o->lowers);
	if (ret < 0) {
		ovlfs_free(fs);
		return NULL;
	}
	return fs;
}

/*
 * Parse the options in ALLOWED and the one LOWER argument. Returns -1 to go
 * on, or the exit status to return.
 */
static int parse_fin_opts(const struct command *cmd, unsigned allowed,
			  int argc, char **argv, struct fin_opts *o)
{
	static const struct {
		unsigned flag;
		struct option opt;
	} all[] = {
		{ FIN_UPPER, { "upper", required_argument, NULL, 'u' } },
		{ FIN_ATOMIC, { "atomic", no_argument, NULL, 'A' } },
		{ FIN_QUIET, { "quiet", no_argument, NULL, 'q' } },
		{ FIN_JSON, { "json", no_argument, NULL, 'J' } },
		{ FIN_LAYERS, { "lower", required_argument, NULL, OPT_LOWER } },
		{ FIN_LAYERS, { "into", required_argument, NULL, OPT_INTO } },
		{ FIN_FORMAT, { "format", required_argument, NULL, OPT_FORMAT } },
		{ FIN_TO, { "to", required_argument, NULL, OPT_TO } },
	};
	struct option longopts[sizeof(all) / sizeof(all[0]) + 2];
	char shortopts[16] = ":h";
	size_t i, n = 0;
	char obuf[8];
	int c, ret, want;

	for (i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (allowed & all[i].flag)
			longopts[n++] = all[i].opt;
	longopts[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	longopts[n] = (struct option){ NULL, 0, NULL, 0 };
	if (allowed & FIN_UPPER)
		strcat(shortopts, "u:");
	if (allowed & FIN_QUIET)
		strcat(shortopts, "q");

	memset(o, 0, sizeof(*o));
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		switch (c) {
		case 'u':
			o->upper = optarg;
			break;
		case 'A':
			o->atomic = true;
			break;
		case 'q':
			o->quiet = true;
			break;
		case 'J':
			o->json = true;
			break;
		case OPT_LOWER:
			ret = lowers_add(&o->lowers, optarg);
			if (ret == -EINVAL) {
				lowers_free(&o->lowers);
				return usage_error(cmd, "empty layer in --lower '%s'",
						   optarg);
			}
			if (ret) {
				lowers_free(&o->lowers);
				err_msg("out of memory");
				return 1;
			}
			o->lower = o->lowers.v[0];
			break;
		case OPT_INTO:
			o->into = optarg;
			break;
		case OPT_FORMAT:
		case OPT_TO:
			if (!parse_format(optarg, c == OPT_TO ? &o->to :
							      &o->format)) {
				lowers_free(&o->lowers);
				return usage_error(
					cmd,
					"invalid format '%s' (expected oci or kernel)",
					optarg);
			}
			break;
		case 'h':
			fputs(cmd->usage, stdout);
			return 0;
		case ':':
			return usage_error(cmd, "option '%s' needs an argument",
					   argv[optind - 1]);
		default:
			return usage_error(cmd, "unknown option '%s'",
					   bad_option(argv, obuf,
						      sizeof(obuf)));
		}
	}
	want = (o->lowers.n ? 0 : 1) + !!(allowed & FIN_DEST);
	if (argc - optind != want) {
		lowers_free(&o->lowers);
		return usage_error(cmd, argc - optind > want ? "too many arguments" :
					argc - optind == 0 && !o->lowers.n ?
						"missing LOWER" : "missing DEST");
	}
	if (!o->lowers.n)
		o->lower = argv[optind++];
	if (allowed & FIN_DEST)
		o->dest = argv[optind];
	if ((allowed & FIN_TO) && !o->to) {
		lowers_free(&o->lowers);
		return usage_error(cmd, "missing --to FORMAT");
	}
	return -1;
}

/* ovlfs_finish(ACTION) on LOWER/UPPER with progress; the exit status. */
static int finish_cmd(struct fin_opts *o, enum ovlfs_action action,
		      const char *verb)
{
	struct ovlfs *fs;
	char what[64];
	struct stat st;
	bool no_upper;
	int ret;

	fs = open_handle(o);
	if (!fs)
		return 1;
	/* A missing named upper is refused by the library (a typo). */
	no_upper = lstat(ovlfs_upper(fs), &st) < 0 && errno == ENOENT;
	progress_begin(fs, o->quiet);
	ret = ovlfs_finish(fs, action);
	progress_end();
	if (ret < 0) {
		snprintf(what, sizeof(what), "cannot %s", verb);
		report_failure(fs, ret, what);
		ovlfs_free(fs);
		return 1;
	}
	if (no_upper && !o->quiet)
		err_msg("%s: no upper %s: nothing to %s", verb, ovlfs_upper(fs),
			verb);
	ovlfs_free(fs);
	return 0;
}

/* ---------------------------------------------------------------------- */
/* commit, discard, recover */

static int cmd_commit(int argc, char **argv)
{
	const struct command *cmd = find_command("commit");
	struct fin_opts o;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_ATOMIC | FIN_QUIET | FIN_LAYERS, argc,
			     argv, &o);
	if (ret >= 0)
		return ret;
	return finish_cmd(&o, o.atomic ? OVLFS_COMMIT_ATOMIC : OVLFS_COMMIT,
			  "commit");
}

static int cmd_discard(int argc, char **argv)
{
	const struct command *cmd = find_command("discard");
	struct fin_opts o;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_QUIET | FIN_LAYERS, argc, argv, &o);
	if (ret >= 0)
		return ret;
	return finish_cmd(&o, OVLFS_DISCARD, "discard");
}

static int cmd_recover(int argc, char **argv)
{
	const struct command *cmd = find_command("recover");
	struct fin_opts o;
	struct ovlfs *fs;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_QUIET | FIN_LAYERS, argc, argv, &o);
	if (ret >= 0)
		return ret;
	/* The journal's upper is removed only if it is the one named here. */
	fs = open_handle(&o);
	if (!fs)
		return 1;
	progress_begin(fs, o.quiet);
	ret = ovlfs_recover(fs);
	progress_end();
	if (ret < 0) {
		report_failure(fs, ret, "cannot recover");
		ovlfs_free(fs);
		return 1;
	}
	ovlfs_free(fs);
	if (!o.quiet) {
		if (ret > 0)
			printf("recovered an interrupted commit of %s\n",
			       o.lower);
		else
			printf("nothing to recover\n");
	}
	return 0;
}

/* ---------------------------------------------------------------------- */
/* diff */

/*
 * Length of the valid UTF-8 sequence at S (N bytes available), 0 if S does
 * not start one; its code point in *CP.
 */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		*cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		*cp = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0; /* no overlong forms */
		else if (c == 0xed)
			hi = 0x9f; /* no surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		*cp = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f; /* nothing above U+10FFFF */
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xbf))
			return 0;
		*cp = (*cp << 6) | (s[i] & 0x3f);
	}
	return len;
}

/* Characters the text form writes as \xHH bytes although valid UTF-8. */
static bool invisible_char(uint32_t cp)
{
	return (cp >= 0x80 && cp <= 0x9f) ||	 /* C1 controls */
	       cp == 0xad ||			 /* soft hyphen */
	       (cp >= 0x200b && cp <= 0x200f) || /* zero width, marks */
	       (cp >= 0x2028 && cp <= 0x202e) || /* separators, bidi */
	       (cp >= 0x2060 && cp <= 0x206f) || /* invisible, bidi */
	       cp == 0xfeff ||			 /* BOM, zero width */
	       (cp >= 0xfff9 && cp <= 0xfffb);	 /* annotations */
}

/* PATH escaped for the text form (see `ovlfs diff --help`). */
static void put_text_path(FILE *out, const char *path)
{
	const unsigned char *s = (const unsigned char *)path;
	size_t n = strlen(path), i = 0, len, k;
	uint32_t cp;

	while (i < n) {
		if (s[i] == '\\') {
			fputs("\\\\", out);
			i++;
			continue;
		}
		if (s[i] == '\n') {
			fputs("\\n", out);
			i++;
			continue;
		}
		len = utf8_seq(s + i, n - i, &cp);
		if (len == 0) {
			fprintf(out, "\\x%02x", s[i]);
			i++;
			continue;
		}
		if (cp < 0x20 || cp == 0x7f || invisible_char(cp)) {
			for (k = 0; k < len; k++)
				fprintf(out, "\\x%02x", s[i + k]);
		} else {
			fwrite(s + i, 1, len, out);
		}
		i += len;
	}
}

/* S as a JSON string (see `ovlfs diff --help`), with the quotes. */
static void put_json_string(FILE *out, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t n = strlen(str), i = 0, len;
	uint32_t cp;

	fputc('"', out);
	while (i < n) {
		len = utf8_seq(s + i, n - i, &cp);
		if (len == 0) {
			fprintf(out, "\\u%04x", s[i]); /* a raw byte */
			i++;
			continue;
		}
		switch (cp) {
		case '"':
			fputs("\\\"", out);
			break;
		case '\\':
			fputs("\\\\", out);
			break;
		case '\b':
			fputs("\\b", out);
			break;
		case '\f':
			fputs("\\f", out);
			break;
		case '\n':
			fputs("\\n", out);
			break;
		case '\r':
			fputs("\\r", out);
			break;
		case '\t':
			fputs("\\t", out);
			break;
		case 0x2028:
		case 0x2029:
			fprintf(out, "\\u%04x", (unsigned)cp);
			break;
		default:
			if (cp < 0x20)
				fprintf(out, "\\u%04x", (unsigned)cp);
			else
				fwrite(s + i, 1, len, out);
		}
		i += len;
	}
	fputc('"', out);
}

static const struct {
	unsigned bit;
	const char *name;
} diff_bits[] = {
	{ OVLFS_DIFF_CONTENT, "content" }, { OVLFS_DIFF_MODE, "mode" },
	{ OVLFS_DIFF_OWNER, "owner" },	   { OVLFS_DIFF_MTIME, "mtime" },
	{ OVLFS_DIFF_XATTR, "xattr" },	   { OVLFS_DIFF_TYPE, "type" },
};

static const char *type_name(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return "file";
	case S_IFDIR:
		return "dir";
	case S_IFLNK:
		return "symlink";
	case S_IFIFO:
		return "fifo";
	case S_IFSOCK:
		return "socket";
	case S_IFCHR:
		return "chardev";
	case S_IFBLK:
		return "blockdev";
	}
	return "unknown";
}

struct diff_state {
	FILE *out;	/* NULL: only count */
	bool json;
	bool started;	/* JSON: the opening is written */
	uint64_t added, modified, deleted, bytes;
};

static void json_open(struct diff_state *d)
{
	if (!d->started)
		fputs("{\"changes\":[", d->out);
	d->started = true;
}

static int diff_cb(const struct ovlfs_diff_entry *e, void *arg)
{
	struct diff_state *d = arg;
	bool first = !d->started;
	size_t i, nb = 0;

	switch (e->change) {
	case OVLFS_ADDED:
		d->added++;
		if (S_ISREG(e->mode))
			d->bytes += e->size;
		break;
	case OVLFS_MODIFIED:
		d->modified++;
		if (S_ISREG(e->mode) &&
		    (e->what & (OVLFS_DIFF_CONTENT | OVLFS_DIFF_TYPE)))
			d->bytes += e->size;
		break;
	case OVLFS_DELETED:
		d->deleted++;
		break;
	}
	if (!d->out)
		return 0;

	if (d->json) {
		json_open(d);
		fputs(first ? "\n{\"path\":" : ",\n{\"path\":", d->out);
		put_json_string(d->out, e->path);
		fprintf(d->out, ",\"change\":\"%c\",\"what\":[", (char)e->change);
		for (i = 0; i < sizeof(diff_bits) / sizeof(diff_bits[0]); i++)
			if (e->change == OVLFS_MODIFIED &&
			    (e->what & diff_bits[i].bit))
				fprintf(d->out, "%s\"%s\"", nb++ ? "," : "",
					diff_bits[i].name);
		fprintf(d->out, "],\"type\":\"%s\",\"size\":%" PRIu64 "}",
			type_name(e->mode), e->size);
		return 0;
	}

	fprintf(d->out, "%c ", (char)e->change);
	put_text_path(d->out, e->path);
	if (e->change == OVLFS_MODIFIED && e->what) {
		for (i = 0; i < sizeof(diff_bits) / sizeof(diff_bits[0]); i++)
			if (e->what & diff_bits[i].bit)
				fprintf(d->out, "%s%s", nb++ ? ", " : " (",
					diff_bits[i].name);
		fputc(')', d->out);
	}
	fputc('\n', d->out);
	return 0;
}

static void put_summary(FILE *out, const struct diff_state *d)
{
	fprintf(out,
		"%" PRIu64 " added, %" PRIu64 " modified, %" PRIu64
		" deleted; %" PRIu64 " bytes added or changed\n",
		d->added, d->modified, d->deleted, d->bytes);
}

static int cmd_diff(int argc, char **argv)
{
	const struct command *cmd = find_command("diff");
	struct diff_state d = { 0 };
	struct fin_opts o;
	struct ovlfs *fs;
	char *json = NULL;
	size_t json_len = 0;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_JSON | FIN_LAYERS, argc, argv, &o);
	if (ret >= 0)
		return ret;
	fs = open_handle(&o);
	if (!fs)
		return 1;
	d.out = stdout;
	d.json = o.json;
	/*
	 * JSON is built in memory and printed only once complete: a diff
	 * that fails midway prints nothing a parser could mistake for a
	 * (shorter) answer.
	 */
	if (d.json && !(d.out = open_memstream(&json, &json_len))) {
		err_msg("diff: out of memory");
		ovlfs_free(fs);
		return 1;
	}
	ret = ovlfs_diff(fs, diff_cb, &d);
	if (ret != 0) {
		if (d.json) {
			fclose(d.out);
			free(json);
		}
		fflush(stdout);
		report_failure(fs, ret, "cannot diff");
		ovlfs_free(fs);
		return 1;
	}
	ovlfs_free(fs);
	if (d.json) {
		json_open(&d);
		fprintf(d.out, "%s],\"summary\":{\"added\":%" PRIu64
			",\"modified\":%" PRIu64 ",\"deleted\":%" PRIu64
			",\"bytes\":%" PRIu64 "}}\n",
			d.added + d.modified + d.deleted ? "\n" : "", d.added,
			d.modified, d.deleted, d.bytes);
		if (fclose(d.out) != 0) {
			free(json);
			err_msg("diff: out of memory");
			return 1;
		}
		fwrite(json, 1, json_len, stdout);
		free(json);
	} else {
		put_summary(stdout, &d);
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		err_msg("cannot write the output: %s", strerror(errno));
		return 1;
	}
	return 0;
}

/* ---------------------------------------------------------------------- */
/* run */

enum on_exit {
	ON_EXIT_ASK = -1,
	/* otherwise an enum ovlfs_action */
};

static volatile sig_atomic_t prompt_signal;

static void on_prompt_signal(int sig)
{
	prompt_signal = sig;
}

/*
 * Ask on the terminal what to do with the changes. The prompt goes to
 * stderr, the answer is read from stdin; end of input or a signal means
 * preserve. Returns the action.
 */
static enum ovlfs_action ask_action(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	struct sigaction sa, old[3];
	sigset_t set, oldmask;
	enum ovlfs_action act = OVLFS_PRESERVE;
	size_t i;

	/*
	 * If COMMAND left the terminal to another process group, take it
	 * back, or reading it would stop us (SIGTTIN).
	 */
	if (isatty(STDIN_FILENO) && tcgetpgrp(STDIN_FILENO) != getpgrp()) {
		sigset_t ttou, prev;

		sigemptyset(&ttou);
		sigaddset(&ttou, SIGTTOU);
		pthread_sigmask(SIG_BLOCK, &ttou, &prev);
		if (tcsetpgrp(STDIN_FILENO, getpgrp()) < 0) {
			/* Not our terminal after all: reading will tell. */
		}
		pthread_sigmask(SIG_SETMASK, &prev, NULL);
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_prompt_signal; /* no SA_RESTART: read() fails */
	sigemptyset(&sa.sa_mask);
	sigemptyset(&set);
	prompt_signal = 0;
	for (i = 0; i < 3; i++) {
		sigaction(sigs[i], &sa, &old[i]);
		sigaddset(&set, sigs[i]);
	}
	pthread_sigmask(SIG_UNBLOCK, &set, &oldmask);

	for (;;) {
		char line[64];
		size_t len = 0;
		bool eof = false, toolong = false;
		char c;

		fputs("[p]reserve, [d]iscard, [c]ommit, commit-[a]tomic? ",
		      stderr);
		fflush(stderr);
		for (;;) {
			ssize_t n = prompt_signal ? -1 : read(STDIN_FILENO, &c, 1);

			if (n < 0 && errno == EINTR && !prompt_signal)
				continue;
			if (n <= 0) {
				eof = true;
				break;
			}
			if (c == '\n')
				break;
			if (len < sizeof(line) - 1)
				line[len++] = c;
			else
				toolong = true;
		}
		line[len] = '\0';
		if (!eof && !isatty(STDIN_FILENO))
			fputc('\n', stderr); /* the answer was not echoed */
		if (eof) {
			fputs("\npreserving the changes\n", stderr);
			act = OVLFS_PRESERVE;
			break;
		}
		/* Trim blanks. */
		{
			char *p = line, *q = line + len;

			while (*p == ' ' || *p == '\t')
				p++;
			while (q > p && (q[-1] == ' ' || q[-1] == '\t' ||
					 q[-1] == '\r'))
				*--q = '\0';
			if (!toolong) {
				if (!strcasecmp(p, "p") ||
				    !strcasecmp(p, "preserve")) {
					act = OVLFS_PRESERVE;
					break;
				}
				if (!strcasecmp(p, "d") ||
				    !strcasecmp(p, "discard")) {
					act = OVLFS_DISCARD;
					break;
				}
				if (!strcasecmp(p, "c") ||
				    !strcasecmp(p, "commit")) {
					act = OVLFS_COMMIT;
					break;
				}
				if (!strcasecmp(p, "a") ||
				    !strcasecmp(p, "commit-atomic")) {
					act = OVLFS_COMMIT_ATOMIC;
					break;
				}
			}
		}
		fputs("please answer p, d, c or a\n", stderr);
	}

	/* Back to blocked (SIGTERM, SIGHUP) and ignored (SIGINT). */
	pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
	for (i = 0; i < 3; i++)
		sigaction(sigs[i], &old[i], NULL);
	return act;
}

/*
 * The watchdog of `ovlfs run` (see start_watchdog): told "MAJ:MIN MP" once
 * the mount is made, it waits for its parent to be gone (EOF), then
 * detaches the mount if it is still there, dead (ENOTCONN) or alive on
 * the same device. Never returns.
 */
static void watchdog(int fd)
{
	char buf[PATH_MAX + 64], *mp, c;
	unsigned maj, mnr;
	struct stat st;
	size_t n = 0;
	ssize_t r;
	int null = open("/dev/null", O_RDWR | O_CLOEXEC), len = 0;

	/* Out of the terminal's signals, and of whoever reads run's output. */
	setsid();
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
	}
	while (n < sizeof(buf) - 1 && !memchr(buf, '\n', n)) {
		r = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (r == 0 || (r < 0 && errno != EINTR))
			_exit(0);	/* no mount was made */
		if (r > 0)
			n += r;
	}
	buf[n] = '\0';
	if (sscanf(buf, "%u:%u %n", &maj, &mnr, &len) != 2 || !len ||
	    !(mp = buf + len) || !strchr(mp, '\n'))
		_exit(0);
	*strchr(mp, '\n') = '\0';
	while ((r = read(fd, &c, 1)) != 0 && (r > 0 || errno == EINTR))
		;
	if (stat(mp, &st) == 0 ? st.st_dev != makedev(maj, mnr) :
				 errno != ENOTCONN)
		_exit(0);	/* unmounted by the parent (or not ours) */
	if (geteuid() == 0)
		umount2(mp, MNT_DETACH | UMOUNT_NOFOLLOW);
	else
		execlp("fusermount3", "fusermount3", "-u", "-z", mp, (char *)NULL);
	_exit(0);
}

/*
 * `ovlfs run` serves its mount from this very process: killed (SIGKILL),
 * it leaves a dead mount that umount refuses while COMMAND, or anything
 * it started, still has its working directory there. A child forked
 * before the mount (so holding no /dev/fuse fd) watches over it. Returns
 * the write end of its pipe, open until this process ends, or -1: run
 * goes on without one.
 */
static int start_watchdog(void)
{
	int p[2];
	pid_t pid;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	pid = fork();
	if (pid == 0) {
		close(p[1]);
		watchdog(p[0]);
	}
	close(p[0]);
	if (pid < 0) {
		close(p[1]);
		return -1;
	}
	return p[1];
}

/* Tell the watchdog WFD which mount to watch. */
static void arm_watchdog(int wfd, const char *mp)
{
	char msg[PATH_MAX + 64];
	struct stat st;
	int n;

	if (wfd < 0 || stat(mp, &st) < 0)
		return;
	n = snprintf(msg, sizeof(msg), "%u:%u %s\n", major(st.st_dev),
		     minor(st.st_dev), mp);
	if (n > 0 && (size_t)n < sizeof(msg) && write(wfd, msg, n) != n)
		err_msg("warning: the unmount watchdog is not armed");
}

/* Child side of run: never returns. */
static void run_child(const char *dir, char **cmdv, const sigset_t *mask)
{
	const char *why;
	int err, code;

	signal(SIGINT, SIG_DFL);
	signal(SIGQUIT, SIG_DFL);
	signal(SIGPIPE, SIG_DFL);
	sigprocmask(SIG_SETMASK, mask, NULL);
	if (chdir(dir) < 0) {
		err = errno;
		why = "cannot enter";
		code = 126;
		fprintf(stderr, "ovlfs: %s %s: %s\n", why, dir, strerror(err));
		_exit(code);
	}
	setenv("PWD", dir, 1);
	execvp(cmdv[0], cmdv);
	err = errno;
	fprintf(stderr, "ovlfs: cannot run %s: %s\n", cmdv[0], strerror(err));
	_exit(err == ENOENT ? 127 : 126);
}

static int cmd_run(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "upper", required_argument, NULL, 'u' },
		{ "inode-mode", required_argument, NULL, 'i' },
		{ "no-passthrough", no_argument, NULL, OPT_NO_PASSTHROUGH },
		{ "log", required_argument, NULL, OPT_LOG },
		{ "on-exit", required_argument, NULL, 'E' },
		{ "lower", required_argument, NULL, OPT_LOWER },
		{ "format", required_argument, NULL, OPT_FORMAT },
		{ "into", required_argument, NULL, OPT_INTO },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char *const actions[] = {
		[OVLFS_PRESERVE] = "preserve",
		[OVLFS_DISCARD] = "discard",
		[OVLFS_COMMIT] = "commit",
		[OVLFS_COMMIT_ATOMIC] = "commit-atomic",
	};
	const struct command *cmd = find_command("run");
	struct mount_opts o = { 0 };
	int on_exit_action, dashes, c, i, status = 0, code, ret;
	sigset_t block, oldmask;
	struct sigaction ign, old_int, old_quit;
	struct diff_state d = { 0 };
	char err[1024], obuf[8];
	char *upper = NULL;
	int forwarded = 0, wfd;
	struct ovlfs *fs;
	pid_t pid;

	on_exit_action = isatty(STDIN_FILENO) && isatty(STDERR_FILENO) ?
				 ON_EXIT_ASK :
				 OVLFS_PRESERVE;

	/* Options are only looked for before the first "--". */
	for (dashes = 1; dashes < argc; dashes++)
		if (strcmp(argv[dashes], "--") == 0)
			break;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(dashes, argv, ":u:i:o:h", longopts, NULL)) !=
	       -1) {
		switch (c) {
		case 'u':
		case 'i':
		case 'o':
		case OPT_NO_PASSTHROUGH:
		case OPT_LOWER:
		case OPT_FORMAT:
		case OPT_INTO:
		case OPT_LOG:
			ret = overlay_option(cmd, c, &o);
			if (ret >= 0) {
				mount_opts_free(&o);
				return ret;
			}
			break;
		case 'E':
			if (strcmp(optarg, "ask") == 0) {
				on_exit_action = ON_EXIT_ASK;
			} else {
				for (i = 0; i < 4; i++)
					if (strcmp(optarg, actions[i]) == 0)
						break;
				if (i == 4) {
					mount_opts_free(&o);
					return usage_error(
						cmd,
						"invalid --on-exit action '%s' (expected ask, preserve, discard, commit or commit-atomic)",
						optarg);
				}
				on_exit_action = i;
			}
			break;
		case 'h':
			mount_opts_free(&o);
			fputs(cmd->usage, stdout);
			return 0;
		case ':':
			mount_opts_free(&o);
			return usage_error(cmd, "option '%s' needs an argument",
					   argv[optind - 1]);
		default:
			mount_opts_free(&o);
			return usage_error(cmd, "unknown option '%s'",
					   bad_option(argv, obuf,
						      sizeof(obuf)));
		}
	}
	if (dashes - optind < (o.lowers.n ? 0 : 1)) {
		mount_opts_free(&o);
		return usage_error(cmd, "missing LOWER");
	}
	if (dashes < argc && dashes - optind > (o.lowers.n ? 0 : 1)) {
		mount_opts_free(&o);
		return usage_error(cmd, "too many arguments before '--'");
	}
	if (dashes >= argc || dashes + 1 >= argc) {
		mount_opts_free(&o);
		return usage_error(cmd, dashes >= argc ?
						"missing '-- COMMAND'" :
						"missing COMMAND after '--'");
	}
	if (!o.lowers.n)
		o.lower = argv[optind];

	/*
	 * As system(3): SIGINT and SIGQUIT ignored (COMMAND gets them from
	 * the terminal), SIGCHLD blocked. SIGTERM and SIGHUP are blocked
	 * too, taken by sigwaitinfo() and passed on to COMMAND, so the mount
	 * is always unmounted. The library's threads take no signals.
	 */
	memset(&ign, 0, sizeof(ign));
	ign.sa_handler = SIG_IGN;
	sigemptyset(&ign.sa_mask);
	sigaction(SIGINT, &ign, &old_int);
	sigaction(SIGQUIT, &ign, &old_quit);
	sigemptyset(&block);
	sigaddset(&block, SIGCHLD);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, &oldmask);
	signal(SIGPIPE, SIG_IGN);

	fflush(NULL);
	wfd = start_watchdog();
	fs = do_mount(&o, err, sizeof(err));
	mount_opts_free(&o);
	if (!fs) {
		err_msg("%s", err);
		if (wfd >= 0)
			close(wfd);
		return 1;
	}
	arm_watchdog(wfd, ovlfs_mount_point(fs));
	upper = strdup(ovlfs_upper(fs));

	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		err_msg("cannot fork: %s", strerror(errno));
		code = 1;
		on_exit_action = OVLFS_PRESERVE;
		goto finish;
	}
	if (pid == 0) {
		sigaction(SIGINT, &old_int, NULL);
		sigaction(SIGQUIT, &old_quit, NULL);
		run_child(ovlfs_mount_point(fs), argv + dashes + 1, &oldmask);
	}

	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		int sig;

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR) {
			err_msg("cannot wait for %s: %s", argv[dashes + 1],
				strerror(errno));
			status = 1 << 8;
			break;
		}
		sig = sigwaitinfo(&block, NULL);
		if (sig == SIGTERM || sig == SIGHUP) {
			kill(pid, sig);
			forwarded = sig;
		}
	}
	if (WIFEXITED(status))
		code = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		code = 128 + WTERMSIG(status);
	else
		code = 1;

finish:
	ret = ovlfs_umount(fs);
	if (ret < 0 && ret != -EINVAL)
		report_failure(fs, ret, "cannot unmount");

	ret = ovlfs_diff(fs, diff_cb, &d);
	if (ret != 0)
		report_failure(fs, ret, "cannot diff");
	else
		put_summary(stderr, &d);

	if (on_exit_action == ON_EXIT_ASK)
		on_exit_action = forwarded ? OVLFS_PRESERVE : (int)ask_action();

	progress_begin(fs, false);
	ret = ovlfs_finish(fs, (enum ovlfs_action)on_exit_action);
	progress_end();
	if (ret < 0) {
		report_failure(fs, ret, "cannot finish");
		if (upper)
			fprintf(stderr, "ovlfs: the changes are kept in %s\n",
				upper);
		code = 1;
	} else if (on_exit_action == OVLFS_PRESERVE && upper) {
		fprintf(stderr, "changes preserved in %s\n", upper);
	}
	ovlfs_free(fs);
	free(upper);
	return code;
}

/* ---------------------------------------------------------------------- */
/* Logging */

/*
 * Where the lines of a mount go: the --log file, or syslog for a daemon,
 * or (neither) stderr, where the library and libfuse write by themselves.
 * Process-wide, as libfuse's log hook is.
 */
static int log_fd = -1;
static bool log_syslog;

static const char *const level_names[] = {
	"EMERG", "ALERT", "CRIT", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG",
};

/* Open FILE for --log: 0 or -errno. */
static int log_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY,
		      0640);

	if (fd < 0)
		return -errno;
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	return 0;
}

/* MSG, one line without its newline, to the sink, from any thread. */
static void log_line(int level, const char *msg)
{
	size_t len = strlen(msg), cap = len + 64;
	struct timespec ts;
	struct tm tm;
	char stamp[32];
	char *line;
	int n;

	if (level < 0 || level > 7)
		level = LOG_ERR;
	if (log_syslog) {
		syslog(level, "%s", msg);
		return;
	}
	if (log_fd < 0)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
	line = malloc(cap);
	if (!line)
		return;
	n = snprintf(line, cap, "%s.%03ld %s %s\n", stamp,
		     ts.tv_nsec / 1000000, level_names[level], msg);
	/*
	 * One write to an O_APPEND file: lines of several threads (and of
	 * several mounts sharing the file) never interleave.
	 */
	if (n > 0 && write_all(log_fd, line, (size_t)n < cap ? (size_t)n : cap - 1) < 0) {
		/* Nowhere left to tell: the mount goes on without its log. */
	}
	free(line);
}

static void lib_log_hook(enum ovlfs_log_level level, const char *msg,
			 void *arg)
{
	(void)arg;
	log_line((int)level, msg);
}

/* libfuse's messages (and -d's request traces), line by line. */
static void fuse_log_hook(enum fuse_log_level level, const char *fmt,
			  va_list ap)
{
	char buf[2048], *line, *nl;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	for (line = buf; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		if (*line)
			log_line((int)level, line);
		if (!nl)
			break;
	}
}

/*
 * Route FS's lines as O asks (called just before the mount). A file
 * takes everything from the start, -d's traces too; syslog takes
 * libfuse's own lines only once the mount is up (log_daemon_started),
 * so a failing mount still explains itself on the terminal.
 */
static int log_attach(struct ovlfs *fs, const struct mount_opts *o)
{
	int ret;

	if (log_fd < 0 && !in_daemon)
		return 0;
	if (log_fd < 0) {
		openlog("ovlfs", LOG_PID, LOG_DAEMON);
		log_syslog = true;
	}
	ret = ovlfs_set_log(fs, lib_log_hook, NULL);
	if (ret < 0)
		return ret;
	if (log_fd >= 0)
		fuse_set_log_func(fuse_log_hook);
	return 0;
}

static void log_daemon_started(const struct mount_opts *o)
{
	/* With -d and no --log, stderr stays open for the traces. */
	if (log_syslog && !o->debug)
		fuse_set_log_func(fuse_log_hook);
}

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
	CO_DEBUG, CO_VOLATILE, CO_VOLATILE_DIRTY,
	CO_FUSE,	/* libfuse takes it: a FUSE option or a mount flag */
	CO_DROP,	/* mount(8)'s own, or no meaning for a FUSE mount */
	CO_IGNORE,	/* tuning of fuse-overlayfs: no effect on what is shown */
	CO_OFF_ONLY,	/* a feature ovlfs lacks: only its "off" values */
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
	{ "redirect_dir=", CO_OFF_ONLY, "off|nofollow" },
	{ "index=", CO_OFF_ONLY, "off" },
	{ "metacopy=", CO_OFF_ONLY, "off" },
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
static bool compat_invocation(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strncmp(argv[i], "-o", 2) == 0)
			return true;
	return false;
}

static int compat_main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct mount_opts o = { 0 };
	struct compat c = { 0 };
	char *opts = NULL, obuf[8];
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
			ret = usage_error(NULL, "option '%s' needs an argument",
					  argv[optind - 1]);
			break;
		default:
			ret = usage_error(NULL, "unknown option '%s'",
					  bad_option(argv, obuf, sizeof(obuf)));
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
	ret = o.foreground ? mount_foreground(&o) : mount_daemon(&o);
out:
	compat_free(&c);
	free(o.fuse_options);
	free(opts);
	return ret;
}

/* ---------------------------------------------------------------------- */

/* ---------------------------------------------------------------------- */
/* export, apply: OCI layer tarballs */

struct tar_opts {
	const char *lower;
	const char *upper;	/* NULL: library default */
	const char *tar;	/* "-": stdin/stdout; "" until given */
	bool commit;
};

/*
 * Options of export and apply (--commit only if ALLOW_COMMIT). Returns -1
 * to go on, or the exit status to return.
 */
static int parse_tar_opts(const struct command *cmd, bool allow_commit,
			  int argc, char **argv, struct tar_opts *o)
{
	static const struct option longopts[] = {
		{ "tar", required_argument, NULL, 'T' },
		{ "upper", required_argument, NULL, 'u' },
		{ "commit", no_argument, NULL, 'C' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char obuf[8];
	int c;

	memset(o, 0, sizeof(*o));
	o->tar = "";
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":hu:", longopts, NULL)) != -1) {
		switch (c) {
		case 'T':
			o->tar = optarg;
			break;
		case 'u':
			o->upper = optarg;
			break;
		case 'C':
			if (!allow_commit)
				return usage_error(cmd, "unknown option '%s'",
						   argv[optind - 1]);
			o->commit = true;
			break;
		case 'h':
			fputs(cmd->usage, stdout);
			return 0;
		case ':':
			return usage_error(cmd, "option '%s' needs an argument",
					   argv[optind - 1]);
		default:
			return usage_error(cmd, "unknown option '%s'",
					   bad_option(argv, obuf,
						      sizeof(obuf)));
		}
	}
	if (!*o->tar)
		return usage_error(cmd, "missing --tar FILE");
	if (argc - optind != 1)
		return usage_error(cmd, argc - optind < 1 ?
						"missing LOWER" :
						"too many arguments");
	o->lower = argv[optind];
	return -1;
}

/*
 * The file export writes for FILE: where its chain of symlinks ends (the
 * links stay, as with `> FILE`), which need not exist yet. NULL and errno
 * on failure.
 */
static char *export_target(const char *file)
{
	char *cur = strdup(file), *next, link[PATH_MAX];
	struct stat st;
	ssize_t n;
	int err;

	for (int i = 0; cur && i < 40; i++) {
		if (lstat(cur, &st) < 0 || !S_ISLNK(st.st_mode))
			return cur;
		n = readlink(cur, link, sizeof(link) - 1);
		if (n < 0) {
			err = errno;
			free(cur);
			errno = err;
			return NULL;
		}
		link[n] = '\0';
		if (link[0] == '/') {
			next = strdup(link);
		} else {
			char *slash = strrchr(cur, '/');
			int len = slash ? (int)(slash - cur + 1) : 0;

			next = malloc(len + n + 1);
			if (next)
				sprintf(next, "%.*s%s", len, cur, link);
		}
		free(cur);
		cur = next;
	}
	errno = cur ? ELOOP : ENOMEM;
	free(cur);
	return NULL;
}

/* The temporary file of an export, removed if a signal ends us. */
static char *volatile export_tmp;

static void on_export_signal(int sig)
{
	if (export_tmp)
		unlink(export_tmp);
	signal(sig, SIG_DFL);
	raise(sig);
}

/*
 * A new file beside TARGET to write the tarball to, named so that debris
 * (a kill -9) says what it is: with the mode (and, as root, the owner) of
 * TARGET if it exists, else what `> TARGET` would give. -errno.
 */
static int export_tmpfile(const char *target, const struct stat *old,
			  char **tmp)
{
	const char *slash = strrchr(target, '/');
	char *dir = slash ? strndup(target, slash - target + 1) : strdup("."),
	     *real = dir ? realpath(dir, NULL) : NULL, *t;
	const char *base = slash ? slash + 1 : target;
	mode_t um;
	int fd;

	/* Canonical, so the library's messages name it as we do. */
	free(dir);
	if (!real)
		return -errno;
	t = malloc(strlen(real) + strlen(base) + 32);
	if (!t) {
		free(real);
		return -ENOMEM;
	}
	sprintf(t, "%s/.%s.export-XXXXXX", strcmp(real, "/") ? real : "", base);
	free(real);
	fd = mkostemp(t, O_CLOEXEC);
	if (fd < 0) {
		int err = -errno;

		free(t);
		return err;
	}
	if (old) {
		if (geteuid() == 0 && fchown(fd, old->st_uid, old->st_gid) < 0)
			goto fail;
		if (fchmod(fd, old->st_mode & 07777) < 0)
			goto fail;
	} else {
		um = umask(022);
		umask(um);
		if (fchmod(fd, 0644 & ~um) < 0)
			goto fail;
	}
	*tmp = t;
	return fd;
fail:
	fd = -errno;
	unlink(t);
	free(t);
	return fd;
}

/* The library's message, the temporary file's name replaced by FILE. */
static void report_export_failure(const struct ovlfs *fs, int err,
				  const char *tmp, const char *file)
{
	char buf[128];
	const char *msg = fs_error(fs, err, buf, sizeof(buf));
	const char *at = tmp ? strstr(msg, tmp) : NULL;

	if (msg == buf)
		err_msg("export: cannot write %s: %s", file, buf);
	else if (at)
		err_msg("%.*s%s%s", (int)(at - msg), msg, file, at + strlen(tmp));
	else
		err_msg("%s", msg);
}

/*
 * FILE is only ever replaced whole: the tarball goes to a new file beside
 * it, renamed over it once complete, so a failed or killed export leaves
 * FILE (and a symlink at FILE, and its target) as it was. A device or a
 * fifo at FILE has no contents to keep: it is written to directly.
 */
static int cmd_export(int argc, char **argv)
{
	const struct command *cmd = find_command("export");
	struct sigaction sa = { .sa_handler = on_export_signal };
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	struct sigaction old[3];
	char *target = NULL, *tmp = NULL;
	struct tar_opts o;
	struct ovlfs *fs;
	struct stat st;
	bool to_stdout, exists = false, reported = false, handlers = false;
	int fd = -1, ret;

	ret = parse_tar_opts(cmd, false, argc, argv, &o);
	if (ret >= 0)
		return ret;
	to_stdout = !strcmp(o.tar, "-");
	if (to_stdout && isatty(STDOUT_FILENO)) {
		err_msg("refusing to write a tarball to a terminal");
		return 1;
	}
	ret = 0;
	if (!to_stdout) {
		target = export_target(o.tar);
		if (target && lstat(target, &st) == 0)
			exists = true;
		else if (!target || errno != ENOENT)
			ret = -errno;
		if (!ret && exists && S_ISDIR(st.st_mode))
			ret = -EISDIR;
		if (ret) {
			err_msg("export: cannot write %s: %s", o.tar, strerror(-ret));
			free(target);
			return 1;
		}
	}
	fs = open_handle(&(struct fin_opts){ .lower = o.lower, .upper = o.upper });
	if (!fs) {
		free(target);
		return 1;
	}
	/* In the upper it would be part of what it exports; in a lower, a change. */
	if (!to_stdout &&
	    (ret = ovlfs_check_apart(fs, "tar file", target ? target : o.tar)) < 0) {
		report_failure(fs, ret, "cannot export");
		free(target);
		ovlfs_free(fs);
		return 1;
	}
	if (to_stdout) {
		fd = STDOUT_FILENO;
	} else if (exists && !S_ISREG(st.st_mode)) {
		fd = open(target, O_WRONLY | O_TRUNC | O_CLOEXEC);
		if (fd < 0)
			fd = -errno;
	} else {
		sigemptyset(&sa.sa_mask);
		for (size_t i = 0; i < 3; i++)
			sigaction(sigs[i], &sa, &old[i]);
		handlers = true;
		fd = export_tmpfile(target, exists ? &st : NULL, &tmp);
		export_tmp = tmp;
	}
	if (fd < 0) {
		err_msg("export: cannot write %s: %s", o.tar, strerror(-fd));
		ret = fd;
		goto out;
	}
	ret = ovlfs_export_tar(fs, fd);
	if (ret < 0) {
		report_export_failure(fs, ret, tmp, o.tar);
		reported = true;
	}
	/* Durable before it replaces FILE: a crash must not leave it empty. */
	if (!ret && tmp && fsync(fd) < 0)
		ret = -errno;
	if (!to_stdout && close(fd) < 0 && !ret)
		ret = -errno;
	if (!ret && tmp && rename(tmp, target) < 0)
		ret = -errno;
	if (ret < 0 && !reported)
		err_msg("export: cannot write %s: %s", o.tar, strerror(-ret));
out:
	if (tmp && ret < 0)
		unlink(tmp);
	export_tmp = NULL;
	for (size_t i = 0; handlers && i < 3; i++)
		sigaction(sigs[i], &old[i], NULL);
	free(tmp);
	free(target);
	ovlfs_free(fs);
	return ret < 0 ? 1 : 0;
}

static int cmd_apply(int argc, char **argv)
{
	const struct command *cmd = find_command("apply");
	struct tar_opts o;
	struct ovlfs *fs;
	bool from_stdin;
	int fd, ret;

	ret = parse_tar_opts(cmd, true, argc, argv, &o);
	if (ret >= 0)
		return ret;
	from_stdin = !strcmp(o.tar, "-");
	fs = open_handle(&(struct fin_opts){ .lower = o.lower, .upper = o.upper });
	if (!fs)
		return 1;
	fd = from_stdin ? STDIN_FILENO : open(o.tar, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err_msg("cannot open %s: %s", o.tar, strerror(errno));
		ovlfs_free(fs);
		return 1;
	}
	if (o.commit)
		progress_begin(fs, false);
	ret = ovlfs_apply_tar(fs, fd, o.commit ? OVLFS_APPLY_COMMIT : 0);
	progress_end();
	if (ret < 0)
		report_failure(fs, ret, "cannot apply");
	if (!from_stdin)
		close(fd);
	ovlfs_free(fs);
	return ret < 0 ? 1 : 0;
}

static const struct command *find_command(const char *name)
{
	size_t i;

	for (i = 0; i < N_COMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

int main(int argc, char **argv)
{
	const struct command *cmd;
	const char *arg;

	if (argc < 2) {
		main_usage(stderr);
		return EXIT_USAGE;
	}

	arg = argv[1];
	if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
		main_usage(stdout);
		return 0;
	}
	if (strcmp(arg, "--version") == 0 || strcmp(arg, "-V") == 0) {
		printf("ovlfs %s\n", OVLFS_VERSION);
		return 0;
	}
	if (!find_command(arg) && compat_invocation(argc, argv))
		return compat_main(argc, argv);
	if (arg[0] == '-')
		return usage_error(NULL, "unknown option '%s'", arg);

	cmd = find_command(arg);
	if (!cmd)
		return usage_error(NULL, "unknown command '%s'", arg);
	return cmd->fn(argc - 1, argv + 1);
}

static int cmd_flatten(int argc, char **argv)
{
	const struct command *cmd = find_command("flatten");
	struct fin_opts o;
	struct ovlfs *fs;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_LAYERS | FIN_DEST | FIN_FORMAT,
			     argc, argv, &o);
	if (ret >= 0)
		return ret;
	fs = open_handle(&o);
	if (!fs)
		return 1;
	ret = o.format ? ovlfs_set_format(fs, o.format) : 0;
	if (!ret)
		ret = ovlfs_flatten(fs, o.dest);
	if (ret < 0)
		report_failure(fs, ret, "cannot flatten");
	ovlfs_free(fs);
	return ret < 0 ? 1 : 0;
}

static int cmd_convert(int argc, char **argv)
{
	const struct command *cmd = find_command("convert");
	struct fin_opts o;
	struct ovlfs *fs;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_LAYERS | FIN_TO, argc, argv, &o);
	if (ret >= 0)
		return ret;
	fs = open_handle(&o);
	if (!fs)
		return 1;
	ret = ovlfs_convert(fs, o.to);
	if (ret < 0)
		report_failure(fs, ret, "cannot convert");
	ovlfs_free(fs);
	return ret < 0 ? 1 : 0;
}
