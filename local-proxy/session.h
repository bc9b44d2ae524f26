/* session.h: the record a running `kbridge connect` leaves on this machine, so
 * that `kbridge status` can list it and `kbridge disconnect` can end it.
 *
 * One JSON file per session in $XDG_RUNTIME_DIR/kbridge/sessions/ (else
 * ~/.cache/kbridge/sessions/), named NS.SVC.KEY.json:
 *   {"pid":123,"namespace":"shop","service":"api","key":"alice","local_port":5000,
 *    "since":"2026-11-26T07:00:00Z"}
 * Files whose pid is gone are stale and removed when listed.
 *
 * A `connect --hosts` session also leaves hosts.PID there, holding the path of
 * the hosts file its block is in, so that `kbridge restore` finds that file
 * after a kill -9 even when it was not /etc/hosts. */
#ifndef KB_SESSION_H
#define KB_SESSION_H

#include <stddef.h>
#include <sys/types.h>

/* The sessions directory into out, created (0700) if missing. 0 or -1. */
int session_dir(char *out, size_t len);

/* Write this process's session file; its path into path (for unlink at the
 * end). 0, or -1 (logged; a session without a file still works). */
int session_write(const char *ns, const char *svc, const char *key, int local_port, char *path,
                  size_t pathlen);

/* Is pid running? A zombie (exited, not yet reaped by its parent) is not. */
int session_pid_running(pid_t pid);

struct cJSON;
/* Call fn for every live session file (s: its JSON; stale ones are removed).
 * Returns how many. */
typedef void (*session_fn)(const struct cJSON *s, const char *path, void *arg);
int session_each(session_fn fn, void *arg);

/* connect --hosts: record (before the block is written) or drop (after it is
 * removed) this process's hosts.PID. 0 or -1 (logged). */
int session_hosts_record(const char *hosts_file);
void session_hosts_unrecord(void);

/* For every hosts.PID whose pid is gone: fn(hosts file path, arg); the record
 * is removed when fn returns 0. Returns how many records were seen. */
int session_hosts_dead(int (*fn)(const char *hosts_file, void *arg), void *arg);

#endif
