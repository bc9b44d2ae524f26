/* netproxy.c: the proxy decision and proxy URLs (see netproxy.h). */
#include "netproxy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "base64.h"

static const char *env_any(const char *a, const char *b, const char **which) {
  const char *v = getenv(a);
  if (v && *v) {
    *which = a;
    return v;
  }
  v = getenv(b);
  if (v && *v) {
    *which = b;
    return v;
  }
  return NULL;
}

static int is_loopback(const char *host) {
  unsigned char a[16];
  if (strcasecmp(host, "localhost") == 0) return 1;
  if (inet_pton(AF_INET, host, a) == 1) return a[0] == 127;
  if (inet_pton(AF_INET6, host, a) == 1) {
    static const unsigned char one[16] = {[15] = 1};
    static const unsigned char v4mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (memcmp(a, one, 16) == 0) return 1;
    return memcmp(a, v4mapped, 12) == 0 && a[12] == 127;
  }
  return 0;
}

char *netproxy_choose(const char *proxy_url, int https, const char *host, int port,
                      const char **source) {
  const char *which = NULL, *v;
  if (source) *source = NULL;
  if (proxy_url && *proxy_url) {
    if (source) *source = "proxy-url";
    return strdup(proxy_url);
  }
  v = https ? env_any("HTTPS_PROXY", "https_proxy", &which)
            : env_any("HTTP_PROXY", "http_proxy", &which);
  if (!v || is_loopback(host)) return NULL;
  const char *np_which;
  const char *np = env_any("NO_PROXY", "no_proxy", &np_which);
  if (np && netproxy_no_proxy_match(np, host, port)) return NULL;
  if (source) *source = strcmp(which, "HTTPS_PROXY") == 0   ? "$HTTPS_PROXY"
                        : strcmp(which, "https_proxy") == 0 ? "$https_proxy"
                        : strcmp(which, "HTTP_PROXY") == 0  ? "$HTTP_PROXY"
                                                            : "$http_proxy";
  if (!strstr(v, "://")) { /* "proxy:3128" means http://proxy:3128 */
    size_t n = strlen(v) + 8;
    char *s = malloc(n);
    if (s) snprintf(s, n, "http://%s", v);
    return s;
  }
  return strdup(v);
}

/* Is host (an IP address) inside the CIDR block entry ("10.0.0.0/8")? */
static int cidr_match(const char *entry, const char *host) {
  char net[64];
  const char *slash = strchr(entry, '/');
  size_t nl = (size_t)(slash - entry);
  if (nl >= sizeof net) return 0;
  memcpy(net, entry, nl);
  net[nl] = '\0';
  char *end;
  long bits = strtol(slash + 1, &end, 10);
  if (end == slash + 1 || *end) return 0;
  unsigned char n[16], h[16];
  int fam, len;
  if (inet_pton(AF_INET, net, n) == 1 && inet_pton(AF_INET, host, h) == 1) {
    fam = 4;
  } else if (inet_pton(AF_INET6, net, n) == 1 && inet_pton(AF_INET6, host, h) == 1) {
    fam = 16;
  } else {
    return 0;
  }
  len = fam * 8;
  if (bits < 0 || bits > len) return 0;
  for (long i = 0; i < bits; i++) {
    int byte = (int)(i / 8), bit = 7 - (int)(i % 8);
    if (((n[byte] >> bit) & 1) != ((h[byte] >> bit) & 1)) return 0;
  }
  return 1;
}

int netproxy_no_proxy_match(const char *list, const char *host, int port) {
  char h[256];
  size_t hl = strlen(host);
  if (hl >= sizeof h) return 0;
  for (size_t i = 0; i <= hl; i++) h[i] = (char)tolower((unsigned char)host[i]);
  while (hl > 0 && h[hl - 1] == '.') h[--hl] = '\0';
  const char *s = list;
  while (*s) {
    while (*s == ',' || *s == ' ' || *s == '\t') s++;
    const char *e = s + strcspn(s, ",");
    const char *t = e;
    while (t > s && (t[-1] == ' ' || t[-1] == '\t')) t--;
    char ent[256];
    size_t n = (size_t)(t - s);
    if (n == 0 || n >= sizeof ent) {
      s = e;
      continue;
    }
    memcpy(ent, s, n);
    ent[n] = '\0';
    s = e;
    for (size_t i = 0; i < n; i++) ent[i] = (char)tolower((unsigned char)ent[i]);
    if (strcmp(ent, "*") == 0) return 1;
    if (strchr(ent, '/')) {
      if (cidr_match(ent, h)) return 1;
      continue;
    }
    /* An entry's port: "[v6]:p", "name:p" (a bare v6 address has several ':'). */
    int eport = 0;
    char *name = ent;
    if (ent[0] == '[') {
      char *rb = strchr(ent, ']');
      if (!rb) continue;
      *rb = '\0';
      name = ent + 1;
      if (rb[1] == ':') eport = atoi(rb + 2);
    } else {
      char *c = strchr(ent, ':');
      if (c && !strchr(c + 1, ':')) {
        *c = '\0';
        eport = atoi(c + 1);
      }
    }
    if (eport && eport != port) continue;
    unsigned char a[16], b[16];
    if (inet_pton(AF_INET6, name, a) == 1) {
      if (inet_pton(AF_INET6, h, b) == 1 && memcmp(a, b, 16) == 0) return 1;
      continue;
    }
    if (inet_pton(AF_INET, name, a) == 1) {
      if (strcmp(name, h) == 0) return 1;
      continue;
    }
    int sub_only = 0;
    if (name[0] == '*' && name[1] == '.') name++;
    if (name[0] == '.') {
      sub_only = 1;
      name++;
    }
    size_t nl = strlen(name);
    while (nl > 0 && name[nl - 1] == '.') name[--nl] = '\0';
    if (nl == 0) continue;
    if (!sub_only && strcmp(h, name) == 0) return 1;
    if (hl > nl && strcmp(h + hl - nl, name) == 0 && h[hl - nl - 1] == '.') return 1;
  }
  return 0;
}

