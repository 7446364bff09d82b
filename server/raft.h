/*
 * raft.h — per-shard replication and leader election (Raft, sections 5.1–5.4
 * of Ongaro & Ousterhout) as a pure state machine: no sockets, no files, no
 * clocks, no threads. Time, received messages and storage completions go in;
 * messages to peers and storage work come out. The same code runs inside
 * chatd (server/cluster.c drives it) and inside the deterministic
 * simulator in tests/server/test_raft_sim.c, which is why it must never do
 * I/O or read a clock itself. docs/cluster.md describes the protocol; this
 * header is the API manual.
 *
 * ---- Model ---------------------------------------------------------------
 *
 * A raft_node is one cluster member (one chatd process). It holds every shard
 * of the data directory as a separate replication group (a raft_shard inside
 * the node) with its own term, vote, log, leader and commit offset; all
 * groups have the same members (cfg.nodes). Timers are per shard but
 * heartbeats are driven by one node-level clock, so in a tick every shard
 * this node leads emits its heartbeats at once and the caller can put all
 * messages for one peer into one frame (see raft_tick).
 *
 * The log of a shard is the engine's log: a sequence of batches (engine/
 * batch.h). Raft needs no payload bytes, only each batch's descriptor
 * (raft_batch: first_offset, record count, term). Positions are RECORD
 * OFFSETS as on disk: a batch covers [first_offset, first_offset + count),
 * batches are contiguous from offset 0, and "end offset" means the offset
 * after the last record. Where the paper says "index i", read "record
 * offset i"; where it says lastLogIndex, read end_offset. The Raft rules are
 * unchanged because every record of a batch has the batch's term and a
 * leader never writes two different batches at one offset in one term:
 *   - log matching: two logs holding a record at the same offset with the
 *     same term are identical (bytes and batch boundaries) up to it;
 *   - terms never decrease along a log, so the term of any offset is found
 *     in a small term -> first offset table (Kafka's leader-epoch cache,
 *     KIP-101), which is also how a follower finds where to cut.
 * The commit offset is likewise an end offset: records below it are
 * committed. It is volatile (as in the paper); the caller may hand a known
 * value back at restart.
 *
 * The term of a batch is the engine's batch header field `term`; the
 * caller stamps it (log_set_term) when this node becomes leader.
 *
 * ---- Persistence ---------------------------------------------------------
 *
 * Persistent state is (term, voted_for, the log). It changes in memory at
 * once but becomes durable only through an explicit step:
 *   1. after any call, the caller drains raft_persist_take(): each item is
 *      the next storage work of one shard (new term/vote, a truncation, new
 *      batches to append, byte ranges to rewrite after a repair);
 *   2. the caller performs the items of a shard IN ORDER (write, then
 *      fdatasync) and reports each with raft_persisted(shard, seq). Within
 *      an item, the term/vote and a truncation must be durable before the
 *      appends that follow them, so that a crash leaves a prefix of the
 *      work (the engine's log_truncate_from syncs before it returns).
 * Messages whose meaning depends on durable state are held inside the node
 * until the items they depend on are reported: vote requests (the
 * candidate's own vote), vote grants, and append acknowledgements (a
 * follower acks only durable records, so a commit is "durable on a
 * majority"). The leader's own copy counts for commit only once durable;
 * the leader ships batches to followers before its own fsync finishes (its
 * writes and the followers' overlap, Raft section 10.2.1).
 * A crash loses whatever was not reported; the caller restarts the shard from
 * what is on disk with raft_shard_open(). Items may be merged by the caller
 * but not reordered within a shard; different shards are independent.
 *
 * ---- Damaged or lost storage ----------------------------------------------
 *
 * Two conditions remove a replica from elections until it is whole again
 * (the failure in the 2025 Jepsen analysis of NATS JetStream: a replica whose
 * disk silently lost acknowledged data votes or leads and the cluster loses
 * committed writes):
 *   - FAULTY RANGES: the caller found a checksum failure inside the log (not
 *     a torn tail) and marks the offsets with raft_mark_faulty() or passes
 *     them to raft_shard_open(). The descriptors (offsets, terms) of the
 *     range must still be known; only the bytes are bad. The replica never
 *     campaigns, steps down if it leads, acknowledges only up to the first
 *     faulty offset (a copy with a hole is not counted toward commit), and
 *     repairs the range itself: it sends RAFT_MSG_FETCH to peers (the leader
 *     first) until one whose log has the same term at the range's last
 *     offset (hence, by log matching, the same bytes) answers with the
 *     batches; the caller rewrites them (a persist item's repair list) and
 *     the range is cleared when that item is reported. A caller that repairs
 *     by other means calls raft_clear_faulty(). It may still vote for
 *     others: the up-to-date check needs only descriptors, which are intact.
 *   - LOST SUFFIX: the replica restarted with a log shorter than what it had
 *     acknowledged (acked_end in raft_shard_state: a known offset, or
 *     RAFT_ACKED_UNKNOWN). It is RECOVERING: it neither campaigns nor grants
 *     any vote (its vote could elect a leader lacking a record it helped
 *     commit) until its log durably matches a leader's up to
 *     min(acked_end, that leader's log end), the end taken from an append
 *     sent after the leader saw this incarnation. Every record committed
 *     with one of the lost acknowledgements is in that leader's log below
 *     its end (leader completeness), so the replica then holds them again.
 *     Incarnations: cfg.boot_id grows with every start of the process and
 *     rides on every message; a leader ignores answers from an older
 *     incarnation of a follower and forgets what the follower held when a
 *     newer one appears, so acknowledgements still in flight from before a
 *     crash cannot count after the replica has restarted. The term and
 *     vote must survive; a replica that lost them must rejoin as a new
 *     member (not done yet).
 *
 * ---- Invariants and errors -------------------------------------------------
 *
 * Always-on checks guard what must never happen (truncating at or below the
 * commit offset, two leaders of one term, a committed record that disagrees
 * with the leader). A violated check returns RAFT_EINVARIANT, changes
 * nothing further and fails the shard for good (RAFT_EFAILED from then on);
 * it never aborts the process. Bytes from the network are never trusted: a
 * malformed message returns RAFT_EPROTO and changes nothing.
 *
 * All functions return 0 or a negative code: the RAFT_E* codes below or
 * CL_* codes (engine/errors.h); raft_strerror() describes either.
 * Nothing here is thread-safe: one thread drives a node.
 */
