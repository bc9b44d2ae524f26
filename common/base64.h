/* base64.h: base64 (RFC 4648), the one copy for the whole tree: the
 * kubeconfig's *-data keys, Secret values, certificate requests and their
 * certificates, the exec plugin's cluster info, proxy Basic auth and the
 * WebSocket key and accept. No OpenSSL, so kb_base can hold it. */
#ifndef KB_BASE64_H
#define KB_BASE64_H

#include <stddef.h>

/* Characters of the encoding of n bytes, without the NUL: 4 * ceil(n / 3). */
#define BASE64_LEN(n) (4 * (((size_t)(n) + 2) / 3))

/* Encode n bytes of in (standard alphabet, '=' padding) into out, which holds
 * at least BASE64_LEN(n) + 1 bytes; NUL-terminated. Returns the length. */
size_t base64_encode_to(char *out, const void *in, size_t n);

/* The same into a malloc'd string (aborts when memory runs out). */
char *base64_encode(const void *in, size_t n);

/* Decode in: the standard and the URL-safe alphabet, whitespace ignored,
 * padding optional. Returns a malloc'd buffer, NUL-terminated after the
 * *outlen (if outlen is not NULL) decoded bytes, or NULL when in is not
 * base64 (a character outside the alphabets, data after padding, a lone
 * trailing character, more than two '='). */
char *base64_decode(const char *in, size_t *outlen);

#endif
