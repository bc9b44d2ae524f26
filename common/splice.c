/* splice.c: copy bytes both ways between two endpoints (bufferevent or tunnel
 * stream), with backpressure and half-close. See splice.h.
 *
 * Each direction src -> dst is driven by one function, pump(), called whenever
 * something may have changed for it: src has input or hit EOF, dst drained
 * (bufferevent write callback at its low watermark, or stream WRITABLE).
 *
 * Backpressure: while dst's pending output is above its high mark, pump() stops
 * taking from src: a bufferevent src gets EV_READ disabled; a stream src is simply
 * not drained, so its window closes and the peer stops. The high mark is
 * SPLICE_HIGH_WATER for a bufferevent dst and tunnel_stream_high() for a stream
 * dst (that is where the stream's WRITABLE fires).
 *
 * Writes to a plain socket: its EV_WRITE stays disabled while its output is
 * empty; pump_all() sends what it queued with one sendmsg() and only the rest
 * goes through libevent (EV_WRITE on until the output is empty again). Letting
 * libevent write everything armed and disarmed EV_WRITE around every write:
 * two epoll_ctl and a loop turn per request/response on a pooled connection.
 *
 * Half-close: once src has hit EOF and everything it sent is handed to dst, dst's
 * write side is shut: tunnel_stream_shutdown() for a stream; for a socket, flush
 * then shutdown(fd, SHUT_WR); for a TLS bufferevent (no half-close in TLS without
 * tearing the session down), flush then end the splice. The splice ends when both
 * directions are finished, or at the first error. */
#include "splice.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "log.h"
#include "tunnel.h"

struct splice_side {
  struct splice *sp;
  struct bufferevent *bev;
  struct tunnel_stream *stream;
  const char *name;       /* "a" or "b", for error messages */
  unsigned eof : 1;       /* no more input will come from this side */
  unsigned shut_wait : 1; /* flushing, then shut this side's write direction */
  unsigned shut : 1;      /* this side's write direction is finished */
  unsigned tls : 1;
  unsigned flush_queued : 1; /* flush_ev is active */
  struct event *flush_ev; /* bulk output: one send at the end of the loop turn */
  size_t moved;           /* bytes read from this side and passed on */
  struct splice_filter filter; /* rewrites this side's input (fn NULL: none) */
  struct evbuffer *filtered;   /* the filter's output, waiting for room in dst */
};

struct splice {
  struct splice_side a, b;
  splice_done_cb done;
  void *arg;
  int depth;          /* callback frames on the stack */
  unsigned ended : 1; /* done delivered; endpoints released */
  unsigned pumping : 1, repump : 1;
};

static void pump_all(struct splice *sp);

static struct splice_side *other(struct splice_side *x) {
  return x == &x->sp->a ? &x->sp->b : &x->sp->a;
}

static void enter(struct splice *sp) { sp->depth++; }

static void leave(struct splice *sp) {
  if (--sp->depth == 0 && sp->ended) free(sp);
}

/* Release both endpoints and report. Streams are reset on error; a stream that
 * finished cleanly is freed with its queued bytes still to be sent. */
static void finish(struct splice *sp, const char *err) {
  if (sp->ended) return;
  sp->ended = 1;
  struct splice_side *sides[2] = {&sp->a, &sp->b};
  for (int i = 0; i < 2; i++) {
    struct splice_side *x = sides[i];
    if (x->flush_ev) {
      event_free(x->flush_ev);
      x->flush_ev = NULL;
    }
    if (x->filter.free_fn) x->filter.free_fn(x->filter.ctx);
    x->filter.free_fn = NULL;
    if (x->filtered) evbuffer_free(x->filtered);
    x->filtered = NULL;
    if (x->bev) {
      bufferevent_free(x->bev);
      x->bev = NULL;
    } else if (x->stream) {
      if (err && !tunnel_stream_closed(x->stream))
        tunnel_stream_reset(x->stream, FRAME_RESET_CANCEL, err);
      tunnel_stream_free(x->stream);
      x->stream = NULL;
    }
  }
  if (sp->done) sp->done(err, sp->a.moved, sp->b.moved, sp->arg);
}