#ifndef CHATLOG_RAFT_H
#define CHATLOG_RAFT_H

#include <stddef.h>
#include <stdint.h>

/* Project error codes of this module (the CL_* codes end at -30012). */
enum {
    RAFT_ENOTLEADER = -30101, /* propose on a replica that is not leader */
    RAFT_EPROTO = -30102,     /* a malformed or impossible message */
    RAFT_EINVARIANT = -30103, /* a safety check failed; the shard failed */
    RAFT_EFAILED = -30104,    /* the shard failed earlier (sticky) */
    RAFT_EINVAL = -30105,     /* an argument is out of range */
    RAFT_ENOMEM = -30106,     /* allocation failed; the shard failed */
    RAFT_ENOTOPEN = -30107,   /* the shard was not opened */
};

const char *raft_strerror(int err);

#define RAFT_MAX_NODES 7
#define RAFT_NONE      0 /* node ids are 1..UINT32_MAX; 0 means nobody */
/* raft_shard_state.acked_end when the replica lost an unknown suffix. */
#define RAFT_ACKED_UNKNOWN UINT64_MAX

/* One batch of the log. The leader's first batch of every term is a
 * RAFT_BATCH_NOOP of one record (Raft section 8: it lets the leader commit
 * the previous terms' records without waiting for a client); the caller
 * writes it as a record that carries no chat data. */
#define RAFT_BATCH_NOOP 1u
typedef struct raft_batch {
    uint64_t first_offset;
    uint64_t term;
    uint32_t count; /* records, >= 1 */
    uint32_t flags; /* RAFT_BATCH_* */
} raft_batch;

typedef struct raft_range {
    uint64_t from, to; /* offsets [from, to) */
} raft_range;

enum raft_role { RAFT_FOLLOWER = 0, RAFT_CANDIDATE = 1, RAFT_LEADER = 2 };

/* Deliberately broken rules, for the simulator's own tests only: each
 * switches off one safety rule so that a test can show the checker catches
 * the resulting violation. Never set outside tests. */
enum {
    RAFT_BREAK_VOTE_UPTODATE = 1u << 0,   /* grant votes without the
                                             up-to-date check */
    RAFT_BREAK_COMMIT_OLD_TERM = 1u << 1, /* count replicas for records of
                                             earlier terms (Figure 8) */
    RAFT_BREAK_ACK_UNSYNCED = 1u << 2,    /* ack appends before durable */
    RAFT_BREAK_LOST_VOTES = 1u << 3,      /* a RECOVERING replica votes */
    RAFT_BREAK_VOTE_UNSYNCED = 1u << 4,   /* answer votes before the vote
                                             is durable */
};

