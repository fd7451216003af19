/*
 * Whiteout names and markers (lib/whiteout.c): the encoding of over-long
 * names, and create/exists/remove on a scratch directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format/format.h"
#include "test.h"

static void name_of_len(char *buf, size_t len, char c)
{
	memset(buf, c, len);
	buf[len] = '\0';
}

static void test_names(void)
{
	char name[NAME_MAX + 1], wh[NAME_MAX + 1], wh2[NAME_MAX + 1];

	T_ASSERT(!ovl_wh_name("foo", wh));
	T_STREQ(wh, ".wh.foo");

	/* 251 bytes still fit the prefix within NAME_MAX ... */
	name_of_len(name, 251, 'a');
	T_ASSERT(!ovl_wh_name(name, wh));
	T_INTEQ(strlen(wh), 255);

	/* ... 252 do not: the hashed form, in the reserved namespace. */
	name_of_len(name, 252, 'a');
	T_ASSERT(ovl_wh_name(name, wh));
	T_ASSERT(!strncmp(wh, OVL_LONGWH_PREFIX, strlen(OVL_LONGWH_PREFIX)));
	T_INTEQ(strlen(wh), strlen(OVL_LONGWH_PREFIX) + 64);
	T_ASSERT(ovl_is_wh_name(wh));

	/* sha256 of 252 'a', as sha256sum prints it */
	T_STREQ(wh + strlen(OVL_LONGWH_PREFIX),
		"03aaf5773717feae6f704bf2637ae0a9af8b1b26c3493ef29553818378773a04");

	/* Different long names give different markers. */
	name_of_len(name, 255, 'a');
	ovl_wh_name(name, wh2);
	T_ASSERT(strcmp(wh, wh2) != 0);
}

static void test_markers(void)
{
	char tmpl[] = "/tmp/ovlfs-unit-wh.XXXXXX";
	char longname[NAME_MAX + 1], wh[NAME_MAX + 1], buf[NAME_MAX + 2];
	int dfd;

	T_ASSERT(mkdtemp(tmpl));
	dfd = open(tmpl, O_PATH | O_DIRECTORY);
	T_ASSERT(dfd >= 0);

	T_INTEQ(ovl_wh_exists(NULL, dfd, "x"), 0);
	T_INTEQ(ovl_wh_create(NULL, dfd, "x"), 0);
	T_INTEQ(ovl_wh_exists(NULL, dfd, "x"), 1);
	T_INTEQ(ovl_wh_create(NULL, dfd, "x"), 0);	/* EEXIST is fine */
	T_INTEQ(ovl_wh_remove(NULL, dfd, "x"), 0);
	T_INTEQ(ovl_wh_exists(NULL, dfd, "x"), 0);
	T_INTEQ(ovl_wh_remove(NULL, dfd, "x"), 0);		/* absent is fine */

	/* A directory named like a whiteout is not one. */
	T_INTEQ(mkdirat(dfd, ".wh.d", 0700), 0);
	T_INTEQ(ovl_wh_exists(NULL, dfd, "d"), 0);
	T_INTEQ(unlinkat(dfd, ".wh.d", AT_REMOVEDIR), 0);

	/* Long names: the marker records the name and is checked. */
	name_of_len(longname, 255, 'z');
	T_INTEQ(ovl_wh_create(NULL, dfd, longname), 0);
	T_INTEQ(ovl_wh_exists(NULL, dfd, longname), 1);
	ovl_wh_name(longname, wh);
	T_INTEQ(ovl_wh_long_target(dfd, wh, buf), 0);
	T_STREQ(buf, longname);
	/* A marker whose recorded name differs (a collision) hides nothing. */
	{
		int fd = openat(dfd, wh, O_WRONLY | O_TRUNC);

		T_ASSERT(fd >= 0);
		T_INTEQ(write(fd, "other", 5), 5);
		close(fd);
	}
	T_INTEQ(ovl_wh_exists(NULL, dfd, longname), 0);
	T_INTEQ(ovl_wh_remove(NULL, dfd, longname), 0);

	/* Opaque marker. */
	T_INTEQ(ovl_opaque_get(NULL, dfd), 0);
	T_INTEQ(ovl_opaque_set(NULL, dfd), 0);
	T_INTEQ(ovl_opaque_get(NULL, dfd), 1);
	T_INTEQ(unlinkat(dfd, OVL_OPAQUE_NAME, 0), 0);

	close(dfd);
	T_INTEQ(rmdir(tmpl), 0);
}

