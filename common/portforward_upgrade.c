/* portforward_upgrade.c: the WebSocket upgrade of a pod port-forward: the
 * request (GET .../portforward with Sec-WebSocket-Key and the subprotocol)
 * and its answer read with llhttp. A 101 is checked (Upgrade, Connection,
 * Sec-WebSocket-Accept, subprotocol) before the connection becomes a carrier;
 * anything else is read to its end so the Kubernetes Status message in the
 * body can be shown. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "base64.h"
#include "portforward_internal.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define BODY_MAX 65536       /* largest error body we keep (the rest is read and dropped) */

/* --- llhttp callbacks for the answer --- */

/* Append at[0..len) to the string dst (cap bytes, *used of them taken),
 * dropping what does not fit. */
static void take(char *dst, size_t cap, size_t *used, const char *at, size_t len) {
  size_t n = cap - 1 - *used;
  if (n > len) n = len;
  memcpy(dst + *used, at, n);
  *used += n;
  dst[*used] = '\0';
}

static int on_status(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  take(d->reason, sizeof(d->reason), &d->reason_len, at, len);
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  take(d->hfield, sizeof(d->hfield), &d->hfield_len, at, len);
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  take(d->hvalue, sizeof(d->hvalue), &d->hvalue_len, at, len);
  return 0;
}

/* Copy v into dst, truncated to dstlen - 1 bytes. */
static void keep(char *dst, size_t dstlen, const char *v) {
  size_t n = strlen(v);
  if (n >= dstlen) n = dstlen - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static int on_header_value_complete(llhttp_t *p) {
  struct pf_connecting *d = p->data;
  if (strcasecmp(d->hfield, "upgrade") == 0) {
    keep(d->upgrade, sizeof(d->upgrade), d->hvalue);
  } else if (strcasecmp(d->hfield, "connection") == 0) {
    keep(d->connection, sizeof(d->connection), d->hvalue);
  } else if (strcasecmp(d->hfield, "sec-websocket-accept") == 0) {
    keep(d->accept, sizeof(d->accept), d->hvalue);
  } else if (strcasecmp(d->hfield, "sec-websocket-protocol") == 0) {
    keep(d->protocol, sizeof(d->protocol), d->hvalue);
    d->have_protocol = 1;
  }
  d->hfield_len = d->hvalue_len = 0;
  d->hfield[0] = d->hvalue[0] = '\0';
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  struct pf_connecting *d = p->data;
  size_t n = BODY_MAX - d->body_len;
  if (n > len) n = len;
  if (n == 0) return 0;
  if (!d->body && !(d->body = malloc(BODY_MAX + 1))) return -1;
  memcpy(d->body + d->body_len, at, n);
  d->body_len += n;
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  struct pf_connecting *d = p->data;
  d->body_done = 1;
  return HPE_PAUSED;
}

static const llhttp_settings_t answer_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Is `token` one of the comma-separated tokens of list (case-insensitive)? */
static int has_token(const char *list, const char *token) {
  size_t tl = strlen(token);
  const char *s = list;
  while (*s) {
    while (*s == ' ' || *s == '\t' || *s == ',') s++;
    const char *e = s;
    while (*e && *e != ',') e++;
    const char *t = e;
    while (t > s && (t[-1] == ' ' || t[-1] == '\t')) t--;
    if ((size_t)(t - s) == tl && strncasecmp(s, token, tl) == 0) return 1;
    s = e;
  }
  return 0;
}

/* The answer was not 101: make the user's error from the Status in its body. */
void pf_fail_http(struct pf_connecting *d) {
  char snippet[320];
  const char *msg = NULL;
  cJSON *j = NULL;
  if (d->body_len) {
    d->body[d->body_len] = '\0';
    j = cJSON_Parse(d->body);
    cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "message") : NULL;
    if (cJSON_IsString(m) && m->valuestring[0]) msg = m->valuestring;
    if (!msg) { /* not a Status: show the start of the body, one line */
      size_t n = 0;
      for (size_t i = 0; i < d->body_len && n < sizeof(snippet) - 4; i++) {
        unsigned char ch = (unsigned char)d->body[i];
        if (ch < 0x20 || ch == 0x7f) ch = ' ';
        if (ch == ' ' && (n == 0 || snippet[n - 1] == ' ')) continue;
        snippet[n++] = (char)ch;
      }
      if (n == sizeof(snippet) - 4) memcpy(snippet + n, "...", 3), n += 3;
      snippet[n] = '\0';
      if (n) msg = snippet;
    }
  }
  const char *hint = "";
  if (d->status >= 200 && d->status < 300)
    hint = " (a WebSocket upgrade was expected: is this really the API server?)";
  pf_dial_fail(d, d->status, "HTTP %d%s%s%s%s%s", d->status, d->reason[0] ? " " : "", d->reason,
            msg ? ": " : "", msg ? msg : "", hint);
  cJSON_Delete(j);
}

