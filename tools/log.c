// SPDX-License-Identifier: MIT
/*
 * log.c: where the lines of a mount go (--log FILE, syslog for a daemon,
 * else stderr): the library's log hook and libfuse's. Also write_all,
 * which the log file and the daemon's report pipe (cmd-mount.c) use.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <fuse_log.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "ovlfs.h"
#include "cli.h"

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
int log_open(const char *path)
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

/* All of BUF to FD, across EINTR and short writes: 0, or -1 and errno. */
int write_all(int fd, const void *buf, size_t len)
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
int log_attach(struct ovlfs *fs, const struct mount_opts *o)
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

void log_daemon_started(const struct mount_opts *o)
{
	/* With -d and no --log, stderr stays open for the traces. */
	if (log_syslog && !o->debug)
		fuse_set_log_func(fuse_log_hook);
}
