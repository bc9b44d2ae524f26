/* test_envfmt.c: local-proxy/envfmt.c. Every format with hostile values
 * (line breaks, both quotes, $, backslashes, '#', blanks, empty, UTF-8, bytes
 * that are not UTF-8): the exact text written, which form dotenv picks, what
 * each format leaves out and why, the notes, and the format names. Reading the
 * output back with the real consumers is tests/integration/test_envfmt.py. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "envfmt.h"

static char notes[4096];

static void note(void *arg, const char *name, const char *msg, int left_out) {
  (void)arg;
  size_t l = strlen(notes);
  snprintf(notes + l, sizeof notes - l, "%s%s:%s;", left_out ? "-" : "~", name,
           strstr(msg, "interpolate") ? "interp" : "");
}

/* The text envfmt_write() produces (static buffer); *left gets its result. */
static const char *render(enum envfmt_format f, const struct envfmt_var *v, size_t n, int *left) {
  static char out[8192];
  char *buf = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&buf, &len);
  notes[0] = '\0';
  *left = envfmt_write(f, m, v, n, note, NULL);
  fclose(m);
  snprintf(out, sizeof out, "%s", buf ? buf : "");
  free(buf);
  return out;
}

static const char *one(enum envfmt_format f, const char *name, const char *value) {
  struct envfmt_var v = {name, value, 0};
  int left;
  return render(f, &v, 1, &left);
}

static void test_names(void) {
  enum envfmt_format f;
  const char *w[] = {"dotenv", "json", "sh", "compose", "docker"};
  for (int i = 0; i < 5; i++) {
    CHECK_EQ_INT(envfmt_parse(w[i], &f), 0);
    CHECK_EQ_STR(envfmt_name(f), w[i]);
  }
  CHECK_EQ_INT(envfmt_parse("yaml", &f), -1);
  CHECK_EQ_INT(envfmt_parse("", &f), -1);
  CHECK_EQ_INT(envfmt_parse("JSON", &f), -1);
}

static void test_dotenv(void) {
  /* Plain and most hostile single-line values: single quotes, nothing escaped. */
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "plain"), "A='plain'\n");
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", ""), "A=''\n");
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", " a \"b\" $c #d \\e "), "A=' a \"b\" $c #d \\e '\n");
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "h\xc3\xa9llo \xe2\x82\xac"), "A='h\xc3\xa9llo \xe2\x82\xac'\n");
  /* A ' : double quotes; a backslash before a letter neither parser unescapes
   * stays (\d), one they do unescape (\n, \t, \\) does not fit them. */
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "it's $x #1"), "A=\"it's $x #1\"\n");
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "it's C:\\data"), "A=\"it's C:\\data\"\n");
  CHECK(envfmt_refusal(ENVFMT_DOTENV, "A", "it's C:\\table #") != NULL);
  /* Line breaks: double quotes with \n and \r when possible... */
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "l1\nl2\r\nl3"), "A=\"l1\\nl2\\r\\nl3\"\n");
  /* ...else raw in single quotes (no ', no CR). */
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "say \"hi\"\nC:\\x"), "A='say \"hi\"\nC:\\x'\n");
  /* \\ and a final \ cannot be single-quoted (python-dotenv unescapes the one
   * and the other escapes the closing quote), nor double-quoted: unquoted. */
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "\\\\server\\share"), "A=\\\\server\\share\n");
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "ends\\"), "A=ends\\\n");
  CHECK_EQ_STR(one(ENVFMT_DOTENV, "A", "{\"k\": \"it's\"}"), "A={\"k\": \"it's\"}\n");
  /* Nothing fits: left out, named, the rest written. */
  struct envfmt_var v[] = {{"BAD1", "it's \"x\" #1", 0},
                           {"OK", "fine", 0},
                           {"BAD2", "a'b\\\nc", 0},
                           {"BAD3", " it's \\n ", 0},
                           {"BAD4", "cr\r'\"", 0},
                           {"my.key-1", "dots", 1},
                           {"BAD NAME", "x", 0},
                           {"BAD5", "\xff\xfe", 0},
                           {"INTERP", "${HOME}", 0}};
  int left;
  CHECK_EQ_STR(render(ENVFMT_DOTENV, v, 9, &left), "OK='fine'\nmy.key-1='dots'\nINTERP='${HOME}'\n");
  CHECK_EQ_INT(left, 6);
  CHECK_EQ_STR(notes, "-BAD1:;-BAD2:;-BAD3:;-BAD4:;-BAD NAME:;-BAD5:;~INTERP:interp;");
  CHECK(strstr(envfmt_refusal(ENVFMT_DOTENV, "BAD1", "it's \"x\" #1"), "json or sh") != NULL);
  CHECK(envfmt_refusal(ENVFMT_DOTENV, "A", "$HOME ${") == NULL);
}

static void test_sh(void) {
  CHECK_EQ_STR(one(ENVFMT_SH, "A", ""), "export A=''\n");
  CHECK_EQ_STR(one(ENVFMT_SH, "A", "it's"), "export A='it'\\''s'\n");
  CHECK_EQ_STR(one(ENVFMT_SH, "A", "''"), "export A=''\\'''\\'''\n");
  CHECK_EQ_STR(one(ENVFMT_SH, "_x9", "$(rm -rf /) `id` \\ \"q\"\nl2 #"),
               "export _x9='$(rm -rf /) `id` \\ \"q\"\nl2 #'\n");
  /* Bytes pass: a shell takes any. */
  CHECK_EQ_STR(one(ENVFMT_SH, "A", "\xff\x01\r"), "export A='\xff\x01\r'\n");
  CHECK(envfmt_refusal(ENVFMT_SH, "9A", "") != NULL);
  CHECK(envfmt_refusal(ENVFMT_SH, "my.key", "") != NULL);
  CHECK(envfmt_refusal(ENVFMT_SH, "A-B", "") != NULL);
  CHECK(envfmt_refusal(ENVFMT_SH, "", "") != NULL);
  CHECK(envfmt_refusal(ENVFMT_SH, "a_B9", "") == NULL);
}

