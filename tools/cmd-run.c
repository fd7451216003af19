// SPDX-License-Identifier: MIT
/*
 * cmd-run.c: ovlfs run: mount, run a command inside, unmount, then finish
 * the upper as --on-exit says (or as asked on the terminal); a watchdog
 * process detaches the mount if run itself is killed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ovlfs.h"
#include "cli.h"

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
 * Is PATH (canonical) the mount point of a mount of ovlfs in this
 * namespace? Its device in *DEV (the topmost one's, the last listed).
 * From /proc/self/mountinfo (field 3 the device, 5 the mount point with
 * octal escapes for blanks, the type after " - "): no filesystem is
 * asked, so a dead mount, whose requests may wait for a ring the kernel
 * tears down in the background, cannot hang it.
 */
static bool ovlfs_mount_at(const char *path, dev_t *dev)
{
	char line[PATH_MAX * 2 + 512], mp[PATH_MAX + 1];
	bool found = false;
	FILE *f = fopen("/proc/self/mountinfo", "re");

	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		char *p = line, *sep = strstr(line, " - ");
		unsigned maj, mnr;
		size_t n = 0;

		for (int field = 0; field < 2 && p; field++)
			p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL;
		if (!p || !sep || sscanf(p, "%u:%u ", &maj, &mnr) != 2)
			continue;
		for (int field = 2; field < 4 && p; field++)
			p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL;
		if (!p)
			continue;
		while (*p && *p != ' ' && n < PATH_MAX) {
			if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' &&
			    p[2] >= '0' && p[2] <= '7' && p[3] >= '0' &&
			    p[3] <= '7') {
				mp[n++] = (char)((p[1] - '0') * 64 +
						 (p[2] - '0') * 8 + (p[3] - '0'));
				p += 4;
			} else {
				mp[n++] = *p++;
			}
		}
		mp[n] = '\0';
		if (!strcmp(mp, path) && !strncmp(sep + 3, "fuse.ovlfs ", 11)) {
			*dev = makedev(maj, mnr);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/*
 * The watchdog of `ovlfs run` (see start_watchdog): told "P MP" just
 * before the mount is made and "MAJ:MIN MP" once it is, it waits for its
 * parent to be gone (EOF), then detaches the mount of ovlfs at MP if the
 * mount table still shows it on that device. Killed between the two
 * lines, the parent leaves a mount the watchdog knows by place only: it
 * goes if it is dead (ENOTCONN, or ECONNABORTED for a request the kernel
 * had handed to a FUSE-over-io_uring ring that died with us); a live one
 * is not ours: ours died with the parent. Never returns.
 */
static void watchdog(int fd)
{
	char buf[2 * PATH_MAX + 64], real[PATH_MAX], *mp = NULL, *line, *nl, c;
	unsigned maj = 0, mnr = 0;
	struct statfs sf;
	dev_t dev;
	bool armed = false;
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
	while (n < sizeof(buf) - 1) {
		r = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (r == 0 || (r < 0 && errno != EINTR))
			break;
		if (r > 0)
			n += r;
	}
	buf[n] = '\0';
	for (line = buf; (nl = strchr(line, '\n')); line = nl + 1) {
		*nl = '\0';
		if (!strncmp(line, "P ", 2)) {
			mp = line + 2;
		} else if (sscanf(line, "%u:%u %n", &maj, &mnr, &len) == 2 &&
			   len) {
			mp = line + len;
			armed = true;
		}
	}
	while (n == sizeof(buf) - 1 &&
	       (r = read(fd, &c, 1)) != 0 && (r > 0 || errno == EINTR))
		;
	/*
	 * No mount of ovlfs there: none was made, or the parent unmounted
	 * it. Known by the mount table, not by stat: a dead mount may fail
	 * stat with other errors than ENOTCONN, or hang it (suspected, not
	 * shown, in CI35, which left a dead mount for good).
	 */
	if (!mp || !*mp || !realpath(mp, real) || !ovlfs_mount_at(real, &dev))
		_exit(0);
	mp = real;
	/*
	 * Armed, it is ours by its device (dead or not: the parent that
	 * served it is gone). Else only a dead one is: statfs always asks the
	 * server (stat may be answered from the kernel's cache), and a live
	 * mount there is someone else's.
	 */
	if (armed ? dev != makedev(maj, mnr) :
		    statfs(mp, &sf) == 0 ||
		    (errno != ENOTCONN && errno != ECONNABORTED))
		_exit(0);
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

/* Write MSG (N bytes) to the watchdog WFD. */
static void tell_watchdog(int wfd, const char *msg, int n)
{
	if (n > 0 && (size_t)n < PATH_MAX + 64 && write(wfd, msg, n) != n)
		err_msg("warning: the unmount watchdog is not armed");
}

/* do_mount's before_mount: tell the watchdog where the mount goes. */
static void prime_watchdog(struct ovlfs *fs, void *arg)
{
	char msg[PATH_MAX + 64];
	int wfd = *(int *)arg;

	if (wfd >= 0)
		tell_watchdog(wfd, msg, snprintf(msg, sizeof(msg), "P %s\n",
						 ovlfs_mount_point(fs)));
}

/* Tell the watchdog WFD which mount to watch. */
static void arm_watchdog(int wfd, const char *mp)
{
	char msg[PATH_MAX + 64];
	struct stat st;

	if (wfd < 0 || stat(mp, &st) < 0)
		return;
	tell_watchdog(wfd, msg, snprintf(msg, sizeof(msg), "%u:%u %s\n",
					 major(st.st_dev), minor(st.st_dev),
					 mp));
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

int cmd_run(const struct command *cmd, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "upper", required_argument, NULL, 'u' },
		{ "inode-mode", required_argument, NULL, 'i' },
		{ "no-passthrough", no_argument, NULL, OPT_NO_PASSTHROUGH },
		{ "io-uring", required_argument, NULL, OPT_IO_URING },
		{ "no-redirect-dir", no_argument, NULL, OPT_NO_REDIRECT_DIR },
		{ "no-metacopy", no_argument, NULL, OPT_NO_METACOPY },
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
	struct mount_opts o = { 0 };
	int on_exit_action, dashes, c, i, status = 0, code, ret;
	sigset_t block, oldmask;
	struct sigaction ign, old_int, old_quit;
	struct diff_state d = { 0 };
	char err[1024];
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
		case OPT_IO_URING:
		case OPT_NO_REDIRECT_DIR:
		case OPT_NO_METACOPY:
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
		default:
			mount_opts_free(&o);
			return option_error(cmd, c, argv);
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
	o.before_mount = prime_watchdog;
	o.before_mount_arg = &wfd;
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
