/* fuzz_kubeconfig.c: kubeconfig_load() on arbitrary bytes (a kubeconfig is
 * user input: a broken or hostile file must give an error, never a crash).
 * The input goes into a memfd read through /proc/self/fd; it is loaded with
 * its current-context and with the context "c" (the seeds use that name). */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kubeconfig.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int fd = -1;
  if (fd < 0) fd = memfd_create("kubeconfig", 0);
  if (fd < 0) return 0;
  if (ftruncate(fd, 0) < 0 || pwrite(fd, data, size, 0) != (ssize_t)size) return 0;
  char path[64], err[512];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const char *contexts[] = {NULL, "c"};
  for (int i = 0; i < 2; i++) {
    struct kubeconfig_opts o = {path, contexts[i], NULL};
    struct kubeconfig *kc = NULL;
    if (kubeconfig_load(&o, &kc, err, sizeof err) == 0) kubeconfig_free(kc);
  }
  return 0;
}
