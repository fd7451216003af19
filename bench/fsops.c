/* Timed filesystem loops for bench/overlay.py.
 *
 * The per-operation cost of a warm overlay is a few microseconds, so the
 * loops are in C (Python would add about as much per call). bench/overlay.py
 * compiles this file into its temporary directory; it is not part of the
 * build. Every mode chdir()s to ROOT, runs its loop over the paths of LIST
 * (one relative path per line), and prints one line
 *
 *     count=N bytes=B sum=HEX errors=E secs=S
 *
 * where secs is the time of the loop alone (no exec, no list parsing), and
 * count/bytes/sum/errors let the caller check the result: a broken overlay
 * must not look fast.
 *
 *   fsops lstat   ROOT LIST         lstat each path; bytes = sum of st_size
 *   fsops read    ROOT LIST         open, read (64 KiB) to EOF, close
 *   fsops seqread ROOT LIST         the same with 1 MiB reads
 *   fsops readdir ROOT DIR          recursive readdir of DIR, no stat
 *                                   (unless d_type is DT_UNKNOWN)
 *   fsops write   ROOT PATH MIB     create PATH, write MIB x 1 MiB, fsync
 *   fsops append  ROOT LIST [DIR]   append 1 byte to each file, then syncfs
 *                                   ROOT (and then the filesystem of DIR)
 *   fsops rename  ROOT LIST SUFFIX  rename each path to path+SUFFIX
 *
 * sum is a hash of one 8-byte word per 4 KiB of data read (sampled, so it
 * costs next to nothing), equal across setups when the data is.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long count, errors;
static long long bytes;
static uint64_t sum = 1469598103934665603ULL;

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void fail(const char *what, const char *path)
{
	if (errors++ < 5)
		fprintf(stderr, "fsops: %s %s: %s\n", what, path, strerror(errno));
}

static char **read_list(const char *file, long *n)
{
	FILE *f = fopen(file, "r");
	char *line = NULL, **v = NULL;
	size_t cap = 0, len;
	long cnt = 0, vcap = 0;
	ssize_t r;

	if (!f) {
		perror(file);
		exit(2);
	}
	while ((r = getline(&line, &cap, f)) > 0) {
		len = (size_t)r;
		if (line[len - 1] == '\n')
			line[--len] = 0;
		if (!len)
			continue;
		if (cnt == vcap) {
			vcap = vcap ? vcap * 2 : 1024;
			v = realloc(v, vcap * sizeof(*v));
			if (!v)
				exit(2);
		}
		v[cnt++] = strdup(line);
	}
	free(line);
	fclose(f);
	*n = cnt;
	return v;
}

/* Fold one word per 4 KiB of file offset into sum. */
static void sample(const char *buf, ssize_t n, long long off)
{
	long long k = (off + 4095) & ~4095LL;

	for (; k < off + n; k += 4096) {
		uint64_t w = 0;
		size_t m = (size_t)(off + n - k) < 8 ? (size_t)(off + n - k) : 8;

		memcpy(&w, buf + (k - off), m);
		sum = (sum ^ w) * 1099511628211ULL;
	}
}

static void read_files(char **v, long n, size_t bs)
{
	char *buf = malloc(bs);

	for (long i = 0; i < n; i++) {
		int fd = open(v[i], O_RDONLY);
		long long off = 0;
		ssize_t r;

		if (fd < 0) {
			fail("open", v[i]);
			continue;
		}
		while ((r = read(fd, buf, bs)) > 0) {
			sample(buf, r, off);
			off += r;
		}
		if (r < 0)
			fail("read", v[i]);
		close(fd);
		bytes += off;
		count++;
	}
	free(buf);
}