static size_t pending_out(const struct splice_side *x) {
  return x->bev ? evbuffer_get_length(bufferevent_get_output(x->bev))
                : tunnel_stream_pending(x->stream);
}

static size_t high_mark(const struct splice_side *x) {
  return x->bev ? SPLICE_HIGH_WATER : tunnel_stream_high(x->stream);
}

static struct evbuffer *raw_input_of(struct splice_side *x) {
  return x->bev ? bufferevent_get_input(x->bev) : tunnel_stream_input(x->stream);
}

/* What x has to pass on: its input, or with a filter what the filter made of
 * it so far. NULL if the filter failed (the splice ended). */
static struct evbuffer *input_of(struct splice *sp, struct splice_side *x) {
  struct evbuffer *raw = raw_input_of(x);
  if (!x->filter.fn) return raw;
  const char *err = NULL;
  if (evbuffer_get_length(raw) > 0 || x->eof) {
    size_t before = evbuffer_get_length(raw);
    if (x->filter.fn(x->filter.ctx, raw, x->filtered, x->eof, &err) < 0) {
      char why[300];
      snprintf(why, sizeof why, "side %s: %s", x->name, err ? err : "filter failed");
      finish(sp, why);
      return NULL;
    }
    x->moved += before - evbuffer_get_length(raw);
  }
  return x->filtered;
}

/* dst's write side, once its output is flushed. Returns -1 if the splice ended. */
static int shut_write(struct splice *sp, struct splice_side *dst) {
  if (dst->stream) {
    tunnel_stream_shutdown(dst->stream);
    dst->shut = 1;
    return 0;
  }
  if (evbuffer_get_length(bufferevent_get_output(dst->bev)) > 0) {
    dst->shut_wait = 1; /* the write callback comes back at 0 */
    bufferevent_setwatermark(dst->bev, EV_WRITE, 0, 0);
    return 0;
  }
  dst->shut_wait = 0;
  dst->shut = 1;
  if (dst->tls) {
    finish(sp, NULL); /* TLS has no half-close: flushed, so end here */
    return -1;
  }
  if (shutdown(bufferevent_getfd(dst->bev), SHUT_WR) < 0 && errno != ENOTCONN) {
    char why[128];
    snprintf(why, sizeof why, "shutdown of side %s: %s", dst->name, strerror(errno));
    finish(sp, why);
    return -1;
  }
  return 0;
}

/* Move what src has into dst as far as dst's high mark allows; propagate EOF.
 * Returns -1 if the splice ended. */
static int pump(struct splice *sp, struct splice_side *src) {
  struct splice_side *dst = other(src);
  if (dst->shut) return 0;
  struct evbuffer *in = input_of(sp, src);
  if (!in) return -1;
  size_t avail = evbuffer_get_length(in);
  int full = pending_out(dst) > high_mark(dst);
  if (avail > 0 && !full) {
    if (dst->bev) {
      evbuffer_remove_buffer(in, bufferevent_get_output(dst->bev), avail);
    } else if (tunnel_stream_write_buffer(dst->stream, in) < 0) {
      char why[128];
      snprintf(why, sizeof why, "side %s: stream no longer writable", dst->name);
      finish(sp, why);
      return -1;
    }
    if (!src->filter.fn) src->moved += avail; /* else counted as the filter took them */
    full = pending_out(dst) > high_mark(dst);
  }
  if (src->bev && !src->eof) {
    if (full)
      bufferevent_disable(src->bev, EV_READ);
    else
      bufferevent_enable(src->bev, EV_READ);
  }
  if (src->eof && evbuffer_get_length(in) == 0 && !dst->shut && !dst->shut_wait)
    return shut_write(sp, dst);
  return 0;
}