/* The kernel's format: the whiteout takes the name itself. */
static void test_kernel_markers(void)
{
	char tmpl[] = "/tmp/ovlfs-unit-kwh.XXXXXX";
	const struct ovl_fmt k = { .kernel = true,
				   .opaque_xattr = "user.overlay.opaque" };
	struct ovl_dirent de = { .type = DT_UNKNOWN };
	char buf[NAME_MAX + 2];
	const char *t;
	struct stat st;
	int dfd, fd;

	T_ASSERT(mkdtemp(tmpl));
	dfd = open(tmpl, O_PATH | O_DIRECTORY);
	T_ASSERT(dfd >= 0);

	T_INTEQ(ovl_wh_exists(&k, dfd, "x"), 0);
	T_INTEQ(ovl_wh_create(&k, dfd, "x"), 0);
	T_INTEQ(ovl_wh_exists(&k, dfd, "x"), 1);
	T_INTEQ(fstatat(dfd, "x", &st, AT_SYMLINK_NOFOLLOW), 0);
	T_ASSERT(S_ISCHR(st.st_mode) && st.st_rdev == 0);
	T_INTEQ(ovl_wh_create(&k, dfd, "x"), 0);	/* already one */
	de.name = (char *)"x";
	T_INTEQ(ovl_marker(&k, dfd, &de, buf, &t), 1);
	T_STREQ(t, "x");
	/* The OCI reading of the same entry: a device, not a marker. */
	T_INTEQ(ovl_marker(NULL, dfd, &de, buf, &t), 0);
	T_INTEQ(ovl_wh_remove(&k, dfd, "x"), 0);
	T_INTEQ(ovl_wh_exists(&k, dfd, "x"), 0);

	/* A file or a whole directory is replaced in one step. */
	fd = openat(dfd, "f", O_WRONLY | O_CREAT | O_EXCL, 0600);
	T_ASSERT(fd >= 0);
	close(fd);
	T_INTEQ(ovl_wh_remove(&k, dfd, "f"), 0);	/* not a marker: kept */
	T_INTEQ(faccessat(dfd, "f", F_OK, AT_SYMLINK_NOFOLLOW), 0);
	de.name = (char *)"f";
	T_INTEQ(ovl_marker(&k, dfd, &de, buf, &t), 0);
	T_INTEQ(ovl_wh_create(&k, dfd, "f"), 1);
	T_INTEQ(ovl_wh_exists(&k, dfd, "f"), 1);
	T_INTEQ(mkdirat(dfd, "d", 0700), 0);
	T_INTEQ(mkdirat(dfd, "d/sub", 0700), 0);
	T_INTEQ(ovl_wh_create(&k, dfd, "d"), 1);
	T_INTEQ(ovl_wh_exists(&k, dfd, "d"), 1);
	T_ASSERT(faccessat(dfd, OVL_TMP_PREFIX "wh", F_OK,
			   AT_SYMLINK_NOFOLLOW) < 0);
	/* ovlfs's own names are markers in either format. */
	de.name = (char *)".wh.x";
	T_INTEQ(ovl_marker(&k, dfd, &de, buf, &t), 1);
	T_ASSERT(t == NULL);
	T_INTEQ(unlinkat(dfd, "f", 0), 0);
	T_INTEQ(unlinkat(dfd, "d", 0), 0);

	/* Opaque: an xattr (where the filesystem takes user xattrs). */
	if (ovl_opaque_set(&k, dfd) == 0) {
		T_INTEQ(ovl_opaque_get(&k, dfd), 1);
		T_INTEQ(ovl_opaque_get(NULL, dfd), 0);
	}

	close(dfd);
	T_INTEQ(rmdir(tmpl), 0);
}

int main(void)
{
	test_names();
	test_markers();
	test_kernel_markers();
	return 0;
}
