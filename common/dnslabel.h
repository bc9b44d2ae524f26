/* dnslabel.h: the one definition of a valid route key.
 *
 * A route key is a DNS label as RFC 1123 allows it in a host name, lowercase
 * only: 1 to 63 characters of [a-z0-9-], not starting or ending with '-'. */
#ifndef KB_DNSLABEL_H
#define KB_DNSLABEL_H

#include <stddef.h>

#define DNS_LABEL_MAX 63

/* Returns 1 if s[0..len) is a valid route key, else 0. Never reads past len. */
int dns_label_valid(const char *s, size_t len);

#endif
