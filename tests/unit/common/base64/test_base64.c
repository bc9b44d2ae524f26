/* test_base64.c: common/base64.c against the RFC 4648 vectors, what the
 * callers feed it (kubeconfig data with line breaks, URL-safe input, no
 * padding) and what it must refuse. */
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "check.h"

static void enc(const char *in, const char *want) {
  char *got = base64_encode(in, strlen(in));
  CHECK_EQ_STR(got, want);
  char buf[64];
  CHECK_EQ_INT(base64_encode_to(buf, in, strlen(in)), strlen(want));
  CHECK_EQ_STR(buf, want);
  CHECK_EQ_INT(BASE64_LEN(strlen(in)), strlen(want));
  free(got);
}

static void dec(const char *in, const char *want) {
  size_t n = 99;
  char *got = base64_decode(in, &n);
  CHECK(got != NULL);
  if (!got) return;
  CHECK_EQ_STR(got, want);
  CHECK_EQ_INT(n, strlen(want));
  free(got);
}

int main(void) {
  /* RFC 4648 section 10 */
  static const char *const v[][2] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                     {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                                     {"foobar", "Zm9vYmFy"}};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    enc(v[i][0], v[i][1]);
    dec(v[i][1], v[i][0]);
  }
  enc("al@ice:p:ss", "YWxAaWNlOnA6c3M=");
  /* WebSocket (RFC 6455 1.3): the 16-byte nonce of the example */
  const unsigned char nonce[16] = "the sample nonce";
  char key[BASE64_LEN(16) + 1];
  base64_encode_to(key, nonce, sizeof nonce);
  CHECK_EQ_STR(key, "dGhlIHNhbXBsZSBub25jZQ==");
  /* lenient where the kubeconfig is: line breaks, no padding, URL-safe */
  dec("Zm9v\nYmFy\r\n", "foobar");
  dec(" Zm9vYg ", "foob");
  dec("-_8=", "\xfb\xff");
  dec("+/8=", "\xfb\xff");
  /* binary round trip */
  unsigned char all[256];
  for (int i = 0; i < 256; i++) all[i] = (unsigned char)i;
  char *e = base64_encode(all, sizeof all);
  size_t n = 0;
  char *d = base64_decode(e, &n);
  CHECK_EQ_INT(n, 256);
  CHECK(d && memcmp(d, all, 256) == 0);
  free(e);
  free(d);
  /* refused */
  CHECK(base64_decode("not base64!", NULL) == NULL);
  CHECK(base64_decode("Zg==Zg", NULL) == NULL); /* data after padding */
  CHECK(base64_decode("Z", NULL) == NULL);      /* a lone character */
  CHECK(base64_decode("Zg===", NULL) == NULL);  /* three '=' */
  return check_done();
}