#define WRITE_NOW_IOV 64

size_t splice_write_now(struct bufferevent *bev) {
  struct evbuffer *out = bufferevent_get_output(bev);
  evutil_socket_t fd = bufferevent_getfd(bev);
  size_t len = evbuffer_get_length(out);
  if (len == 0 || fd < 0) return len;
  struct evbuffer_iovec v[WRITE_NOW_IOV];
  struct iovec iov[WRITE_NOW_IOV];
  int n = evbuffer_peek(out, -1, NULL, v, WRITE_NOW_IOV);
  if (n > WRITE_NOW_IOV) n = WRITE_NOW_IOV;
  for (int i = 0; i < n; i++) {
    iov[i].iov_base = v[i].iov_base;
    iov[i].iov_len = v[i].iov_len;
  }
  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(n > 0 ? n : 0)};
  ssize_t r = n > 0 ? sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) : -1;
  if (r > 0) {
    evbuffer_unfreeze(out, 1); /* a socket bufferevent keeps its output's start frozen */
    evbuffer_drain(out, (size_t)r);
    evbuffer_freeze(out, 1);
  }
  return evbuffer_get_length(out);
}

static void flush_later_cb(evutil_socket_t fd, short what, void *arg);

/* Send x's queued output now (plain sockets whose EV_WRITE is off). What the
 * socket does not take, or an error, is left to libevent: EV_WRITE on. Once the
 * output is empty, a waiting half-close proceeds and the loop runs again (the
 * other side's reading may have been paused for this output). Bulk output
 * (SPLICE_WRITE_NOW_MAX and more) is sent once at the end of the loop turn
 * instead (flush_ev): a turn brings many DATA frames, one callback each, and
 * libevent would arm EV_WRITE for them and disarm it after its write on the
 * next turn (two epoll_ctl and a turn of delay per turn of a transfer).
 * Returns -1 if the splice ended. */
static int flush_side(struct splice *sp, struct splice_side *x) {
  if (!x->bev || x->tls || sp->ended) return 0;
  struct evbuffer *out = bufferevent_get_output(x->bev);
  size_t len = evbuffer_get_length(out);
  if (len == 0 || (bufferevent_get_enabled(x->bev) & EV_WRITE)) return 0;
  if (len >= SPLICE_WRITE_NOW_MAX) {
    if (!x->flush_ev)
      x->flush_ev = event_new(bufferevent_get_base(x->bev), -1, 0, flush_later_cb, x);
    if (!x->flush_ev) {
      bufferevent_enable(x->bev, EV_WRITE); /* out of memory: libevent writes */
    } else if (!x->flush_queued) {
      x->flush_queued = 1;
      event_active(x->flush_ev, EV_WRITE, 0);
    }
    return 0;
  }
  if (splice_write_now(x->bev) > 0) {
    bufferevent_enable(x->bev, EV_WRITE);
    return 0;
  }
  sp->repump = 1;
  if (x->shut_wait) return shut_write(sp, x);
  return 0;
}

/* The end of the loop turn that queued bulk output on x: one sendmsg() of all
 * of it; EV_WRITE only for what the socket did not take. */
static void flush_later_cb(evutil_socket_t fd, short what, void *arg) {
  struct splice_side *x = arg;
  struct splice *sp = x->sp;
  enter(sp);
  x->flush_queued = 0;
  if (!sp->ended && x->bev && !(bufferevent_get_enabled(x->bev) & EV_WRITE)) {
    if (splice_write_now(x->bev) > 0) {
      bufferevent_enable(x->bev, EV_WRITE);
    } else if (!x->shut_wait || shut_write(sp, x) == 0) {
      pump_all(sp); /* room again: the other side may have been paused */
    }
  }
  leave(sp);
}

