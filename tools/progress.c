// SPDX-License-Identifier: MIT
/*
 * progress.c: the progress line of commit, discard, recover, run and
 * apply --commit on a terminal.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ovlfs.h"
#include "cli.h"

/*
 * Progress: one line on stderr, redrawn in place ("\r"), ended with a
 * newline when the phase changes and once the call is done.
 */
struct progress_line {
	bool open;	   /* a line is drawn and not ended yet */
	int len;	   /* its length, to blank out leftovers */
	char phase[32];	   /* its phase */
};

static void progress_cb(const struct ovlfs_progress *p, void *arg)
{
	struct progress_line *pl = arg;
	const char *phase = p->phase && *p->phase ? p->phase : "progress";
	char line[200];
	int n;

	if (pl->open && strcmp(pl->phase, phase) != 0) {
		fputc('\n', stderr);
		pl->open = false;
		pl->len = 0;
	}
	n = snprintf(line, sizeof(line),
		     "%s: %" PRIu64 "/%" PRIu64 " entries, %.1f/%.1f MiB", phase,
		     p->entries_done, p->entries_total,
		     p->bytes_done / 1048576.0, p->bytes_total / 1048576.0);
	if (n < 0)
		return;
	if (n >= (int)sizeof(line))
		n = sizeof(line) - 1;
	fprintf(stderr, "\r%s%*s", line, pl->len > n ? pl->len - n : 0, "");
	fflush(stderr);
	pl->open = true;
	pl->len = n;
	snprintf(pl->phase, sizeof(pl->phase), "%s", phase);
}

static struct progress_line progress_state;

/* Show progress of ovlfs_finish()/ovlfs_recover() on a terminal. */
void progress_begin(struct ovlfs *fs, bool quiet)
{
	memset(&progress_state, 0, sizeof(progress_state));
	if (!quiet && isatty(STDERR_FILENO))
		ovlfs_set_progress(fs, progress_cb, &progress_state);
}

void progress_end(void)
{
	if (progress_state.open) {
		fputc('\n', stderr);
		fflush(stderr);
	}
	progress_state.open = false;
}
