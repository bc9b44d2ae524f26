/* test_heap.c: heap_keep_buffers() keeps freed bulk buffers in the process.
 *
 * A transfer's buffer pattern, repeated: chains of 128 KiB (a 64 KiB socket
 * read reserved in an evbuffer), TLS-record-sized buffers and a stream queue's
 * worth of them, all freed at the end of each "transfer". With glibc's
 * defaults every round maps or faults its pages in again (the first 128 KiB
 * chunk is mmap()ed, and the heap top is trimmed after each round); with the
 * thresholds fixed, later rounds reuse the same pages: almost no faults. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "check.h"
#include "heap.h"

static long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

#define BUFS 24

/* One "transfer": allocate, touch every page (as a read into it would), free. */
static void transfer(void) {
  static const size_t sizes[] = {131072, 16413, 65536, 131072, 16413, 32768};
  void *b[BUFS];
  for (int i = 0; i < BUFS; i++) {
    size_t n = sizes[i % (sizeof sizes / sizeof sizes[0])];
    b[i] = malloc(n);
    if (b[i]) memset(b[i], i, n);
  }
  for (int i = BUFS - 1; i >= 0; i--) free(b[i]);
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KB_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define KB_ASAN 1
#endif

int main(void) {
#ifdef KB_ASAN
  /* ASan's allocator is not glibc's: mallopt() has no say there. */
  fprintf(stderr, "skipped: built with AddressSanitizer\n");
  return 0;
#endif
  CHECK_EQ_INT(heap_keep_buffers(), 0);
  transfer(); /* the first one faults its pages in: that is expected */
  long before = minor_faults();
  for (int i = 0; i < 100; i++) transfer();
  long faults = minor_faults() - before;
  /* ~1.6 MiB touched per round: 400 pages; without the fix, hundreds of
   * faults per round (tens of thousands in all). */
  fprintf(stderr, "minor page faults in 100 transfers: %ld\n", faults);
  CHECK(faults < 200);
  return check_done();
}