typedef struct raft_config {
    uint32_t self;                  /* this node's id, one of nodes[] */
    uint32_t n_nodes;               /* members, 1..RAFT_MAX_NODES */
    uint32_t nodes[RAFT_MAX_NODES]; /* member ids, distinct, non-zero */
    uint32_t n_shards;              /* shards 0..n_shards-1 */
    uint32_t heartbeat_ms;          /* 0: 100 */
    uint32_t election_min_ms;       /* 0: 600; timeouts are uniform in */
    uint32_t election_max_ms;       /* 0: 1200   [min, max) */
    uint32_t retry_ms;              /* resend a lost append after; 0: 2 x
                                       heartbeat */
    uint32_t max_inflight;          /* appends in flight per follower;
                                       0: 8; at most 64 */
    uint32_t max_batches_per_msg;   /* batches per append or fetch answer;
                                       0: 64 */
    uint64_t rand_seed;             /* election timeouts (any value) */
    /* This process start: non-zero and greater than at any earlier start
     * of this node (e.g. wall-clock microseconds). */
    uint64_t boot_id;
    uint32_t test_break; /* RAFT_BREAK_*, tests only */
} raft_config;

/* What the caller found on disk for one shard when (re)starting. */
typedef struct raft_shard_state {
    uint64_t term;      /* persisted current term (0 for a new shard) */
    uint32_t voted_for; /* persisted vote in that term, RAFT_NONE if none */
    const raft_batch *batches; /* the log from offset 0, contiguous; copied */
    size_t n_batches;
    uint64_t commit_offset; /* known committed end (0: unknown) */
    /* > the log's end (or RAFT_ACKED_UNKNOWN): this replica may have
     * acknowledged records it no longer has; it is RECOVERING. 0 or <= end:
     * nothing lost. The caller must keep this fact on disk and pass it at
     * every restart until raft_shard_info says recovering == 0: a replica
     * that crashes while recovering is still missing those records. */
    uint64_t acked_end;
    const raft_range *faulty; /* damaged ranges in the log; copied */
    size_t n_faulty;
} raft_shard_state;

/* ---- messages ----
 *
 * Field use per type ("-": unused, zero):
 *
 *   type         offset        log_term     commit  match  end       hint_*
 *   VOTE         cand. end     cand. last   -       -      -         -
 *                offset        term
 *   VOTE_RESP    -             -            -       -      -         -
 *   APPEND       prev_offset   prev_term    leader  -      leader's  -
 *                (= first offset of         commit         log end
 *                batches[0])
 *   APPEND_RESP  the request's -            -       see    see       reject
 *                prev_offset                        below  below     only
 *   FETCH        from          term at to-1 -       to     -         -
 *   FETCH_RESP   from          -            -       to     -         -
 *
 * APPEND_RESP with RAFT_MSGF_OK: `end` is prev_offset plus the records of
 * the request (the follower's log now equals the leader's up to there) and
 * `match` the part of it that is durable and intact (capped at the first
 * faulty offset). Without OK: `end` is the follower's log end, `hint_term`
 * its term at prev_offset-1 (0 if its log is shorter) and `hint_offset` the
 * first offset of that term in its log (its end if hint_term is 0) — the
 * leader jumps back by term, not one batch at a time.
 *
 * Every message carries the sender's boot_id in `boot`; an APPEND carries
 * in `to_boot` the receiver's boot_id as the leader last saw it (0: not
 * yet), which tells a restarted replica the append is not older than its
 * restart.
 *
 * APPEND and FETCH_RESP carry batches; the transport ships each batch's
 * bytes (read from the engine) and rebuilds the descriptors from the batch
 * headers on the receiving side. A heartbeat is an APPEND without batches
 * whose prev_offset is what the follower is known to hold.
 */
enum raft_msg_type {
    RAFT_MSG_VOTE = 1,
    RAFT_MSG_VOTE_RESP = 2,
    RAFT_MSG_APPEND = 3,
    RAFT_MSG_APPEND_RESP = 4,
    RAFT_MSG_FETCH = 5,
    RAFT_MSG_FETCH_RESP = 6,
};

#define RAFT_MSGF_OK 1u /* vote granted / append accepted / fetch served */

/* Why a vote or an append was refused (diagnostics, in raft_msg.reason). */
enum raft_reason {
    RAFT_R_NONE = 0,
    RAFT_R_STALE_TERM = 1,   /* the request's term is older than ours */
    RAFT_R_VOTED = 2,        /* already voted for another in this term */
    RAFT_R_NOT_UPTODATE = 3, /* the candidate's log is behind ours */
    RAFT_R_RECOVERING = 4,   /* we lost a suffix and may not vote yet */
    RAFT_R_LOG_MISMATCH = 5, /* no record with prev_term at prev_offset-1 */
    RAFT_R_CANNOT_SERVE = 6, /* fetch: our log differs there or is damaged */
};