/* Both directions, until nothing changes; reentrant calls fold into the loop. */
static void pump_all(struct splice *sp) {
  if (sp->pumping) {
    sp->repump = 1;
    return;
  }
  sp->pumping = 1;
  do {
    sp->repump = 0;
    if (pump(sp, &sp->a) < 0 || pump(sp, &sp->b) < 0) break;
    if (sp->a.shut && sp->b.shut) {
      finish(sp, NULL);
      break;
    }
    if (flush_side(sp, &sp->a) < 0 || flush_side(sp, &sp->b) < 0) break;
  } while (sp->repump && !sp->ended);
  sp->pumping = 0;
}

/* ---- bufferevent side ---------------------------------------------------------- */

#define READ_MORE_MIN 4096        /* libevent 2.1's cap per read event */
#define READ_MORE_STEP (64u * 1024u)
#define READ_MORE_MAX (256u * 1024u)

size_t splice_read_more(struct bufferevent *bev, size_t max) {
  evutil_socket_t fd = bufferevent_getfd(bev);
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t total = 0;
  if (fd < 0 || bufferevent_openssl_get_ssl(bev) || !(bufferevent_get_enabled(bev) & EV_READ) ||
      evbuffer_get_length(in) < READ_MORE_MIN)
    return 0;
  evbuffer_unfreeze(in, 0); /* a socket bufferevent keeps its input's end frozen */
  while (evbuffer_get_length(in) < max) {
    size_t want = max - evbuffer_get_length(in);
    if (want > READ_MORE_STEP) want = READ_MORE_STEP;
    struct evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
    if (n <= 0) break;
    struct iovec iov[2];
    size_t room = 0;
    for (int i = 0; i < n; i++) {
      size_t l = v[i].iov_len < want - room ? v[i].iov_len : want - room;
      iov[i].iov_base = v[i].iov_base;
      iov[i].iov_len = l;
      room += l;
    }
    ssize_t r = readv(fd, iov, n);
    if (r <= 0) { /* would block, EOF or error: libevent's next read reports the last two */
      evbuffer_commit_space(in, v, 0);
      break;
    }
    size_t left = (size_t)r;
    int used = 0;
    for (int i = 0; i < n && left > 0; i++, used++) {
      v[i].iov_len = iov[i].iov_len < left ? iov[i].iov_len : left;
      left -= v[i].iov_len;
    }
    evbuffer_commit_space(in, v, used);
    total += (size_t)r;
    if ((size_t)r < room) break; /* drained: no need for a read that says EAGAIN */
  }
  evbuffer_freeze(in, 0);
  return total;
}

static void bev_read_cb(struct bufferevent *bev, void *arg) {
  struct splice_side *x = arg;
  struct splice *sp = x->sp;
  enter(sp);
  if (!x->tls && pending_out(other(x)) <= high_mark(other(x)))
    splice_read_more(bev, READ_MORE_MAX);
  pump_all(sp);
  leave(sp);
}

/* The output fell to the low mark (or to 0 while a shutdown waits). */
static void bev_write_cb(struct bufferevent *bev, void *arg) {
  struct splice_side *x = arg;
  struct splice *sp = x->sp;
  enter(sp);
  if (!x->tls && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
    bufferevent_disable(bev, EV_WRITE); /* empty: back to direct writes (flush_side) */
  if (x->shut_wait && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
    if (shut_write(sp, x) < 0) {
      leave(sp);
      return;
    }
  }
  if (!sp->ended) pump_all(sp);
  leave(sp);
}

static void bev_event_cb(struct bufferevent *bev, short what, void *arg) {
  struct splice_side *x = arg;
  struct splice *sp = x->sp;
  enter(sp);
  if (what & BEV_EVENT_EOF) {
    x->eof = 1;
    pump_all(sp);
  } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
    char why[300];
    unsigned long ssl_err = x->tls ? bufferevent_get_openssl_error(bev) : 0;
    int e = EVUTIL_SOCKET_ERROR();
    if (what & BEV_EVENT_TIMEOUT)
      snprintf(why, sizeof why, "side %s: timed out", x->name);
    else if (ssl_err)
      snprintf(why, sizeof why, "side %s: TLS error %lu", x->name, ssl_err);
    else
      snprintf(why, sizeof why, "side %s: %s", x->name, e ? evutil_socket_error_to_string(e) : "error");
    finish(sp, why);
  }
  leave(sp);
}

