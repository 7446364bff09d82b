/*
 * raft_sim.h — a deterministic, single-threaded simulator for server/raft.c.
 *
 * One run = one seed: N nodes (raft_node each, all shards), a simulated
 * network (loss, delay, reordering, duplication, partitions, one-way cuts),
 * simulated disks that make a write durable only when its persist item
 * "completes" (a crash applies a random prefix of the pending items, a
 * torn item included, and drops the rest), crashes and restarts, storage
 * faults (a damaged batch in the middle of a log; a restart that lost a
 * durable suffix), and clients proposing at random leaders. Everything is
 * driven by one xorshift PRNG seeded from the seed, so a seed replays the
 * same run exactly.
 *
 * After every call into a node the checker verifies:
 *   - election safety: at most one leader per (shard, term);
 *   - log matching: two logs with a record of the same offset and term are
 *     identical up to it (batch boundaries included);
 *   - leader completeness: a new leader of term T holds every batch
 *     committed in a term < T;
 *   - state machine safety: every replica's committed prefix equals the
 *     cluster's committed ledger;
 *   - no rollback: no disk ever removes a committed batch;
 *   - acks: a batch is acked to its client only when committed and durable
 *     on a majority of disks (a copy destroyed by an injected disk fault
 *     still counts as made).
 * After the fault phase the network heals and every node restarts; then a
 * leader must be known to all nodes for every shard within a bound, all
 * client requests made after healing must commit (clients retry a proposal
 * that was lost), damaged and lost data must be repaired, and all disks
 * must hold every acked batch, identically.
 */
#ifndef CHATLOG_RAFT_SIM_H
#define CHATLOG_RAFT_SIM_H

#include <stdint.h>

#define RSIM_MAX_NODES  5
#define RSIM_MAX_SHARDS 8

enum {
    RSIM_F_LOSS = 1u << 0,
    RSIM_F_DUP = 1u << 1,
    RSIM_F_DELAY = 1u << 2, /* long and varied delays (reordering) */
    RSIM_F_PARTITION = 1u << 3,
    RSIM_F_CRASH = 1u << 4,
    RSIM_F_DAMAGE = 1u << 5,      /* a damaged batch in a log's middle */
    RSIM_F_LOSE_SUFFIX = 1u << 6, /* restart having lost durable data */
    RSIM_F_ALL = (1u << 7) - 1,
};

typedef struct rsim_opts {
    uint64_t seed;
    uint32_t n_nodes;    /* 0: 3 */
    uint32_t n_shards;   /* 0: 3 */
    uint32_t chaos_ms;   /* length of the fault phase; 0: 3000 */
    uint32_t faults;     /* RSIM_F_*; 0 means none */
    uint32_t test_break; /* RAFT_BREAK_*, handed to every node */
    int trace;           /* print every event to stderr */
} rsim_opts;

typedef struct rsim_result {
    char error[512];      /* the first violation; empty when none */
    uint64_t error_at_ms; /* simulated time of it */
    uint32_t proposals, acked, requests_after_heal;
    uint32_t leaders; /* distinct (shard, term) leaders seen */
    uint32_t crashes, damages, lost_suffixes, partitions;
    uint32_t repaired;  /* damaged batches rewritten from a peer's copy */
    uint32_t recovered; /* replicas that left RECOVERING */
    uint64_t messages;
    uint64_t max_term;
    uint64_t heal_to_leaders_ms; /* heal until every shard had a leader
                                    known to every node */
    uint64_t heal_to_done_ms;    /* heal until everything converged */
} rsim_result;

/* Runs one seed. Returns 0 when every check passed, -1 with r->error set. */
int rsim_run(const rsim_opts *o, rsim_result *r);

#endif
