/* volumes.h: a pod's volumes as local files, for `kbridge connect`
 * (connect_volumes.c fetches the objects and reports; this module decides
 * what goes where and writes it).
 *
 * A volume is rendered into a list of files (volumes_render: configMap,
 * secret, downwardAPI, projected; the objects and tokens come through
 * callbacks, so this module makes no API call), each file is placed below the
 * local volumes directory at the container's mountPath (volumes_mount_path,
 * subPath honoured), and written there with volumes_write: atomically (a
 * temporary file renamed over the old one) and never through a symbolic link
 * or a ".." component, so nothing a pod spec, an object's key or a directory
 * planted under the volumes directory says can write outside it. */
#ifndef LOCAL_PROXY_VOLUMES_H
#define LOCAL_PROXY_VOLUMES_H

#include <stddef.h>

#include <cjson/cJSON.h>

#define VOLUMES_PATH_MAX 1024
/* Modes: what Kubernetes uses when the pod spec says nothing; secrets and
 * service account tokens are never written with more than VOLUMES_SECRET_MAX,
 * directories are made VOLUMES_DIR_MODE. */
#define VOLUMES_DEFAULT_MODE 0644
#define VOLUMES_SECRET_MAX 0600
#define VOLUMES_DIR_MODE 0700

/* One file of a rendered volume. */
struct volumes_file {
  char path[VOLUMES_PATH_MAX]; /* relative to the volume's root, checked (volumes_path_ok) */
  char *data;                  /* malloc'd, len bytes (NUL after them) */
  size_t len;
  int mode;                    /* permission bits to write it with */
};

struct volumes_files {
  struct volumes_file *v;
  size_t n, cap;
};

/* What volumes_render needs from outside. Every callback's arg is `arg`. */
struct volumes_source {
  /* The ConfigMap ("configmaps") or Secret ("secrets") named, owned by the
   * caller of get (volumes_render deletes it); NULL with why filled
   * ("not found", a forbidden call): why[0] == '\0' together with *missing set
   * means it does not exist. */
  cJSON *(*get)(void *arg, const char *resource, const char *name, int *missing, char *why,
                size_t whylen);
  /* A token for a projected serviceAccountToken source (src: its JSON with
   * audience, expirationSeconds, path): malloc'd, or NULL with why. */
  char *(*token)(void *arg, const char *volume, const cJSON *src, char *why, size_t whylen);
  /* Something of the volume not written, and why (a line for the user). */
  void (*note)(void *arg, const char *volume, const char *what);
  void *arg;
  const char *pod_name;    /* the downward API's metadata.name */
  const char *ns;          /* metadata.namespace */
  const cJSON *pod_meta;   /* labels and annotations come from this metadata (or NULL) */
};

/* What kind of volume v is. */
enum volumes_kind {
  VOLUMES_FILES,    /* configMap, secret, downwardAPI, projected: files (volumes_render) */
  VOLUMES_EMPTY,    /* emptyDir: an empty directory */
  VOLUMES_NONE,     /* anything else: not materialised (why: volumes_kind_of) */
};

/* v's kind; for VOLUMES_NONE, *type gets its source's name
 * ("persistentVolumeClaim") and *why a sentence saying why it stays in the
 * cluster. */
enum volumes_kind volumes_kind_of(const cJSON *v, const char **type, const char **why);

/* Render volume v (an entry of a pod spec's "volumes") into out (appended).
 * What cannot be rendered (a missing object, a refused token, a key or path
 * that would leave the volume, a field not known locally) is skipped and told
 * to s->note. Returns 0, or -1 when the volume cannot be rendered at all (a
 * required object missing: kubelet would not start the pod either; noted). */
int volumes_render(const cJSON *v, const struct volumes_source *s, struct volumes_files *out);

void volumes_files_free(struct volumes_files *f);

/* A relative path below a volume or the volumes directory: not empty, not
 * absolute, no "." or ".." component, no empty component, no NUL. 1 or 0. */
int volumes_path_ok(const char *rel);

/* Where a file of a volume goes, relative to the volumes directory, for a
 * mount at mount_path (absolute, as in the pod spec) with sub_path (NULL or
 * ""): mount_path without its leading '/', then file (a path inside the
 * volume). With a sub_path only files at or below it are mounted: sub_path
 * itself is placed at mount_path. Returns 1 (out written), 0 (the file is not
 * in this mount), -1 (mount_path or sub_path unusable; err says why). file ""
 * gives the mount's own directory (for an emptyDir). */
int volumes_mount_path(const char *mount_path, const char *sub_path, const char *file, char *out,
                       size_t len, char *err, size_t errlen);

/* Write data atomically at rel below the directory rootfd (a temporary file in
 * the same directory, then rename), creating the directories on the way with
 * VOLUMES_DIR_MODE. No symbolic link is followed, and rel must satisfy
 * volumes_path_ok. 0, or -1 with err (naming the path). */
int volumes_write(int rootfd, const char *rel, const void *data, size_t len, int mode, char *err,
                  size_t errlen);

/* Make the directory rel below rootfd (and those on the way), VOLUMES_DIR_MODE,
 * following no symbolic link. 0, or -1 with err. */
int volumes_mkdir(int rootfd, const char *rel, char *err, size_t errlen);

/* Remove dir and everything below it (symbolic links themselves, never what
 * they point to). 0 or -1 (errno). */
int volumes_remove_tree(const char *dir);

/* A map as the downward API writes metadata.labels and .annotations:
 * key="value" lines sorted by key, values quoted as Go's %q does, no newline
 * after the last. malloc'd. */
char *volumes_format_map(const cJSON *map);

#endif
