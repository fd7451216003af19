// SPDX-License-Identifier: MIT
/*
 * cmd-tar.c: ovlfs export and ovlfs apply, the upper as an OCI layer
 * tarball and back.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "ovlfs.h"
#include "cli.h"

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
		default:
			return option_error(cmd, c, argv);
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

/* What /proc calls FD ("/dir/#123 (deleted)" for an unnamed file). */
static void fd_name(int fd, char *buf, size_t len)
{
	char p[64];
	ssize_t n;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	n = readlink(p, buf, len - 1);
	buf[n > 0 ? n : 0] = '\0';
}

/* Owner and mode of the new FILE: TARGET's (OLD) if it exists, else `> TARGET`'s. */
static int export_mode(int fd, const struct stat *old)
{
	mode_t um;

	if (old) {
		if (geteuid() == 0 && fchown(fd, old->st_uid, old->st_gid) < 0)
			return -errno;
		return fchmod(fd, old->st_mode & 07777) < 0 ? -errno : 0;
	}
	um = umask(022);
	umask(um);
	return fchmod(fd, 0644 & ~um) < 0 ? -errno : 0;
}

/*
 * A new file beside TARGET to write the tarball to: an unnamed one
 * (O_TMPFILE: a kill -9 while writing leaves nothing) where the
 * filesystem makes them, *TMP NULL and *ANON the name /proc gives it (for
 * messages); else a named one, *TMP, named so that debris says what it
 * is. *DIR is TARGET's directory, canonical. The fd, or -errno.
 */
static int export_tmpfile(const char *target, const struct stat *old,
			  char **dir, char **tmp, char **anon)
{
	const char *slash = strrchr(target, '/');
	char *d = slash ? strndup(target, slash - target + 1) : strdup("."),
	     *real = d ? realpath(d, NULL) : NULL, *t, name[PATH_MAX];
	const char *base = slash ? slash + 1 : target;
	int fd, err;

	/* Canonical, so the library's messages name it as we do. */
	free(d);
	if (!real)
		return -errno;
	fd = open(real, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (fd >= 0) {
		err = export_mode(fd, old);
		if (err) {
			close(fd);
			free(real);
			return err;
		}
		fd_name(fd, name, sizeof(name));
		*anon = strdup(name);
		*dir = real;
		return fd;
	}
	t = malloc(strlen(real) + strlen(base) + 32);
	if (!t) {
		free(real);
		return -ENOMEM;
	}
	sprintf(t, "%s/.%s.export-XXXXXX", strcmp(real, "/") ? real : "", base);
	*dir = real;
	fd = mkostemp(t, O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		free(t);
		return err;
	}
	err = export_mode(fd, old);
	if (err) {
		close(fd);
		unlink(t);
		free(t);
		return err;
	}
	*tmp = t;
	return fd;
}

/*
 * The finished unnamed file FD gets a name beside TARGET (in DIR, the
 * canonical directory), *TMP, to be renamed over TARGET: a kill between
 * the two leaves that name, the one instant debris can come from. Linked
 * by fd where the caller may (CAP_DAC_READ_SEARCH), else through /proc.
 */
static int export_link(int fd, const char *dir, const char *target, char **tmp)
{
	const char *slash = strrchr(target, '/'), *base = slash ? slash + 1 : target;
	char proc[64], *t = malloc(strlen(dir) + strlen(base) + 48);

	if (!t)
		return -ENOMEM;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	for (unsigned i = 0; i < 100; i++) {
		sprintf(t, "%s/.%s.export-%d.%u", strcmp(dir, "/") ? dir : "", base,
			(int)getpid(), i);
		if (linkat(fd, "", AT_FDCWD, t, AT_EMPTY_PATH) == 0 ||
		    (errno != EEXIST &&
		     linkat(AT_FDCWD, proc, AT_FDCWD, t, AT_SYMLINK_FOLLOW) == 0)) {
			*tmp = t;
			return 0;
		}
		if (errno != EEXIST)
			break;
	}
	free(t);
	return -errno;
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
int cmd_export(const struct command *cmd, int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_export_signal };
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	struct sigaction old[3];
	char *target = NULL, *tmp = NULL, *dir = NULL, *anon = NULL;
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
		fd = export_tmpfile(target, exists ? &st : NULL, &dir, &tmp,
				    &anon);
		export_tmp = tmp;
	}
	if (fd < 0) {
		err_msg("export: cannot write %s: %s", o.tar, strerror(-fd));
		ret = fd;
		goto out;
	}
	ret = ovlfs_export_tar(fs, fd);
	if (ret < 0) {
		report_export_failure(fs, ret, anon ? anon : tmp, o.tar);
		reported = true;
	}
	/* Durable before it replaces FILE: a crash must not leave it empty. */
	if (!ret && (tmp || anon) && fsync(fd) < 0)
		ret = -errno;
	if (!ret && anon) {
		ret = export_link(fd, dir, target, &tmp);
		export_tmp = tmp;
	}
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
	free(anon);
	free(dir);
	free(target);
	ovlfs_free(fs);
	return ret < 0 ? 1 : 0;
}

int cmd_apply(const struct command *cmd, int argc, char **argv)
{
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
