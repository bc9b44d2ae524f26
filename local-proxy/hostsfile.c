/* hostsfile.c: kbridge's blocks in a hosts file (hostsfile.h). */
#include "hostsfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define BEGIN "# kbridge begin "
#define END "# kbridge end "

struct buf {
  char *p;
  size_t len, cap;
  int oom;
};

static void put(struct buf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = (b->cap ? b->cap * 2 : 4096) + n;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

/* The line at s: its length with the line end. */
static size_t line_len(const char *s) {
  const char *nl = strchr(s, '\n');
  return nl ? (size_t)(nl - s) + 1 : strlen(s);
}

/* "ID pid PID" after a marker: id into id (up to the space), pid. 0 or -1. */
static int parse_marker(const char *s, size_t n, char *id, size_t idlen, long *pid) {
  const char *sp = memchr(s, ' ', n);
  if (!sp || (size_t)(sp - s) >= idlen || sp == s) return -1;
  memcpy(id, s, (size_t)(sp - s));
  id[sp - s] = '\0';
  char rest[32];
  size_t rl = n - (size_t)(sp - s);
  if (rl >= sizeof rest) rl = sizeof rest - 1;
  memcpy(rest, sp, rl);
  rest[rl] = '\0';
  char *end = NULL;
  if (strncmp(rest, " pid ", 5) != 0) return -1;
  *pid = strtol(rest + 5, &end, 10);
  return *pid > 0 ? 0 : -1;
}

char *hosts_edit(const char *text, const char *id, pid_t pid, const char *body,
                 int (*alive)(pid_t), int *changed) {
  struct buf b = {0};
  const char *nl = strchr(text, '\n');
  const char *eol = nl && nl > text && nl[-1] == '\r' ? "\r\n" : "\n";
  const char *s = text;
  put(&b, "", 0);
  while (*s) {
    size_t n = line_len(s);
    char bid[256];
    long bpid = 0;
    if (strncmp(s, BEGIN, strlen(BEGIN)) == 0 &&
        parse_marker(s + strlen(BEGIN), n - strlen(BEGIN), bid, sizeof bid, &bpid) == 0) {
      /* its end line, the same id and pid */
      char endline[320];
      snprintf(endline, sizeof endline, END "%s pid %ld", bid, bpid);
      size_t el = strlen(endline);
      const char *e = s + n;
      while (*e && !(strncmp(e, endline, el) == 0 &&
                     (e[el] == '\0' || e[el] == '\n' || e[el] == '\r')))
        e += line_len(e);
      if (*e) {
        const char *after = e + line_len(e);
        int ours = strcmp(bid, id) == 0 && bpid == (long)pid;
        int dead = alive && !alive((pid_t)bpid);
        if (!ours && !dead) {
          put(&b, s, (size_t)(after - s));
        } else if (memmem(s, n, " nonl ", 6) && b.len && b.p[b.len - 1] == '\n') {
          /* the line end kbridge added before the block goes with it */
          b.len -= b.len >= 2 && b.p[b.len - 2] == '\r' ? 2 : 1;
          b.p[b.len] = '\0';
        }
        s = after;
        continue;
      }
    }
    put(&b, s, n);
    s += n;
  }
  if (body && *body) {
    int nonl = b.len && b.p[b.len - 1] != '\n';
    if (nonl) put(&b, eol, strlen(eol));
    char line[400];
    int l = snprintf(line, sizeof line,
                     BEGIN "%s pid %ld%s (do not edit: kbridge connect --hosts)%s", id, (long)pid,
                     nonl ? " nonl" : "", eol);
    put(&b, line, (size_t)l);
    for (const char *p = body; *p;) {
      size_t n = line_len(p);
      size_t content = n && p[n - 1] == '\n' ? n - 1 : n;
      put(&b, p, content);
      put(&b, eol, strlen(eol));
      p += n;
    }
    l = snprintf(line, sizeof line, END "%s pid %ld%s", id, (long)pid, eol);
    put(&b, line, (size_t)l);
  }
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  *changed = strcmp(b.p, text) != 0;
  return b.p;
}

/* The whole file, NUL-terminated (NULL with errno). */
static char *read_all(int fd) {
  struct buf b = {0};
  char chunk[8192];
  ssize_t r;
  put(&b, "", 0);
  while ((r = read(fd, chunk, sizeof chunk)) > 0) put(&b, chunk, (size_t)r);
  if (r < 0 || b.oom || memchr(b.p, '\0', b.len)) {
    free(b.p);
    errno = r < 0 ? errno : EINVAL;
    return NULL;
  }
  return b.p;
}

static int write_all(int fd, const char *s, size_t n) {
  while (n) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Write text as path: a temp file beside it renamed over it (mode and owner
 * kept), or, where it cannot be replaced (a bind-mounted file: EBUSY; EXDEV,
 * EPERM, EACCES on the directory), in place. */
static int write_file(const char *path, const char *text, const struct stat *st, char *err,
                     size_t errlen) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.kbridge-XXXXXX", path);
  /* A new file is ours: only root can give it the owner of the old one. */
  int fd = geteuid() == 0 || st->st_uid == geteuid() ? mkstemp(tmp) : -1;
  if (fd >= 0) {
    int ok = fchmod(fd, st->st_mode & 07777) == 0 && write_all(fd, text, strlen(text)) == 0 &&
             fsync(fd) == 0 && (st->st_uid == geteuid() || fchown(fd, st->st_uid, st->st_gid) == 0);
    close(fd);
    if (ok && rename(tmp, path) == 0) return 0;
    int e = errno;
    unlink(tmp);
    if (ok && e != EBUSY && e != EXDEV && e != EPERM && e != EACCES) {
      snprintf(err, errlen, "%s: %s", path, strerror(e));
      return -1;
    }
  }
  fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0 || write_all(fd, text, strlen(text)) < 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return 0;
}

int hosts_update(const char *path, const char *id, pid_t pid, const char *body,
                 int (*alive)(pid_t), char *err, size_t errlen) {
  /* One lock for every kbridge on this machine, outside the file: the file
   * itself is replaced by rename, and a lock on an old inode guards nothing. */
  int lk = open("/tmp/.kbridge-hosts.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (lk >= 0) fchmod(lk, 0666); /* any user's kbridge locks it (a writable --hosts-file) */
  if (lk < 0) lk = open("/tmp/.kbridge-hosts.lock", O_RDONLY | O_CLOEXEC); /* flock needs no write */
  if (lk < 0 || flock(lk, LOCK_EX) < 0) {
    snprintf(err, errlen, "cannot lock /tmp/.kbridge-hosts.lock: %s", strerror(errno));
    if (lk >= 0) close(lk);
    return -1;
  }
  int rc = -1;
  struct stat st;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  char *text = fd >= 0 && fstat(fd, &st) == 0 ? read_all(fd) : NULL;
  if (fd >= 0) close(fd);
  if (!text) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
  } else {
    int changed = 0;
    char *out = hosts_edit(text, id, pid, body, alive, &changed);
    if (!out)
      snprintf(err, errlen, "out of memory");
    else
      rc = changed ? write_file(path, out, &st, err, errlen) : 0;
    free(out);
  }
  free(text);
  close(lk);
  return rc;
}