typedef struct raft_msg {
    uint32_t type;  /* enum raft_msg_type */
    uint32_t flags; /* RAFT_MSGF_* */
    uint32_t shard;
    uint32_t from, to;
    uint32_t reason; /* enum raft_reason */
    uint64_t term;   /* sender's current term */
    uint64_t offset;
    uint64_t log_term;
    uint64_t commit;
    uint64_t match;
    uint64_t end;
    uint64_t hint_term;
    uint64_t hint_offset;
    uint64_t boot;
    uint64_t to_boot;
    const raft_batch *batches;
    uint32_t n_batches;
} raft_msg;

/* Messages produced by a call. Messages (and their batches) stay valid until
 * raft_outbox_reset() or raft_outbox_free(); every call appends to the
 * outbox and never removes anything, so a caller may collect the output of
 * many calls (all shards, a whole tick) and then group it per peer. */
typedef struct raft_arena raft_arena;
typedef struct raft_outbox {
    raft_msg *msgs;
    size_t n, cap;
    raft_arena *arena; /* internal: where the batches live */
} raft_outbox;

void raft_outbox_init(raft_outbox *ob);
void raft_outbox_reset(raft_outbox *ob); /* n = 0, memory kept */
void raft_outbox_free(raft_outbox *ob);

/* ---- storage work ----
 *
 * One item for one shard, to be applied in this order: write term and
 * voted_for (if write_hard_state), remove every record with offset >=
 * truncate_from (if truncate: log_truncate_from), append `batches` (they
 * continue the log; payload is the leader's proposals or what the APPEND
 * that carried them delivered), rewrite `repair` in place (payload from the
 * FETCH_RESP that carried them), then make all of it durable and call
 * raft_persisted(shard, seq). Pointers are valid until the next
 * raft_persist_take().
 */
typedef struct raft_persist {
    uint32_t shard;
    uint64_t seq; /* per shard, increasing by 1 */
    int write_hard_state;
    uint64_t term;
    uint32_t voted_for;
    int truncate;
    uint64_t truncate_from;
    const raft_batch *batches;
    size_t n_batches;
    const raft_batch *repair;
    size_t n_repair;
} raft_persist;

typedef struct raft_node raft_node;

/* Per-follower replication state, as seen by a leader. */
typedef struct raft_peer_info {
    uint32_t node;
    uint64_t match;    /* known durable & identical up to here */
    uint64_t next;     /* next offset to send */
    uint32_t inflight; /* appends sent and not answered */
    int probing;       /* 1: one append at a time until a match is found */
    uint64_t last_heard_ms;
} raft_peer_info;

typedef struct raft_shard_info {
    uint32_t shard;
    int role; /* enum raft_role */
    uint64_t term;
    uint32_t voted_for;
    uint32_t leader;         /* RAFT_NONE if unknown */
    uint64_t end_offset;     /* log end, in memory */
    uint64_t durable_offset; /* log end reported durable */
    uint64_t commit_offset;
    uint64_t last_term; /* term of the last record (0: empty log) */
    uint32_t n_batches;
    int recovering;          /* lost suffix, not yet caught up */
    uint64_t recover_target; /* RAFT_ACKED_UNKNOWN: not yet known */
    uint32_t n_faulty;
    uint64_t first_faulty; /* first faulty offset, UINT64_MAX if none */
    int failed;            /* 0 or the error that failed the shard */
    uint64_t log_version;  /* changes whenever the in-memory log changes */
    uint32_t n_peers;      /* leader only */
    raft_peer_info peers[RAFT_MAX_NODES];
} raft_shard_info;

/* ---- lifecycle --------------------------------------------------------- */

/* A node with every shard closed. Returns 0 and *out, RAFT_EINVAL (bad
 * config: self not a member, duplicate or zero ids, boot_id 0,
 * heartbeat >= election_min >= election_max, max_inflight > 64),
 * RAFT_ENOMEM. Free with raft_node_free(). */
int raft_node_new(const raft_config *cfg, raft_node **out);
void raft_node_free(raft_node *node);

/* Open shard `shard` from its on-disk state (a new shard: all zero) as a
 * follower at time now_ms. The log must be contiguous from offset 0 with
 * count >= 1 and non-decreasing terms <= st->term; faulty ranges and
 * commit_offset must lie within it. Returns 0, RAFT_EINVAL (bad shard or
 * state; the shard stays closed), RAFT_ENOMEM. Opening an open shard
 * replaces it (held messages and unreported storage work are dropped). */
