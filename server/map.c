#include "map.h"

#include <stdlib.h>

uint64_t map_hash(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

void *map_get(const u64map *m, uint64_t key)
{
    if (!m->cap)
        return NULL;
    for (mapent *e = m->b[map_hash(key) & (m->cap - 1)]; e; e = e->next)
        if (e->key == key)
            return e->val;
    return NULL;
}

static int grow(u64map *m)
{
    uint32_t ncap = m->cap ? m->cap * 2 : 64;
    mapent **nb = calloc(ncap, sizeof *nb);
    if (!nb)
        return -1;
    for (uint32_t i = 0; i < m->cap; i++) {
        mapent *e = m->b[i];
        while (e) {
            mapent *next = e->next;
            uint32_t j = (uint32_t)(map_hash(e->key) & (ncap - 1));
            e->next = nb[j];
            nb[j] = e;
            e = next;
        }
    }
    free(m->b);
    m->b = nb;
    m->cap = ncap;
    return 0;
}

int map_put(u64map *m, uint64_t key, void *val)
{
    if (m->cap) {
        for (mapent *e = m->b[map_hash(key) & (m->cap - 1)]; e; e = e->next)
            if (e->key == key) {
                e->val = val;
                return 0;
            }
    }
    if (m->n + 1 > m->cap && grow(m))
        return -1;
    mapent *e = malloc(sizeof *e);
    if (!e)
        return -1;
    uint32_t j = (uint32_t)(map_hash(key) & (m->cap - 1));
    e->key = key;
    e->val = val;
    e->next = m->b[j];
    m->b[j] = e;
    m->n++;
    return 0;
}

void *map_del(u64map *m, uint64_t key)
{
    if (!m->cap)
        return NULL;
    mapent **pp = &m->b[map_hash(key) & (m->cap - 1)];
    for (; *pp; pp = &(*pp)->next) {
        if ((*pp)->key == key) {
            mapent *e = *pp;
            void *v = e->val;
            *pp = e->next;
            free(e);
            m->n--;
            return v;
        }
    }
    return NULL;
}

void map_free(u64map *m)
{
    for (uint32_t i = 0; i < m->cap; i++) {
        mapent *e = m->b[i];
        while (e) {
            mapent *n = e->next;
            free(e);
            e = n;
        }
    }
    free(m->b);
    m->b = NULL;
    m->cap = m->n = 0;
}
