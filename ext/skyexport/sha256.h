/* SHA-256 (FIPS 180-4) for code that runs without the GIL (the media copy loop,
 * media/copy.pxi; the CAR scan, car/scan.pxi).  Two block functions: portable C, and on
 * x86-64 with GCC or Clang the SHA extensions (SHA-NI), chosen once at run time from CPUID;
 * and for each a function that hashes two streams at once (sx_sha256_blocks2): with the SHA
 * extensions their rounds interleave, which a CPU whose SHA instructions wait on each
 * other's results runs about 1.6 times as fast as the two one after the other (the scan
 * hashes the file and each block).  Tested against hashlib by
 * tests/unit/test_media_copy_loop.py, every one of them. */
#ifndef SKYEXPORT_SHA256_H
#define SKYEXPORT_SHA256_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SX_SHA_NI_BUILD 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define SX_SHA_NI_BUILD 0
#endif

typedef struct {
    uint32_t h[8];
    uint64_t len;          /* bytes hashed so far */
    unsigned char buf[64];
    size_t n;              /* bytes waiting in buf */
} sx_sha256;

static const uint32_t sx_sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

#define SX_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sx_sha256_blocks_c(uint32_t h[8], const unsigned char *p, size_t blocks)
{
    uint32_t w[64];
    while (blocks--) {
        uint32_t a, b, c, d, e, f, g, hh;
        int t;
        for (t = 0; t < 16; t++)
            w[t] = ((uint32_t)p[4 * t] << 24) | ((uint32_t)p[4 * t + 1] << 16)
                 | ((uint32_t)p[4 * t + 2] << 8) | (uint32_t)p[4 * t + 3];
        for (t = 16; t < 64; t++) {
            uint32_t s0 = SX_ROR(w[t - 15], 7) ^ SX_ROR(w[t - 15], 18) ^ (w[t - 15] >> 3);
            uint32_t s1 = SX_ROR(w[t - 2], 17) ^ SX_ROR(w[t - 2], 19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16] + s0 + w[t - 7] + s1;
        }
        a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
        for (t = 0; t < 64; t++) {
            uint32_t t1 = hh + (SX_ROR(e, 6) ^ SX_ROR(e, 11) ^ SX_ROR(e, 25))
                        + ((e & f) ^ (~e & g)) + sx_sha256_k[t] + w[t];
            uint32_t t2 = (SX_ROR(a, 2) ^ SX_ROR(a, 13) ^ SX_ROR(a, 22))
                        + ((a & b) ^ (a & c) ^ (b & c));
            hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d;
        h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
        p += 64;
    }
}

#if SX_SHA_NI_BUILD
/* The SHA extensions: the state as ABEF/CDGH, four rounds per message group. */
__attribute__((target("sha,sse4.1,ssse3")))
static inline void sx_ni_load(const uint32_t h[8], __m128i *s0, __m128i *s1)
{
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1); /* CDAB */
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B);
    *s0 = _mm_alignr_epi8(tmp, efgh, 8);          /* ABEF */
    *s1 = _mm_blend_epi16(efgh, tmp, 0xF0);       /* CDGH */
}

__attribute__((target("sha,sse4.1,ssse3")))
static inline void sx_ni_store(uint32_t h[8], __m128i s0, __m128i s1)
{
    __m128i tmp = _mm_shuffle_epi32(s0, 0x1B);    /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);             /* DCHG */
    _mm_storeu_si128((__m128i *)&h[0], _mm_blend_epi16(tmp, s1, 0xF0));   /* DCBA */
    _mm_storeu_si128((__m128i *)&h[4], _mm_alignr_epi8(s1, tmp, 8));      /* HGFE */
}

/* Message group i (W[4i..4i+3]) of the block at p into m[i & 3]: loaded for i < 4, else
 * W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time. */
__attribute__((target("sha,sse4.1,ssse3")))
static inline void sx_ni_schedule(__m128i m[4], const unsigned char *p, int i, __m128i mask)
{
    if (i < 4) {
        m[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), mask);
    } else {
        __m128i x = _mm_sha256msg1_epu32(m[i & 3], m[(i + 1) & 3]);
        x = _mm_add_epi32(x, _mm_alignr_epi8(m[(i + 3) & 3], m[(i + 2) & 3], 4));
        m[i & 3] = _mm_sha256msg2_epu32(x, m[(i + 3) & 3]);
    }
}

