/* hostsfile.h: kbridge's blocks in a hosts file (connect --hosts).
 *
 * A session's names live in a block of their own:
 *
 *   # kbridge begin shop/api pid 12345 (do not edit: kbridge connect --hosts)
 *   127.1.0.3 store store.shop store.shop.svc store.shop.svc.cluster.local
 *   # kbridge end shop/api pid 12345
 *
 * Everything outside kbridge's blocks is kept byte for byte, line endings
 * included; a block whose end line is missing is not ours to touch. Several
 * sessions each have their own block (its id: NS/SVC and the pid), so a second
 * session adds a block rather than replacing the first's; a block whose pid is
 * gone is removed by the next session that writes the file and by `kbridge
 * restore`. */
#ifndef KB_HOSTSFILE_H
#define KB_HOSTSFILE_H

#include <stddef.h>
#include <sys/types.h>

/* text with the block of (id, pid) replaced by one holding body (complete
 * lines; NULL or "": the block removed), and, when alive is set, the blocks
 * of pids alive() says are gone removed too. New blocks go at the end, with
 * the text's own line ending. Returns a malloc'd string (NULL: out of memory);
 * *changed says whether it differs from text. */
char *hosts_edit(const char *text, const char *id, pid_t pid, const char *body,
                 int (*alive)(pid_t), int *changed);

/* The same on the file path, under an exclusive lock shared by every kbridge
 * on this machine: read, edit, write back (a new file renamed over it when
 * possible, keeping its mode and owner; rewritten in place when it is a mount
 * point such as a container's /etc/hosts). 0, or -1 with err. */
int hosts_update(const char *path, const char *id, pid_t pid, const char *body,
                 int (*alive)(pid_t), char *err, size_t errlen);

#endif
