/* heap.h: keep the heap's freed memory for the next transfer.
 *
 * A bulk transfer allocates and frees buffers of 16-128 KiB at a high rate
 * (evbuffer chains for 64 KiB socket reads, TLS records, stream queues). With
 * glibc's defaults the top of the heap is given back to the kernel whenever
 * more than the trim threshold (128 KiB at first, adjusted at run time) is
 * free there, and chunks of 128 KiB and more are mmap()ed and munmap()ed one
 * by one, so the next buffers fault fresh zeroed pages in: 15-18,000 minor
 * page faults per 100 MiB moved, one per 4 KiB page (docs/performance.md).
 *
 * heap_keep_buffers() fixes both thresholds: buffers below HEAP_MMAP_MIN come
 * from the heap, and up to HEAP_TRIM_MIN of free memory stays there. Memory
 * is still bounded: what is kept is what the busiest moment needed, and no more
 * than HEAP_TRIM_MIN of it stays unused. Call it once at start, before the
 * event loop (the agent and `kbridge proxy`/`connect`). */
#ifndef KB_HEAP_H
#define KB_HEAP_H

#define HEAP_MMAP_MIN (1024u * 1024u)
#define HEAP_TRIM_MIN (4u * 1024u * 1024u)

/* 0, or -1 if the C library refused (not glibc: nothing to do there). */
int heap_keep_buffers(void);

#endif
