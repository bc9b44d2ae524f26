/* route_table.c: route key -> the developer's live tunnel connections.
 *
 * An open-addressing hash map (linear probing, FNV-1a, at most half full) whose
 * slots hold the key inline and a small growable array of connection pointers.
 * Deletion shifts the following entries of the probe run back, so there are no
 * tombstones and a lookup of an absent key stops at the first empty slot. The
 * table is consulted for every routed request (route_table_has, route_table_pick)
 * and changes only when tunnels come and go, so lookups allocate nothing. */
#include "route_table.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dnslabel.h"

struct rt_entry {
  char key[DNS_LABEL_MAX + 1]; /* "" marks an empty slot */
  uint8_t klen;
  void **conns;
  size_t nconns, cap;
  size_t next; /* round-robin cursor */
};

struct route_table {
  struct rt_entry *slots;
  size_t nslots; /* power of two */
  size_t nkeys;
};

static uint32_t hash_key(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) {
    h ^= (unsigned char)s[i];
    h *= 16777619u;
  }
  return h;
}

struct route_table *route_table_new(void) {
  struct route_table *rt = calloc(1, sizeof(*rt));
  if (!rt) return NULL;
  rt->nslots = 16;
  rt->slots = calloc(rt->nslots, sizeof(*rt->slots));
  if (!rt->slots) {
    free(rt);
    return NULL;
  }
  return rt;
}

void route_table_free(struct route_table *rt) {
  if (!rt) return;
  for (size_t i = 0; i < rt->nslots; i++) free(rt->slots[i].conns);
  free(rt->slots);
  free(rt);
}

/* The slot holding key, or NULL. */
static struct rt_entry *find(const struct route_table *rt, const char *key, size_t len) {
  if (len == 0 || len > DNS_LABEL_MAX) return NULL;
  size_t mask = rt->nslots - 1;
  for (size_t i = hash_key(key, len) & mask;; i = (i + 1) & mask) {
    struct rt_entry *e = &rt->slots[i];
    if (e->klen == 0) return NULL;
    if (e->klen == len && memcmp(e->key, key, len) == 0) return e;
  }
}

/* The empty slot where key would go (the table is never full). */
static struct rt_entry *free_slot(struct rt_entry *slots, size_t nslots, const char *key,
                                  size_t len) {
  size_t mask = nslots - 1;
  size_t i = hash_key(key, len) & mask;
  while (slots[i].klen != 0) i = (i + 1) & mask;
  return &slots[i];
}

static int grow(struct route_table *rt) {
  size_t n = rt->nslots * 2;
  struct rt_entry *slots = calloc(n, sizeof(*slots));
  if (!slots) return -1;
  for (size_t i = 0; i < rt->nslots; i++) {
    struct rt_entry *e = &rt->slots[i];
    if (e->klen) *free_slot(slots, n, e->key, e->klen) = *e;
  }
  free(rt->slots);
  rt->slots = slots;
  rt->nslots = n;
  return 0;
}

/* Empty slot e and shift the rest of its probe run back so that every entry
 * stays reachable from its home slot without passing an empty slot. */
static void delete_slot(struct route_table *rt, struct rt_entry *e) {
  size_t mask = rt->nslots - 1;
  size_t hole = (size_t)(e - rt->slots);
  free(e->conns);
  memset(e, 0, sizeof(*e));
  for (size_t i = (hole + 1) & mask; rt->slots[i].klen != 0; i = (i + 1) & mask) {
    struct rt_entry *x = &rt->slots[i];
    size_t home = hash_key(x->key, x->klen) & mask;
    /* x may move into the hole if its home is not in (hole, i] cyclically. */
    int stays = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
    if (stays) continue;
    rt->slots[hole] = *x;
    memset(x, 0, sizeof(*x));
    hole = i;
  }
  rt->nkeys--;
}

int route_table_add(struct route_table *rt, const char *key, void *conn) {
  size_t len = key ? strlen(key) : 0;
  if (!rt || !conn || !dns_label_valid(key, len)) return -1;
  struct rt_entry *e = find(rt, key, len);
  if (!e) {
    if ((rt->nkeys + 1) * 2 > rt->nslots && grow(rt) < 0) return -1;
    e = free_slot(rt->slots, rt->nslots, key, len);
    memset(e, 0, sizeof(*e));
    memcpy(e->key, key, len);
    e->key[len] = '\0';
    e->klen = (uint8_t)len;
    rt->nkeys++;
  }
  if (e->nconns == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 4;
    void **c = realloc(e->conns, cap * sizeof(*c));
    if (!c) {
      if (e->nconns == 0) delete_slot(rt, e); /* undo the new key */
      return -1;
    }
    e->conns = c;
    e->cap = cap;
  }
  e->conns[e->nconns++] = conn;
  return 0;
}

int route_table_remove(struct route_table *rt, const char *key, void *conn) {
  if (!rt || !key) return -1;
  struct rt_entry *e = find(rt, key, strlen(key));
  if (!e) return -1;
  size_t i = 0;
  while (i < e->nconns && e->conns[i] != conn) i++;
  if (i == e->nconns) return -1;
  memmove(&e->conns[i], &e->conns[i + 1], (e->nconns - i - 1) * sizeof(*e->conns));
  e->nconns--;
  if (e->nconns == 0) delete_slot(rt, e);
  return 0;
}

void *route_table_pick(struct route_table *rt, const char *key) {
  if (!rt || !key) return NULL;
  struct rt_entry *e = find(rt, key, strlen(key));
  if (!e || e->nconns == 0) return NULL;
  if (e->next >= e->nconns) e->next = 0;
  return e->conns[e->next++];
}

int route_table_has(const struct route_table *rt, const char *key, size_t len) {
  return rt && key && find(rt, key, len) != NULL;
}

size_t route_table_conns(const struct route_table *rt, const char *key) {
  if (!rt || !key) return 0;
  const struct rt_entry *e = find(rt, key, strlen(key));
  return e ? e->nconns : 0;
}

size_t route_table_keys(const struct route_table *rt) { return rt ? rt->nkeys : 0; }

void route_table_foreach(const struct route_table *rt,
                         void (*fn)(const char *key, size_t nconns, void *arg), void *arg) {
  if (!rt || !fn) return;
  for (size_t i = 0; i < rt->nslots; i++)
    if (rt->slots[i].klen) fn(rt->slots[i].key, rt->slots[i].nconns, arg);
}
