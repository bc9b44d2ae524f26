/* connect_volumes.c: the original container's volumes as files for the local
 * process (volumes.h does the placing and writing; here the API calls, the
 * service account tokens and their refresh, and what connect reports).
 *
 * The directory is --volumes-dir, or a fresh 0700 directory under $TMPDIR
 * removed when connect ends. Each volumeMount of the first container whose
 * volume is a configMap, secret, downwardAPI, projected or emptyDir goes below
 * it at its mountPath; other kinds are listed ("volume-skipped") with the
 * reason. A projected serviceAccountToken is asked of the TokenRequest API and
 * asked again at 80% of its lifetime, from the re-sync guard's tick. */
#include "connect_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "kube.h"
#include "volumes.h"

/* Refresh a token at this fraction of its lifetime; after a failed refresh
 * try again in TOKEN_RETRY_S. */
#define TOKEN_REFRESH_AT 0.8
#define TOKEN_RETRY_S 30.0
#define MAX_TOKEN_VOLUMES 16

struct conn_volumes {
  char dir[PATH_MAX];     /* absolute */
  int rootfd;
  int temp;               /* ours: removed at the end */
  cJSON *pods;            /* the original pods, when listed here (joining a takeover) */
  struct {
    char name[256];       /* a projected volume with a serviceAccountToken source */
    double due;           /* when to ask again (0: never) */
  } tok[MAX_TOKEN_VOLUMES];
  int ntok;
  /* while rendering */
  const char *cur;        /* the volume rendered */
  double cur_due;         /* the earliest refresh its tokens want (0: no token got) */
};

