/* log.c: see log.h. */
#include "log.h"

#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum log_level log_level_current = LOGL_INFO;
static const char *log_prog = "kbridge";

static void libevent_log_cb(int severity, const char *msg) {
  enum log_level l = severity >= EVENT_LOG_ERR    ? LOGL_ERROR
                     : severity == EVENT_LOG_WARN ? LOGL_WARN
                     : severity == EVENT_LOG_MSG  ? LOGL_INFO
                                                  : LOGL_DEBUG;
  log_at(l, "libevent: %s", msg);
}

void log_init(const char *progname, enum log_level level) {
  log_prog = progname;
  log_level_current = level;
  event_set_log_callback(libevent_log_cb);
}

int log_level_parse(const char *s, enum log_level *out) {
  static const char *const names[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++) {
    if (strcmp(s, names[i]) == 0) {
      *out = (enum log_level)i;
      return 0;
    }
  }
  return -1;
}

void log_write(enum log_level level, const char *fmt, ...) {
  static const char *const tags[] = {"error", "warn", "info", "debug"};
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %s %s: ", tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, log_prog, tags[level]);
  va_list ap;
  va_start(ap, fmt);
  if (n > 0 && (size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
  va_end(ap);
  /* One fputs per line keeps lines whole when several processes share stderr. */
  size_t len = strlen(line);
  if (len + 1 < sizeof line) {
    line[len] = '\n';
    line[len + 1] = '\0';
  }
  fputs(line, stderr);
}
