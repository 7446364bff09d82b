/*
 * index.c — the in-memory per-conversation index.
 *
 * A shard's conversations live in an open-addressing hash table keyed by
 * conv_id. Because msg_ids are dense (1, 2, 3, ...), a conversation's index is
 * just an array of 8-byte locations where locs[i] belongs to msg_id i+1: no
 * msg_id is stored, and "after M, limit L" is a slice. Arrays grow by 1.5x, so
 * index memory stays under 16 bytes per message for all but the smallest
 * conversations (measured by bench/engine_bench.c and chatlog stats).
 */
#include <stdlib.h>

#include "errors.h"
#include "internal.h"

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

conv *idx_find(const conv_table *t, uint64_t conv_id)
{
    if (!t->cap)
        return NULL;
    uint32_t mask = t->cap - 1;
    for (uint32_t i = (uint32_t)mix64(conv_id) & mask;; i = (i + 1) & mask) {
        conv *c = t->slots[i];
        if (!c)
            return NULL;
        if (c->conv_id == conv_id)
            return c;
    }
}

static int idx_grow(conv_table *t)
{
    uint32_t ncap = t->cap ? t->cap * 2 : 64;
    conv **ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return CL_ENOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        conv *c = t->slots[i];
        if (!c)
            continue;
        uint32_t j = (uint32_t)mix64(c->conv_id) & (ncap - 1);
        while (ns[j])
            j = (j + 1) & (ncap - 1);
        ns[j] = c;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    return 0;
}

conv *idx_get(conv_table *t, uint64_t conv_id)
{
    conv *c = idx_find(t, conv_id);
    if (c)
        return c;
    /* Keep the load factor under 3/4. */
    if ((uint64_t)(t->count + 1) * 4 > (uint64_t)t->cap * 3 && idx_grow(t))
        return NULL;
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->conv_id = conv_id;
    uint32_t mask = t->cap - 1;
    uint32_t i = (uint32_t)mix64(conv_id) & mask;
    while (t->slots[i])
        i = (i + 1) & mask;
    t->slots[i] = c;
    t->count++;
    return c;
}

int idx_push(conv *c, uint64_t loc)
{
    if (c->n == c->cap) {
        uint32_t ncap = c->cap < 4 ? 4 : c->cap + c->cap / 2;
        uint64_t *nl = realloc(c->locs, (size_t)ncap * sizeof *nl);
        if (!nl)
            return CL_ENOMEM;
        c->locs = nl;
        c->cap = ncap;
    }
    c->locs[c->n++] = loc;
    return 0;
}

void idx_free(conv_table *t)
{
    for (uint32_t i = 0; i < t->cap; i++) {
        if (t->slots[i]) {
            free(t->slots[i]->locs);
            free(t->slots[i]);
        }
    }
    free(t->slots);
    t->slots = NULL;
    t->cap = t->count = 0;
}

uint64_t idx_memory(const conv_table *t)
{
    uint64_t m = (uint64_t)t->cap * sizeof(conv *);
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->slots[i])
            m += sizeof(conv) + (uint64_t)t->slots[i]->cap * sizeof(uint64_t);
    return m;
}
