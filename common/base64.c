/* base64.c: see base64.h. */
#include "base64.h"

#include <stdlib.h>
#include <string.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_encode_to(char *out, const void *in, size_t n) {
  const unsigned char *p = in;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
    out[o++] = alphabet[v >> 18];
    out[o++] = alphabet[(v >> 12) & 63];
    out[o++] = alphabet[(v >> 6) & 63];
    out[o++] = alphabet[v & 63];
  }
  if (i < n) {
    unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
    out[o++] = alphabet[v >> 18];
    out[o++] = alphabet[(v >> 12) & 63];
    out[o++] = i + 1 < n ? alphabet[(v >> 6) & 63] : '=';
    out[o++] = '=';
  }
  out[o] = '\0';
  return o;
}

char *base64_encode(const void *in, size_t n) {
  char *out = malloc(BASE64_LEN(n) + 1);
  if (!out) abort();
  base64_encode_to(out, in, n);
  return out;
}

char *base64_decode(const char *in, size_t *outlen) {
  size_t n = strlen(in);
  char *out = malloc(n * 3 / 4 + 4);
  if (!out) abort();
  size_t o = 0;
  unsigned acc = 0;
  int bits = 0, pad = 0;
  for (const char *p = in; *p; p++) {
    int c = (unsigned char)*p, v;
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      pad++;
      continue;
    }
    if (pad) goto bad; /* data after padding */
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+' || c == '-') v = 62;
    else if (c == '/' || c == '_') v = 63;
    else goto bad;
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (char)((acc >> bits) & 0xff);
    }
  }
  if (bits >= 6 || pad > 2) goto bad;
  out[o] = 0;
  if (outlen) *outlen = o;
  return out;
bad:
  free(out);
  return NULL;
}
