/*
 * log.c: telling the user what happened while mounted.
 *
 * A serving thread that hits a failure only the caller of one syscall
 * would otherwise see (a copy-up that ran out of space, passthrough
 * turned off) says so here, once, in one line. The application chooses
 * where lines go (ovlfs_set_log); without a choice errors and warnings go
 * to stderr.
 * Any thread may log at any time, so nothing here keeps state: each line
 * is formatted on the caller's stack and leaves in one call.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "format/format.h"

#define LOG_PREFIX "ovlfs: "
#define LOG_PREFIX_LEN (sizeof(LOG_PREFIX) - 1)

/*
 * Make RAW one printable line in OUT (OUTLEN bytes): paths may hold
 * newlines or escape sequences, which must not forge or garble lines.
 */
static void one_line(const char *raw, char *out, size_t outlen)
{
	size_t o = 0;

	for (const unsigned char *p = (const unsigned char *)raw;
	     *p && o + 5 < outlen; p++) {
		if (*p < 0x20 || *p == 0x7f)
			o += snprintf(out + o, outlen - o, "\\x%02x", *p);
		else
			out[o++] = (char)*p;
	}
	out[o] = '\0';
}

static void write_stderr(const char *msg)
{
	struct iovec iov[3] = {
		{ .iov_base = (void *)LOG_PREFIX, .iov_len = LOG_PREFIX_LEN },
		{ .iov_base = (void *)msg, .iov_len = strlen(msg) },
		{ .iov_base = (void *)"\n", .iov_len = 1 },
	};
	ssize_t n;

	/* One call: lines of several threads must not interleave. */
	do
		n = writev(STDERR_FILENO, iov, 3);
	while (n < 0 && errno == EINTR);
}

void ovl_log(struct ovlfs *fs, enum ovlfs_log_level level, const char *fmt,
	     ...)
{
	char raw[1024], line[4 * sizeof(raw) + 8];
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	one_line(raw, line, sizeof(line));
	if (fs->log_fn)
		fs->log_fn(level, line, fs->log_arg);
	else if (level <= OVLFS_LOG_WARNING)
		write_stderr(line);	/* info is for a log someone asked for */
	errno = saved;
}

int ovl_set_error(struct ovlfs *fs, int err, const char *fmt, ...)
{
	char raw[OVL_ERRLEN];
	size_t o = 0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	/* Paths may hold any byte: keep the message one line, as promised. */
	for (const unsigned char *p = (const unsigned char *)raw;
	     *p && o + 5 < sizeof(fs->err); p++) {
		if (*p < 0x20 || *p == 0x7f)
			o += snprintf(fs->err + o, sizeof(fs->err) - o, "\\x%02x",
				      *p);
		else
			fs->err[o++] = (char)*p;
	}
	fs->err[o] = '\0';
	return err;
}
