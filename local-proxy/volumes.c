/* volumes.c: a pod's volumes as local files (see volumes.h). */
#include "volumes.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base64.h"

/* ---- paths ---- */

int volumes_path_ok(const char *rel) {
  if (!rel || !*rel || *rel == '/') return 0;
  const char *p = rel;
  while (*p) {
    const char *e = strchr(p, '/');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return 0;
    if (!e) break;
    p = e + 1;
    if (!*p) return 0; /* a trailing '/' */
  }
  return 1;
}

int volumes_mount_path(const char *mount_path, const char *sub_path, const char *file, char *out,
                       size_t len, char *err, size_t errlen) {
  char mp[VOLUMES_PATH_MAX];
  const char *m = mount_path ? mount_path : "";
  while (*m == '/') m++;
  size_t ml = strlen(m);
  while (ml > 0 && m[ml - 1] == '/') ml--;
  if (ml >= sizeof mp) {
    snprintf(err, errlen, "mountPath \"%s\" is too long", mount_path);
    return -1;
  }
  memcpy(mp, m, ml);
  mp[ml] = '\0';
  if (mp[0] && !volumes_path_ok(mp)) {
    snprintf(err, errlen, "mountPath \"%s\" has a \".\" or \"..\" component or an empty one",
             mount_path);
    return -1;
  }
  const char *rest = file ? file : "";
  if (sub_path && *sub_path) {
    if (!volumes_path_ok(sub_path)) {
      snprintf(err, errlen, "subPath \"%s\" is absolute or has a \".\" or \"..\" component",
               sub_path);
      return -1;
    }
    size_t sl = strlen(sub_path);
    if (*rest && strcmp(rest, sub_path) == 0) rest = "";
    else if (*rest && strncmp(rest, sub_path, sl) == 0 && rest[sl] == '/') rest += sl + 1;
    else if (*rest) return 0;
  }
  if (*rest && !volumes_path_ok(rest)) {
    snprintf(err, errlen, "path \"%s\" would leave the volume", rest);
    return -1;
  }
  int n = snprintf(out, len, "%s%s%s", mp, mp[0] && rest[0] ? "/" : "", rest);
  if (n < 0 || (size_t)n >= len) {
    snprintf(err, errlen, "path %s/%s is too long", mp, rest);
    return -1;
  }
  return 1;
}

/* ---- writing without following links ---- */

/* Open (making it when absent) the directory of every component of rel but
 * the last when last is set (the file's name then goes to *last), or of all
 * of them. A new fd, or -1 with err. */