static int unhex(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = tolower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Percent-decode n bytes of s into a new string, NULL on a bad escape. */
static char *pct_decode(const char *s, size_t n) {
  char *o = malloc(n + 1);
  size_t j = 0;
  if (!o) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '%') {
      if (i + 2 >= n) {
        free(o);
        return NULL;
      }
      int hi = unhex((unsigned char)s[i + 1]), lo = unhex((unsigned char)s[i + 2]);
      if (hi < 0 || lo < 0) {
        free(o);
        return NULL;
      }
      o[j++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      o[j++] = s[i];
    }
  }
  o[j] = '\0';
  return o;
}

void netproxy_clear(struct netproxy *p) {
  if (!p) return;
  if (p->pass) OPENSSL_cleanse(p->pass, strlen(p->pass));
  free(p->user);
  free(p->pass);
  free(p->url);
  memset(p, 0, sizeof *p);
}

int netproxy_parse(const char *url, struct netproxy *p, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  const char *s = strstr(url, "://");
  if (!s || s == url || (size_t)(s - url) >= sizeof p->scheme) {
    snprintf(err, errlen, "proxy URL has no scheme (expected http://HOST:PORT)");
    return -1;
  }
  for (size_t i = 0; i < (size_t)(s - url); i++)
    p->scheme[i] = (char)tolower((unsigned char)url[i]);
  s += 3;
  const char *auth_end = s + strcspn(s, "/?#");
  const char *at = NULL;
  for (const char *q = s; q < auth_end; q++)
    if (*q == '@') at = q;
  const char *hp = at ? at + 1 : s;
  const char *hb, *he, *rest;
  if (*hp == '[') {
    hb = hp + 1;
    he = strchr(hb, ']');
    if (!he || he > auth_end) goto bad_host;
    rest = he + 1;
  } else {
    hb = hp;
    he = hb + strcspn(hb, ":/?#");
    rest = he;
  }
  if (he == hb || (size_t)(he - hb) >= sizeof p->host) goto bad_host;
  memcpy(p->host, hb, (size_t)(he - hb));
  p->host[he - hb] = '\0';
  int port = strcmp(p->scheme, "http") == 0 ? 80 : strcmp(p->scheme, "https") == 0 ? 443 : 1080;
  if (*rest == ':') {
    char *e;
    long v = strtol(rest + 1, &e, 10);
    if (e == rest + 1 || v <= 0 || v > 65535 || (e != auth_end)) goto bad_host;
    port = (int)v;
    rest = e;
  }
  if (rest != auth_end) goto bad_host;
  if (*auth_end && strcmp(auth_end, "/") != 0) {
    snprintf(err, errlen, "proxy URL %s://%s: a path after the host is not allowed",
             p->scheme, p->host);
    return -1;
  }
  p->port = (uint16_t)port;
  int v6 = strchr(p->host, ':') != NULL;
  snprintf(p->shown, sizeof p->shown, "%s://%s%s%s:%d", p->scheme, v6 ? "[" : "", p->host,
           v6 ? "]" : "", port);
  if (at) {
    const char *colon = memchr(s, ':', (size_t)(at - s));
    const char *ue = colon ? colon : at;
    p->user = pct_decode(s, (size_t)(ue - s));
    if (colon) p->pass = pct_decode(colon + 1, (size_t)(at - colon - 1));
    if (!p->user || (colon && !p->pass)) {
      snprintf(err, errlen, "proxy URL %s: bad %%-escape in the user or password", p->shown);
      netproxy_clear(p);
      return -1;
    }
  }
  size_t n = strlen(p->shown) + (at ? (size_t)(at - s) + 1 : 0) + 1;
  p->url = malloc(n);
  if (!p->url) {
    snprintf(err, errlen, "out of memory");
    netproxy_clear(p);
    return -1;
  }
  snprintf(p->url, n, "%s://%.*s%s%s%s%s:%d", p->scheme, at ? (int)(at - s) : 0, s,
           at ? "@" : "", v6 ? "[" : "", p->host, v6 ? "]" : "", port);
  return 0;
bad_host:
  snprintf(err, errlen, "proxy URL %s://...: missing or bad host or port (expected "
           "%s://HOST:PORT)", p->scheme, p->scheme);
  return -1;
}

int netproxy_basic_auth(const struct netproxy *p, char *out, size_t outlen) {
  if (outlen) out[0] = '\0';
  if (!p->user) return 1;
  size_t ul = strlen(p->user), pl = p->pass ? strlen(p->pass) : 0;
  size_t rawn = ul + 1 + pl;
  size_t need = 6 + 4 * ((rawn + 2) / 3) + 1;
  if (need > outlen || rawn > 4096) return -1;
  unsigned char raw[4098];
  memcpy(raw, p->user, ul);
  raw[ul] = ':';
  if (pl) memcpy(raw + ul + 1, p->pass, pl);
  memcpy(out, "Basic ", 6);
  base64_encode_to(out + 6, raw, rawn);
  OPENSSL_cleanse(raw, rawn);
  return 0;
}