/* Rounds 4i..4i+3 with message group m. */
__attribute__((target("sha,sse4.1,ssse3")))
static inline void sx_ni_rounds(__m128i m, __m128i *s0, __m128i *s1, int i)
{
    __m128i msg = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)&sx_sha256_k[4 * i]));
    *s1 = _mm_sha256rnds2_epu32(*s1, *s0, msg);
    *s0 = _mm_sha256rnds2_epu32(*s0, *s1, _mm_shuffle_epi32(msg, 0x0E));
}

#define SX_NI_MASK _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL)
#if defined(__clang__)
#define SX_UNROLL_16 _Pragma("clang loop unroll(full)")
#else
#define SX_UNROLL_16 _Pragma("GCC unroll 16")
#endif

__attribute__((target("sha,sse4.1,ssse3")))
static void sx_sha256_blocks_ni(uint32_t h[8], const unsigned char *p, size_t blocks)
{
    const __m128i mask = SX_NI_MASK;
    __m128i s0, s1;
    sx_ni_load(h, &s0, &s1);
    while (blocks--) {
        __m128i m[4], save0 = s0, save1 = s1;
        int i;
        SX_UNROLL_16
        for (i = 0; i < 16; i++) {
            sx_ni_schedule(m, p, i, mask);
            sx_ni_rounds(m[i & 3], &s0, &s1, i);
        }
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
        p += 64;
    }
    sx_ni_store(h, s0, s1);
}

/* Two streams, `blocks` 64-byte blocks of each, their rounds interleaved. */
__attribute__((target("sha,sse4.1,ssse3")))
static void sx_sha256_blocks2_ni(uint32_t ha[8], const unsigned char *pa, uint32_t hb[8],
                                 const unsigned char *pb, size_t blocks)
{
    const __m128i mask = SX_NI_MASK;
    __m128i a0, a1, b0, b1;
    sx_ni_load(ha, &a0, &a1);
    sx_ni_load(hb, &b0, &b1);
    while (blocks--) {
        __m128i ma[4], mb[4], sa0 = a0, sa1 = a1, sb0 = b0, sb1 = b1;
        int i;
        SX_UNROLL_16
        for (i = 0; i < 16; i++) {
            sx_ni_schedule(ma, pa, i, mask);
            sx_ni_schedule(mb, pb, i, mask);
            sx_ni_rounds(ma[i & 3], &a0, &a1, i);
            sx_ni_rounds(mb[i & 3], &b0, &b1, i);
        }
        a0 = _mm_add_epi32(a0, sa0);
        a1 = _mm_add_epi32(a1, sa1);
        b0 = _mm_add_epi32(b0, sb0);
        b1 = _mm_add_epi32(b1, sb1);
        pa += 64;
        pb += 64;
    }
    sx_ni_store(ha, a0, a1);
    sx_ni_store(hb, b0, b1);
}

static int sx_cpu_has_sha_ni(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19)))   /* SSSE3, SSE4.1 */
        return 0;
    if (__get_cpuid_max(0, 0) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1;                          /* SHA */
}
#endif

static void sx_sha256_blocks2_c(uint32_t ha[8], const unsigned char *pa, uint32_t hb[8],
                                const unsigned char *pb, size_t blocks)
{
    sx_sha256_blocks_c(ha, pa, blocks);
    sx_sha256_blocks_c(hb, pb, blocks);
}

typedef void (*sx_sha256_blocks_fn)(uint32_t *, const unsigned char *, size_t);
typedef void (*sx_sha256_blocks2_fn)(uint32_t *, const unsigned char *, uint32_t *,
                                     const unsigned char *, size_t);
static sx_sha256_blocks_fn sx_sha256_blocks = sx_sha256_blocks_c;
static sx_sha256_blocks2_fn sx_sha256_blocks2 = sx_sha256_blocks2_c;

/* Choose the block function: `accelerated` 0 forces portable C.  Returns 1 when the SHA
 * extensions are used.  Called with the GIL held, before any hashing thread runs. */
static int sx_sha256_select(int accelerated)
{
#if SX_SHA_NI_BUILD
    if (accelerated && sx_cpu_has_sha_ni()) {
        sx_sha256_blocks = sx_sha256_blocks_ni;
        sx_sha256_blocks2 = sx_sha256_blocks2_ni;
        return 1;
    }
#endif
    (void)accelerated;
    sx_sha256_blocks = sx_sha256_blocks_c;
    sx_sha256_blocks2 = sx_sha256_blocks2_c;
    return 0;
}

static const uint32_t sx_sha256_iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                          0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

static void sx_sha256_init(sx_sha256 *s)
{
    memcpy(s->h, sx_sha256_iv, sizeof sx_sha256_iv);
    s->len = 0;
    s->n = 0;
}

