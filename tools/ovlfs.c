// SPDX-License-Identifier: MIT
/*
 * ovlfs: the command-line tool.
 *
 * The tool only turns argv into calls of the library (include/ovlfs.h);
 * it has no filesystem logic of its own. Every subcommand is one entry of
 * the `commands` table below: a name, a function taking the subcommand's
 * own argc/argv (argv[0] is the command name), a one-line summary and a
 * usage text. A new command is one function (in the cmd-*.c file of its
 * family, declared in cli.h) and one table row.
 *
 * This file holds the table and main(), which dispatches on it, or to the
 * mount(8) syntax (cmd-compat.c); cli.h says where the rest is.
 *
 * Exit status: 0 success, 1 the operation failed (a message
 * "ovlfs: <what failed>" on stderr), 2 bad usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "ovlfs.h"
#include "cli.h"

/* The table's own command, below: it prints from the table. */
static int cmd_help(const struct command *self, int argc, char **argv);

/* clang-format off */
/* The options mount and run share, as both their helps show them. */
#define OVERLAY_OPTIONS_HELP \
"  -o OPTS                  extra FUSE mount options, comma separated\n" \
"                           (may be given several times)\n" \
"      --no-passthrough     serve all file I/O through ovlfs (by default,\n" \
"                           with CAP_SYS_ADMIN on Linux 6.9+, the kernel\n" \
"                           reads and writes upper files directly)\n" \
"      --no-redirect-dir    rename a directory with lower content by copying\n" \
"                           its tree into the upper (by default: a redirect,\n" \
"                           as the kernel's redirect_dir=on)\n" \
"      --no-metacopy        chmod, chown, utimes and xattr changes of a lower\n" \
"                           file copy its data too (by default: metadata\n" \
"                           only, as the kernel's metacopy=on)\n" \
"      --io-uring MODE      the transport: 'auto' (the default; taken from\n" \
"                           $OVLFS_IO_URING when set) uses FUSE-over-io_uring\n" \
"                           when the kernel offers it (fuse module parameter\n" \
"                           enable_uring=Y, Linux 6.14+), else /dev/fuse;\n" \
"                           'on' fails without it; 'off' uses /dev/fuse\n"

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
OVERLAY_OPTIONS_HELP
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
OVERLAY_OPTIONS_HELP
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
"  R /new (from /old)       a directory renamed through the mount, then\n"
"                           the changes inside it relative to /old (and\n"
"                           \"; WHAT, ...\" if the directory itself differs)\n"
"\n"
"then a summary line such as\n"
"\n"
"  3 added, 1 modified, 2 deleted; 12345 bytes added or changed\n"
"\n"
"(with \", N renamed\" after \"deleted\" when there are renames),\n"
"where the bytes are the total size of the regular files added, changed\n"
"in content or replacing another type. An added or deleted directory is\n"
"listed with everything inside it. A commit renames a renamed directory\n"
"in the lower; the old paths name the lower as it is now (the renames\n"
"happen at once: a swap is two); what the lower has at the new path is\n"
"listed deleted before it. Works on a mounted overlay too.\n"
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
"               \"renamed\": 0, \"bytes\": 7}}\n"
"\n"
"\"change\" is A, M, D or R (then \"from\" is the old path); \"what\" is\n"
"empty unless M or R; \"type\" is one of file, dir, symlink, fifo,\n"
"socket, chardev, blockdev (the new type, or the\n"
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
"it to an unnamed file, or to .FILE.export-XXXXXX where the filesystem has\n"
"none, then renamed over it), so a failed or killed export leaves it as it\n"
"was; a symlink at FILE stays and its target is replaced.\n"
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

/* ---------------------------------------------------------------------- */
/* help */

static int cmd_help(const struct command *self, int argc, char **argv)
{
	const struct command *cmd;
	int ret;

	/* As every command: --help describes it, other options are errors. */
	ret = parse_help_only(self, argc, argv);
	if (ret >= 0)
		return ret;
	if (argc - optind < 1) {
		main_usage(stdout);
		return 0;
	}
	if (argc - optind > 1)
		return usage_error(self, "too many arguments");
	cmd = find_command(argv[optind]);
	if (!cmd)
		return usage_error(NULL, "unknown command '%s'", argv[optind]);
	fputs(cmd->usage, stdout);
	return 0;
}

/* ---------------------------------------------------------------------- */
/* Dispatch */

const struct command *find_command(const char *name)
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
	return cmd->fn(cmd, argc - 1, argv + 1);
}
