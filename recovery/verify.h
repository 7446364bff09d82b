/*
 * verify.h — the offline checker behind `chatlog verify`.
 */
#ifndef CHATLOG_VERIFY_H
#define CHATLOG_VERIFY_H

#include <stdio.h>

/* Check a data directory without changing it: the manifest; every batch of
 * every segment (checksum, format, shard id, offset continuity within and
 * across segments); every compressed block; per-conversation msg_id
 * continuity (1, 2, 3, ... with no gap or repeat); each sidecar index against
 * its segment, record by record. Findings go to report (one line each; the
 * first names the shard, segment and byte position). A torn tail of the
 * active segment is reported as a note, not a failure: recovery cuts it on
 * the next open.
 * Returns 0 when clean, 1 when anything is wrong, or a negative error when
 * the directory cannot be read at all (CL_EMANIFEST, -errno). */
int rcv_verify(const char *dir, FILE *report);

#endif
