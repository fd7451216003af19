// SPDX-License-Identifier: MIT
/*
 * Quick start: use libovlfs from C.
 *
 *	build/quickstart /path/to/some/dir
 *
 * mounts an overlay of the directory, writes a file through the mount point
 * with plain stdio, reads it back, and unmounts. The directory itself is
 * never modified: the new file lands in the upper directory next to it
 * (/path/to/some/dir.upper), which stays after the program exits so you can
 * look at it. The mount point (/path/to/some/dir.mountpoint) is left too,
 * empty again.
 *
 * Mounting needs FUSE: /dev/fuse, and root or fusermount3 (Debian package
 * fuse3) for an ordinary user.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ovlfs.h>

int main(int argc, char **argv)
{
	struct ovlfs *fs;
	char path[4096];
	char buf[64];
	FILE *f;
	int ok;

	if (argc != 2) {
		fprintf(stderr, "usage: %s LOWER\n", argv[0]);
		return 2;
	}

	/*
	 * 1. Create a handle for the lower directory. Nothing happens on disk
	 *    yet; ovlfs_new() only fails for an empty path or out of memory.
	 *    Here you could also call ovlfs_set_upper(),
	 *    ovlfs_set_mount_point() or ovlfs_set_inode_mode(); without them
	 *    the upper is LOWER.upper and the mount point LOWER.mountpoint.
	 */
	fs = ovlfs_new(argv[1]);
	if (!fs) {
		perror("ovlfs_new");
		return 1;
	}

	/*
	 * 2. Mount. This validates the directories, creates the upper and the
	 *    mount point if they are missing, and returns once the mount is
	 *    live. The filesystem is served by the library's own threads, so
	 *    this thread is free to use the mount point right away. On failure
	 *    ovlfs_error() says what went wrong, naming the path.
	 */
	if (ovlfs_mount(fs) < 0) {
		fprintf(stderr, "quickstart: %s\n", ovlfs_error(fs));
		ovlfs_free(fs);
		return 1;
	}
	printf("mounted %s at %s (changes go to %s)\n", ovlfs_lower(fs),
	       ovlfs_mount_point(fs), ovlfs_upper(fs));

	/*
	 * 3. Use the mount point like any directory. Files written here are
	 *    created in the upper; files of the lower would be copied up on
	 *    their first change.
	 */
	snprintf(path, sizeof(path), "%s/hello.txt", ovlfs_mount_point(fs));
	f = fopen(path, "w");
	if (!f || fputs("world\n", f) == EOF || fclose(f) != 0) {
		perror(path);
		ovlfs_free(fs); /* unmounts too */
		return 1;
	}
	printf("wrote \"world\" to %s\n", path);

	/* 4. Read it back through the mount. */
	f = fopen(path, "r");
	if (!f) {
		perror(path);
		ovlfs_free(fs);
		return 1;
	}
	ok = fgets(buf, sizeof(buf), f) && strcmp(buf, "world\n") == 0;
	fclose(f);
	if (!ok) {
		fprintf(stderr, "quickstart: %s: read back something else\n",
			path);
		ovlfs_free(fs);
		return 1;
	}
	printf("read it back: %s", buf);

	/*
	 * 5. Unmount and free. ovlfs_umount() detaches the mount and stops the
	 *    worker threads; the upper keeps the change (hello.txt is now a
	 *    plain file in it). ovlfs_free() would unmount too, but an explicit
	 *    ovlfs_umount() lets you see errors.
	 */
	if (ovlfs_umount(fs) < 0) {
		fprintf(stderr, "quickstart: %s\n", ovlfs_error(fs));
		ovlfs_free(fs);
		return 1;
	}
	printf("unmounted; the new file is in %s/hello.txt, "
	       "the lower is unchanged\n",
	       ovlfs_upper(fs));
	ovlfs_free(fs);
	return 0;
}
