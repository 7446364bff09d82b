/*
 * cluster.h — chatd as a member of a replicated cluster (issue 6,
 * docs/cluster.md): drives the Raft state machine (raft.h) with the engine
 * (log.h) as its storage and the node links (cnet.h) as its network, acks
 * client writes when they are committed on a majority, forwards writes that
 * arrive at a node that does not lead the conversation's shard, and feeds
 * the chat state and the sessions from the committed stream.
 *
 * Without --peers none of this runs and chatd is the single-node server: the
 * engine's own commit stream drives delivery (srv.c).
 *
 * Everything here runs on the event-loop thread; engine completions come
 * back through the server's inbox (srv_post_call).
 *
 * Errors: 0 or negative (CL_*, RAFT_* codes, -errno); cluster_start logs its
 * reason.
 */
#ifndef CHATLOG_CLUSTER_H
#define CHATLOG_CLUSTER_H

#include <stdint.h>

#include "chatd.h"

struct json_t;

/* The log options a clustered server opens the engine with (no on_commit:
 * delivery follows the Raft commit offset, not local durability). */
int cluster_enabled(const chatd_config *cfg);

/* After log_open, before listening: read the Raft state file, rebuild the
 * chat state from the committed part of the log as far as it is known,
 * start Raft and the node links. Returns 0 or -1 (logged). */
int cluster_start(srv *s);

/* Before log_close: stop the links and Raft; every pending write is
 * answered with CL_ECLOSED, also those whose engine completion arrives
 * later (the server runs the remaining inbox calls after log_close). */
void cluster_stop(srv *s);
/* After those calls: free everything. */
void cluster_free(srv *s);

/* End of an event-loop round that ran engine completions: ship, apply,
 * answer. */
void cluster_round(srv *s);

/* Append rec through the cluster: locally if this node leads the shard,
 * else forwarded to the leader, or held (up to the wait limit) while the
 * shard has no reachable leader. done runs exactly once on the loop thread:
 * 0 when the record is committed (durable on a majority), or CL_ESTALE /
 * RAFT_ENOTLEADER / CL_ETIMEDOUT when the outcome is not known to be a
 * commit (the client retries with its idempotency key), or an engine
 * error. Returns 0, or an error with done never called. */
int cluster_append(srv *s, const rec_view *rec,
                   void (*done)(srv *, void *, int, const log_append_result *),
                   void *ctx);

/* A user's session count on this node changed: tell the other nodes. */
void cluster_presence_changed(srv *s, const user *u);
/* A typing indicator to relay to the other nodes' sessions. */
void cluster_typing(srv *s, uint64_t conv_id, uint64_t user_id, int active);
/* Sessions of uid on other nodes, and how many of them are AWAY. */
void cluster_remote_devices(srv *s, uint64_t uid, uint32_t *devices,
                            uint32_t *away);

/* GET /api/v1/cluster: per shard leader, term, commit offset and each
 * follower's lag; NULL on allocation failure. */
struct json_t *cluster_status_json(srv *s);

/* Lines for /metrics (Prometheus text), appended to *buf. */
void cluster_metrics(srv *s, char **buf, size_t *len, size_t *cap);

#endif
