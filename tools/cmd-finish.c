// SPDX-License-Identifier: MIT
/*
 * cmd-finish.c: ovlfs commit, discard and recover, and what the offline
 * commands share: their options (parse_fin_opts) and the handle for their
 * layers (open_handle).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ovlfs.h"
#include "cli.h"

/* ---------------------------------------------------------------------- */
/* Shared by the finalization commands */

/*
 * A handle for O's layers with its upper (NULL: default) and --into set;
 * NULL after a message. O's --lower list is freed either way.
 */
struct ovlfs *open_handle(struct fin_opts *o)
{
	struct ovlfs *fs;
	int ret = 0;

	fs = ovlfs_new(o->lower);
	if (!fs) {
		err_msg("%s: %s", o->lower, strerror(errno));
		lowers_free(&o->lowers);
		return NULL;
	}
	if (o->upper && (ret = ovlfs_set_upper(fs, o->upper)) < 0)
		report_failure(fs, ret, o->upper);
	else if ((ret = add_lowers(fs, &o->lowers)) < 0)
		report_failure(fs, ret, "lower");
	else if (o->into && (ret = ovlfs_set_commit_into(fs, o->into)) < 0)
		report_failure(fs, ret, o->into);
	lowers_free(&o->lowers);
	if (ret < 0) {
		ovlfs_free(fs);
		return NULL;
	}
	return fs;
}

/*
 * Parse the options in ALLOWED and the one LOWER argument. Returns -1 to go
 * on, or the exit status to return.
 */
int parse_fin_opts(const struct command *cmd, unsigned allowed, int argc,
		   char **argv, struct fin_opts *o)
{
	static const struct {
		unsigned flag;
		struct option opt;
	} all[] = {
		{ FIN_UPPER, { "upper", required_argument, NULL, 'u' } },
		{ FIN_ATOMIC, { "atomic", no_argument, NULL, 'A' } },
		{ FIN_QUIET, { "quiet", no_argument, NULL, 'q' } },
		{ FIN_JSON, { "json", no_argument, NULL, 'J' } },
		{ FIN_LAYERS, { "lower", required_argument, NULL, OPT_LOWER } },
		{ FIN_LAYERS, { "into", required_argument, NULL, OPT_INTO } },
		{ FIN_FORMAT, { "format", required_argument, NULL, OPT_FORMAT } },
		{ FIN_TO, { "to", required_argument, NULL, OPT_TO } },
	};
	struct option longopts[sizeof(all) / sizeof(all[0]) + 2];
	char shortopts[16] = ":h";
	size_t i, n = 0;
	int c, ret, want;

	for (i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (allowed & all[i].flag)
			longopts[n++] = all[i].opt;
	longopts[n++] = (struct option){ "help", no_argument, NULL, 'h' };
	longopts[n] = (struct option){ NULL, 0, NULL, 0 };
	if (allowed & FIN_UPPER)
		strcat(shortopts, "u:");
	if (allowed & FIN_QUIET)
		strcat(shortopts, "q");

	memset(o, 0, sizeof(*o));
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
		switch (c) {
		case 'u':
			o->upper = optarg;
			break;
		case 'A':
			o->atomic = true;
			break;
		case 'q':
			o->quiet = true;
			break;
		case 'J':
			o->json = true;
			break;
		case OPT_LOWER:
			ret = lowers_add(&o->lowers, optarg);
			if (ret == -EINVAL) {
				lowers_free(&o->lowers);
				return usage_error(cmd, "empty layer in --lower '%s'",
						   optarg);
			}
			if (ret) {
				lowers_free(&o->lowers);
				err_msg("out of memory");
				return 1;
			}
			o->lower = o->lowers.v[0];
			break;
		case OPT_INTO:
			o->into = optarg;
			break;
		case OPT_FORMAT:
		case OPT_TO:
			if (!parse_format(optarg, c == OPT_TO ? &o->to :
							      &o->format)) {
				lowers_free(&o->lowers);
				return usage_error(
					cmd,
					"invalid format '%s' (expected oci or kernel)",
					optarg);
			}
			break;
		case 'h':
			fputs(cmd->usage, stdout);
			return 0;
		case ':':
		default:
			return option_error(cmd, c, argv);
		}
	}
	want = (o->lowers.n ? 0 : 1) + !!(allowed & FIN_DEST);
	if (argc - optind != want) {
		lowers_free(&o->lowers);
		return usage_error(cmd, argc - optind > want ? "too many arguments" :
					argc - optind == 0 && !o->lowers.n ?
						"missing LOWER" : "missing DEST");
	}
	if (!o->lowers.n)
		o->lower = argv[optind++];
	if (allowed & FIN_DEST)
		o->dest = argv[optind];
	if ((allowed & FIN_TO) && !o->to) {
		lowers_free(&o->lowers);
		return usage_error(cmd, "missing --to FORMAT");
	}
	return -1;
}

/* ovlfs_finish(ACTION) on LOWER/UPPER with progress; the exit status. */
static int finish_cmd(struct fin_opts *o, enum ovlfs_action action,
		      const char *verb)
{
	struct ovlfs *fs;
	char what[64];
	struct stat st;
	bool no_upper;
	int ret;

	fs = open_handle(o);
	if (!fs)
		return 1;
	/* A missing named upper is refused by the library (a typo). */
	no_upper = lstat(ovlfs_upper(fs), &st) < 0 && errno == ENOENT;
	progress_begin(fs, o->quiet);
	ret = ovlfs_finish(fs, action);
	progress_end();
	if (ret < 0) {
		snprintf(what, sizeof(what), "cannot %s", verb);
		report_failure(fs, ret, what);
		ovlfs_free(fs);
		return 1;
	}
	if (no_upper && !o->quiet)
		err_msg("%s: no upper %s: nothing to %s", verb, ovlfs_upper(fs),
			verb);
	ovlfs_free(fs);
	return 0;
}

/* ---------------------------------------------------------------------- */
/* commit, discard, recover */

int cmd_commit(const struct command *cmd, int argc, char **argv)
{
	struct fin_opts o;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_ATOMIC | FIN_QUIET | FIN_LAYERS, argc,
			     argv, &o);
	if (ret >= 0)
		return ret;
	return finish_cmd(&o, o.atomic ? OVLFS_COMMIT_ATOMIC : OVLFS_COMMIT,
			  "commit");
}

int cmd_discard(const struct command *cmd, int argc, char **argv)
{
	struct fin_opts o;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_QUIET | FIN_LAYERS, argc, argv, &o);
	if (ret >= 0)
		return ret;
	return finish_cmd(&o, OVLFS_DISCARD, "discard");
}

int cmd_recover(const struct command *cmd, int argc, char **argv)
{
	struct fin_opts o;
	struct ovlfs *fs;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_QUIET | FIN_LAYERS, argc, argv, &o);
	if (ret >= 0)
		return ret;
	/* The journal's upper is removed only if it is the one named here. */
	fs = open_handle(&o);
	if (!fs)
		return 1;
	progress_begin(fs, o.quiet);
	ret = ovlfs_recover(fs);
	progress_end();
	if (ret < 0) {
		report_failure(fs, ret, "cannot recover");
		ovlfs_free(fs);
		return 1;
	}
	ovlfs_free(fs);
	if (!o.quiet) {
		if (ret > 0)
			printf("recovered an interrupted commit of %s\n",
			       o.lower);
		else
			printf("nothing to recover\n");
	}
	return 0;
}