/* ---- stream side ----------------------------------------------------------------- */

static void stream_read_cb(struct tunnel_stream *s, void *arg) {
  struct splice_side *x = arg;
  struct splice *sp = x->sp;
  enter(sp);
  pump_all(sp);
  leave(sp);
}

static void stream_event_cb(struct tunnel_stream *s, int what, uint32_t code, const char *err,
                            void *arg) {
  struct splice_side *x = arg;
  struct splice *sp = x->sp;
  enter(sp);
  if (what & TUNNEL_STREAM_CLOSED) {
    char why[600];
    snprintf(why, sizeof why, "%s", err ? err : frame_reset_name(code));
    finish(sp, why);
  } else {
    if (what & TUNNEL_STREAM_EOF) x->eof = 1;
    pump_all(sp); /* EOF to forward, or WRITABLE: room again */
  }
  leave(sp);
}

static int side_init(struct splice *sp, struct splice_side *x, struct splice_end e,
                     const char *name) {
  x->sp = sp;
  x->bev = e.bev;
  x->stream = e.bev ? NULL : e.stream;
  x->name = name;
  x->filter = e.filter;
  if (x->filter.fn && !(x->filtered = evbuffer_new())) return -1;
  if (x->bev) {
    x->tls = bufferevent_openssl_get_ssl(x->bev) != NULL;
    bufferevent_setcb(x->bev, bev_read_cb, bev_write_cb, bev_event_cb, x);
    bufferevent_setwatermark(x->bev, EV_WRITE, SPLICE_HIGH_WATER / 2, 0);
    bufferevent_setwatermark(x->bev, EV_READ, 0, 0);
    bufferevent_set_max_single_write(x->bev, SPLICE_HIGH_WATER); /* default: 16 KiB */
    bufferevent_enable(x->bev, EV_READ);
    if (x->tls) bufferevent_enable(x->bev, EV_WRITE); /* plain: see flush_side() */
  } else {
    tunnel_stream_setcb(x->stream, stream_read_cb, stream_event_cb, x);
    if (tunnel_stream_eof(x->stream)) x->eof = 1;
  }
  return 0;
}

struct splice *splice_new(struct splice_end a, struct splice_end b, splice_done_cb done,
                          void *arg) {
  struct splice *sp = calloc(1, sizeof *sp);
  if (!sp) {
    struct splice fake = {.done = NULL};
    fake.a.bev = a.bev, fake.a.stream = a.bev ? NULL : a.stream, fake.a.filter = a.filter;
    fake.b.bev = b.bev, fake.b.stream = b.bev ? NULL : b.stream, fake.b.filter = b.filter;
    finish(&fake, "out of memory");
    if (done) done("out of memory", 0, 0, arg);
    return NULL;
  }
  sp->done = done;
  sp->arg = arg;
  int ok = side_init(sp, &sp->a, a, "a") == 0;
  ok = side_init(sp, &sp->b, b, "b") == 0 && ok;
  enter(sp);
  if (!ok)
    finish(sp, "out of memory");
  else if (sp->a.stream && tunnel_stream_closed(sp->a.stream))
    finish(sp, "side a: stream already closed");
  else if (sp->b.stream && tunnel_stream_closed(sp->b.stream))
    finish(sp, "side b: stream already closed");
  else
    pump_all(sp); /* bytes already buffered, EOF already seen */
  int ended = sp->ended;
  leave(sp);
  return ended ? NULL : sp;
}

void splice_abort(struct splice *sp, const char *why) {
  enter(sp);
  finish(sp, why ? why : "aborted");
  leave(sp);
}
