/* fuzz_portforward.c: libFuzzer driver for the port-forward carrier's decoder.
 *
 * The input is what a (hostile) API server sends after the 101, delivered to a
 * carrier made by pf_carrier_new() over a bufferevent pair in two writes (frames
 * split across reads). Byte 0 picks options: bit 0 a reader that first lets the
 * input fill up, bit 1 the client writes while reading, bits 2-7 the split
 * point; byte 1 the max_frame (0: default, else n * 64). Checked on every run:
 * the carrier's input never holds more than PF_DEFAULT_HIGH bytes, no byte
 * arrives after the end of stream (bytes from before it may still wait), an end is raised at most once (and always
 * once the connection ends), and its text is a proper string.
 *
 * Build: cmake -DKBRIDGE_FUZZ=ON -DCMAKE_C_COMPILER=clang; run with
 *   fuzz_portforward -dict=tests/fuzz/portforward.dict CORPUS tests/fuzz/corpus/portforward */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "log.h"
#include "portforward.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *base;

struct run {
  struct bufferevent *carrier;
  int stalled, ends;
  short end;
  size_t got, left_at_end; /* bytes in the input when the end was raised */
};

static void die_if(int cond) {
  if (cond) abort();
}

static void on_read(struct bufferevent *bev, void *arg) {
  struct run *r = arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  die_if(evbuffer_get_length(in) > PF_DEFAULT_HIGH);
  die_if(r->ends && evbuffer_get_length(in) > r->left_at_end); /* nothing after the end */
  if (r->stalled) return;
  r->got += evbuffer_get_length(in);
  evbuffer_drain(in, evbuffer_get_length(in));
  r->left_at_end = 0;
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  struct run *r = arg;
  r->ends++;
  r->end = what;
  r->left_at_end = evbuffer_get_length(bufferevent_get_input(bev));
  const char *e = pf_carrier_error(bev);
  if (e) die_if(strlen(e) == 0 || strlen(e) > 2000);
}

static void spin(void) {
  for (int i = 0; i < 20; i++) event_base_loop(base, EVLOOP_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!base) {
    log_init("fuzz_portforward", LOGL_ERROR);
    base = event_base_new();
  }
  if (size < 2) return 0;
  uint8_t opt = data[0];
  size_t max_frame = (size_t)data[1] * 64;
  data += 2, size -= 2;
  struct bufferevent *pair[2];
  struct run r = {.stalled = opt & 1};
  bufferevent_pair_new(base, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS, pair);
  r.carrier = pf_carrier_new(pair[0], 5000, max_frame, "fuzz");
  die_if(!r.carrier);
  bufferevent_setcb(r.carrier, on_read, NULL, on_event, &r);
  bufferevent_enable(r.carrier, EV_READ | EV_WRITE);
  bufferevent_enable(pair[1], EV_READ | EV_WRITE);
  size_t cut = size ? (size_t)(opt >> 2) * size / 64 : 0;
  bufferevent_write(pair[1], data, cut);
  if (opt & 2) bufferevent_write(r.carrier, "client bytes", 12);
  spin();
  bufferevent_write(pair[1], data + cut, size - cut);
  spin();
  r.stalled = 0;
  on_read(r.carrier, &r);
  spin();
  bufferevent_flush(pair[1], EV_WRITE, BEV_FINISHED); /* the server goes away */
  spin();
  on_read(r.carrier, &r);
  spin();
  die_if(r.ends != 1);
  bufferevent_free(r.carrier);
  bufferevent_free(pair[1]);
  spin();
  return 0;
}