static void test_json(void) {
  struct envfmt_var v[] = {{"A", "q\"b\\s/\n\r\t\b\f\x01\x1f\x7f", 0},
                           {"PASS", "p\xc3\xa9\xe2\x80\xa8", 1},
                           {"my.key", "", 1},
                           {"BIN", "\xc0\xaf", 1}}; /* overlong '/': not UTF-8 */
  int left;
  CHECK_EQ_STR(render(ENVFMT_JSON, v, 4, &left),
               "{\n  \"env\": {\n"
               "    \"A\": \"q\\\"b\\\\s/\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\",\n"
               "    \"PASS\": \"p\xc3\xa9\xe2\x80\xa8\",\n"
               "    \"my.key\": \"\"\n"
               "  },\n  \"secrets\": [\"PASS\", \"my.key\"]\n}\n");
  CHECK_EQ_INT(left, 1);
  CHECK_EQ_STR(notes, "-BIN:;");
  CHECK_EQ_STR(render(ENVFMT_JSON, v, 0, &left), "{\n  \"env\": {},\n  \"secrets\": []\n}\n");
  /* Surrogates, beyond U+10FFFF, truncated sequences: not UTF-8. */
  CHECK(envfmt_refusal(ENVFMT_JSON, "A", "\xed\xa0\x80") != NULL);
  CHECK(envfmt_refusal(ENVFMT_JSON, "A", "\xf4\x90\x80\x80") != NULL);
  CHECK(envfmt_refusal(ENVFMT_JSON, "A", "\xe2\x82") != NULL);
  CHECK(envfmt_refusal(ENVFMT_JSON, "A", "\xf0\x9f\x98\x80") == NULL);
}

static void test_compose(void) {
  struct envfmt_var v[] = {{"A", "$HOME ${X} $$", 0},
                           {"B", "q\"b\\ #c\nd\re\tf\x01\x7f", 1},
                           {"C", "\xc2\x85\xc2\xa0\xe2\x80\xa8\xe2\x80\xa9\xef\xbb\xbf\xef\xbf\xbf"
                                 "\xc3\xa9", 0},
                           {"yes", "", 0},
                           {"D$", "x", 0}};
  int left;
  CHECK_EQ_STR(render(ENVFMT_COMPOSE, v, 5, &left),
               "environment:\n"
               "  \"A\": \"$$HOME $${X} $$$$\"\n"
               "  \"B\": \"q\\\"b\\\\ #c\\nd\\re\\tf\\x01\\x7F\"\n"
               "  \"C\": \"\\x85\xc2\xa0\\u2028\\u2029\\uFEFF\\uFFFF\xc3\xa9\"\n"
               "  \"yes\": \"\"\n");
  CHECK_EQ_INT(left, 1);
  CHECK_EQ_STR(notes, "-D$:;");
  CHECK_EQ_STR(render(ENVFMT_COMPOSE, v, 0, &left), "environment: {}\n");
}

static void test_docker(void) {
  CHECK_EQ_STR(one(ENVFMT_DOCKER, "A", " sp 'q' \"d\" $x #h \\ "),
               "A= sp 'q' \"d\" $x #h \\ \n");
  CHECK_EQ_STR(one(ENVFMT_DOCKER, "my.key-1", ""), "my.key-1=\n");
  CHECK_EQ_STR(one(ENVFMT_DOCKER, "A", "mid\rcr"), "A=mid\rcr\n");
  struct envfmt_var v[] = {{"NL", "l1\nl2", 0},
                           {"CR", "x\r", 0},
                           {"OK", "ok", 0},
                           {"#C", "x", 0},
                           {"SP ACE", "x", 0},
                           {"BIN", "\xff", 0}};
  int left;
  CHECK_EQ_STR(render(ENVFMT_DOCKER, v, 6, &left), "OK=ok\n");
  CHECK_EQ_INT(left, 5);
  CHECK_EQ_STR(notes, "-NL:;-CR:;-#C:;-SP ACE:;-BIN:;");
  CHECK(strstr(envfmt_refusal(ENVFMT_DOCKER, "NL", "a\nb"), "line feed") != NULL);
  /* A line of 64 KiB (with its line feed) is refused, one byte less is not. */
  size_t big = 64 * 1024;
  char *val = malloc(big);
  memset(val, 'v', big - 1);
  val[big - 3] = '\0'; /* "A=" + value + "\n" = 64 KiB */
  CHECK(envfmt_refusal(ENVFMT_DOCKER, "A", val) != NULL);
  val[big - 4] = '\0';
  CHECK(envfmt_refusal(ENVFMT_DOCKER, "A", val) == NULL);
  free(val);
}

static void test_write_error(void) {
  /* A full device: -1 with errno. */
  FILE *f = fopen("/dev/full", "w");
  if (!f) return;
  struct envfmt_var v = {"A", "x", 0};
  CHECK_EQ_INT(envfmt_write(ENVFMT_SH, f, &v, 1, NULL, NULL), -1);
  fclose(f);
}

int main(void) {
  test_names();
  test_dotenv();
  test_sh();
  test_json();
  test_compose();
  test_docker();
  test_write_error();
  return check_done();
}
