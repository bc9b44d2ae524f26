/* frame.h: the tunnel's wire format (see docs/protocol.md for the normative text).
 *
 * Every frame is a 9-byte header followed by `length` payload bytes:
 *
 *   +----------------+--------+--------+--------------------------+
 *   | length (24 BE) | type 8 | flags 8| stream id (32 BE)        |
 *   +----------------+--------+--------+--------------------------+
 *
 * This module only encodes and decodes; it keeps no state and does no I/O
 * beyond appending to an evbuffer, so it can be unit-tested and fuzzed alone.
 * Decoders never trust lengths: every field is bounds-checked against the
 * payload and a malformed payload returns -1 (a protocol error for the caller). */
#ifndef KB_FRAME_H
#define KB_FRAME_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define FRAME_HEADER_LEN 9
#define FRAME_MAX_PAYLOAD 65536u   /* larger is a protocol error */
#define FRAME_DATA_CHUNK 16384u    /* what senders put in one DATA frame */
#define FRAME_PROTOCOL_VERSION 1
#define FRAME_KEY_MAX 63           /* route keys are DNS labels */

enum frame_type {
  FRAME_HELLO = 1,    /* client -> agent, stream 0: register a route key */
  FRAME_WELCOME = 2,  /* agent -> client, stream 0: answer to HELLO */
  FRAME_OPEN = 3,     /* open a stream (either side, id parity says who) */
  FRAME_DATA = 4,     /* stream bytes; counts against the stream's window */
  FRAME_SHUTDOWN = 5, /* sender will send no more DATA on this stream */
  FRAME_RESET = 6,    /* stream aborted, both directions; code + reason */
  FRAME_WINDOW = 7,   /* receiver grants more bytes on a stream */
  FRAME_PING = 8,     /* stream 0, 8 opaque bytes; flag ACK = pong */
  FRAME_GOAWAY = 9,   /* stream 0: sender is closing the tunnel; code + reason */
};

#define FRAME_FLAG_ACK 0x01 /* PING: this is the pong */

enum frame_open_kind {
  FRAME_OPEN_INBOUND = 1,  /* agent -> developer: a cluster client's connection */
  FRAME_OPEN_OUTBOUND = 2, /* developer -> agent: dial target_host:port in the cluster */
};

enum frame_welcome_status {
  FRAME_WELCOME_OK = 0,
  FRAME_WELCOME_BAD_VERSION = 1,
  FRAME_WELCOME_KEY_MISMATCH = 2, /* HELLO key differs from the certificate subject */
  FRAME_WELCOME_BAD_KEY = 3,      /* not a DNS label */
  FRAME_WELCOME_CONFLICT = 4,     /* exclusive mode held by someone else, etc. */
};

enum frame_reset_code {
  FRAME_RESET_CANCEL = 1,       /* the sender's endpoint went away or gave up */
  FRAME_RESET_PROTOCOL = 2,     /* malformed frame or state violation */
  FRAME_RESET_FLOW_CONTROL = 3, /* peer sent past its window */
  FRAME_RESET_REFUSED = 4,      /* dial failed: connection refused / no route / DNS */
  FRAME_RESET_TIMEOUT = 5,      /* dial timed out */
  FRAME_RESET_INTERNAL = 6,     /* out of memory, too many streams, ... */
  FRAME_RESET_TUNNEL_LOST = 7,  /* local only: the tunnel under the stream died */
  FRAME_RESET_LEAVE = 8,        /* GOAWAY only: the developer is leaving for good */
};

struct frame_header {
  uint32_t length; /* payload length, <= FRAME_MAX_PAYLOAD */
  uint8_t type;
  uint8_t flags;
  uint32_t stream; /* 0 = the connection itself */
};

struct frame_hello {
  uint8_t version;
  uint8_t flags;          /* bit 0: exclusive (take all traffic); bit 1: force */
  uint32_t window;        /* initial per-stream window the sender grants, bytes */
  char key[FRAME_KEY_MAX + 1];
  char label[256];        /* who: "alice@laptop pid 4242"; informative */
};
#define FRAME_HELLO_EXCLUSIVE 0x01
/* Take the key over even if another identity holds it (kbridge connect
 * --force): the agent logs it and sends GOAWAY to the other holder's tunnels. */
#define FRAME_HELLO_FORCE 0x02

struct frame_welcome {
  uint8_t version;
  uint8_t status;   /* enum frame_welcome_status */
  uint32_t window;  /* initial per-stream window the agent grants */
  char message[512];
};

struct frame_open {
  uint8_t kind;          /* enum frame_open_kind */
  uint16_t port;         /* inbound: service port hit; outbound: target port */
  char peer[64];         /* inbound: cluster client "ip:port"; outbound: local app's */
  char target_host[256]; /* outbound: host to dial; inbound: "" */
};

struct frame_reason {  /* RESET and GOAWAY */
  uint32_t code;
  char text[512];
};

/* Header: decode exactly FRAME_HEADER_LEN bytes. Returns 0, or -1 when length
 * exceeds FRAME_MAX_PAYLOAD. */
int frame_header_decode(const uint8_t *buf, struct frame_header *out);
void frame_header_encode(uint8_t *buf, const struct frame_header *h);

/* Payload decoders: p/n is exactly the payload. 0 on success, -1 if malformed
 * (short, over-long strings, bad kind, a key that is not a DNS label, ...). */
int frame_hello_decode(const uint8_t *p, size_t n, struct frame_hello *out);
int frame_welcome_decode(const uint8_t *p, size_t n, struct frame_welcome *out);
int frame_open_decode(const uint8_t *p, size_t n, struct frame_open *out);
int frame_reason_decode(const uint8_t *p, size_t n, struct frame_reason *out);
int frame_window_decode(const uint8_t *p, size_t n, uint32_t *increment); /* increment > 0 */

/* Encoders append one whole frame (header + payload) to out. Return 0 or -1 on
 * allocation failure / string too long. */
int frame_put_hello(struct evbuffer *out, const struct frame_hello *h);
int frame_put_welcome(struct evbuffer *out, const struct frame_welcome *w);
int frame_put_open(struct evbuffer *out, uint32_t stream, const struct frame_open *o);
int frame_put_data(struct evbuffer *out, uint32_t stream, const void *data, size_t len);
/* Moves len bytes from src into a DATA frame without copying when it can. */
int frame_put_data_buffer(struct evbuffer *out, uint32_t stream, struct evbuffer *src, size_t len);
int frame_put_shutdown(struct evbuffer *out, uint32_t stream);
int frame_put_reset(struct evbuffer *out, uint32_t stream, uint32_t code, const char *reason);
int frame_put_window(struct evbuffer *out, uint32_t stream, uint32_t increment);
int frame_put_ping(struct evbuffer *out, uint8_t flags, const uint8_t opaque[8]);
int frame_put_goaway(struct evbuffer *out, uint32_t code, const char *reason);

const char *frame_type_name(uint8_t type);
const char *frame_reset_name(uint32_t code);
/* Does a peer's GOAWAY with this code end the tunnel without an error, i.e. the
 * sender left on purpose? LEAVE, CANCEL (what CLIs before LEAVE sent when
 * stopping, and a CLI moving to another agent pod) and codes this version does
 * not know (treated like CANCEL, docs/protocol.md section 10) do; the error
 * codes (PROTOCOL, FLOW_CONTROL, REFUSED, TIMEOUT, INTERNAL, TUNNEL_LOST) do
 * not. The agent's lease tells a clean leave from a lost tunnel with it. */
int frame_goaway_is_leave(uint32_t code);

#endif
