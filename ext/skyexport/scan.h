/* Byte scans of the per-row encoders, 16 bytes at a time with SSE2 (every x86-64 has it),
 * a byte at a time elsewhere.  Each returns the length of the longest prefix of s[0..n)
 * that needs no attention: the caller copies that much as it is and handles the byte at
 * the returned index itself. */
#ifndef SKYEXPORT_SCAN_H
#define SKYEXPORT_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include "platform.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Inside a JSON string: ASCII that is not a control, '"' or '\\' (FORMAT.md: Go writes it
 * raw; anything else is escaped or checked as UTF-8). */
static inline ptrdiff_t sx_json_plain(const unsigned char *s, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if defined(__SSE2__)
    const __m128i space = _mm_set1_epi8(0x20), quote = _mm_set1_epi8('"'),
                  backslash = _mm_set1_epi8('\\');
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        /* signed: bytes >= 0x80 are negative, so "< 0x20" also catches non-ASCII */
        __m128i bad = _mm_or_si128(_mm_cmplt_epi8(v, space),
                                   _mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                                _mm_cmpeq_epi8(v, backslash)));
        int mask = _mm_movemask_epi8(bad);
        if (mask)
            return i + sx_ctz((unsigned)mask);
    }
#endif
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\')
            return i;
    }
    return n;
}

/* A CSV field: no ',', '"', '\n' or '\r' (Go's encoding/csv quotes a field holding one). */
static inline ptrdiff_t sx_csv_plain(const unsigned char *s, ptrdiff_t n)
{
    ptrdiff_t i = 0;
#if defined(__SSE2__)
    const __m128i comma = _mm_set1_epi8(','), quote = _mm_set1_epi8('"'),
                  lf = _mm_set1_epi8('\n'), cr = _mm_set1_epi8('\r');
    for (; i + 16 <= n; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i bad = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, comma),
                                                _mm_cmpeq_epi8(v, quote)),
                                   _mm_or_si128(_mm_cmpeq_epi8(v, lf),
                                                _mm_cmpeq_epi8(v, cr)));
        int mask = _mm_movemask_epi8(bad);
        if (mask)
            return i + sx_ctz((unsigned)mask);
    }
#endif
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (c == ',' || c == '"' || c == '\n' || c == '\r')
            return i;
    }
    return n;
}

#endif
