/* test_volumes.c: local-proxy/volumes.c. Volumes rendered from objects held
 * in memory (items and modes, secrets clamped to 0600, binaryData, optional
 * objects, the downward API's maps, tokens given and refused), keys and paths
 * that would leave the volume refused with the volume and key named, mount
 * paths and subPath, and real writes in a temporary directory: atomic, with
 * their modes, never through a symbolic link planted in the way. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "volumes.h"

static cJSON *parse(const char *s) {
  cJSON *j = cJSON_Parse(s);
  if (!j) {
    fprintf(stderr, "bad JSON in the test: %s\n", s);
    exit(1);
  }
  return j;
}

/* ---- a source with objects in memory ---- */

struct fake {
  cJSON *objs;        /* {"configmaps/NAME": {...}, "secrets/NAME": {...}} */
  char notes[4096];   /* every note, one per line */
  int tokens;         /* tokens asked for */
  int refuse;         /* refuse tokens */
};

static cJSON *fake_get(void *arg, const char *resource, const char *name, int *missing, char *why,
                       size_t whylen) {
  struct fake *f = arg;
  char k[300];
  snprintf(k, sizeof k, "%s/%s", resource, name);
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(f->objs, k);
  *missing = o == NULL;
  why[0] = '\0';
  (void)whylen;
  return o ? cJSON_Duplicate(o, 1) : NULL;
}

static char *fake_token(void *arg, const char *volume, const cJSON *src, char *why, size_t len) {
  struct fake *f = arg;
  (void)volume;
  f->tokens++;
  if (f->refuse) {
    snprintf(why, len, "refused (403)");
    return NULL;
  }
  const char *aud = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(src, "audience"));
  char t[200];
  snprintf(t, sizeof t, "token-for-%s", aud ? aud : "default");
  return strdup(t);
}

static void fake_note(void *arg, const char *volume, const char *what) {
  struct fake *f = arg;
  size_t l = strlen(f->notes);
  snprintf(f->notes + l, sizeof f->notes - l, "%s: %s\n", volume, what);
}

static const struct volumes_file *find(const struct volumes_files *fs, const char *path) {
  for (size_t i = 0; i < fs->n; i++)
    if (strcmp(fs->v[i].path, path) == 0) return &fs->v[i];
  return NULL;
}

#define OBJS                                                                               \
  "{\"configmaps/app\":{\"data\":{\"app.conf\":\"port=8080\\n\",\"level\":\"debug\"},"     \
  "\"binaryData\":{\"blob\":\"AAEC/w==\"}},"                                                \
  "\"secrets/db\":{\"data\":{\"password\":\"czNjcjN0\",\"user\":\"YWRtaW4=\"}},"            \
  "\"configmaps/evil\":{\"data\":{\"..\":\"x\",\"ok\":\"fine\"}}}"