/* Feed what is in api's input to the parser of a non-101 answer's body. */
static void read_body(struct pf_connecting *d) {
  struct evbuffer *in = bufferevent_get_input(d->api);
  while (!d->body_done && evbuffer_get_length(in) > 0) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    enum llhttp_errno e = llhttp_execute(&d->parser, v.iov_base, v.iov_len);
    evbuffer_drain(in, v.iov_len);
    if (e != HPE_OK && e != HPE_PAUSED) {
      d->body_done = 1; /* a broken body: report what we have */
      break;
    }
  }
  if (d->body_done) pf_fail_http(d);
}

void pf_dial_read(struct bufferevent *api, void *arg) {
  struct pf_connecting *d = arg;
  struct evbuffer *in = bufferevent_get_input(api);
  if (d->state == DIAL_BODY) {
    read_body(d);
    return;
  }
  if (d->state != DIAL_HEAD) return;
  struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
  if (end.pos < 0) {
    if (evbuffer_get_length(in) > HEAD_MAX)
      pf_dial_fail(d, 0, "the API server's answer head is longer than %d bytes", HEAD_MAX);
    return;
  }
  size_t hl = (size_t)end.pos + 4;
  if (hl > HEAD_MAX) {
    pf_dial_fail(d, 0, "the API server's answer head is longer than %d bytes", HEAD_MAX);
    return;
  }
  const char *head = (const char *)evbuffer_pullup(in, (ev_ssize_t)hl);
  llhttp_init(&d->parser, HTTP_RESPONSE, &answer_settings);
  d->parser.data = d;
  enum llhttp_errno e = llhttp_execute(&d->parser, head, hl);
  evbuffer_drain(in, hl);
  if (e != HPE_OK && e != HPE_PAUSED_UPGRADE && e != HPE_PAUSED) {
    pf_dial_fail(d, 0, "the API server's answer is not valid HTTP: %s",
              llhttp_get_error_reason(&d->parser));
    return;
  }
  d->status = d->parser.status_code;
  if (d->status != 101) {
    d->state = DIAL_BODY;
    if (d->body_done) pf_fail_http(d); /* no body at all */
    else read_body(d);
    return;
  }
  char want[32];
  pf_ws_accept(d->key, want, sizeof(want));
  if (strcasecmp(d->upgrade, "websocket") != 0 || !has_token(d->connection, "upgrade"))
    pf_dial_fail(d, 101, "the API server switched protocols, but not to WebSocket (Upgrade: %s, "
              "Connection: %s)", d->upgrade, d->connection);
  else if (strcmp(d->accept, want) != 0)
    pf_dial_fail(d, 101, "the API server's Sec-WebSocket-Accept \"%s\" does not match our key "
              "(expected \"%s\")", d->accept, want);
  else if (!d->have_protocol)
    pf_dial_fail(d, 101, "the API server chose no WebSocket subprotocol; " PF_SUBPROTOCOL
              " is needed (Kubernetes too old?)");
  else if (strcmp(d->protocol, PF_SUBPROTOCOL) != 0)
    pf_dial_fail(d, 101, "the API server chose subprotocol \"%s\" instead of " PF_SUBPROTOCOL,
              d->protocol);
  else
    pf_become_carrier(d);
}

void pf_send_upgrade(struct pf_connecting *d) {
  uint8_t raw[16];
  if (RAND_bytes(raw, sizeof(raw)) != 1) {
    pf_dial_fail(d, 0, "no random bytes for the WebSocket key");
    return;
  }
  base64_encode_to(d->key, raw, sizeof(raw));
  struct evbuffer *out = bufferevent_get_output(d->api);
  int v6 = strchr(d->host, ':') != NULL;
  evbuffer_add_printf(out,
                      "GET %s/api/v1/namespaces/%s/pods/%s/portforward?ports=%u HTTP/1.1\r\n"
                      "Host: %s%s%s:%u\r\n"
                      "User-Agent: kbridge/" KBRIDGE_VERSION "\r\n"
                      "Upgrade: websocket\r\n"
                      "Connection: Upgrade\r\n"
                      "Sec-WebSocket-Key: %s\r\n"
                      "Sec-WebSocket-Version: 13\r\n"
                      "Sec-WebSocket-Protocol: " PF_SUBPROTOCOL "\r\n",
                      d->prefix, d->ns, d->pod, (unsigned)d->port, v6 ? "[" : "", d->host,
                      v6 ? "]" : "", (unsigned)d->hport, d->key);
  if (d->token) evbuffer_add_printf(out, "Authorization: Bearer %s\r\n", d->token);
  evbuffer_add(out, "\r\n", 2);
  d->state = DIAL_HEAD;
}

int pf_ws_accept(const char *key, char *out, size_t outlen) {
  unsigned char md[20];
  char buf[128];
  if (outlen < 29) return -1;
  int n = snprintf(buf, sizeof(buf), "%s" WS_GUID, key);
  if (n < 0 || (size_t)n >= sizeof(buf)) n = 0; /* a key that long cannot match anyway */
  EVP_Digest(buf, (size_t)n, md, NULL, EVP_sha1(), NULL);
  base64_encode_to(out, md, sizeof(md));
  return 0;
}
