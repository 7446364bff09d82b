/*
 * blobs.h — the media check of `chatlog verify` (blobs.c).
 */
#ifndef CHATLOG_CLI_BLOBS_H
#define CHATLOG_CLI_BLOBS_H

#include <stdio.h>

/* Check every object under data_dir/media/ against its name (SHA-256) and
 * its .meta size; print problems and notes (tmp- leftovers, strays) to out,
 * ending with one summary line when the directory exists. Returns the number
 * of problems (0 also when there is no media/ directory), or -errno when
 * media/ cannot be opened. */
int cli_verify_blobs(const char *data_dir, FILE *out);

#endif
