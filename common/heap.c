/* heap.c: glibc's heap thresholds for bulk data. See heap.h. */
#include "heap.h"

#include <stdlib.h> /* defines __GLIBC__ with glibc */
#if defined(__GLIBC__)
#include <malloc.h>
#endif

int heap_keep_buffers(void) {
#if defined(__GLIBC__)
  /* Setting either threshold also turns off glibc's run-time adjustment of
   * both (mallopt(3)), which is what let them move with every transfer. */
  if (mallopt(M_MMAP_THRESHOLD, (int)HEAP_MMAP_MIN) != 1) return -1;
  if (mallopt(M_TRIM_THRESHOLD, (int)HEAP_TRIM_MIN) != 1) return -1;
  return 0;
#else
  return -1;
#endif
}
