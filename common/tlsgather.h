/* tlsgather.h: many TLS records per send() on a TLS socket.
 *
 * OpenSSL writes each record to its write BIO as it is made; with a socket BIO
 * that is one write() per record (16 KiB at most), and libevent's TLS
 * bufferevent calls SSL_write once per evbuffer chain, as soon as bytes are
 * added. A gather replaces the SSL's write BIO (after the handshake) with one
 * that keeps the records in a buffer of its own (`cap` bytes), and
 * tls_gather_flush() encrypts what a source evbuffer holds into it, sending
 * it with one send() whenever it is full and once at the end: at most
 * one send() per `cap` bytes, instead of one per record.
 *
 * Bounded: the gather never holds more than `cap` bytes; when the socket does
 * not take them, flush says it is blocked and leaves the rest in the source
 * (records are only made while there is room). A record OpenSSL made but the
 * full gather could not take stays inside OpenSSL until the next flush, which
 * retries the same bytes (the source is not drained for them meanwhile).
 *
 * Ownership: the gather belongs to the SSL (freed with it by SSL_free). */
#ifndef KB_TLSGATHER_H
#define KB_TLSGATHER_H

#include <stddef.h>
#include <openssl/ssl.h>

struct evbuffer;
struct tls_gather;

/* Largest plaintext per SSL_write: one full TLS record. */
#define TLS_GATHER_RECORD 16384u
/* Default size of the gather buffer: 4 full records and their overhead. */
#define TLS_GATHER_CAP (4u * (TLS_GATHER_RECORD + 256u))

/* Give ssl (handshake done) a gathering write BIO over socket fd. NULL when
 * out of memory (ssl keeps its BIO then). */
struct tls_gather *tls_gather_install(SSL *ssl, int fd, size_t cap);

/* Encrypted bytes waiting in the gather (not yet taken by the socket). */
size_t tls_gather_pending(const struct tls_gather *g);

/* Encrypt src into the gather, record by record, and send: until src and the
 * gather are empty or the socket would block (*blocked = 1: wait for it to be
 * writable and call again). src is drained by what was encrypted. Small
 * leading chains (control frames) are joined into one record. Returns 0, or
 * -1 with err set on a TLS or socket error. */
int tls_gather_flush(struct tls_gather *g, SSL *ssl, struct evbuffer *src, int *blocked,
                     char *err, size_t errlen);

#endif
