/* splice.h: join two byte-stream endpoints in both directions.
 *
 * An endpoint is either a bufferevent (a TCP socket, possibly TLS) or a tunnel
 * stream. The splice copies a->b and b->a with backpressure (stop reading one
 * side while the other side's output is above its high-water mark, resume below
 * the low mark), propagates half-close (EOF on one side -> flush, then shut down
 * the write side of the other), and ends when both directions have finished or
 * either side fails. Nothing buffered is dropped on a clean half-close.
 *
 * Ownership: splice_new() takes both endpoints; the splice frees them when it
 * ends, then calls done (err NULL for a clean end, else why it failed), then
 * frees itself. Bytes already sitting in an endpoint's input are forwarded. */
#ifndef KB_SPLICE_H
#define KB_SPLICE_H

#include <stddef.h>

struct bufferevent;
struct tunnel_stream;
struct splice;

struct evbuffer;

/* A rewrite of the bytes read from an endpoint before they are passed on
 * (kbridge's outbound route propagation, local-proxy/propagate.c). fn moves
 * what it can from in to out, rewritten, and leaves in in what it needs more
 * bytes to decide (a request head cut by a read); with eof set it must move all
 * of in. Returns 0, or -1 to end the splice with *err. free_fn(ctx), if set,
 * when the splice ends; the splice owns ctx from splice_new on, also when it
 * fails at once. */
struct splice_filter {
  int (*fn)(void *ctx, struct evbuffer *in, struct evbuffer *out, int eof, const char **err);
  void (*free_fn)(void *ctx);
  void *ctx;
};

struct splice_end {
  struct bufferevent *bev;      /* exactly one of bev and stream is set */
  struct tunnel_stream *stream;
  struct splice_filter filter;  /* fn NULL: bytes pass unchanged */
};

typedef void (*splice_done_cb)(const char *err, size_t a_to_b, size_t b_to_a, void *arg);

#define SPLICE_HIGH_WATER (256u * 1024u)

/* Returns NULL when the splice ended at once (out of memory, a stream already
 * closed, or both sides already at EOF): done has been called by then. */
struct splice *splice_new(struct splice_end a, struct splice_end b, splice_done_cb done,
                          void *arg);
/* Abort both sides now (reset streams, close sockets); done is called. */
void splice_abort(struct splice *sp, const char *why);

/* For read callbacks of plain-socket bufferevents that move bulk data: libevent
 * 2.1 reads at most 4 KiB per readiness event (evbuffer_read caps it), so a
 * 100 MB transfer costs 25,600 reads, FIONREAD ioctls and callbacks. This reads
 * what the socket has straight into bev's input, up to `max` bytes buffered, in
 * 64 KiB readv()s, stopping when the socket is drained. It only acts when the
 * input already holds >= 4 KiB (libevent's read was capped, more is likely
 * waiting), so small request/response exchanges pay no extra syscall. EOF and
 * errors are left for libevent to find on its next read (the socket stays
 * readable). Does nothing for TLS bufferevents, a socket-less bev or one with
 * reading disabled. Returns the bytes read. */
size_t splice_read_more(struct bufferevent *bev, size_t max);

/* Send what a plain socket bufferevent's output holds now, with one sendmsg()
 * (MSG_NOSIGNAL, non-blocking), and drain what was sent. For bufferevents that
 * keep EV_WRITE disabled while their output is empty (libevent arms and disarms
 * EV_WRITE around every write otherwise: two epoll_ctl and a loop turn per
 * response). Returns the bytes still queued: the caller then enables EV_WRITE
 * and libevent sends the rest, or reports the error. Callers write directly
 * only below SPLICE_WRITE_NOW_MAX queued bytes: bulk data arrives a DATA frame
 * (16 KiB) per callback, and one send per frame would cost more than one send
 * of all of a loop turn's frames; above it they call this once at the end of
 * the loop turn (an event made active when the bytes were queued). */
size_t splice_write_now(struct bufferevent *bev);
#define SPLICE_WRITE_NOW_MAX 8192u

#endif
