// SPDX-License-Identifier: MIT
/*
 * cmd-layers.c: ovlfs flatten and ovlfs convert, which rewrite the layers
 * as a whole.
 */
#include "ovlfs.h"
#include "cli.h"

/* ---------------------------------------------------------------------- */
/* flatten, convert */

int cmd_flatten(const struct command *cmd, int argc, char **argv)
{
	struct fin_opts o;
	struct ovlfs *fs;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_LAYERS | FIN_DEST | FIN_FORMAT,
			     argc, argv, &o);
	if (ret >= 0)
		return ret;
	fs = open_handle(&o);
	if (!fs)
		return 1;
	ret = o.format ? ovlfs_set_format(fs, o.format) : 0;
	if (!ret)
		ret = ovlfs_flatten(fs, o.dest);
	if (ret < 0)
		report_failure(fs, ret, "cannot flatten");
	ovlfs_free(fs);
	return ret < 0 ? 1 : 0;
}

int cmd_convert(const struct command *cmd, int argc, char **argv)
{
	struct fin_opts o;
	struct ovlfs *fs;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_LAYERS | FIN_TO, argc, argv, &o);
	if (ret >= 0)
		return ret;
	fs = open_handle(&o);
	if (!fs)
		return 1;
	ret = ovlfs_convert(fs, o.to);
	if (ret < 0)
		report_failure(fs, ret, "cannot convert");
	ovlfs_free(fs);
	return ret < 0 ? 1 : 0;
}
