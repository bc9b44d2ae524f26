/* log.h: leveled, printf-checked logging to stderr.
 *
 * The level is tested before any formatting happens, so a log_debug() in a hot
 * path costs one comparison when debug logging is off. libevent's own messages
 * are routed here by log_init(). The level is the only global besides the event
 * base and the config. */
#ifndef KB_LOG_H
#define KB_LOG_H

enum log_level { LOGL_ERROR = 0, LOGL_WARN, LOGL_INFO, LOGL_DEBUG };

extern enum log_level log_level_current;

/* Set the level and the program name printed in each line; route libevent's
 * messages through log_write(). */
void log_init(const char *progname, enum log_level level);

/* Parse "error" / "warn" / "info" / "debug". Returns 0, or -1 if unknown. */
int log_level_parse(const char *s, enum log_level *out);

void log_write(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_at(lvl, ...)                                 \
  do {                                                   \
    if ((lvl) <= log_level_current) log_write((lvl), __VA_ARGS__); \
  } while (0)
#define log_err(...) log_at(LOGL_ERROR, __VA_ARGS__)
#define log_warn(...) log_at(LOGL_WARN, __VA_ARGS__)
#define log_info(...) log_at(LOGL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOGL_DEBUG, __VA_ARGS__)

#endif