static int open_dirs(int rootfd, const char *rel, const char **last, char *err, size_t errlen) {
  char buf[VOLUMES_PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", rel) >= (int)sizeof buf) {
    snprintf(err, errlen, "%s: path too long", rel);
    return -1;
  }
  int fd = dup(rootfd);
  if (fd < 0) {
    snprintf(err, errlen, "%s: %s", rel, strerror(errno));
    return -1;
  }
  char *p = buf;
  for (;;) {
    char *slash = strchr(p, '/');
    if (!slash && last) {
      *last = rel + (p - buf);
      return fd;
    }
    if (slash) *slash = '\0';
    int next = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0 && errno == ENOENT) {
      if (mkdirat(fd, p, VOLUMES_DIR_MODE) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot make directory %s: %s", rel, p, strerror(errno));
        close(fd);
        return -1;
      }
      next = openat(fd, p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (next < 0) {
      int e = errno;
      snprintf(err, errlen, "%s: %s: %s", rel, p,
               e == ELOOP || e == ENOTDIR ? "a symbolic link or a file is in the way (not followed)"
                                          : strerror(e));
      close(fd);
      return -1;
    }
    close(fd);
    fd = next;
    if (!slash) return fd;
    p = slash + 1;
  }
}

int volumes_mkdir(int rootfd, const char *rel, char *err, size_t errlen) {
  if (!*rel) return 0; /* the root itself */
  if (!volumes_path_ok(rel)) {
    snprintf(err, errlen, "%s: not a path below the volumes directory", rel);
    return -1;
  }
  int fd = open_dirs(rootfd, rel, NULL, err, errlen);
  if (fd < 0) return -1;
  close(fd);
  return 0;
}

int volumes_write(int rootfd, const char *rel, const void *data, size_t len, int mode, char *err,
                  size_t errlen) {
  static unsigned counter;
  if (!volumes_path_ok(rel)) {
    snprintf(err, errlen, "%s: not a path below the volumes directory", rel);
    return -1;
  }
  const char *name = NULL;
  int dfd = open_dirs(rootfd, rel, &name, err, errlen);
  if (dfd < 0) return -1;
  char tmp[64];
  snprintf(tmp, sizeof tmp, ".kbridge-tmp-%ld-%u", (long)getpid(), counter++);
  int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(err, errlen, "%s: %s", rel, strerror(errno));
    close(dfd);
    return -1;
  }
  const char *p = data;
  size_t left = len;
  int ok = 1;
  while (left > 0 && ok) {
    ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) ok = 0;
    else {
      p += w;
      left -= (size_t)w;
    }
  }
  int e = errno;
  if (ok && fchmod(fd, (mode_t)(mode & 0777)) < 0) {
    ok = 0;
    e = errno;
  }
  if (close(fd) < 0 && ok) {
    ok = 0;
    e = errno;
  }
  if (ok && renameat(dfd, tmp, dfd, name) < 0) {
    ok = 0;
    e = errno;
  }
  if (!ok) {
    unlinkat(dfd, tmp, 0);
    snprintf(err, errlen, "%s: %s", rel, strerror(e));
  }
  close(dfd);
  return ok ? 0 : -1;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

