/* test_hostsfile.c: unit tests of kbridge's blocks in a hosts file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "hostsfile.h"

static const char BODY[] = "127.1.0.3 store store.shop\n127.1.0.4 api api.shop\n";

static int none_alive(pid_t p) { return p == 0; }
static int all_alive(pid_t p) { return 1; }

/* Add then remove a block: the text comes back byte for byte. */
static void roundtrip(const char *text) {
  int ch = 0;
  char *with = hosts_edit(text, "shop/api", 42, BODY, NULL, &ch);
  CHECK(with && ch);
  CHECK(strstr(with, "127.1.0.3 store store.shop") != NULL);
  CHECK(strncmp(with, text, strlen(text)) == 0); /* what was there stays first */
  char *again = hosts_edit(with, "shop/api", 42, BODY, NULL, &ch);
  CHECK(again && !ch && strcmp(again, with) == 0); /* the same block: no change */
  char *back = hosts_edit(with, "shop/api", 42, NULL, NULL, &ch);
  CHECK(back && ch);
  if (back && strcmp(back, text) != 0) fprintf(stderr, "want [%s]\ngot  [%s]\n", text, back);
  CHECK(back && strcmp(back, text) == 0);
  free(with);
  free(again);
  free(back);
}

static void test_roundtrips(void) {
  roundtrip("");
  roundtrip("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
  roundtrip("127.0.0.1 localhost\n# a comment, no newline at the end");
  roundtrip("127.0.0.1 localhost\r\n10.0.0.1 db\r\n");
  roundtrip("\n\n   \n");
}

static void test_crlf_block(void) {
  int ch;
  char *w = hosts_edit("127.0.0.1 localhost\r\n", "a/b", 7, "127.1.0.1 x\n", NULL, &ch);
  CHECK(w && strstr(w, "127.1.0.1 x\r\n# kbridge end a/b pid 7\r\n") != NULL);
  free(w);
}

static void test_two_sessions_and_dead(void) {
  int ch;
  char *one = hosts_edit("127.0.0.1 localhost\n", "shop/api", 10, "127.1.0.1 api\n", NULL, &ch);
  char *two = hosts_edit(one, "shop/store", 11, "127.1.0.9 store\n", NULL, &ch);
  CHECK(strstr(two, "127.1.0.1 api") && strstr(two, "127.1.0.9 store")); /* merged */
  /* the first session updates its block: the second's stays */
  char *upd = hosts_edit(two, "shop/api", 10, "127.1.0.2 api\n", all_alive, &ch);
  CHECK(ch && strstr(upd, "127.1.0.2 api") && !strstr(upd, "127.1.0.1 api") &&
        strstr(upd, "127.1.0.9 store"));
  /* sessions gone: their blocks removed by anyone who writes with alive() */
  char *clean = hosts_edit(upd, "x/y", 99, NULL, none_alive, &ch);
  CHECK(ch && strcmp(clean, "127.0.0.1 localhost\n") == 0);
  /* the same id with another pid is another session's block */
  char *other = hosts_edit(two, "shop/api", 12, NULL, NULL, &ch);
  CHECK(!ch && strcmp(other, two) == 0);
  free(one);
  free(two);
  free(upd);
  free(clean);
  free(other);
}

static void test_malformed_left_alone(void) {
  int ch;
  /* a begin without its end, an end without a begin, a pid that is a prefix */
  const char *t = "# kbridge begin shop/api pid 42 (do not edit)\n127.1.0.1 api\n"
                  "# kbridge end shop/api pid 4\n# kbridge end shop/api pid 42x\n";
  char *w = hosts_edit(t, "shop/api", 42, NULL, none_alive, &ch);
  CHECK(w && !ch && strcmp(w, t) == 0);
  free(w);
  const char *t2 = "# kbridge begin junk\n1.2.3.4 x\n";
  w = hosts_edit(t2, "shop/api", 42, NULL, none_alive, &ch);
  CHECK(w && !ch && strcmp(w, t2) == 0);
  free(w);
}

static void test_file(void) {
  char path[] = "/tmp/kbridge-hosts-test-XXXXXX";
  int fd = mkstemp(path);
  const char orig[] = "127.0.0.1 localhost\n# mine\n";
  CHECK(fd >= 0 && write(fd, orig, sizeof orig - 1) == (ssize_t)(sizeof orig - 1));
  fchmod(fd, 0644);
  close(fd);
  char err[300];
  CHECK_EQ_INT(hosts_update(path, "shop/api", getpid(), BODY, NULL, err, sizeof err), 0);
  struct stat st;
  CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644); /* mode kept */
  FILE *f = fopen(path, "r");
  char buf[1024] = "";
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  CHECK(strstr(buf, "127.1.0.4 api api.shop") && strncmp(buf, orig, sizeof orig - 1) == 0);
  CHECK_EQ_INT(hosts_update(path, "shop/api", getpid(), NULL, NULL, err, sizeof err), 0);
  f = fopen(path, "r");
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  CHECK(strcmp(buf, orig) == 0);
  unlink(path);
  CHECK_EQ_INT(hosts_update("/nonexistent/hosts", "a/b", 1, BODY, NULL, err, sizeof err), -1);
  CHECK(strstr(err, "/nonexistent/hosts") != NULL);
}

int main(void) {
  test_roundtrips();
  test_crlf_block();
  test_two_sessions_and_dead();
  test_malformed_left_alone();
  test_file();
  return check_done();
}
