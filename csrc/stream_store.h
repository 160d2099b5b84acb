#ifndef FASTLOSS_STREAM_STORE_H
#define FASTLOSS_STREAM_STORE_H
/*
 * Streaming stores for the gradients of large calls (the box and elementwise kernels).
 * A cached store first reads the line it writes (write-allocate), so a fused call
 * moves each gradient twice.  Where the gradients written by one call reach
 * FASTLOSS_STREAM_BYTES (more than the caches hold, so no caller finds them there
 * anyway), a tile's gradient is written into a small buffer (in L1) and copied out
 * with non-temporal stores, which write whole lines without reading them; a fence at
 * the end of each block orders them before the block's end is seen by the thread
 * that reads the result.  The bits written are the same either way.  x86-64 only
 * (SSE2, every ISA level); elsewhere FASTLOSS_STREAMING is not defined and the
 * kernels use plain stores.
 */
#include "common.h"

#define FASTLOSS_STREAM_BYTES ((fastloss_index)1 << 24)
#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#include <stdint.h>
#include <string.h>
#define FASTLOSS_STREAMING 1

/* bytes from src to dst: the 16-byte-aligned part of dst with streaming stores,
 * the rest (a misaligned head, a tail) with plain ones */
static inline void fastloss_stream_copy(void *dst, const void *src, size_t bytes)
{
    char *d = (char *)dst;
    const char *s = (const char *)src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    if (head > bytes)
        head = bytes;
    memcpy(d, s, head);
    d += head;
    s += head;
    bytes -= head;
    for (; bytes >= 16; bytes -= 16, d += 16, s += 16)
        _mm_stream_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
    memcpy(d, s, bytes);
}

static inline void fastloss_stream_fence(void)
{
    _mm_sfence();
}
#endif

#endif