int volumes_remove_tree(const char *dir) {
  return nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- rendering ---- */

static void note(const struct volumes_source *s, const char *vol, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void note(const struct volumes_source *s, const char *vol, const char *fmt, ...) {
  char msg[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (s->note) s->note(s->arg, vol, msg);
}

/* Append a file (data copied); path checked. 0, or -1 (noted). */
static int add_file(struct volumes_files *out, const struct volumes_source *s, const char *vol,
                    const char *what, const char *path, const char *data, size_t len, int mode) {
  if (!path || !volumes_path_ok(path) || strlen(path) >= VOLUMES_PATH_MAX) {
    note(s, vol, "%s: the path \"%s\" would leave the volume (absolute, empty, or with a \".\" or "
         "\"..\" component); not written", what, path ? path : "");
    return -1;
  }
  if (out->n == out->cap) {
    size_t cap = out->cap ? out->cap * 2 : 8;
    struct volumes_file *v = realloc(out->v, cap * sizeof *v);
    if (!v) return -1;
    out->v = v;
    out->cap = cap;
  }
  struct volumes_file *f = &out->v[out->n];
  f->data = malloc(len + 1);
  if (!f->data) return -1;
  memcpy(f->data, data, len);
  f->data[len] = '\0';
  f->len = len;
  f->mode = mode & 0777;
  snprintf(f->path, sizeof f->path, "%s", path);
  out->n++;
  return 0;
}

static int mode_of(const cJSON *o, const char *key, int dflt) {
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(m) && m->valueint >= 0 && m->valueint <= 0777 ? m->valueint : dflt;
}

static const char *str_of(const cJSON *o, const char *key) {
  return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, key));
}

/* The value of key in a ConfigMap (data, then binaryData) or a Secret
 * (data, base64): malloc'd with *len, or NULL if absent or undecodable. */
static char *kv_value(const cJSON *obj, int secret, const char *key, size_t *len) {
  const char *v = str_of(cJSON_GetObjectItemCaseSensitive(obj, "data"), key);
  if (v && !secret) {
    *len = strlen(v);
    return strdup(v);
  }
  if (!v && !secret) v = str_of(cJSON_GetObjectItemCaseSensitive(obj, "binaryData"), key);
  return v ? base64_decode(v, len) : NULL;
}

/* A configMap or secret volume, or such a projected source. */
static int render_kv(const char *vol, const cJSON *src, int secret, int dflt_mode,
                     const struct volumes_source *s, struct volumes_files *out) {
  const char *kind = secret ? "secret" : "configMap";
  const char *name = str_of(src, secret && str_of(src, "secretName") ? "secretName" : "name");
  int optional = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(src, "optional"));
  if (!name) {
    note(s, vol, "%s without a name; not written", kind);
    return -1;
  }
  char why[600] = "";
  int missing = 0;
  cJSON *obj = s->get(s->arg, secret ? "secrets" : "configmaps", name, &missing, why, sizeof why);
  if (!obj) {
    if (missing && optional) return 0;
    note(s, vol, "%s \"%s\": %s; not written", kind, name, why[0] ? why : "not found");
    return -1;
  }
  int rc = 0;
  const cJSON *items = cJSON_GetObjectItemCaseSensitive(src, "items");
  char what[700];
  if (cJSON_GetArraySize(items) > 0) {
    const cJSON *it;
    cJSON_ArrayForEach(it, items) {
      const char *key = str_of(it, "key"), *path = str_of(it, "path");
      snprintf(what, sizeof what, "key \"%s\" of %s \"%s\"", key ? key : "", kind, name);
      size_t len = 0;
      char *val = key ? kv_value(obj, secret, key, &len) : NULL;
      if (!val) {
        if (!optional) {
          note(s, vol, "%s: no such key; not written", what);
          rc = -1;
        }
        continue;
      }
      int mode = mode_of(it, "mode", dflt_mode);
      if (add_file(out, s, vol, what, path, val, len, secret ? mode & VOLUMES_SECRET_MAX : mode) < 0)
        rc = -1;
      free(val);
    }
  } else {
    const char *sections[] = {"data", secret ? NULL : "binaryData"};
    for (int i = 0; i < 2; i++) {
      const cJSON *kv;
      if (!sections[i]) continue;
      cJSON_ArrayForEach(kv, cJSON_GetObjectItemCaseSensitive(obj, sections[i])) {
        size_t len = 0;
        char *val = kv_value(obj, secret, kv->string, &len);
        snprintf(what, sizeof what, "key \"%s\" of %s \"%s\"", kv->string, kind, name);
        if (!val) {
          note(s, vol, "%s: not base64; not written", what);
          rc = -1;
          continue;
        }
        if (add_file(out, s, vol, what, kv->string, val, len,
                     secret ? dflt_mode & VOLUMES_SECRET_MAX : dflt_mode) < 0)
          rc = -1;
        free(val);
      }
    }
  }
  cJSON_Delete(obj);
  return rc;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

char *volumes_format_map(const cJSON *map) {
  int n = cJSON_GetArraySize(map), k = 0;
  const char **keys = calloc((size_t)n + 1, sizeof *keys);
  size_t cap = 64, len = 0;
  char *out = malloc(cap);
  if (!keys || !out) {
    free(keys);
    free(out);
    return NULL;
  }
  const cJSON *it;
  cJSON_ArrayForEach(it, map) if (it->string && k < n) keys[k++] = it->string;
  qsort(keys, (size_t)k, sizeof *keys, cmp_str);
  for (int i = 0; i < k; i++) {
    const char *v = str_of(map, keys[i]);
    if (!v) v = "";
    /* Worst case per byte: \xNN. */
    size_t need = len + strlen(keys[i]) + 4 * strlen(v) + 8;
    if (need > cap) {
      while (cap < need) cap *= 2;
      char *o = realloc(out, cap);
      if (!o) {
        free(out);
        free(keys);
        return NULL;
      }
      out = o;
    }
    len += (size_t)sprintf(out + len, "%s%s=\"", i ? "\n" : "", keys[i]);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
      char e = 0;
      switch (*p) {
      case '\a': e = 'a'; break;
      case '\b': e = 'b'; break;
      case '\f': e = 'f'; break;
      case '\n': e = 'n'; break;
      case '\r': e = 'r'; break;
      case '\t': e = 't'; break;
      case '\v': e = 'v'; break;
      case '"': e = '"'; break;
      case '\\': e = '\\'; break;
      }
      if (e) {
        out[len++] = '\\';
        out[len++] = e;
      } else if (*p < 0x20 || *p == 0x7f) {
        len += (size_t)sprintf(out + len, "\\x%02x", *p);
      } else {
        out[len++] = (char)*p;
      }
    }
    out[len++] = '"';
  }
  out[len] = '\0';
  free(keys);
  return out;
}