static void test_configmap_items(void) {
  struct fake f = {parse(OBJS), "", 0, 0};
  struct volumes_source s = {fake_get, fake_token, fake_note, &f, "kbridge-local", "shop", NULL};
  struct volumes_files fs = {0};
  /* items: key -> path with a mode of its own, the rest defaultMode */
  cJSON *v = parse("{\"name\":\"config\",\"configMap\":{\"name\":\"app\",\"defaultMode\":416,"
                   "\"items\":[{\"key\":\"app.conf\",\"path\":\"conf/app.conf\",\"mode\":420},"
                   "{\"key\":\"level\",\"path\":\"level.txt\"}]}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), 0);
  CHECK_EQ_INT(fs.n, 2);
  const struct volumes_file *a = find(&fs, "conf/app.conf"), *b = find(&fs, "level.txt");
  CHECK(a && a->len == 10 && memcmp(a->data, "port=8080\n", 10) == 0 && a->mode == 0644);
  CHECK(b && strcmp(b->data, "debug") == 0 && b->mode == 0640);
  CHECK(find(&fs, "blob") == NULL); /* not among the items */
  CHECK_EQ_STR(f.notes, "");
  volumes_files_free(&fs);
  cJSON_Delete(v);
  /* no items: every key of data and binaryData (decoded), default mode 0644 */
  v = parse("{\"name\":\"config\",\"configMap\":{\"name\":\"app\"}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), 0);
  CHECK_EQ_INT(fs.n, 3);
  const struct volumes_file *blob = find(&fs, "blob");
  CHECK(blob && blob->len == 4 && memcmp(blob->data, "\x00\x01\x02\xff", 4) == 0);
  CHECK(find(&fs, "app.conf") && find(&fs, "app.conf")->mode == VOLUMES_DEFAULT_MODE);
  volumes_files_free(&fs);
  cJSON_Delete(v);
  cJSON_Delete(f.objs);
}

static void test_secret_modes(void) {
  struct fake f = {parse(OBJS), "", 0, 0};
  struct volumes_source s = {fake_get, fake_token, fake_note, &f, "kbridge-local", "shop", NULL};
  struct volumes_files fs = {0};
  /* defaultMode 0644 (the default) and an item asking 0666: both at most 0600;
   * 0400 stays 0400 */
  cJSON *v = parse("{\"name\":\"creds\",\"secret\":{\"secretName\":\"db\",\"items\":["
                   "{\"key\":\"password\",\"path\":\"pw\",\"mode\":438},"
                   "{\"key\":\"user\",\"path\":\"user\",\"mode\":256}]}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), 0);
  const struct volumes_file *pw = find(&fs, "pw"), *u = find(&fs, "user");
  CHECK(pw && strcmp(pw->data, "s3cr3t") == 0 && pw->mode == 0600);
  CHECK(u && strcmp(u->data, "admin") == 0 && u->mode == 0400);
  volumes_files_free(&fs);
  cJSON_Delete(v);
  v = parse("{\"name\":\"creds\",\"secret\":{\"secretName\":\"db\"}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), 0);
  CHECK(find(&fs, "password") && find(&fs, "password")->mode == 0600);
  volumes_files_free(&fs);
  cJSON_Delete(v);
  cJSON_Delete(f.objs);
}

static void test_escapes(void) {
  struct fake f = {parse(OBJS), "", 0, 0};
  struct volumes_source s = {fake_get, fake_token, fake_note, &f, "kbridge-local", "shop", NULL};
  struct volumes_files fs = {0};
  /* a key ".." (a valid ConfigMap key once): refused, the other key written */
  cJSON *v = parse("{\"name\":\"bad\",\"configMap\":{\"name\":\"evil\"}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), -1);
  CHECK_EQ_INT(fs.n, 1);
  CHECK(find(&fs, "ok") != NULL);
  CHECK(strstr(f.notes, "bad: key \"..\" of configMap \"evil\": the path \"..\" would leave the "
                        "volume") != NULL);
  volumes_files_free(&fs);
  cJSON_Delete(v);
  /* item paths that escape or are absolute */
  f.notes[0] = '\0';
  v = parse("{\"name\":\"bad2\",\"secret\":{\"secretName\":\"db\",\"items\":["
            "{\"key\":\"password\",\"path\":\"../x\"},{\"key\":\"user\",\"path\":\"/etc/passwd\"},"
            "{\"key\":\"user\",\"path\":\"a/./b\"},{\"key\":\"user\",\"path\":\"a//b\"}]}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), -1);
  CHECK_EQ_INT(fs.n, 0);
  CHECK(strstr(f.notes, "bad2: key \"password\" of secret \"db\": the path \"../x\"") != NULL);
  CHECK(strstr(f.notes, "key \"user\" of secret \"db\": the path \"/etc/passwd\"") != NULL);
  volumes_files_free(&fs);
  cJSON_Delete(v);
  /* missing object: optional is silent, required is told */
  f.notes[0] = '\0';
  v = parse("{\"name\":\"opt\",\"configMap\":{\"name\":\"nope\",\"optional\":true}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), 0);
  CHECK_EQ_STR(f.notes, "");
  cJSON_Delete(v);
  v = parse("{\"name\":\"req\",\"configMap\":{\"name\":\"nope\"}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), -1);
  CHECK_EQ_STR(f.notes, "req: configMap \"nope\": not found; not written\n");
  CHECK_EQ_INT(fs.n, 0);
  cJSON_Delete(v);
  cJSON_Delete(f.objs);
}

static void test_downward_projected(void) {
  struct fake f = {parse(OBJS), "", 0, 0};
  cJSON *meta = parse("{\"labels\":{\"tier\":\"web\",\"app\":\"api\"},"
                      "\"annotations\":{\"note\":\"say \\\"hi\\\"\\n\\\\ok\\u0001\"}}");
  struct volumes_source s = {fake_get, fake_token, fake_note, &f, "kbridge-local", "shop", meta};
  struct volumes_files fs = {0};
  cJSON *v = parse(
      "{\"name\":\"pod\",\"downwardAPI\":{\"defaultMode\":384,\"items\":["
      "{\"path\":\"labels\",\"fieldRef\":{\"fieldPath\":\"metadata.labels\"}},"
      "{\"path\":\"annotations\",\"fieldRef\":{\"fieldPath\":\"metadata.annotations\"}},"
      "{\"path\":\"tier\",\"fieldRef\":{\"fieldPath\":\"metadata.labels['tier']\"},\"mode\":292},"
      "{\"path\":\"name\",\"fieldRef\":{\"fieldPath\":\"metadata.name\"}},"
      "{\"path\":\"ns\",\"fieldRef\":{\"fieldPath\":\"metadata.namespace\"}},"
      "{\"path\":\"uid\",\"fieldRef\":{\"fieldPath\":\"metadata.uid\"}},"
      "{\"path\":\"cpu\",\"resourceFieldRef\":{\"resource\":\"limits.cpu\"}}]}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), 0);
  CHECK_EQ_STR(find(&fs, "labels")->data, "app=\"api\"\ntier=\"web\"");
  CHECK_EQ_STR(find(&fs, "annotations")->data, "note=\"say \\\"hi\\\"\\n\\\\ok\\x01\"");
  CHECK_EQ_STR(find(&fs, "tier")->data, "web");
  CHECK_EQ_INT(find(&fs, "tier")->mode, 0444);
  CHECK_EQ_INT(find(&fs, "labels")->mode, 0600);
  CHECK_EQ_STR(find(&fs, "name")->data, "kbridge-local");
  CHECK_EQ_STR(find(&fs, "ns")->data, "shop");
  CHECK(find(&fs, "uid") == NULL && find(&fs, "cpu") == NULL);
  CHECK(strstr(f.notes, "pod: downward API item \"uid\": metadata.uid has no local value") != NULL);
  CHECK(strstr(f.notes, "pod: downward API item \"cpu\": resource fields") != NULL);
  volumes_files_free(&fs);
  cJSON_Delete(v);
  /* projected: configMap + secret (clamped) + downward + token, defaultMode 0644 */
  f.notes[0] = '\0';
  v = parse("{\"name\":\"all\",\"projected\":{\"defaultMode\":420,\"sources\":["
            "{\"configMap\":{\"name\":\"app\",\"items\":[{\"key\":\"level\",\"path\":\"level\"}]}},"
            "{\"secret\":{\"name\":\"db\",\"items\":[{\"key\":\"user\",\"path\":\"s/user\"}]}},"
            "{\"downwardAPI\":{\"items\":[{\"path\":\"ns\",\"fieldRef\":{\"fieldPath\":"
            "\"metadata.namespace\"}}]}},"
            "{\"serviceAccountToken\":{\"audience\":\"vault\",\"expirationSeconds\":600,"
            "\"path\":\"token\"}}]}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), 0);
  CHECK_EQ_INT(fs.n, 4);
  CHECK(find(&fs, "level") && find(&fs, "level")->mode == 0644);
  CHECK(find(&fs, "s/user") && find(&fs, "s/user")->mode == 0600);
  CHECK(find(&fs, "token") && strcmp(find(&fs, "token")->data, "token-for-vault") == 0 &&
        find(&fs, "token")->mode == 0600);
  CHECK_EQ_INT(f.tokens, 1);
  volumes_files_free(&fs);
  /* a refused token: the rest is written, the refusal told */
  f.refuse = 1;
  CHECK_EQ_INT(volumes_render(v, &s, &fs), -1);
  CHECK_EQ_INT(fs.n, 3);
  CHECK_EQ_STR(f.notes, "all: service account token \"token\": refused (403); not written\n");
  volumes_files_free(&fs);
  cJSON_Delete(v);
  /* no pod metadata: labels cannot be written */
  f.notes[0] = '\0';
  s.pod_meta = NULL;
  v = parse("{\"name\":\"pod\",\"downwardAPI\":{\"items\":[{\"path\":\"labels\",\"fieldRef\":"
            "{\"fieldPath\":\"metadata.labels\"}}]}}");
  CHECK_EQ_INT(volumes_render(v, &s, &fs), -1);
  CHECK_EQ_INT(fs.n, 0);
  CHECK(strstr(f.notes, "no pod of the workload") != NULL);
  cJSON_Delete(v);
  cJSON_Delete(meta);
  cJSON_Delete(f.objs);
}

static void test_kinds(void) {
  const char *type = NULL, *why = NULL;
  cJSON *v = parse("{\"name\":\"data\",\"persistentVolumeClaim\":{\"claimName\":\"db\"}}");
  CHECK_EQ_INT(volumes_kind_of(v, &type, &why), VOLUMES_NONE);
  CHECK_EQ_STR(type, "persistentVolumeClaim");
  CHECK(why && strstr(why, "cluster's storage"));
  cJSON_Delete(v);
  v = parse("{\"name\":\"h\",\"hostPath\":{\"path\":\"/var/log\"}}");
  CHECK_EQ_INT(volumes_kind_of(v, &type, &why), VOLUMES_NONE);
  CHECK_EQ_STR(type, "hostPath");
  cJSON_Delete(v);
  v = parse("{\"name\":\"g\",\"gitRepo\":{\"repository\":\"x\"}}");
  CHECK_EQ_INT(volumes_kind_of(v, &type, &why), VOLUMES_NONE);
  CHECK_EQ_STR(type, "gitRepo");
  cJSON_Delete(v);
  v = parse("{\"name\":\"e\",\"emptyDir\":{}}");
  CHECK_EQ_INT(volumes_kind_of(v, &type, &why), VOLUMES_EMPTY);
  cJSON_Delete(v);
  v = parse("{\"name\":\"p\",\"projected\":{\"sources\":[]}}");
  CHECK_EQ_INT(volumes_kind_of(v, &type, &why), VOLUMES_FILES);
  cJSON_Delete(v);
}

static void test_paths(void) {
  CHECK(volumes_path_ok("a"));
  CHECK(volumes_path_ok("a/b.c/..d"));
  CHECK(!volumes_path_ok(""));
  CHECK(!volumes_path_ok("/a"));
  CHECK(!volumes_path_ok(".."));
  CHECK(!volumes_path_ok("a/../b"));
  CHECK(!volumes_path_ok("a/.."));
  CHECK(!volumes_path_ok("./a"));
  CHECK(!volumes_path_ok("a//b"));
  CHECK(!volumes_path_ok("a/"));
  char out[VOLUMES_PATH_MAX], err[300];
  CHECK_EQ_INT(volumes_mount_path("/etc/config", NULL, "app.conf", out, sizeof out, err, sizeof err), 1);
  CHECK_EQ_STR(out, "etc/config/app.conf");
  CHECK_EQ_INT(volumes_mount_path("/etc/config/", "", "a/b", out, sizeof out, err, sizeof err), 1);
  CHECK_EQ_STR(out, "etc/config/a/b");
  /* subPath: one file of the volume at the mount path itself */
  CHECK_EQ_INT(volumes_mount_path("/etc/app.conf", "app.conf", "app.conf", out, sizeof out, err,
                                  sizeof err), 1);
  CHECK_EQ_STR(out, "etc/app.conf");
  CHECK_EQ_INT(volumes_mount_path("/etc/app.conf", "app.conf", "level", out, sizeof out, err,
                                  sizeof err), 0);
  CHECK_EQ_INT(volumes_mount_path("/etc/app.conf", "app.conf", "app.conf.bak", out, sizeof out,
                                  err, sizeof err), 0);
  /* subPath: a directory of the volume */
  CHECK_EQ_INT(volumes_mount_path("/srv", "conf", "conf/x/y", out, sizeof out, err, sizeof err), 1);
  CHECK_EQ_STR(out, "srv/x/y");
  CHECK_EQ_INT(volumes_mount_path("/srv", "conf", "confx", out, sizeof out, err, sizeof err), 0);
  /* an emptyDir's own directory, and "/" */
  CHECK_EQ_INT(volumes_mount_path("/cache", NULL, "", out, sizeof out, err, sizeof err), 1);
  CHECK_EQ_STR(out, "cache");
  CHECK_EQ_INT(volumes_mount_path("/", NULL, "f", out, sizeof out, err, sizeof err), 1);
  CHECK_EQ_STR(out, "f");
  /* what would leave the directory */
  CHECK_EQ_INT(volumes_mount_path("/etc/../..", NULL, "f", out, sizeof out, err, sizeof err), -1);
  CHECK(strstr(err, "mountPath \"/etc/../..\"") != NULL);
  CHECK_EQ_INT(volumes_mount_path("/etc", "../x", "../x", out, sizeof out, err, sizeof err), -1);
  CHECK(strstr(err, "subPath \"../x\"") != NULL);
  CHECK_EQ_INT(volumes_mount_path("/etc", "/abs", "x", out, sizeof out, err, sizeof err), -1);
  CHECK_EQ_INT(volumes_mount_path("/etc", NULL, "../x", out, sizeof out, err, sizeof err), -1);
  CHECK(strstr(err, "would leave") != NULL);
}

static int mode_at(const char *root, const char *rel) {
  char p[2048];
  struct stat st;
  snprintf(p, sizeof p, "%s/%s", root, rel);
  return lstat(p, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

static char *read_at(const char *root, const char *rel) {
  static char buf[256];
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", root, rel);
  FILE *f = fopen(p, "r");
  if (!f) return NULL;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static int entries(const char *dir) {
  char cmd[2100];
  snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
  FILE *p = popen(cmd, "r");
  int n = -1;
  if (p) {
    if (fscanf(p, "%d", &n) != 1) n = -1;
    pclose(p);
  }
  return n;
}

static void test_writes(void) {
  char root[] = "/tmp/kbridge-test-volumes-XXXXXX", outside[] = "/tmp/kbridge-test-outside-XXXXXX";
  char err[1300], p[2048];
  if (!mkdtemp(root) || !mkdtemp(outside)) {
    CHECK(0);
    return;
  }
  umask(022);
  int fd = open(root, O_RDONLY | O_DIRECTORY);
  CHECK(fd >= 0);
  CHECK_EQ_INT(volumes_write(fd, "etc/config/app.conf", "one", 3, 0640, err, sizeof err), 0);
  CHECK_EQ_STR(read_at(root, "etc/config/app.conf"), "one");
  CHECK_EQ_INT(mode_at(root, "etc/config/app.conf"), 0640);
  CHECK_EQ_INT(mode_at(root, "etc"), VOLUMES_DIR_MODE);
  CHECK_EQ_INT(mode_at(root, "etc/config"), VOLUMES_DIR_MODE);
  /* again: replaced whole, new mode, no temporary file left beside it */
  CHECK_EQ_INT(volumes_write(fd, "etc/config/app.conf", "second", 6, 0400, err, sizeof err), 0);
  CHECK_EQ_STR(read_at(root, "etc/config/app.conf"), "second");
  CHECK_EQ_INT(mode_at(root, "etc/config/app.conf"), 0400);
  snprintf(p, sizeof p, "%s/etc/config", root);
  CHECK_EQ_INT(entries(p), 1);
  /* a symbolic link planted as a directory on the way is not followed */
  snprintf(p, sizeof p, "%s/link", root);
  CHECK_EQ_INT(symlink(outside, p), 0);
  CHECK_EQ_INT(volumes_write(fd, "link/x", "no", 2, 0600, err, sizeof err), -1);
  CHECK(strstr(err, "symbolic link") != NULL);
  CHECK_EQ_INT(volumes_mkdir(fd, "link/sub", err, sizeof err), -1);
  CHECK_EQ_INT(entries(outside), 0);
  /* a link as the file itself is replaced, its target untouched */
  snprintf(p, sizeof p, "%s/target", outside);
  FILE *t = fopen(p, "w");
  if (t) {
    fputs("keep", t);
    fclose(t);
  }
  char lp[2048];
  snprintf(lp, sizeof lp, "%s/file", root);
  CHECK_EQ_INT(symlink(p, lp), 0);
  CHECK_EQ_INT(volumes_write(fd, "file", "new", 3, 0600, err, sizeof err), 0);
  CHECK_EQ_STR(read_at(outside, "target"), "keep");
  CHECK_EQ_STR(read_at(root, "file"), "new");
  /* paths that leave are refused before anything is opened */
  CHECK_EQ_INT(volumes_write(fd, "../escape", "x", 1, 0600, err, sizeof err), -1);
  CHECK_EQ_INT(volumes_write(fd, "/tmp/escape", "x", 1, 0600, err, sizeof err), -1);
  CHECK_EQ_INT(volumes_write(fd, "etc/../../escape", "x", 1, 0600, err, sizeof err), -1);
  CHECK(access("/tmp/escape", F_OK) != 0);
  /* a file in the way of a directory */
  CHECK_EQ_INT(volumes_write(fd, "file/sub", "x", 1, 0600, err, sizeof err), -1);
  CHECK_EQ_INT(volumes_mkdir(fd, "cache/tmp", err, sizeof err), 0);
  CHECK_EQ_INT(mode_at(root, "cache/tmp"), VOLUMES_DIR_MODE);
  close(fd);
  /* the tree goes, what the links point to stays */
  CHECK_EQ_INT(volumes_remove_tree(root), 0);
  CHECK(access(root, F_OK) != 0);
  CHECK_EQ_STR(read_at(outside, "target"), "keep");
  CHECK_EQ_INT(volumes_remove_tree(outside), 0);
}

int main(void) {
  test_configmap_items();
  test_secret_modes();
  test_escapes();
  test_downward_projected();
  test_kinds();
  test_paths();
  test_writes();
  return check_done();
}
