/* route_table.h: route key -> the developer's live tunnel connections.
 *
 * A key exists exactly as long as at least one tunnel holds it: route_table_add()
 * when a tunnel's HELLO is accepted, route_table_remove() when it dies. The table
 * stores opaque pointers (struct tunnel * in the agent) and never frees them. */
#ifndef KB_ROUTE_TABLE_H
#define KB_ROUTE_TABLE_H

#include <stddef.h>

struct route_table;

struct route_table *route_table_new(void);
void route_table_free(struct route_table *rt);

/* Add conn under key. Returns 0, or -1 (invalid key, out of memory). */
int route_table_add(struct route_table *rt, const char *key, void *conn);
/* Remove conn from key; the key disappears with its last conn. Returns 0, or -1 if
 * conn was not there. */
int route_table_remove(struct route_table *rt, const char *key, void *conn);
/* One of key's conns, round-robin across calls; NULL if nobody holds key. */
void *route_table_pick(struct route_table *rt, const char *key);
/* key is held now? len-bounded, key need not be NUL-terminated. */
int route_table_has(const struct route_table *rt, const char *key, size_t len);
size_t route_table_conns(const struct route_table *rt, const char *key);
size_t route_table_keys(const struct route_table *rt);

/* Visit every key with its number of conns (for metrics and /healthz). */
void route_table_foreach(const struct route_table *rt,
                         void (*fn)(const char *key, size_t nconns, void *arg), void *arg);

#endif
