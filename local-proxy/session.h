/* session.h: the record a running `kbridge connect` leaves on this machine, so
 * that `kbridge status` can list it and `kbridge disconnect` can end it.
 *
 * One JSON file per session in $XDG_RUNTIME_DIR/kbridge/sessions/ (else
 * ~/.cache/kbridge/sessions/), named NS.SVC.KEY.json:
 *   {"pid":123,"namespace":"shop","service":"api","key":"alice","local_port":5000,
 *    "since":"2026-11-26T07:00:00Z"}
 * Files whose pid is gone are stale and removed when listed. */
#ifndef KB_SESSION_H
#define KB_SESSION_H

#include <stddef.h>

/* The sessions directory into out, created (0700) if missing. 0 or -1. */
int session_dir(char *out, size_t len);

/* Write this process's session file; its path into path (for unlink at the
 * end). 0, or -1 (logged; a session without a file still works). */
int session_write(const char *ns, const char *svc, const char *key, int local_port, char *path,
                  size_t pathlen);

#endif
