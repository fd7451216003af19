/*
 * ovl_sha256 against the FIPS 180-4 example vectors and against sha256sum
 * for the lengths around the padding boundaries (55/56 bytes decide between
 * one and two padding blocks, 63/64/65 straddle a whole block).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h> /* format.h uses struct statvfs */

#include "format/format.h"
#include "test.h"

/* Byte I of the boundary messages; the same as the shell loop that made them. */
static const char alphabet[] =
	"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";

static void hex(const uint8_t d[32], char out[65])
{
	static const char digits[] = "0123456789abcdef";
	int i;

	for (i = 0; i < 32; i++) {
		out[2 * i] = digits[d[i] >> 4];
		out[2 * i + 1] = digits[d[i] & 15];
	}
	out[64] = '\0';
}

static void check(const void *data, size_t len, const char *want,
		  const char *what)
{
	uint8_t d[32];
	char got[65];

	ovl_sha256(data, len, d);
	hex(d, got);
	if (strcmp(got, want) != 0)
		fprintf(stderr, "sha256 of %s (%zu bytes) is wrong\n", what,
			len);
	T_STREQ(got, want);
}

int main(void)
{
	static const struct {
		size_t len;
		const char *sum;
	} boundary[] = {
		/* printf %s "${S:0:N}" | sha256sum, S = alphabet repeated */
		{ 1,
		  "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb" },
		{ 55,
		  "d74ba075e4259c6c807c4101e66d281096cf9ff14ba01260dee741b1bdaef326" },
		{ 56,
		  "8fb605eab2efae3d1fcc881fa5c5dd6219a17ca3663e46642ff566847c24c272" },
		{ 63,
		  "f97180402a8be89995e76ea31770110e54ef0b8f1eb2022065af9201bfc85c86" },
		{ 64,
		  "e5b38ac5aa22fee56fe7095e076e74c03ce60d2ea43b818d0f7b4252faf32e5a" },
		{ 65,
		  "33d6b20da29eaa49981daa1785c1bd20035a7382f4351e4dc27f2ad3eebad33e" },
		{ 119,
		  "aebb7b59a4d0a1902aa8891eb654040b63be98c65da76ef611ed47732e9759db" },
		{ 120,
		  "0acbbb5accedd02bd38855cdf171cdeb6037df1518d30f31b80e2f8b0a8e1424" },
		{ 128,
		  "018bb47205c8a84c89cf0f8ec22caa9eff705f510f4fa841cb7d1c23888d7d09" },
	};
	char msg[256];
	char *million;
	size_t i;

	check("", 0,
	      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	      "\"\"");
	/* A NULL pointer with length 0 must not be read. */
	check(NULL, 0,
	      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	      "NULL");
	check("abc", 3,
	      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	      "\"abc\"");
	check("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
	      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
	      "the 448-bit message");

	million = malloc(1000000);
	T_ASSERT(million != NULL);
	memset(million, 'a', 1000000);
	check(million, 1000000,
	      "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
	      "one million 'a'");
	free(million);

	for (i = 0; i < sizeof(msg); i++)
		msg[i] = alphabet[i % 64];
	for (i = 0; i < sizeof(boundary) / sizeof(boundary[0]); i++)
		check(msg, boundary[i].len, boundary[i].sum,
		      "the alphabet message");

	/* The input is read, not written, and may be unaligned. */
	check(msg + 1, 3,
	      "a6b0f90d2ac2b8d1f250c687301aef132049e9016df936680e81fa7bc7d81d70",
	      "an unaligned slice");

	printf("sha256: all checks passed\n");
	return 0;
}