/* metadata.labels['key'] -> map "labels", key "key"; 0 if not that form. */
static int map_field(const char *fp, char *map, size_t mlen, char *key, size_t klen) {
  const char *names[] = {"labels", "annotations"};
  for (int i = 0; i < 2; i++) {
    char pre[40];
    snprintf(pre, sizeof pre, "metadata.%s['", names[i]);
    size_t pl = strlen(pre), fl = strlen(fp);
    if (strncmp(fp, pre, pl) == 0 && fl > pl + 2 && strcmp(fp + fl - 2, "']") == 0 &&
        fl - pl - 2 < klen) {
      snprintf(map, mlen, "%s", names[i]);
      memcpy(key, fp + pl, fl - pl - 2);
      key[fl - pl - 2] = '\0';
      return 1;
    }
  }
  return 0;
}

static int render_downward(const char *vol, const cJSON *items, int dflt_mode,
                           const struct volumes_source *s, struct volumes_files *out) {
  const cJSON *it;
  int rc = 0;
  cJSON_ArrayForEach(it, items) {
    const char *path = str_of(it, "path");
    const char *fp = str_of(cJSON_GetObjectItemCaseSensitive(it, "fieldRef"), "fieldPath");
    char what[300], map[20], key[256];
    snprintf(what, sizeof what, "downward API item \"%s\"", path ? path : "");
    char *val = NULL;
    if (!fp) {
      note(s, vol, "%s: resource fields (limits, requests) are the pod's, not known here; not "
           "written", what);
      continue;
    }
    if (strcmp(fp, "metadata.name") == 0) {
      val = strdup(s->pod_name ? s->pod_name : "");
    } else if (strcmp(fp, "metadata.namespace") == 0) {
      val = strdup(s->ns ? s->ns : "");
    } else if (strcmp(fp, "metadata.labels") == 0 || strcmp(fp, "metadata.annotations") == 0) {
      if (s->pod_meta)
        val = volumes_format_map(cJSON_GetObjectItemCaseSensitive(s->pod_meta, fp + 9));
    } else if (map_field(fp, map, sizeof map, key, sizeof key)) {
      if (s->pod_meta) {
        const char *v = str_of(cJSON_GetObjectItemCaseSensitive(s->pod_meta, map), key);
        val = strdup(v ? v : "");
      }
    } else {
      note(s, vol, "%s: %s has no local value; not written", what, fp);
      continue;
    }
    if (!val) {
      note(s, vol, "%s: no pod of the workload to read %s from; not written", what, fp);
      rc = -1;
      continue;
    }
    if (add_file(out, s, vol, what, path, val, strlen(val), mode_of(it, "mode", dflt_mode)) < 0)
      rc = -1;
    free(val);
  }
  return rc;
}

