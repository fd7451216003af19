// SPDX-License-Identifier: MIT
/*
 * cmd-diff.c: ovlfs diff, the changes in the upper as text or JSON; its
 * counting callback and summary line also serve ovlfs run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ovlfs.h"
#include "cli.h"

/* ---------------------------------------------------------------------- */
/* diff */

/*
 * Length of the valid UTF-8 sequence at S (N bytes available), 0 if S does
 * not start one; its code point in *CP.
 */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		*cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		*cp = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0; /* no overlong forms */
		else if (c == 0xed)
			hi = 0x9f; /* no surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		*cp = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f; /* nothing above U+10FFFF */
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xbf))
			return 0;
		*cp = (*cp << 6) | (s[i] & 0x3f);
	}
	return len;
}

/* Characters the text form writes as \xHH bytes although valid UTF-8. */
static bool invisible_char(uint32_t cp)
{
	return (cp >= 0x80 && cp <= 0x9f) ||	 /* C1 controls */
	       cp == 0xad ||			 /* soft hyphen */
	       (cp >= 0x200b && cp <= 0x200f) || /* zero width, marks */
	       (cp >= 0x2028 && cp <= 0x202e) || /* separators, bidi */
	       (cp >= 0x2060 && cp <= 0x206f) || /* invisible, bidi */
	       cp == 0xfeff ||			 /* BOM, zero width */
	       (cp >= 0xfff9 && cp <= 0xfffb);	 /* annotations */
}

/* PATH escaped for the text form (see `ovlfs diff --help`). */
static void put_text_path(FILE *out, const char *path)
{
	const unsigned char *s = (const unsigned char *)path;
	size_t n = strlen(path), i = 0, len, k;
	uint32_t cp;

	while (i < n) {
		if (s[i] == '\\') {
			fputs("\\\\", out);
			i++;
			continue;
		}
		if (s[i] == '\n') {
			fputs("\\n", out);
			i++;
			continue;
		}
		len = utf8_seq(s + i, n - i, &cp);
		if (len == 0) {
			fprintf(out, "\\x%02x", s[i]);
			i++;
			continue;
		}
		if (cp < 0x20 || cp == 0x7f || invisible_char(cp)) {
			for (k = 0; k < len; k++)
				fprintf(out, "\\x%02x", s[i + k]);
		} else {
			fwrite(s + i, 1, len, out);
		}
		i += len;
	}
}

/* S as a JSON string (see `ovlfs diff --help`), with the quotes. */
static void put_json_string(FILE *out, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t n = strlen(str), i = 0, len;
	uint32_t cp;

	fputc('"', out);
	while (i < n) {
		len = utf8_seq(s + i, n - i, &cp);
		if (len == 0) {
			fprintf(out, "\\u%04x", s[i]); /* a raw byte */
			i++;
			continue;
		}
		switch (cp) {
		case '"':
			fputs("\\\"", out);
			break;
		case '\\':
			fputs("\\\\", out);
			break;
		case '\b':
			fputs("\\b", out);
			break;
		case '\f':
			fputs("\\f", out);
			break;
		case '\n':
			fputs("\\n", out);
			break;
		case '\r':
			fputs("\\r", out);
			break;
		case '\t':
			fputs("\\t", out);
			break;
		case 0x2028:
		case 0x2029:
			fprintf(out, "\\u%04x", (unsigned)cp);
			break;
		default:
			if (cp < 0x20)
				fprintf(out, "\\u%04x", (unsigned)cp);
			else
				fwrite(s + i, 1, len, out);
		}
		i += len;
	}
	fputc('"', out);
}

static const struct {
	unsigned bit;
	const char *name;
} diff_bits[] = {
	{ OVLFS_DIFF_CONTENT, "content" }, { OVLFS_DIFF_MODE, "mode" },
	{ OVLFS_DIFF_OWNER, "owner" },	   { OVLFS_DIFF_MTIME, "mtime" },
	{ OVLFS_DIFF_XATTR, "xattr" },	   { OVLFS_DIFF_TYPE, "type" },
};

static const char *type_name(mode_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
		return "file";
	case S_IFDIR:
		return "dir";
	case S_IFLNK:
		return "symlink";
	case S_IFIFO:
		return "fifo";
	case S_IFSOCK:
		return "socket";
	case S_IFCHR:
		return "chardev";
	case S_IFBLK:
		return "blockdev";
	}
	return "unknown";
}

static void json_open(struct diff_state *d)
{
	if (!d->started)
		fputs("{\"changes\":[", d->out);
	d->started = true;
}

