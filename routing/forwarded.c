/* forwarded.c: X-Forwarded-For, Forwarded and X-Forwarded-Proto for a forwarded
 * request (see forwarded.h). */
#include "forwarded.h"

#include <string.h>

#include "http_head.h"

const char *const forwarded_replaced[] = {"x-forwarded-for", "forwarded", NULL};

#define LINE_ROOM 96 /* name, ": ", the address with quotes and brackets, CRLF */

size_t forwarded_size(const struct http_head *h) {
  size_t n = 3 * LINE_ROOM + 1, len;
  const char *v;
  for (size_t k = 0; k < FORWARDED_NREPLACED; k++)
    for (size_t i = 0; (v = http_head_get(h, forwarded_replaced[k], i, &len)); i++)
      n += len + 2; /* the value and ", " */
  return n;
}

/* Strip spaces, tabs and empty list elements at both ends of v[0..*len). */
static const char *trim_list(const char *v, size_t *len) {
  size_t n = *len;
  while (n && (*v == ' ' || *v == '\t' || *v == ',')) v++, n--;
  while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == ',')) n--;
  *len = n;
  return v;
}

/* Append "Name: <every existing value>, " to p: the existing list, ready for
 * our element. */
static char *merged_prefix(const struct http_head *h, const char *name, const char *lower,
                           char *p) {
  size_t nl = strlen(name), len;
  const char *v;
  memcpy(p, name, nl);
  p += nl;
  *p++ = ':';
  *p++ = ' ';
  for (size_t i = 0; (v = http_head_get(h, lower, i, &len)); i++) {
    v = trim_list(v, &len);
    if (!len) continue;
    memcpy(p, v, len);
    p += len;
    *p++ = ',';
    *p++ = ' ';
  }
  return p;
}

static int numeric_ip(const char *s, size_t n) {
  if (n == 0 || n > 45) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
          c == '.' || c == ':'))
      return 0;
  }
  return 1;
}

int forwarded_lines(const struct http_head *h, const char *client_ip, char *out, size_t outlen) {
  size_t iplen = strlen(client_ip);
  if (!numeric_ip(client_ip, iplen) || outlen < forwarded_size(h)) return -1;
  int v6 = strchr(client_ip, ':') != NULL;
  char *p = merged_prefix(h, "X-Forwarded-For", "x-forwarded-for", out);
  memcpy(p, client_ip, iplen);
  p += iplen;
  memcpy(p, "\r\n", 2);
  p += 2;
  p = merged_prefix(h, "Forwarded", "forwarded", p);
  memcpy(p, v6 ? "for=\"[" : "for=", v6 ? 6 : 4);
  p += v6 ? 6 : 4;
  memcpy(p, client_ip, iplen);
  p += iplen;
  if (v6) {
    memcpy(p, "]\"", 2);
    p += 2;
  }
  memcpy(p, "\r\n", 2);
  p += 2;
  if (!http_head_get(h, "x-forwarded-proto", 0, NULL)) {
    static const char xfp[] = "X-Forwarded-Proto: http\r\n";
    memcpy(p, xfp, sizeof xfp - 1);
    p += sizeof xfp - 1;
  }
  *p = 0;
  return (int)(p - out);
}
