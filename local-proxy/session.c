/* session.c: the session files (session.h). */
#include "session.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "log.h"

static int mkdirs(const char *path) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0700) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  return mkdir(buf, 0700) < 0 && errno != EEXIST ? -1 : 0;
}

int session_dir(char *out, size_t len) {
  const char *rt = getenv("XDG_RUNTIME_DIR"), *home = getenv("HOME");
  if (rt && *rt)
    snprintf(out, len, "%s/kbridge/sessions", rt);
  else
    snprintf(out, len, "%s/.cache/kbridge/sessions", home && *home ? home : "/tmp");
  return mkdirs(out);
}

int session_write(const char *ns, const char *svc, const char *key, int local_port, char *path,
                  size_t pathlen) {
  char dir[400], tmp[600], since[40];
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (session_dir(dir, sizeof dir) < 0) {
    log_warn("session directory %s: %s (kbridge status will not show this session)", dir,
             strerror(errno));
    return -1;
  }
  snprintf(path, pathlen, "%s/%s.%s.%s.json", dir, ns, svc, key);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) {
    log_warn("session file %s: %s", tmp, strerror(errno));
    path[0] = '\0';
    return -1;
  }
  fprintf(f, "{\"pid\":%ld,\"namespace\":\"%s\",\"service\":\"%s\",\"key\":\"%s\","
          "\"local_port\":%d,\"since\":\"%s\"}\n", (long)getpid(), ns, svc, key, local_port, since);
  fclose(f);
  if (rename(tmp, path) < 0) {
    unlink(tmp);
    path[0] = '\0';
    return -1;
  }
  return 0;
}

int session_pid_running(pid_t pid) {
  if (kill(pid, 0) < 0 && errno == ESRCH) return 0;
  char path[64], buf[256];
  snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 1; /* no procfs: trust kill() */
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *rp = strrchr(buf, ')'); /* "pid (comm) S ..." */
  return !(rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'));
}

int session_each(session_fn fn, void *arg) {
  char dir[400];
  if (session_dir(dir, sizeof dir) < 0) return 0;
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *de;
  int n = 0;
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if (l < 6 || strcmp(de->d_name + l - 5, ".json") != 0) continue;
    char path[800], buf[2048];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t m = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[m] = '\0';
    cJSON *s = cJSON_Parse(buf);
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(s, "pid");
    if (!cJSON_IsNumber(pid) || !session_pid_running((pid_t)pid->valueint)) {
      unlink(path); /* its process is gone */
    } else {
      fn(s, path, arg);
      n++;
    }
    cJSON_Delete(s);
  }
  closedir(d);
  return n;
}

static void hosts_record_path(const char *dir, long pid, char *out, size_t len) {
  snprintf(out, len, "%s/hosts.%ld", dir, pid);
}

int session_hosts_record(const char *hosts_file) {
  char dir[400], path[600], tmp[640], abs[4096];
  if (session_dir(dir, sizeof dir) < 0 || !realpath(hosts_file, abs)) {
    log_warn("--hosts: no record of %s for kbridge restore: %s", hosts_file, strerror(errno));
    return -1;
  }
  hosts_record_path(dir, (long)getpid(), path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  int ok = f && fprintf(f, "%s\n", abs) > 0;
  if (f && fclose(f) != 0) ok = 0;
  if (!ok || rename(tmp, path) < 0) {
    log_warn("--hosts: record %s: %s", path, strerror(errno));
    unlink(tmp);
    return -1;
  }
  return 0;
}

void session_hosts_unrecord(void) {
  char dir[400], path[600];
  if (session_dir(dir, sizeof dir) < 0) return;
  hosts_record_path(dir, (long)getpid(), path, sizeof path);
  unlink(path);
}

int session_hosts_dead(int (*fn)(const char *hosts_file, void *arg), void *arg) {
  char dir[400];
  if (session_dir(dir, sizeof dir) < 0) return 0;
  DIR *d = opendir(dir);
  if (!d) return 0;
  struct dirent *de;
  int n = 0;
  while ((de = readdir(d)) != NULL) {
    char *end = NULL;
    if (strncmp(de->d_name, "hosts.", 6) != 0) continue;
    long pid = strtol(de->d_name + 6, &end, 10);
    if (pid <= 0 || *end) continue; /* hosts.PID.tmp and the like */
    n++;
    if (session_pid_running((pid_t)pid)) continue;
    char path[800], file[4200];
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    int got = fgets(file, sizeof file, f) != NULL;
    fclose(f);
    file[strcspn(file, "\n")] = '\0';
    if (!got || !*file || fn(file, arg) == 0) unlink(path);
  }
  closedir(d);
  return n;
}
