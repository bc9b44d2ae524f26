/* test_options.c: the option-table parser of common/optparse.c (and optfile.c), with a table
 * that uses every type: values stored at the right place, defaults applied,
 * every kind of bad input refused with a message naming the flag. */
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "optfile.h"

struct cfg {
  int flag;
  const char *str, *path, *dir, *host;
  int port, count;
  struct hostport hp;
  char key[OPT_KEY_SIZE];
  enum log_level level;
  struct opt_forwards fw;
  struct opt_list list;
};

#define OFF(f) offsetof(struct cfg, f)
static const struct opt_def opts[] = {
    {"PATH", OPT_PATH, OFF(path), 1, 0, NULL, NULL, 0, 0, .help = "a positional"},
    {"flag", OPT_FLAG, OFF(flag), 0, 0, NULL, NULL, 0, 0, .help = "a flag"},
    {"str", OPT_STRING, OFF(str), 0, 0, "dflt", NULL, 0, 0, .help = "a string"},
    {"dir", OPT_DIR, OFF(dir), 0, 0, NULL, NULL, 0, 0, .help = "a directory"},
    {"host", OPT_HOST, OFF(host), 0, 0, "127.0.0.1", NULL, 0, 0, .help = "a host"},
    {"port", OPT_PORT, OFF(port), 0, 1, NULL, NULL, 0, 0, .help = "a port"},
    {"count", OPT_INT, OFF(count), 0, 0, "1", NULL, 1, 64, .help = "a count"},
    {"addr", OPT_HOSTPORT, OFF(hp), 0, 0, NULL, NULL, 0, 0, .help = "an address"},
    {"key", OPT_KEY, OFF(key), 0, 0, NULL, NULL, 0, 0, .help = "a key"},
    {"log-level", OPT_LOGLEVEL, OFF(level), 0, 0, "info", NULL, 0, 0, .help = "a level"},
    {"forward", OPT_FORWARD, OFF(fw), 0, 0, NULL, NULL, 0, 0, .help = "forwards"},
    {"item", OPT_LIST, OFF(list), 0, 0, NULL, "K=V", 0, 0, .help = "items"},
};
static const struct opt_cmd cmd = {"test", "A test command.", NULL, opts,
                                   .nopts = sizeof opts / sizeof *opts};

static struct cfg c;
static char err[700];

/* Parse a NULL-terminated list of words; returns opt_parse's result. */
static int parse(const char *first, ...) {
  static char words[32][128]; /* argv must be mutable strings; parsed values point here */
  char *argv[32];
  int argc = 0;
  va_list ap;
  va_start(ap, first);
  for (const char *a = first; a && argc < 32; a = va_arg(ap, const char *)) {
    snprintf(words[argc], sizeof words[argc], "%s", a);
    argv[argc] = words[argc];
    argc++;
  }
  va_end(ap);
  memset(&c, 0, sizeof c);
  err[0] = '\0';
  return opt_parse(&cmd, argc, argv, &c, err, sizeof err);
}

/* Expect failure with err containing both fragments. */
#define BAD(frag1, frag2, ...)                                                  \
  do {                                                                          \
    CHECK_EQ_INT(parse(__VA_ARGS__, NULL), -1);                                 \
    CHECK(strstr(err, frag1) != NULL);                                          \
    CHECK(strstr(err, frag2) != NULL);                                          \
    if (!strstr(err, frag1) || !strstr(err, frag2)) fprintf(stderr, "  err: %s\n", err); \
  } while (0)

