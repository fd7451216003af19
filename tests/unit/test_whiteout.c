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

#include "ovlfs_i.h"
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

	T_INTEQ(ovl_wh_exists(dfd, "x"), 0);
	T_INTEQ(ovl_wh_create(NULL, dfd, "x"), 0);
	T_INTEQ(ovl_wh_exists(dfd, "x"), 1);
	T_INTEQ(ovl_wh_create(NULL, dfd, "x"), 0);	/* EEXIST is fine */
	T_INTEQ(ovl_wh_remove(dfd, "x"), 0);
	T_INTEQ(ovl_wh_exists(dfd, "x"), 0);
	T_INTEQ(ovl_wh_remove(dfd, "x"), 0);		/* absent is fine */

	/* A directory named like a whiteout is not one. */
	T_INTEQ(mkdirat(dfd, ".wh.d", 0700), 0);
	T_INTEQ(ovl_wh_exists(dfd, "d"), 0);
	T_INTEQ(unlinkat(dfd, ".wh.d", AT_REMOVEDIR), 0);

	/* Long names: the marker records the name and is checked. */
	name_of_len(longname, 255, 'z');
	T_INTEQ(ovl_wh_create(NULL, dfd, longname), 0);
	T_INTEQ(ovl_wh_exists(dfd, longname), 1);
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
	T_INTEQ(ovl_wh_exists(dfd, longname), 0);
	T_INTEQ(ovl_wh_remove(dfd, longname), 0);

	/* Opaque marker. */
	T_INTEQ(ovl_opaque_get(dfd), 0);
	T_INTEQ(ovl_opaque_set(NULL, dfd), 0);
	T_INTEQ(ovl_opaque_get(dfd), 1);
	T_INTEQ(unlinkat(dfd, OVL_OPAQUE_NAME, 0), 0);

	close(dfd);
	T_INTEQ(rmdir(tmpl), 0);
}

int main(void)
{
	test_names();
	test_markers();
	return 0;
}