static void walk(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
	DIR *d;
	struct dirent *e;

	if (fd < 0) {
		fail("open", name);
		return;
	}
	d = fdopendir(fd);
	if (!d) {
		fail("fdopendir", name);
		close(fd);
		return;
	}
	errno = 0;
	while ((e = readdir(d))) {
		int isdir = e->d_type == DT_DIR;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		count++;
		if (e->d_type == DT_UNKNOWN) {
			struct stat st;

			if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
				isdir = S_ISDIR(st.st_mode);
		}
		if (isdir)
			walk(fd, e->d_name);
		errno = 0;
	}
	if (errno)
		fail("readdir", name);
	closedir(d);
}

int main(int argc, char **argv)
{
	const char *mode;
	char **v = NULL;
	long n = 0;
	double t0, t1;

	if (argc < 4) {
		fprintf(stderr, "usage: fsops MODE ROOT ARG...\n");
		return 2;
	}
	mode = argv[1];
	if (chdir(argv[2]) < 0) {
		perror(argv[2]);
		return 2;
	}
	if (!strcmp(mode, "lstat") || !strcmp(mode, "read") || !strcmp(mode, "seqread") ||
	    !strcmp(mode, "append") || !strcmp(mode, "rename"))
		v = read_list(argv[3], &n);

	t0 = now();
	if (!strcmp(mode, "lstat")) {
		struct stat st;

		for (long i = 0; i < n; i++) {
			if (lstat(v[i], &st) < 0) {
				fail("lstat", v[i]);
				continue;
			}
			count++;
			bytes += st.st_size;
		}
	} else if (!strcmp(mode, "read")) {
		read_files(v, n, 64 << 10);
	} else if (!strcmp(mode, "seqread")) {
		read_files(v, n, 1 << 20);
	} else if (!strcmp(mode, "readdir")) {
		walk(AT_FDCWD, argv[3]);
	} else if (!strcmp(mode, "write")) {
		long mib = argc > 4 ? atol(argv[4]) : 0;
		char *buf = malloc(1 << 20);
		int fd;

		for (int i = 0; i < (1 << 20); i++)
			buf[i] = (char)(i * 131 + 7);
		t0 = now();
		fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0) {
			fail("create", argv[3]);
		} else {
			for (long i = 0; i < mib; i++) {
				memcpy(buf, &i, sizeof(i));
				if (write(fd, buf, 1 << 20) != (1 << 20)) {
					fail("write", argv[3]);
					break;
				}
				bytes += 1 << 20;
			}
			if (fsync(fd) < 0)
				fail("fsync", argv[3]);
			if (close(fd) < 0)
				fail("close", argv[3]);
			count = 1;
		}
		free(buf);
	} else if (!strcmp(mode, "append")) {
		int rfd;

		for (long i = 0; i < n; i++) {
			int fd = open(v[i], O_WRONLY | O_APPEND);

			if (fd < 0) {
				fail("open", v[i]);
				continue;
			}
			if (write(fd, "X", 1) != 1)
				fail("write", v[i]);
			if (close(fd) < 0)
				fail("close", v[i]);
			count++;
			bytes++;
		}
		/* syncfs the mount, then (argv[4]) the filesystem under it: a
		 * FUSE server need not pass syncfs on to its upper */
		for (int k = 2; k <= 4 && k < argc; k += 2) {
			rfd = open(k == 2 ? "." : argv[k], O_RDONLY | O_DIRECTORY);
			if (rfd < 0 || syncfs(rfd) < 0)
				fail("syncfs", argv[k]);
			if (rfd >= 0)
				close(rfd);
		}
	} else if (!strcmp(mode, "rename")) {
		const char *suffix = argc > 4 ? argv[4] : ".mv";
		char to[4096];

		for (long i = 0; i < n; i++) {
			snprintf(to, sizeof(to), "%s%s", v[i], suffix);
			if (rename(v[i], to) < 0) {
				fail("rename", v[i]);
				continue;
			}
			count++;
		}
	} else {
		fprintf(stderr, "fsops: unknown mode %s\n", mode);
		return 2;
	}
	t1 = now();
	printf("count=%ld bytes=%lld sum=%016llx errors=%ld secs=%.6f\n", count, bytes,
	       (unsigned long long)sum, errors, t1 - t0);
	return 0;
}
