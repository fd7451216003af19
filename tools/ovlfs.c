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
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
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

/* clang-format off */
static const struct command commands[] = {
	{
		.name = "mount",
		.fn = cmd_mount,
		.summary = "mount an overlay of LOWER with a writable upper",
		.usage =
"usage: ovlfs mount [OPTIONS] LOWER [MOUNTPOINT]\n"
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
"  -o OPTS                  extra FUSE mount options, comma separated\n"
"                           (may be given several times)\n"
"  -f, --foreground         stay in the foreground until unmounted;\n"
"                           SIGINT/SIGTERM unmount cleanly\n"
"  -d, --debug              print every FUSE request to stderr (in the\n"
"                           background, stderr is kept open for this)\n"
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
"upper directory and the mount point are left in place.\n"
"\n"
"options:\n"
"  -h, --help               show this help\n",
	},
	{
		.name = "help",
		.fn = cmd_help,
		.summary = "show help for ovlfs or one command",
		.usage = "usage: ovlfs help [COMMAND]\n",
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
	fputs("\n'ovlfs COMMAND --help' describes one command.\n", out);
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

static int cmd_help(int argc, char **argv)
{
	const struct command *cmd;

	if (argc < 2) {
		main_usage(stdout);
		return 0;
	}
	if (argc > 2)
		return usage_error(find_command("help"), "too many arguments");
	cmd = find_command(argv[1]);
	if (!cmd)
		return usage_error(NULL, "unknown command '%s'", argv[1]);
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

struct mount_opts {
	const char *lower;
	const char *mount_point; /* NULL: library default */
	const char *upper;	 /* NULL: library default */
	enum ovlfs_inode_mode inode_mode;
	bool inode_mode_set;
	char *fuse_options; /* joined -o values, NULL if none */
	bool foreground;
	bool debug;
};

/*
 * Signals that end a mount cleanly. They are blocked in every thread
 * (blocked before ovlfs_mount() starts the library's threads, which inherit
 * the mask) and taken by sigwait() in signal_thread only.
 */
static sigset_t stop_signals;
static atomic_bool serving_done;
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
			if (!o->debug)
				dup2(fd, STDERR_FILENO);
			if (fd > STDERR_FILENO)
				close(fd);
		}
		write_all(pfd[1], "0", 1);
		close(pfd[1]);
		exit(serve(fs));
	}
}

static int cmd_mount(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "upper", required_argument, NULL, 'u' },
		{ "inode-mode", required_argument, NULL, 'i' },
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
			o.upper = optarg;
			break;
		case 'i':
			if (strcmp(optarg, "virtual") == 0) {
				o.inode_mode = OVLFS_INODE_VIRTUAL;
			} else if (strcmp(optarg, "persistent") == 0) {
				o.inode_mode = OVLFS_INODE_PERSISTENT;
			} else {
				free(o.fuse_options);
				return usage_error(
					cmd,
					"invalid inode mode '%s' (expected virtual or persistent)",
					optarg);
			}
			o.inode_mode_set = true;
			break;
		case 'o': {
			size_t old = 0;
			char *p;

			if (o.fuse_options)
				old = strlen(o.fuse_options);
			if (!*optarg)
				break;
			p = realloc(o.fuse_options, old + strlen(optarg) + 2);
			if (!p) {
				free(o.fuse_options);
				err_msg("out of memory");
				return 1;
			}
			if (old)
				p[old++] = ',';
			strcpy(p + old, optarg);
			o.fuse_options = p;
			break;
		}
		case 'f':
			o.foreground = true;
			break;
		case 'd':
			o.debug = true;
			break;
		case 'h':
			free(o.fuse_options);
			fputs(cmd->usage, stdout);
			return 0;
		case ':':
			free(o.fuse_options);
			return usage_error(cmd, "option '%s' needs an argument",
					   argv[optind - 1]);
		default:
			free(o.fuse_options);
			return usage_error(cmd, "unknown option '%s'",
					   bad_option(argv, obuf,
						      sizeof(obuf)));
		}
	}

	if (argc - optind < 1 || argc - optind > 2) {
		free(o.fuse_options);
		return usage_error(cmd, argc - optind < 1 ?
						"missing LOWER" :
						"too many arguments");
	}
	o.lower = argv[optind];
	if (argc - optind == 2)
		o.mount_point = argv[optind + 1];

	ret = o.foreground ? mount_foreground(&o) : mount_daemon(&o);
	free(o.fuse_options);
	return ret;
}

/* ---------------------------------------------------------------------- */

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
	if (arg[0] == '-')
		return usage_error(NULL, "unknown option '%s'", arg);

	cmd = find_command(arg);
	if (!cmd)
		return usage_error(NULL, "unknown command '%s'", arg);
	return cmd->fn(argc - 1, argv + 1);
}
