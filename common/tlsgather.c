/* tlsgather.c: a write BIO that gathers TLS records for one send(). See
 * tlsgather.h. */
#include "tlsgather.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <openssl/bio.h>
#include <openssl/err.h>

#define SMALL_CHAIN 4096 /* chains below this are joined into one record */
#define PEEK_MAX 16

struct tls_gather {
  int fd;
  size_t len, cap;
  size_t retry_len; /* SSL_write said WANT_WRITE for this many bytes: retry them */
  unsigned char buf[];
};

static int gather_write(BIO *b, const char *data, int n) {
  struct tls_gather *g = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  size_t room = g->cap - g->len;
  if (n <= 0) return 0;
  if (room == 0) {
    BIO_set_retry_write(b);
    return -1;
  }
  size_t k = (size_t)n < room ? (size_t)n : room;
  memcpy(g->buf + g->len, data, k);
  g->len += k;
  return (int)k;
}

static long gather_ctrl(BIO *b, int cmd, long num, void *ptr) {
  struct tls_gather *g = BIO_get_data(b);
  switch (cmd) {
    case BIO_CTRL_FLUSH: return 1; /* tls_gather_flush() sends */
    case BIO_C_GET_FD:
      if (ptr) *(int *)ptr = g->fd;
      return g->fd;
    case BIO_CTRL_WPENDING: return (long)g->len;
    case BIO_CTRL_GET_CLOSE: return BIO_NOCLOSE; /* the socket is the bufferevent's */
    case BIO_CTRL_SET_CLOSE: return 1;
    default: return 0;
  }
}

static int gather_destroy(BIO *b) {
  free(BIO_get_data(b));
  BIO_set_data(b, NULL);
  BIO_set_init(b, 0);
  return 1;
}

static BIO_METHOD *gather_method(void) {
  static BIO_METHOD *m; /* made once, kept for the process's life */
  if (m) return m;
  BIO_METHOD *n = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "kbridge gather");
  if (!n || !BIO_meth_set_write(n, gather_write) || !BIO_meth_set_ctrl(n, gather_ctrl) ||
      !BIO_meth_set_destroy(n, gather_destroy)) {
    BIO_meth_free(n);
    return NULL;
  }
  return m = n;
}

struct tls_gather *tls_gather_install(SSL *ssl, int fd, size_t cap) {
  BIO_METHOD *m = gather_method();
  struct tls_gather *g = m ? calloc(1, sizeof *g + cap) : NULL;
  BIO *b = g ? BIO_new(m) : NULL;
  if (!b) {
    free(g);
    return NULL;
  }
  g->fd = fd;
  g->cap = cap;
  BIO_set_data(b, g);
  BIO_set_init(b, 1);
  SSL_set0_wbio(ssl, b); /* drops the SSL's reference to the socket BIO (reads keep theirs) */
  return g;
}

size_t tls_gather_pending(const struct tls_gather *g) { return g->len; }

/* The next plaintext for one record: the first chain (up to a record), or the
 * leading small chains joined (copied) into one. Returns its length, 0 if src
 * is empty or out of memory. */
static size_t next_piece(struct tls_gather *g, struct evbuffer *src, void **p) {
  struct evbuffer_iovec v[PEEK_MAX];
  size_t len;
  if (g->retry_len) { /* OpenSSL holds a record of these bytes: same length again */
    len = g->retry_len;
  } else {
    int n = evbuffer_peek(src, TLS_GATHER_RECORD, NULL, v, PEEK_MAX);
    if (n <= 0) return 0;
    len = v[0].iov_len;
    if (len < SMALL_CHAIN) {
      size_t sum = 0;
      for (int i = 0; i < n && i < PEEK_MAX; i++) {
        if (v[i].iov_len >= SMALL_CHAIN || sum + v[i].iov_len > TLS_GATHER_RECORD) break;
        sum += v[i].iov_len;
      }
      if (sum > len) len = sum;
    }
    if (len > TLS_GATHER_RECORD) len = TLS_GATHER_RECORD;
  }
  *p = evbuffer_pullup(src, (ev_ssize_t)len); /* no copy when already contiguous */
  return *p ? len : 0;
}

static void tls_error(SSL *ssl, int r, int sys_errno, char *err, size_t errlen) {
  unsigned long e = ERR_get_error();
  if (e) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "TLS error: %s", buf);
  } else {
    snprintf(err, errlen, "%s", sys_errno ? strerror(sys_errno) : "TLS write failed");
  }
  ERR_clear_error();
}

int tls_gather_flush(struct tls_gather *g, SSL *ssl, struct evbuffer *src, int *blocked,
                     char *err, size_t errlen) {
  *blocked = 0;
  for (;;) {
    while (g->len < g->cap) {
      void *p;
      size_t len = next_piece(g, src, &p);
      if (len == 0) break;
      ERR_clear_error();
      errno = 0;
      int r = SSL_write(ssl, p, (int)len);
      if (r > 0) {
        g->retry_len = 0;
        evbuffer_drain(src, (size_t)r);
        continue;
      }
      int e = SSL_get_error(ssl, r);
      if (e == SSL_ERROR_WANT_WRITE) { /* full: the record waits inside OpenSSL */
        g->retry_len = len;
        break;
      }
      tls_error(ssl, r, errno, err, errlen);
      return -1;
    }
    if (g->len == 0) return 0;
    ssize_t n = send(g->fd, g->buf, g->len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        *blocked = 1;
        return 0;
      }
      snprintf(err, errlen, "%s", strerror(errno));
      return -1;
    }
    if ((size_t)n < g->len) { /* the socket is full: keep the rest */
      memmove(g->buf, g->buf + n, g->len - (size_t)n);
      g->len -= (size_t)n;
      *blocked = 1;
      return 0;
    }
    g->len = 0;
  }
}