int main(void) {
  /* Everything good, both --name value and --name=value. */
  CHECK_EQ_INT(parse("/some/path", "--port", "5000", "--flag", "--dir=/tmp", "--host", "::1",
                     "--count=7", "--addr", "[::1]:9443", "--key", "alice", "--log-level", "debug",
                     "--forward", "127.0.0.1:0=store.shop:8080", "--forward",
                     "[::1]:7000=10.0.0.1:80", NULL),
               0);
  CHECK_EQ_STR(c.path, "/some/path");
  CHECK_EQ_INT(c.port, 5000);
  CHECK_EQ_INT(c.flag, 1);
  CHECK_EQ_STR(c.dir, "/tmp");
  CHECK_EQ_STR(c.host, "::1");
  CHECK_EQ_INT(c.count, 7);
  CHECK_EQ_STR(c.hp.host, "::1");
  CHECK_EQ_INT(c.hp.port, 9443);
  CHECK_EQ_STR(c.key, "alice");
  CHECK_EQ_INT(c.level, LOGL_DEBUG);
  CHECK_EQ_INT(c.fw.n, 2);
  CHECK_EQ_STR(c.fw.v[0].listen.host, "127.0.0.1");
  CHECK_EQ_INT(c.fw.v[0].listen.port, 0);
  CHECK_EQ_STR(c.fw.v[0].target.host, "store.shop");
  CHECK_EQ_INT(c.fw.v[0].target.port, 8080);
  CHECK_EQ_STR(c.fw.v[1].listen.host, "::1");
  CHECK_EQ_INT(c.fw.v[1].target.port, 80);
  CHECK_EQ_STR(c.str, "dflt"); /* defaults */

  /* Defaults only. */
  CHECK_EQ_INT(parse("p", "--port", "1", NULL), 0);
  CHECK_EQ_STR(c.host, "127.0.0.1");
  CHECK_EQ_INT(c.count, 1);
  CHECK_EQ_INT(c.level, LOGL_INFO);
  CHECK_EQ_INT(c.flag, 0);
  CHECK_EQ_INT(c.fw.n, 0);

  /* --help wins over everything else, even bad flags. */
  CHECK_EQ_INT(parse("--port", "abc", "--help", NULL), 1);
  CHECK_EQ_INT(parse("-h", NULL), 1);

  BAD("--port: expected a port 1-65535, got \"abc\"", "", "p", "--port", "abc");
  BAD("--port: expected a port 1-65535, got \"0\"", "", "p", "--port", "0");
  BAD("--port", "\"65536\"", "p", "--port", "65536");
  BAD("--port", "\"-1\"", "p", "--port", "-1");
  BAD("--port", "\"80x\"", "p", "--port", "80x");
  BAD("--port", "\"99999999999999999999\"", "p", "--port", "99999999999999999999");
  BAD("--port: expected PORT, got nothing", "", "p", "--port");
  BAD("--port: required", "a port", "p");
  BAD("PATH: required", "positional", "--port", "1");
  BAD("--count: expected a number 1-64, got \"0\"", "", "p", "--port", "1", "--count", "0");
  BAD("--count", "\"65\"", "p", "--port", "1", "--count", "65");
  BAD("--addr: expected HOST:PORT, got \"nohost\"", "missing ':PORT'", "p", "--port", "1", "--addr",
      "nohost");
  BAD("--addr", "port must be 1-65535", "p", "--port", "1", "--addr", "h:0");
  BAD("--addr", "brackets", "p", "--port", "1", "--addr", "::1:80");
  BAD("--key: expected a route key", "\"Alice\"", "p", "--port", "1", "--key", "Alice");
  BAD("--key", "\"-bob\"", "p", "--port", "1", "--key", "-bob");
  BAD("--key", "got \"\"", "p", "--port", "1", "--key", "");
  BAD("--key", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", "p", "--port",
      "1", "--key", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
  BAD("--log-level: expected error, warn, info or debug, got \"loud\"", "", "p", "--port", "1",
      "--log-level", "loud");
  BAD("--dir: expected a directory, got \"/nonexistent/x\"", "No such file", "p", "--port", "1",
      "--dir", "/nonexistent/x");
  BAD("--dir: expected a directory, got \"/dev/null\"", "not a directory", "p", "--port", "1",
      "--dir", "/dev/null");
  BAD("--host: expected a host name or IP address", "\"a b\"", "p", "--port", "1", "--host", "a b");
  BAD("--forward: expected LADDR:LPORT=HOST:PORT", "missing '='", "p", "--port", "1", "--forward",
      "127.0.0.1:80");
  BAD("--forward", "listen address", "p", "--port", "1", "--forward", "127.0.0.1=svc:80");
  BAD("--forward", "target", "p", "--port", "1", "--forward", "127.0.0.1:0=svc:0");
  BAD("--flag: takes no value", "", "p", "--port", "1", "--flag=yes");
  BAD("--port: given more than once", "", "p", "--port", "1", "--port", "2");
  BAD("--bogus: unknown flag for `kbridge test`", "--help", "p", "--bogus", "1");
  BAD("--bogus: unknown flag", "", "p", "--bogus=1");
  BAD("-x: unknown flag", "", "p", "-x");
  BAD("unexpected argument \"extra\"", "", "p", "extra", "--port", "1");

  /* Every error is one line. */
  CHECK_EQ_INT(parse("p", "--addr", "x", NULL), -1);
  CHECK(strchr(err, '\n') == NULL);

  /* "--" ends the flags: what follows is positional. */
  CHECK_EQ_INT(parse("--port", "1", "--", "--weird-path", NULL), 0);
  CHECK_EQ_STR(c.path, "--weird-path");

  /* OPT_LIST: repeatable, in order, never empty. */
  CHECK_EQ_INT(parse("p", "--port", "1", "--item", "a=1", "--item=b=2", NULL), 0);
  CHECK_EQ_INT(c.list.n, 2);
  CHECK_EQ_STR(c.list.v[0], "a=1");
  CHECK_EQ_STR(c.list.v[1], "b=2");
  BAD("--item: expected K=V", "\"\"", "p", "--port", "1", "--item", "");

  /* Options from a YAML file: keys are flag names; lists, mappings (K=V) and
   * booleans; the command line wins, a list given there replaces the file's. */
  {
    char path[] = "/tmp/kb-test-options-XXXXXX";
    int fd = mkstemp(path);
    const char *yaml = "# options\nport: 7\nflag: true\nstr: from-file\n"
                       "item:\n  a: \"1\"\n  b: two\ncount: 9\n";
    CHECK(fd >= 0 && write(fd, yaml, strlen(yaml)) == (ssize_t)strlen(yaml));
    close(fd);
    struct opt_file file;
    CHECK_EQ_INT(opt_file_load(&cmd, path, &file, err, sizeof err), 0);
    char *argv[] = {"p", "--count", "3", NULL};
    memset(&c, 0, sizeof c);
    CHECK_EQ_INT(opt_parse_with(&cmd, &file, 3, argv, &c, err, sizeof err), 0);
    CHECK_EQ_INT(c.port, 7); /* required, satisfied by the file */
    CHECK_EQ_INT(c.flag, 1);
    CHECK_EQ_STR(c.str, "from-file");
    CHECK_EQ_INT(c.count, 3); /* the command line wins */
    CHECK_EQ_INT(c.list.n, 2);
    CHECK_EQ_STR(c.list.v[0], "a=1");
    CHECK_EQ_STR(c.list.v[1], "b=two");
    char *argv2[] = {"p", "--item", "c=3", NULL};
    memset(&c, 0, sizeof c);
    CHECK_EQ_INT(opt_parse_with(&cmd, &file, 3, argv2, &c, err, sizeof err), 0);
    CHECK_EQ_INT(c.list.n, 1);
    CHECK_EQ_STR(c.list.v[0], "c=3");
    opt_file_free(&file);

    /* Errors name the file, the line and the key. */
    static const struct {
      const char *yaml, *frag;
    } bad[] = {
        {"port: 1\nbogus: 2\n", ":2: \"bogus\" is not an option of `kbridge test`"},
        {"flag: maybe\n", ":1: flag: expected true or false"},
        {"port: [1, 2]\n", ":1: port: expected one value"},
        {"- port\n", ":1: expected a mapping"},
        {"port: 1\n  x: [\n", "not valid YAML"},
        {"port: 1\nitem: [a=1, {b: 2}]\n", ":2: item: expected a list of K=V"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
      fd = open(path, O_WRONLY | O_TRUNC);
      CHECK(fd >= 0 && write(fd, bad[i].yaml, strlen(bad[i].yaml)) == (ssize_t)strlen(bad[i].yaml));
      close(fd);
      CHECK_EQ_INT(opt_file_load(&cmd, path, &file, err, sizeof err), -1);
      CHECK(strstr(err, bad[i].frag) != NULL && strstr(err, path) == err);
      if (!strstr(err, bad[i].frag)) fprintf(stderr, "  err: %s\n", err);
    }
    /* A value the type refuses: named with the file and line. */
    fd = open(path, O_WRONLY | O_TRUNC);
    const char *big = "port: 1\ncount: 99\n";
    CHECK(fd >= 0 && write(fd, big, strlen(big)) == (ssize_t)strlen(big));
    close(fd);
    CHECK_EQ_INT(opt_file_load(&cmd, path, &file, err, sizeof err), 0);
    char *argv3[] = {"p", NULL};
    memset(&c, 0, sizeof c);
    CHECK_EQ_INT(opt_parse_with(&cmd, &file, 1, argv3, &c, err, sizeof err), -1);
    CHECK(strstr(err, ":2: --count: expected a number 1-64") != NULL);
    opt_file_free(&file);
    unlink(path);
  }

  /* The help text comes from the table. */
  FILE *f = tmpfile();
  opt_help(&cmd, f);
  rewind(f);
  char help[4096];
  size_t n = fread(help, 1, sizeof help - 1, f);
  help[n] = '\0';
  fclose(f);
  CHECK(strstr(help, "usage: kbridge test PATH --port PORT [options]") != NULL);
  CHECK(strstr(help, "--host HOST") != NULL && strstr(help, "(default 127.0.0.1)") != NULL);
  CHECK(strstr(help, "--forward LADDR:LPORT=HOST:PORT") != NULL);
  CHECK(strstr(help, "(repeatable)") != NULL);
  return check_done();
}
