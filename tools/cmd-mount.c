// SPDX-License-Identifier: MIT
/*
 * cmd-mount.c: ovlfs mount and ovlfs umount: making the mount (do_mount),
 * serving it in the foreground or as a daemon, and the signal thread that
 * unmounts it on SIGINT/SIGTERM/SIGHUP.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
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
#include "cli.h"

/* ---------------------------------------------------------------------- */
/* umount */

int cmd_umount(const struct command *cmd, int argc, char **argv)
{
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

/*
 * Signals that end a mount cleanly. They are blocked in every thread
 * (blocked before ovlfs_mount() starts the library's threads, which inherit
 * the mask) and taken by sigwait() in signal_thread only.
 */
static sigset_t stop_signals;
static atomic_bool serving_done;
bool in_daemon;		/* the background process of mount_daemon */
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
/*
 * The transport: --io-uring (or -o io_uring=), else $OVLFS_IO_URING, so a
 * whole test suite or a container engine's mount_program can be switched
 * without touching each command line; else the library's default (auto).
 */
static int set_io_uring(struct ovlfs *fs, const struct mount_opts *o,
			enum ovlfs_io_uring *mode)
{
	const char *env = getenv("OVLFS_IO_URING");

	if (o->io_uring_set)
		return ovlfs_set_io_uring(fs, o->io_uring);
	if (!env || !*env)
		return 0;
	if (!parse_io_uring(env, mode))
		return 1;	/* the caller words it */
	return ovlfs_set_io_uring(fs, *mode);
}

struct ovlfs *do_mount(const struct mount_opts *o, char *err, size_t errlen)
{
	enum ovlfs_io_uring mode;
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
	if (o->no_metacopy && (ret = ovlfs_set_metacopy(fs, false)) < 0)
		goto fail;
	if (o->no_redirect && (ret = ovlfs_set_redirect_dir(fs, false)) < 0)
		goto fail;
	ret = set_io_uring(fs, o, &mode);
	if (ret < 0)
		goto fail;
	if (ret > 0) {
		snprintf(err, errlen,
			 "invalid OVLFS_IO_URING '%s' in the environment (expected auto, on or off)",
			 getenv("OVLFS_IO_URING"));
		ovlfs_free(fs);
		return NULL;
	}
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
	if (o->compat && (ret = o->apply_compat(fs, o->compat)) < 0)
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
	if (o->before_mount)
		o->before_mount(fs, o->before_mount_arg);
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

int mount_foreground(const struct mount_opts *o)
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

/*
 * Daemon mode. The child starts a new session, mounts, and reports on a
 * pipe: one byte '0' for success, or '1' followed by the error message.
 * The parent exits once it has the report, so when `ovlfs mount` returns 0
 * the mount is live.
 */
int mount_daemon(const struct mount_opts *o)
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

int cmd_mount(const struct command *cmd, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "upper", required_argument, NULL, 'u' },
		{ "inode-mode", required_argument, NULL, 'i' },
		{ "no-passthrough", no_argument, NULL, OPT_NO_PASSTHROUGH },
		{ "io-uring", required_argument, NULL, OPT_IO_URING },
		{ "no-redirect-dir", no_argument, NULL, OPT_NO_REDIRECT_DIR },
		{ "no-metacopy", no_argument, NULL, OPT_NO_METACOPY },
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
	struct mount_opts o = { 0 };
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
		case OPT_IO_URING:
		case OPT_NO_REDIRECT_DIR:
		case OPT_NO_METACOPY:
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
		default:
			mount_opts_free(&o);
			return option_error(cmd, c, argv);
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