int raft_shard_open(raft_node *node, uint32_t shard, const raft_shard_state *st,
                    uint64_t now_ms);

/* ---- driving ----------------------------------------------------------- */

/* Advance time to now_ms (never backwards): election timeouts, heartbeats
 * (one node-level clock: all shards' heartbeats to a peer leave in the same
 * tick), resending of appends lost in the network, stepping down a leader
 * that has not heard from a majority for election_max_ms, fetch retries
 * for faulty ranges. Messages are appended to *out. Returns 0, or the
 * first error of a shard (other shards are still ticked). Call it at least
 * every heartbeat_ms / 2. */
int raft_tick(raft_node *node, uint64_t now_ms, raft_outbox *out);

/* Handle one received message at now_ms; replies and follow-ups go to *out
 * (some only later, from raft_persisted). Returns 0 (stale or duplicate
 * messages are ignored or answered: not errors), RAFT_EPROTO (malformed:
 * nothing changed), RAFT_ENOTOPEN, RAFT_EFAILED, RAFT_EINVARIANT,
 * RAFT_ENOMEM. The message and its batches are only read during the call. */
int raft_step(raft_node *node, uint64_t now_ms, const raft_msg *msg,
              raft_outbox *out);

/* On the leader: append a batch of `count` records in the current term.
 * *out_batch receives its descriptor (first_offset = the log end before the
 * call). The caller writes the payload when the persist item listing the
 * batch comes out, and acks its clients when commit_offset passes the batch
 * end while term_at(first_offset) is still the batch's term; if that term
 * changes (raft_term_at) or the log gets shorter, the batch was lost and the
 * clients must retry. Returns 0, RAFT_ENOTLEADER, RAFT_EINVAL (count 0),
 * RAFT_EFAILED, RAFT_ENOMEM. */
int raft_propose(raft_node *node, uint32_t shard, uint32_t count,
                 raft_batch *out_batch, raft_outbox *out);

/* On the leader: tell the followers the commit offset now (an empty
 * append to every follower that is not being probed, as a heartbeat
 * sends), instead of with the next append or heartbeat. The caller uses it
 * once per round in which the commit offset moved, so that followers
 * deliver committed records without waiting a heartbeat interval. Returns
 * 0, RAFT_ENOTLEADER, RAFT_ENOTOPEN, RAFT_EFAILED, RAFT_ENOMEM. */
int raft_notify_commit(raft_node *node, uint32_t shard, raft_outbox *out);

/* Storage work: fills up to max items (each for one shard) and returns how
 * many. Take everything after every call that may produce work (all of
 * them except the getters). */
size_t raft_persist_take(raft_node *node, raft_persist *items, size_t max);

/* Every item of `shard` with seq <= seq is durable. Releases the messages
 * that waited for it into *out, advances the durable end (and on a leader
 * maybe the commit offset). Returns 0, RAFT_EINVAL (seq never handed out),
 * RAFT_ENOTOPEN, RAFT_EFAILED. */
int raft_persisted(raft_node *node, uint32_t shard, uint64_t seq,
                   raft_outbox *out);

/* ---- storage faults ---------------------------------------------------- */

/* Offsets [from, to) of the log have unreadable bytes (widened to whole
 * batches; must lie within the log). A leader steps down; the replica stops
 * campaigning and starts fetching the range from its peers (see Damaged or
 * lost storage above). Returns 0, RAFT_EINVAL, RAFT_ENOTOPEN, RAFT_EFAILED,
 * RAFT_ENOMEM. */
int raft_mark_faulty(raft_node *node, uint32_t shard, uint64_t from,
                     uint64_t to, raft_outbox *out);
/* The caller repaired [from, to) itself. Returns 0, RAFT_EINVAL,
 * RAFT_ENOTOPEN. */
int raft_clear_faulty(raft_node *node, uint32_t shard, uint64_t from,
                      uint64_t to);

/* ---- inspection -------------------------------------------------------- */

int raft_shard_info_get(const raft_node *node, uint32_t shard,
                        raft_shard_info *out);
/* The shard's log; *batches is valid until the next call that changes the
 * node (anything but the getters). */
int raft_shard_log(const raft_node *node, uint32_t shard,
                   const raft_batch **batches, size_t *n);
/* Term of the record at offset (0 if the log has no such record). */
uint64_t raft_term_at(const raft_node *node, uint32_t shard, uint64_t offset);

#endif