enum volumes_kind volumes_kind_of(const cJSON *v, const char **type, const char **why) {
  static const char *const files[] = {"configMap", "secret", "downwardAPI", "projected"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    if (cJSON_GetObjectItemCaseSensitive(v, files[i])) return VOLUMES_FILES;
  if (cJSON_GetObjectItemCaseSensitive(v, "emptyDir")) return VOLUMES_EMPTY;
  static const struct {
    const char *type, *why;
  } none[] = {
      {"persistentVolumeClaim", "its data lives on the cluster's storage, attached to a node: "
                                "kbridge does not copy it"},
      {"hostPath", "a directory of the node the pod runs on, not of this machine"},
      {"ephemeral", "a volume provisioned for the pod on the cluster's storage"},
      {"csi", "a CSI driver's volume, mounted by the node"},
      {"nfs", "a network file system mounted by the node (mount it yourself if you can reach "
              "it)"},
  };
  for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
    if (cJSON_GetObjectItemCaseSensitive(v, none[i].type)) {
      *type = none[i].type;
      *why = none[i].why;
      return VOLUMES_NONE;
    }
  const cJSON *it;
  *type = "unknown";
  cJSON_ArrayForEach(it, v) if (it->string && strcmp(it->string, "name") != 0) *type = it->string;
  *why = "a volume the node provides; kbridge materialises only configMap, secret, downwardAPI, "
         "projected and emptyDir volumes";
  return VOLUMES_NONE;
}

int volumes_render(const cJSON *v, const struct volumes_source *s, struct volumes_files *out) {
  const char *vol = str_of(v, "name");
  const cJSON *src;
  int rc = 0;
  if (!vol) vol = "";
  if ((src = cJSON_GetObjectItemCaseSensitive(v, "configMap")))
    return render_kv(vol, src, 0, mode_of(src, "defaultMode", VOLUMES_DEFAULT_MODE), s, out);
  if ((src = cJSON_GetObjectItemCaseSensitive(v, "secret")))
    return render_kv(vol, src, 1, mode_of(src, "defaultMode", VOLUMES_DEFAULT_MODE), s, out);
  if ((src = cJSON_GetObjectItemCaseSensitive(v, "downwardAPI")))
    return render_downward(vol, cJSON_GetObjectItemCaseSensitive(src, "items"),
                           mode_of(src, "defaultMode", VOLUMES_DEFAULT_MODE), s, out);
  if (!(src = cJSON_GetObjectItemCaseSensitive(v, "projected"))) return -1;
  int mode = mode_of(src, "defaultMode", VOLUMES_DEFAULT_MODE);
  const cJSON *ps;
  cJSON_ArrayForEach(ps, cJSON_GetObjectItemCaseSensitive(src, "sources")) {
    const cJSON *x;
    if ((x = cJSON_GetObjectItemCaseSensitive(ps, "configMap"))) {
      rc |= render_kv(vol, x, 0, mode, s, out);
    } else if ((x = cJSON_GetObjectItemCaseSensitive(ps, "secret"))) {
      rc |= render_kv(vol, x, 1, mode, s, out);
    } else if ((x = cJSON_GetObjectItemCaseSensitive(ps, "downwardAPI"))) {
      rc |= render_downward(vol, cJSON_GetObjectItemCaseSensitive(x, "items"), mode, s, out);
    } else if ((x = cJSON_GetObjectItemCaseSensitive(ps, "serviceAccountToken"))) {
      const char *path = str_of(x, "path");
      char why[800] = "", what[300];
      snprintf(what, sizeof what, "service account token \"%s\"", path ? path : "");
      if (!path || !volumes_path_ok(path)) {
        add_file(out, s, vol, what, path, "", 0, 0); /* notes the path */
        rc = -1;
        continue;
      }
      char *tok = s->token ? s->token(s->arg, vol, x, why, sizeof why) : NULL;
      if (!tok) {
        note(s, vol, "%s: %s; not written", what, why[0] ? why : "no token");
        rc = -1;
        continue;
      }
      rc |= add_file(out, s, vol, what, path, tok, strlen(tok), mode & VOLUMES_SECRET_MAX);
      free(tok);
    } else {
      note(s, vol, "a projected source of a kind kbridge does not know; not written");
    }
  }
  return rc;
}

void volumes_files_free(struct volumes_files *f) {
  for (size_t i = 0; i < f->n; i++) free(f->v[i].data);
  free(f->v);
  memset(f, 0, sizeof *f);
}
