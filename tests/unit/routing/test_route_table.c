/* test_route_table.c: add/remove/pick/has semantics of the route table, and a
 * randomized comparison against a plain array model (exercises growth and the
 * backward-shift deletion). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "route_table.h"
#include "unit/check.h"

static void count_cb(const char *key, size_t n, void *arg) {
  size_t *tot = arg;
  tot[0]++;
  tot[1] += n;
  (void)key;
}

static void test_basics(void) {
  struct route_table *rt = route_table_new();
  int a, b, c;
  CHECK(rt != NULL);
  CHECK_EQ_INT(route_table_keys(rt), 0);
  CHECK(!route_table_has(rt, "alice", 5));
  CHECK(route_table_pick(rt, "alice") == NULL);

  /* invalid keys are refused */
  CHECK_EQ_INT(route_table_add(rt, "", &a), -1);
  CHECK_EQ_INT(route_table_add(rt, "Alice", &a), -1);
  CHECK_EQ_INT(route_table_add(rt, "-alice", &a), -1);
  CHECK_EQ_INT(route_table_add(rt, "a.b", &a), -1);
  CHECK_EQ_INT(route_table_add(rt, "alice", NULL), -1);
  char long_key[80];
  memset(long_key, 'a', 64);
  long_key[64] = '\0';
  CHECK_EQ_INT(route_table_add(rt, long_key, &a), -1);
  long_key[63] = '\0';
  CHECK_EQ_INT(route_table_add(rt, long_key, &a), 0);
  CHECK(route_table_has(rt, long_key, 63));
  CHECK_EQ_INT(route_table_remove(rt, long_key, &a), 0);

  CHECK_EQ_INT(route_table_add(rt, "alice", &a), 0);
  CHECK_EQ_INT(route_table_add(rt, "alice", &b), 0);
  CHECK_EQ_INT(route_table_add(rt, "bob", &c), 0);
  CHECK_EQ_INT(route_table_keys(rt), 2);
  CHECK_EQ_INT(route_table_conns(rt, "alice"), 2);
  CHECK_EQ_INT(route_table_conns(rt, "bob"), 1);
  CHECK_EQ_INT(route_table_conns(rt, "carol"), 0);

  /* has() is length-bounded: the key need not be NUL-terminated */
  CHECK(route_table_has(rt, "alice.shop.example.com", 5));
  CHECK(!route_table_has(rt, "alice.shop.example.com", 6));
  CHECK(!route_table_has(rt, "alic", 4));
  CHECK(!route_table_has(rt, "alice", 0));

  /* round-robin across both conns */
  void *p1 = route_table_pick(rt, "alice"), *p2 = route_table_pick(rt, "alice"),
       *p3 = route_table_pick(rt, "alice");
  CHECK(p1 != p2);
  CHECK(p1 == p3);
  CHECK((p1 == &a || p1 == &b) && (p2 == &a || p2 == &b));
  CHECK(route_table_pick(rt, "bob") == &c);
  CHECK(route_table_pick(rt, "bob") == &c);

  size_t tot[2] = {0, 0};
  route_table_foreach(rt, count_cb, tot);
  CHECK_EQ_INT(tot[0], 2);
  CHECK_EQ_INT(tot[1], 3);

  /* remove: wrong conn / wrong key fail; the key goes with its last conn */
  CHECK_EQ_INT(route_table_remove(rt, "alice", &c), -1);
  CHECK_EQ_INT(route_table_remove(rt, "carol", &a), -1);
  CHECK_EQ_INT(route_table_remove(rt, "alice", &a), 0);
  CHECK_EQ_INT(route_table_remove(rt, "alice", &a), -1);
  CHECK(route_table_has(rt, "alice", 5));
  CHECK(route_table_pick(rt, "alice") == &b);
  CHECK(route_table_pick(rt, "alice") == &b);
  CHECK_EQ_INT(route_table_remove(rt, "alice", &b), 0);
  CHECK(!route_table_has(rt, "alice", 5));
  CHECK(route_table_pick(rt, "alice") == NULL);
  CHECK_EQ_INT(route_table_keys(rt), 1);
  CHECK(route_table_has(rt, "bob", 3));

  /* a key can come back */
  CHECK_EQ_INT(route_table_add(rt, "alice", &a), 0);
  CHECK(route_table_pick(rt, "alice") == &a);
  route_table_free(rt);
  route_table_free(NULL);
}

/* Random adds/removes of many keys against a model: a count per key. */
static void test_model(void) {
  enum { NK = 300, ROUNDS = 20000 };
  static int conns[NK][4];
  static int model[NK][4];
  char keys[NK][16];
  for (int i = 0; i < NK; i++) snprintf(keys[i], sizeof(keys[i]), "dev-%d", i);
  struct route_table *rt = route_table_new();
  unsigned seed = 12345;
  int bad = 0;
  for (int r = 0; r < ROUNDS; r++) {
    seed = seed * 1103515245u + 12345u;
    int k = (int)((seed >> 8) % NK), c = (int)((seed >> 20) % 4);
    if (model[k][c]) {
      bad += route_table_remove(rt, keys[k], &conns[k][c]) != 0;
      model[k][c] = 0;
    } else {
      bad += route_table_add(rt, keys[k], &conns[k][c]) != 0;
      model[k][c] = 1;
    }
    if (r % 97 == 0 || r == ROUNDS - 1) {
      size_t nkeys = 0;
      for (int i = 0; i < NK; i++) {
        int n = model[i][0] + model[i][1] + model[i][2] + model[i][3];
        nkeys += n > 0;
        bad += route_table_has(rt, keys[i], strlen(keys[i])) != (n > 0);
        bad += (int)route_table_conns(rt, keys[i]) != n;
        void *p = route_table_pick(rt, keys[i]);
        if (n == 0) bad += p != NULL;
        else bad += !(p == &conns[i][0] || p == &conns[i][1] || p == &conns[i][2] ||
                      p == &conns[i][3]);
      }
      bad += route_table_keys(rt) != nkeys;
    }
  }
  CHECK_EQ_INT(bad, 0);
  route_table_free(rt);
}

int main(void) {
  test_basics();
  test_model();
  return check_done();
}