/* The last block or two of a message of `len` bytes whose last `rn` (< 64) are at `rest`:
 * those bytes, 0x80, zeros, the length in bits, into `tail`; returns how many blocks. */
static size_t sx_sha256_pad(unsigned char tail[128], const unsigned char *rest, size_t rn,
                            uint64_t len)
{
    size_t tb = rn + 9 <= 64 ? 1 : 2, j;
    uint64_t bits = len * 8;
    memcpy(tail, rest, rn);
    tail[rn] = 0x80;
    memset(tail + rn + 1, 0, 64 * tb - rn - 1);
    for (j = 0; j < 8; j++)
        tail[64 * tb - 1 - j] = (unsigned char)(bits >> (8 * j));
    return tb;
}

/* The state h as the digest's 32 bytes, big-endian. */
static void sx_sha256_out(const uint32_t h[8], unsigned char out[32])
{
    int i;
    for (i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static void sx_sha256_update(sx_sha256 *s, const unsigned char *p, size_t n)
{
    s->len += n;
    if (s->n) {
        size_t take = 64 - s->n < n ? 64 - s->n : n;
        memcpy(s->buf + s->n, p, take);
        s->n += take;
        p += take;
        n -= take;
        if (s->n < 64)
            return;
        sx_sha256_blocks(s->h, s->buf, 1);
        s->n = 0;
    }
    if (n >= 64) {
        sx_sha256_blocks(s->h, p, n / 64);
        p += n & ~(size_t)63;
        n &= 63;
    }
    if (n) {
        memcpy(s->buf, p, n);
        s->n = n;
    }
}

/* k blocks at p into the message state h, each paired with a block of the running
 * stream `a` (a->h, at *pa: *ablocks whole blocks left) while it has one. */
static void sx_sha256_beside(sx_sha256 *a, const unsigned char **pa, size_t *ablocks,
                             uint32_t h[8], const unsigned char *p, size_t k)
{
    while (k) {
        size_t m = k < *ablocks ? k : *ablocks;
        if (!m) {
            sx_sha256_blocks(h, p, k);
            return;
        }
        sx_sha256_blocks2(a->h, *pa, h, p, m);
        *pa += 64 * m;
        *ablocks -= m;
        p += 64 * m;
        k -= m;
    }
}

/* The running stream `a` fed `an` more bytes at `pa`, and beside it n whole messages
 * (msgs[i], lens[i] bytes) hashed, their digests into out (32 bytes each): the messages' 64-byte
 * blocks (their padded ends included) paired with a's whole blocks while a has some
 * (sx_sha256_blocks2), the rest alone.  The same digests as sx_sha256_update and
 * sx_sha256_final one at a time. */
static void sx_sha256_pair(sx_sha256 *a, const unsigned char *pa, size_t an,
                           const unsigned char *const *msgs, const size_t *lens, size_t n,
                           unsigned char *out)
{
    size_t i, ablocks;
    a->len += an;
    if (a->n) {                              /* a's partial block first, alone */
        size_t take = 64 - a->n < an ? 64 - a->n : an;
        memcpy(a->buf + a->n, pa, take);
        a->n += take;
        pa += take;
        an -= take;
        if (a->n == 64) {
            sx_sha256_blocks(a->h, a->buf, 1);
            a->n = 0;
        }
    }
    ablocks = a->n ? 0 : an / 64;
    for (i = 0; i < n; i++) {
        uint32_t h[8];
        unsigned char tail[128];
        size_t whole = lens[i] / 64;
        size_t tb = sx_sha256_pad(tail, msgs[i] + 64 * whole, lens[i] % 64, lens[i]);
        memcpy(h, sx_sha256_iv, sizeof sx_sha256_iv);
        sx_sha256_beside(a, &pa, &ablocks, h, msgs[i], whole);
        sx_sha256_beside(a, &pa, &ablocks, h, tail, tb);
        sx_sha256_out(h, out + 32 * i);
    }
    if (!a->n) {                             /* a's own whole blocks left, then its end */
        sx_sha256_blocks(a->h, pa, ablocks);
        pa += 64 * ablocks;
        memcpy(a->buf, pa, an % 64);
        a->n = an % 64;
    }
}

static void sx_sha256_final(sx_sha256 *s, unsigned char out[32])
{
    unsigned char tail[128];
    sx_sha256_blocks(s->h, tail, sx_sha256_pad(tail, s->buf, s->n, s->len));
    sx_sha256_out(s->h, out);
}

#endif