int diff_cb(const struct ovlfs_diff_entry *e, void *arg)
{
	struct diff_state *d = arg;
	bool first = !d->started;
	size_t i, nb = 0;

	switch (e->change) {
	case OVLFS_ADDED:
		d->added++;
		if (S_ISREG(e->mode))
			d->bytes += e->size;
		break;
	case OVLFS_MODIFIED:
		d->modified++;
		if (S_ISREG(e->mode) &&
		    (e->what & (OVLFS_DIFF_CONTENT | OVLFS_DIFF_TYPE)))
			d->bytes += e->size;
		break;
	case OVLFS_DELETED:
		d->deleted++;
		break;
	case OVLFS_RENAMED:
		d->renamed++;
		break;
	}
	if (!d->out)
		return 0;

	if (d->json) {
		json_open(d);
		fputs(first ? "\n{\"path\":" : ",\n{\"path\":", d->out);
		put_json_string(d->out, e->path);
		fprintf(d->out, ",\"change\":\"%c\",", (char)e->change);
		if (e->change == OVLFS_RENAMED && e->from) {
			fputs("\"from\":", d->out);
			put_json_string(d->out, e->from);
			fputc(',', d->out);
		}
		fputs("\"what\":[", d->out);
		for (i = 0; i < sizeof(diff_bits) / sizeof(diff_bits[0]); i++)
			if ((e->change == OVLFS_MODIFIED || e->change == OVLFS_RENAMED) &&
			    (e->what & diff_bits[i].bit))
				fprintf(d->out, "%s\"%s\"", nb++ ? "," : "",
					diff_bits[i].name);
		fprintf(d->out, "],\"type\":\"%s\",\"size\":%" PRIu64 "}",
			type_name(e->mode), e->size);
		return 0;
	}

	fprintf(d->out, "%c ", (char)e->change);
	put_text_path(d->out, e->path);
	/* "R /new (from /old; mode)": what else differs after a ';'. */
	if (e->change == OVLFS_RENAMED && e->from) {
		fputs(" (from ", d->out);
		put_text_path(d->out, e->from);
	}
	if (e->change == OVLFS_MODIFIED || e->change == OVLFS_RENAMED)
		for (i = 0; i < sizeof(diff_bits) / sizeof(diff_bits[0]); i++)
			if (e->what & diff_bits[i].bit)
				fprintf(d->out, "%s%s",
					nb++ ? ", " :
					e->change == OVLFS_RENAMED && e->from ? "; " :
										" (",
					diff_bits[i].name);
	if ((e->change == OVLFS_RENAMED && e->from) || nb)
		fputc(')', d->out);
	fputc('\n', d->out);
	return 0;
}

void put_summary(FILE *out, const struct diff_state *d)
{
	fprintf(out, "%" PRIu64 " added, %" PRIu64 " modified, %" PRIu64 " deleted",
		d->added, d->modified, d->deleted);
	/* Only when there are any: the line stays as it was without. */
	if (d->renamed)
		fprintf(out, ", %" PRIu64 " renamed", d->renamed);
	fprintf(out, "; %" PRIu64 " bytes added or changed\n", d->bytes);
}

int cmd_diff(const struct command *cmd, int argc, char **argv)
{
	struct diff_state d = { 0 };
	struct fin_opts o;
	struct ovlfs *fs;
	char *json = NULL;
	size_t json_len = 0;
	int ret;

	ret = parse_fin_opts(cmd, FIN_UPPER | FIN_JSON | FIN_LAYERS, argc, argv, &o);
	if (ret >= 0)
		return ret;
	fs = open_handle(&o);
	if (!fs)
		return 1;
	d.out = stdout;
	d.json = o.json;
	/*
	 * JSON is built in memory and printed only once complete: a diff
	 * that fails midway prints nothing a parser could mistake for a
	 * (shorter) answer.
	 */
	if (d.json && !(d.out = open_memstream(&json, &json_len))) {
		err_msg("diff: out of memory");
		ovlfs_free(fs);
		return 1;
	}
	ret = ovlfs_diff(fs, diff_cb, &d);
	if (ret != 0) {
		if (d.json) {
			fclose(d.out);
			free(json);
		}
		fflush(stdout);
		report_failure(fs, ret, "cannot diff");
		ovlfs_free(fs);
		return 1;
	}
	ovlfs_free(fs);
	if (d.json) {
		json_open(&d);
		fprintf(d.out, "%s],\"summary\":{\"added\":%" PRIu64
			",\"modified\":%" PRIu64 ",\"deleted\":%" PRIu64
			",\"renamed\":%" PRIu64 ",\"bytes\":%" PRIu64 "}}\n",
			d.added + d.modified + d.deleted + d.renamed ? "\n" : "",
			d.added, d.modified, d.deleted, d.renamed, d.bytes);
		if (fclose(d.out) != 0) {
			free(json);
			err_msg("diff: out of memory");
			return 1;
		}
		fwrite(json, 1, json_len, stdout);
		free(json);
	} else {
		put_summary(stdout, &d);
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		err_msg("cannot write the output: %s", strerror(errno));
		return 1;
	}
	return 0;
}
