/* test_optparse.c: common/optparse.c's types for tables other than the CLI's:
 * long bounds, fixed buffers, DNS labels, listen addresses, custom parsers
 * (their errors, repeats, defaults), "given" flags, the check between options
 * and the program name in errors and help. Each bad value must be refused with
 * exactly the one-line error of the parser's style. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "optparse.h"

struct cfg {
  long big;
  char buf[8];
  char name[8];
  struct hostport listen;
  int listen_given;
  int pairs[4]; /* --pair A=B: A + B, appended */
  size_t npairs;
  int mode;
};

#define OFF(f) offsetof(struct cfg, f)

/* --pair A=B with single digits: stores A+B; refuses anything else. */
static int parse_pair(const struct opt_def *o, const char *v, void *cfg, char *why,
                      size_t whylen) {
  struct cfg *c = cfg;
  (void)o;
  if (strlen(v) != 3 || v[1] != '=' || v[0] < '0' || v[0] > '9' || v[2] < '0' || v[2] > '9') {
    snprintf(why, whylen, "expected D=D, got \"%s\"", v);
    return -1;
  }
  if (c->npairs == 4) {
    snprintf(why, whylen, "more than 4 pairs");
    return -1;
  }
  c->pairs[c->npairs++] = (v[0] - '0') + (v[2] - '0');
  return 0;
}

static int check_calls;
static int check(void *cfg, char *err, size_t errlen) {
  struct cfg *c = cfg;
  check_calls++;
  if (c->npairs > 0 && c->mode) {
    snprintf(err, errlen, "--mode is not for --pair");
    return -1;
  }
  return 0;
}

static const struct opt_def opts[] = {
    {.name = "big", .type = OPT_LONG, .offset = OFF(big), .def = "7", .lmin = 5,
     .lmax = 1L << 40, .help = "a long"},
    {.name = "buf", .type = OPT_BUF, .offset = OFF(buf), .size = sizeof(((struct cfg *)0)->buf),
     .help = "a buffer"},
    {.name = "name", .type = OPT_LABEL, .offset = OFF(name),
     .size = sizeof(((struct cfg *)0)->name), .help = "a name"},
    {.name = "listen", .type = OPT_ADDR, .offset = OFF(listen),
     .given = OPT_GIVEN(struct cfg, listen_given), .help = "an address"},
    {.name = "pair", .type = OPT_CUSTOM, .parse = parse_pair, .repeat = 1, .metavar = "D=D",
     .def = "1=1", .help = "pairs"},
    {.name = "mode", .type = OPT_FLAG, .offset = OFF(mode), .required = 0, .help = "a mode"},
};
static const struct opt_cmd cmd = {.name = "",
                                   .prog = "prog",
                                   .summary = "A program.",
                                   .opts = opts,
                                   .nopts = sizeof opts / sizeof *opts,
                                   .check = check};

static struct cfg c;
static char err[700];

/* Parse a NULL-terminated list of words into c. */
static int parse(const char *first, ...) {
  static char words[16][128];
  char *argv[16];
  int argc = 0;
  va_list ap;
  va_start(ap, first);
  for (const char *a = first; a && argc < 16; a = va_arg(ap, const char *)) {
    snprintf(words[argc], sizeof words[argc], "%s", a);
    argv[argc] = words[argc];
    argc++;
  }
  va_end(ap);
  memset(&c, 0, sizeof c);
  err[0] = '\0';
  return opt_parse(&cmd, argc, argv, &c, err, sizeof err);
}

#define BAD(msg, ...)                          \
  do {                                         \
    CHECK_EQ_INT(parse(__VA_ARGS__, NULL), -1); \
    CHECK_EQ_STR(err, msg);                    \
  } while (0)

int main(void) {
  /* defaults, including a custom option's, and nothing "given" */
  CHECK_EQ_INT(parse(NULL), 0);
  CHECK_EQ_INT(c.big, 7);
  CHECK_EQ_INT(c.npairs, 1);
  CHECK_EQ_INT(c.pairs[0], 2);
  CHECK_EQ_INT(c.listen_given, 0);
  CHECK_EQ_INT(check_calls, 1);

  /* good values of every type; a long beyond int; a full buffer; repeats append */
  CHECK_EQ_INT(parse("--big", "1099511627776", "--buf", "1234567", "--name=a-b", "--listen",
                     "127.0.0.1:0", "--pair", "2=3", "--pair=4=4", NULL),
               0);
  CHECK(c.big == 1L << 40);
  CHECK_EQ_STR(c.buf, "1234567");
  CHECK_EQ_STR(c.name, "a-b");
  CHECK_EQ_STR(c.listen.host, "127.0.0.1");
  CHECK_EQ_INT(c.listen.port, 0);
  CHECK_EQ_INT(c.listen_given, 1);
  CHECK_EQ_INT(c.npairs, 3); /* the default's, then the two given */
  CHECK_EQ_INT(c.pairs[1], 5);
  CHECK_EQ_INT(c.pairs[2], 8);

  /* long bounds: below, above (beyond int too), not a number */
  BAD("--big: expected a number 5-1099511627776, got \"4\"", "--big", "4");
  BAD("--big: expected a number 5-1099511627776, got \"1099511627777\"", "--big",
      "1099511627777");
  BAD("--big: expected a number 5-1099511627776, got \"-6\"", "--big", "-6");
  BAD("--big: expected a number 5-1099511627776, got \"9x\"", "--big", "9x");
  BAD("--big: expected N, got nothing", "--big");

  /* a buffer: one character too long, empty */
  BAD("--buf: expected at most 7 characters, got 8", "--buf", "12345678");
  BAD("--buf: expected a non-empty value, got \"\"", "--buf", "");

  /* a label: bad characters; valid as a label but longer than the buffer */
  BAD("--name: expected a Kubernetes name (1-7 of a-z, 0-9 and '-', not starting or ending "
      "with '-'), got \"Ab\"",
      "--name", "Ab");
  BAD("--name: expected a Kubernetes name (1-7 of a-z, 0-9 and '-', not starting or ending "
      "with '-'), got \"abcdefgh\"",
      "--name", "abcdefgh");

  /* a listen address needs a port (0 is fine, a name is not) */
  BAD("--listen: expected ADDR:PORT, got \"h:x\" (port is not a number)", "--listen", "h:x");
  BAD("--listen: given more than once", "--listen", "h:1", "--listen", "h:2");

  /* a custom parser's reason comes after the flag's name; its own limits too */
  BAD("--pair: expected D=D, got \"1:2\"", "--pair", "1:2");
  BAD("--pair: more than 4 pairs", "--pair", "1=1", "--pair", "1=1", "--pair", "1=1", "--pair",
      "1=1");

  /* the check between options runs after the values; the program's name in errors */
  check_calls = 0;
  BAD("--mode is not for --pair", "--mode");
  CHECK_EQ_INT(check_calls, 1);
  BAD("--bogus: unknown flag for `prog` (see prog --help)", "--bogus");
  BAD("unexpected argument \"x\" for `prog` (see prog --help)", "x");

  /* help: the program's usage line and the custom option's placeholder */
  char *text = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&text, &len);
  opt_help(&cmd, m);
  fclose(m);
  CHECK(strncmp(text, "usage: prog [options]\n", 22) == 0);
  CHECK(strstr(text, "--pair D=D") != NULL);
  CHECK(strstr(text, "--big N") != NULL);
  free(text);
  return check_done();
}
