/*
 * A minimal assertion kit for the unit tests: no framework, so a test is a
 * plain program that exits 0 when every check holds and 1 at the first one
 * that does not, after printing where and what failed.
 */
#ifndef OVL_TEST_H
#define OVL_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_ASSERT(expr)                                                   \
	do {                                                             \
		if (!(expr)) {                                           \
			fprintf(stderr, "%s:%d: assertion failed: %s\n", \
				__FILE__, __LINE__, #expr);              \
			exit(1);                                         \
		}                                                        \
	} while (0)

/* Like T_ASSERT(strcmp(a, b) == 0) but shows both strings (NULL-safe). */
#define T_STREQ(a, b)                                               \
	do {                                                        \
		const char *t_a_ = (a), *t_b_ = (b);                \
		if (!t_a_ || !t_b_ || strcmp(t_a_, t_b_) != 0) {    \
			fprintf(stderr,                             \
				"%s:%d: assertion failed: %s == %s" \
				" (\"%s\" vs \"%s\")\n",            \
				__FILE__, __LINE__, #a, #b,         \
				t_a_ ? t_a_ : "(null)",             \
				t_b_ ? t_b_ : "(null)");            \
			exit(1);                                    \
		}                                                   \
	} while (0)

/* Like T_ASSERT((a) == (b)) for integers, showing both values. */
#define T_INTEQ(a, b)                                                    \
	do {                                                             \
		long long t_a_ = (a), t_b_ = (b);                        \
		if (t_a_ != t_b_) {                                      \
			fprintf(stderr,                                  \
				"%s:%d: assertion failed: %s == %s"      \
				" (%lld vs %lld)\n",                     \
				__FILE__, __LINE__, #a, #b, t_a_, t_b_); \
			exit(1);                                         \
		}                                                        \
	} while (0)

#endif /* OVL_TEST_H */
