/* dnslabel.c: see dnslabel.h. */
#include "dnslabel.h"

int dns_label_valid(const char *s, size_t len) {
  if (len == 0 || len > DNS_LABEL_MAX || s[0] == '-' || s[len - 1] == '-') return 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return 0;
  }
  return 1;
}
