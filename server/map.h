/*
 * map.h — a uint64 → pointer hash map (chained, power-of-two buckets) for
 * the server's in-memory state. Loop thread only.
 */
#ifndef CHATLOG_MAP_H
#define CHATLOG_MAP_H

#include <stdint.h>

typedef struct mapent {
    struct mapent *next;
    uint64_t key;
    void *val;
} mapent;

typedef struct u64map {
    mapent **b;
    uint32_t cap, n;
} u64map;

void *map_get(const u64map *m, uint64_t key);
/* Insert or replace; 0, or -1 on allocation failure. */
int map_put(u64map *m, uint64_t key, void *val);
/* Remove; returns the value or NULL. */
void *map_del(u64map *m, uint64_t key);
void map_free(u64map *m);
uint64_t map_hash(uint64_t k);

#define MAP_EACH(m, e)                                                        \
    for (uint32_t i__ = 0; i__ < (m)->cap; i__++)                             \
        for (mapent *e = (m)->b[i__]; e; e = e->next)

#endif