int conn_volumes_open(struct conn *c) {
  if (c->cfg->no_volumes) return 0;
  struct conn_volumes *v = calloc(1, sizeof *v);
  if (!v) return -1;
  v->rootfd = -1;
  c->vol = v;
  const char *want = c->cfg->volumes_dir;
  if (!want) {
    const char *tmp = getenv("TMPDIR");
    snprintf(v->dir, sizeof v->dir, "%s/kbridge-volumes-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(v->dir)) {
      conn_fail(c, "cannot make a directory for the pod's volumes in %s: %s (set TMPDIR or give "
                "--volumes-dir)", tmp && *tmp ? tmp : "/tmp", strerror(errno));
      return -1;
    }
    v->temp = 1;
    char abs[PATH_MAX]; /* a relative $TMPDIR: KBRIDGE_VOLUMES is absolute all the same */
    if (realpath(v->dir, abs)) snprintf(v->dir, sizeof v->dir, "%s", abs);
  } else {
    if (mkdir(want, VOLUMES_DIR_MODE) < 0 && errno != EEXIST) {
      c->reason = "bad_flag";
      conn_fail(c, "--volumes-dir %s: cannot make it: %s (give a directory that exists or whose "
                "parent does)", want, strerror(errno));
      return -1;
    }
    if (!realpath(want, v->dir)) {
      c->reason = "bad_flag";
      conn_fail(c, "--volumes-dir %s: %s", want, strerror(errno));
      return -1;
    }
  }
  v->rootfd = open(v->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (v->rootfd < 0) {
    c->reason = "bad_flag";
    conn_fail(c, "--volumes-dir %s: %s", v->dir, errno == ENOTDIR ? "not a directory"
                                                                   : strerror(errno));
    return -1;
  }
  return 0;
}

void conn_volumes_close(struct conn *c) {
  struct conn_volumes *v = c->vol;
  if (!v) return;
  if (v->rootfd >= 0) close(v->rootfd);
  if (v->temp && volumes_remove_tree(v->dir) < 0)
    fprintf(stderr, "kbridge: cannot remove %s (the pod's volumes, secrets among them): %s; "
            "remove it yourself\n", v->dir, strerror(errno));
  cJSON_Delete(v->pods);
  free(v);
  c->vol = NULL;
}

/* ---- what volumes_render asks ---- */

static cJSON *src_get(void *arg, const char *resource, const char *name, int *missing, char *why,
                      size_t whylen) {
  struct conn *c = arg;
  struct kube_ref r = {"v1", resource, c->ns, name, NULL};
  struct kube_err e;
  cJSON *o = NULL;
  *missing = 0;
  if (kube_get(c->k, &r, &o, &e) == 0) return o;
  *missing = e.status == 404;
  snprintf(why, whylen, "%s", e.status == 404 ? "" : e.msg);
  return NULL;
}

/* 2026-12-08T01:00:00Z -> seconds since the epoch, or -1. */
static double parse_time(const char *s) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  const char *end = s ? strptime(s, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
  return end ? (double)timegm(&tm) : -1;
}

static const char *service_account(const struct conn *c) {
  const char *sa = conn_jstr(c->pod_template, "serviceAccountName");
  if (!sa || !*sa) sa = conn_jstr(c->pod_template, "serviceAccount");
  return sa && *sa ? sa : "default";
}

/* A TokenRequest for the pod's service account with the source's audience and
 * lifetime (not bound to a pod: no pod here is the developer's). */
static char *src_token(void *arg, const char *volume, const cJSON *src, char *why, size_t whylen) {
  struct conn *c = arg;
  struct conn_volumes *v = c->vol;
  const char *aud = conn_jstr(src, "audience"), *sa = service_account(c);
  const cJSON *es = cJSON_GetObjectItemCaseSensitive(src, "expirationSeconds");
  double life = cJSON_IsNumber(es) ? es->valuedouble : 3600;
  (void)volume;
  cJSON *req = cJSON_CreateObject(), *spec = cJSON_AddObjectToObject(req, "spec");
  cJSON_AddStringToObject(req, "apiVersion", "authentication.k8s.io/v1");
  cJSON_AddStringToObject(req, "kind", "TokenRequest");
  cJSON *auds = cJSON_AddArrayToObject(spec, "audiences");
  if (aud && *aud) cJSON_AddItemToArray(auds, cJSON_CreateString(aud));
  cJSON_AddNumberToObject(spec, "expirationSeconds", life);
  char *body = cJSON_PrintUnformatted(req);
  cJSON_Delete(req);
  struct kube_ref r = {"v1", "serviceaccounts", c->ns, sa, "token"};
  struct kube_err e;
  cJSON *out = NULL;
  int rc = body ? kube_request(c->k, "POST", "create", &r, NULL, "application/json", body, &out,
                               &e)
                : -1;
  free(body);
  if (rc < 0) {
    if (e.status == 403)
      snprintf(why, whylen, "the token request for service account %s was refused (403 "
               "forbidden; your Role needs create on serviceaccounts/token, see docs/rbac.md)",
               sa);
    else
      snprintf(why, whylen, "%s", e.msg);
    return NULL;
  }
  const char *tok = conn_jstr(out, "status.token");
  double exp = parse_time(conn_jstr(out, "status.expirationTimestamp")), now = conn_now_s();
  if (exp > now) life = exp - now;
  char *res = tok ? strdup(tok) : NULL;
  if (!res) snprintf(why, whylen, "the API server's answer had no token");
  cJSON_Delete(out);
  double due = now + life * TOKEN_REFRESH_AT;
  if (res && (v->cur_due == 0 || due < v->cur_due)) v->cur_due = due;
  return res;
}

static void src_note(void *arg, const char *volume, const char *what) {
  struct conn *c = arg;
  conn_progress(c, "volume-skipped", "volume %s: %s", volume, what);
}

/* The metadata the downward API reads labels and annotations from: an
 * original pod's (listed at inspect; when joining a takeover, listed now by
 * the original selector the Service keeps). */
static const cJSON *pod_meta(struct conn *c) {
  const cJSON *pod = cJSON_GetArrayItem(conn_jget(c->orig_pods, "items"), 0);
  if (!pod && !c->vol->pods) {
    const char *s = takeover_annotation(c->service, TAKEOVER_ANN_ORIGINAL_SELECTOR);
    cJSON *sel = s ? cJSON_Parse(s) : NULL;
    struct kube_ref r = {"v1", "pods", c->ns, NULL, NULL};
    struct kube_err e;
    if (sel && kube_list(c->k, &r, conn_selector_string(sel), &c->vol->pods, &e) < 0)
      log_info("volumes: the original pods: %s", e.msg);
    cJSON_Delete(sel);
  }
  if (!pod) pod = cJSON_GetArrayItem(conn_jget(c->vol->pods, "items"), 0);
  return conn_jget(pod, "metadata");
}

/* ---- writing ---- */

static const cJSON *find_volume(const struct conn *c, const char *name) {
  const cJSON *v;
  cJSON_ArrayForEach(v, conn_jget(c->pod_template, "volumes")) {
    const char *n = conn_jstr(v, "name");
    if (n && name && strcmp(n, name) == 0) return v;
  }
  return NULL;
}

static const cJSON *first_container(const struct conn *c) {
  return cJSON_GetArrayItem(conn_jget(c->pod_template, "containers"), 0);
}

/* Write files (of volume vol) at one mount; returns files written, -1 when
 * the mount itself is unusable (reported). */
static int write_mount(struct conn *c, const char *vol, const cJSON *m,
                       const struct volumes_files *files, int empty) {
  const char *mp = conn_jstr(m, "mountPath"), *sp = conn_jstr(m, "subPath");
  char rel[VOLUMES_PATH_MAX], err[VOLUMES_PATH_MAX + 200];
  int n = 0;
  if (conn_jstr(m, "subPathExpr")) {
    conn_progress(c, "volume-skipped", "volume %s at %s: subPathExpr is not expanded locally; "
                  "not materialised", vol, mp ? mp : "?");
    return -1;
  }
  if (empty || files->n == 0) {
    if (volumes_mount_path(mp, sp, "", rel, sizeof rel, err, sizeof err) < 0 ||
        volumes_mkdir(c->vol->rootfd, rel, err, sizeof err) < 0) {
      conn_progress(c, "volume-skipped", "volume %s: %s; not materialised", vol, err);
      return -1;
    }
  }
  for (size_t i = 0; i < files->n; i++) {
    const struct volumes_file *f = &files->v[i];
    int r = volumes_mount_path(mp, sp, f->path, rel, sizeof rel, err, sizeof err);
    if (r < 0) {
      conn_progress(c, "volume-skipped", "volume %s: %s; not materialised", vol, err);
      return -1;
    }
    if (r == 0) continue;
    if (volumes_write(c->vol->rootfd, rel, f->data, f->len, f->mode, err, sizeof err) < 0) {
      conn_progress(c, "volume-skipped", "volume %s, file %s: %s; not written", vol, f->path, err);
      continue;
    }
    n++;
  }
  return n;
}

/* Render volume v and write it at each of the container's mounts of it;
 * report when report is set (the first time). Returns the earliest token
 * refresh it wants (0: none). */
static double materialise(struct conn *c, const cJSON *v, int report) {
  const char *name = conn_jstr(v, "name"), *type = "", *why = "";
  enum volumes_kind kind = volumes_kind_of(v, &type, &why);
  struct volumes_files files = {0};
  c->vol->cur = name;
  c->vol->cur_due = 0;
  if (kind == VOLUMES_FILES) {
    struct volumes_source s = {src_get, src_token, src_note, c, "kbridge-local", c->ns,
                               pod_meta(c)};
    volumes_render(v, &s, &files);
  }
  const cJSON *m;
  cJSON_ArrayForEach(m, conn_jget(first_container(c), "volumeMounts")) {
    const char *mn = conn_jstr(m, "name"), *mp = conn_jstr(m, "mountPath");
    if (!mn || !name || strcmp(mn, name) != 0) continue;
    const cJSON *vt = v->child;
    while (vt && (!vt->string || strcmp(vt->string, "name") == 0)) vt = vt->next;
    if (kind == VOLUMES_NONE) {
      if (report)
        conn_progress(c, "volume-skipped", "volume %s (%s) at %s: not materialised: %s", name,
                      type, mp ? mp : "?", why);
      continue;
    }
    int n = write_mount(c, name, m, &files, kind == VOLUMES_EMPTY);
    if (n < 0 || !report) continue;
    const char *sp = conn_jstr(m, "subPath");
    if (kind == VOLUMES_EMPTY)
      conn_progress(c, "volume", "volume %s (emptyDir) at %s: an empty directory %s%s", name,
                    mp ? mp : "?", c->vol->dir, mp ? mp : "");
    else
      conn_progress(c, "volume", "volume %s (%s) at %s%s%s: %d file%s under %s%s", name,
                    vt && vt->string ? vt->string : "?", mp ? mp : "?", sp ? " subPath " : "",
                    sp ? sp : "", n, n == 1 ? "" : "s", c->vol->dir, mp ? mp : "");
  }
  volumes_files_free(&files);
  return c->vol->cur_due;
}

void conn_volumes_write(struct conn *c, cJSON *env) {
  struct conn_volumes *vv = c->vol;
  if (!vv) return;
  cJSON_DeleteItemFromObjectCaseSensitive(env, "KBRIDGE_VOLUMES");
  cJSON_AddStringToObject(env, "KBRIDGE_VOLUMES", vv->dir);
  const cJSON *ctr = first_container(c), *m, *v;
  /* Mounts of volumes the pod spec does not have. */
  cJSON_ArrayForEach(m, conn_jget(ctr, "volumeMounts")) {
    const char *mn = conn_jstr(m, "name");
    if (!find_volume(c, mn))
      conn_progress(c, "volume-skipped", "volume mount %s at %s: the pod has no such volume",
                    mn ? mn : "?", conn_jstr(m, "mountPath") ? conn_jstr(m, "mountPath") : "?");
  }
  /* Each mounted volume once, in the pod spec's order. */
  cJSON_ArrayForEach(v, conn_jget(c->pod_template, "volumes")) {
    const char *name = conn_jstr(v, "name");
    int mounted = 0;
    cJSON_ArrayForEach(m, conn_jget(ctr, "volumeMounts")) {
      const char *mn = conn_jstr(m, "name");
      mounted |= mn && name && strcmp(mn, name) == 0;
    }
    if (!mounted) continue;
    double due = materialise(c, v, 1);
    if (due > 0 && vv->ntok < MAX_TOKEN_VOLUMES) {
      snprintf(vv->tok[vv->ntok].name, sizeof vv->tok[0].name, "%s", name);
      vv->tok[vv->ntok++].due = due;
      conn_progress(c, "volume-token", "volume %s: service account token of %s written; asked "
                    "again in %.0f s while connected", name, service_account(c), due - conn_now_s());
    }
  }
}

void conn_volumes_tick(struct conn *c) {
  struct conn_volumes *vv = c->vol;
  if (!vv) return;
  double now = conn_now_s();
  for (int i = 0; i < vv->ntok; i++) {
    if (vv->tok[i].due <= 0 || vv->tok[i].due > now) continue;
    const cJSON *v = find_volume(c, vv->tok[i].name);
    if (!v) continue;
    double due = materialise(c, v, 0);
    if (due > 0) {
      conn_progress(c, "volume-token", "volume %s: service account token refreshed; next in "
                    "%.0f s", vv->tok[i].name, due - now);
    } else {
      due = now + TOKEN_RETRY_S;
      log_warn("volume %s: the token could not be refreshed; trying again in %.0f s",
               vv->tok[i].name, TOKEN_RETRY_S);
    }
    vv->tok[i].due = due;
  }
}

int conn_volume_dir(struct conn *c, const char *name, char *out, size_t len, char *why,
                    size_t whylen) {
  const cJSON *ctr = first_container(c), *m, *v = find_volume(c, name), *mount = NULL;
  char names[600] = "", rel[VOLUMES_PATH_MAX], err[VOLUMES_PATH_MAX + 200];
  size_t o = 0;
  if (!ctr) {
    snprintf(why, whylen, "no pod spec of service %s is known (no workload found), so it has no "
             "volumes", c->svc);
    return -1;
  }
  cJSON_ArrayForEach(m, conn_jget(ctr, "volumeMounts")) {
    const char *mn = conn_jstr(m, "name");
    if (!mn) continue;
    if (!mount && strcmp(mn, name) == 0) mount = m;
    int w = o < sizeof names ? snprintf(names + o, sizeof names - o, "%s%s", o ? ", " : "", mn) : 0;
    if (w > 0) o += (size_t)w;
  }
  if (!mount) {
    snprintf(why, whylen, "the container mounts no volume \"%s\" (its mounts: %s)", name,
             names[0] ? names : "none");
    return -1;
  }
  const char *type = NULL, *kwhy = NULL;
  if (!v) {
    snprintf(why, whylen, "the pod has no volume \"%s\" (the container mounts it all the same)",
             name);
    return -1;
  }
  if (volumes_kind_of(v, &type, &kwhy) == VOLUMES_NONE) {
    snprintf(why, whylen, "volume %s is a %s: not materialised locally (%s)", name,
             type ? type : "volume of another kind", kwhy ? kwhy : "");
    return -1;
  }
  const char *mp = conn_jstr(mount, "mountPath");
  if (!mp || volumes_mount_path(mp, NULL, "", rel, sizeof rel, err, sizeof err) != 1) {
    snprintf(why, whylen, "volume %s: its mountPath %s cannot be used locally", name,
             mp ? mp : "(none)");
    return -1;
  }
  if (c->vol) snprintf(out, len, "%s/%s", c->vol->dir, rel);
  else snprintf(out, len, "%s", rel); /* checked before the directory is opened */
  return 0;
}
