/* A gptcli GPT's forward pass on the CPU for one sequence or several: for each, a chunk of
   tokens (a prompt's prefill) or a single one (a decode step) in, the next token's logits out.
   Several sequences share one pass, so each weight is read once for all their tokens; a
   token's numbers do not depend on which others share its pass (every product it takes sums
   in the same order whether it runs alone, with three others in a block, or anywhere else).

   The whole pass (embedding, every block, the final norm and the head) runs inside one
   OpenMP parallel region, so a step pays one thread wake-up instead of one per operation,
   and no Python runs between its operations. Matrix-vector products split their rows over
   the threads; everything else is small and runs on one thread between barriers. The
   barriers are our own: a thread that waits spins briefly, then yields its core at each
   look, so waiting costs little on idle cores and takes little from other work on busy ones
   (OpenMP's own barriers either spin for long, which on shared cores stalls the step behind
   a descheduled thread, or sleep, which costs a slow wake-up at each of the step's barriers).

   Weights are read where torch keeps them (no copies): float32, bfloat16 or int8 with one
   float32 scale per output row. The other parameters (embeddings, norms, biases) are float32
   or bfloat16. Activations are float32 throughout; the bfloat16 product rounds its input
   vector to bfloat16 (as torch's bfloat16 path does) to use the CPU's bfloat16 dot product.
   The KV cache is a torch float32 cache, (layers, rows, heads, max_len, head_size): k_cache
   and v_cache point at a row in layer 0 (gptcli_forward's one row, or row 0 for
   gptcli_forward_rows), and layer_stride is the distance between layers, in floats (rows *
   heads * max_len * head_size).

   Built at run time by gptcli.kernels with the machine's compiler (-O3 -march=native). */

#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX512BF16__)
#include <immintrin.h>
#endif

typedef uint16_t bf16;

enum { F32 = 0, BF16 = 1, I8 = 2 };
enum { GPT2 = 0, MODERN = 1 };

typedef struct {
    const void *w;      /* (rows, cols) in Model.wtype */
    const float *scale; /* int8: (rows,) */
    const void *bias;   /* (rows,) in Model.ptype, or NULL */
} Matrix;

typedef struct {
    const void *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* gpt2: LayerNorm; modern: gains or NULL */
    const void *q_norm, *k_norm;               /* modern: per-head gains or NULL */
    Matrix attn, proj, fc, mlp_proj;
} Layer;

typedef struct {
    int64_t n_layer, n_embd, n_head, head_size, vocab, max_len;
    int32_t family, wtype, ptype, embed_norm;
    float eps;
    const void *wte, *wpe;      /* (vocab, C), gpt2: (block_size, C), in ptype */
    const void *ln_f_w, *ln_f_b;
    Matrix head;
    float *k_cache, *v_cache;   /* the row's (heads, max_len, head_size) in layer 0 */
    const Layer *layers;
    int64_t layer_stride;       /* floats from one layer's cache to the next */
} Model;

/* Several sequences in one pass: row b of the batch feeds count[b] tokens after the pos[b]
   its cache row row[b] already holds (a prefill chunk, or one token of a decode step), so a
   weight is read from memory once for every token of every row. The cache is the whole torch
   cache: Model.k_cache and v_cache point at row 0, and row_stride is the distance between rows
   in floats (heads * max_len * head_size). Rows must be distinct. A row's tokens are stored at
   slots (pos + t) % max_len and token t attends to the first min(pos + t + 1, max_len) of
   them (so a chunk of several tokens must not wrap around the ring). Each token's numbers
   are the same whichever rows share its pass. */
typedef struct {
    int64_t n;             /* rows in the batch */
    const int64_t *row;    /* (n,) the cache row of each */
    const int64_t *pos;    /* (n,) tokens its cache row holds before this pass */
    const int64_t *count;  /* (n,) its new tokens, at least 1 */
    int64_t row_stride;    /* floats from one cache row to the next */
} Rows;

/* The ABI this library speaks, which gptcli.kernels.abi checks before any other call: its
   version, and the size of every struct an entry point takes, in the order of `STRUCTS` in
   abi.py. A new entry point appends its structs to both lists; a change in what an existing
   struct or function means bumps the version. Writes at most `capacity` sizes and returns
   how many structs there are. */
#define GPTCLI_ABI_VERSION 1
int gptcli_abi(int32_t *version, int64_t *sizes, int32_t capacity) {
    const int64_t mine[] = {sizeof(Matrix), sizeof(Layer), sizeof(Model), sizeof(Rows)};
    const int32_t count = (int32_t)(sizeof(mine) / sizeof(mine[0]));
    *version = GPTCLI_ABI_VERSION;
    for (int32_t i = 0; i < count && i < capacity; i++) sizes[i] = mine[i];
    return count;
}

static inline float from_bf16(bf16 h) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)h << 16;
    return c.f;
}

static inline bf16 to_bf16(float f) { /* round to nearest even, as torch does */
    union { uint32_t u; float f; } c;
    c.f = f;
    if ((c.u & 0x7fffffffu) > 0x7f800000u) return (bf16)((c.u >> 16) | 0x40);
    c.u += 0x7fffu + ((c.u >> 16) & 1u);
    return (bf16)(c.u >> 16);
}

static inline float param(const void *p, int64_t i, int ptype) {
    return ptype == BF16 ? from_bf16(((const bf16 *)p)[i]) : ((const float *)p)[i];
}

/* e^x to within about 2e-7 (relative), in a form the compiler vectorizes (the C library's
   expf and tanhf are called one value at a time): x = n ln 2 + r, e^r by its polynomial */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = rintf(x * 1.44269504f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f; /* ln 2 in two parts, exactly */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * c.f;
}

/* GELU, tanh approximation (GPT-2's), over n values in place */
static void gelu(float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float v = y[i], u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        float e = exp_approx(-2.0f * fabsf(u)), t = (1.0f - e) / (1.0f + e);
        y[i] = 0.5f * v * (1.0f + (u < 0 ? -t : t));
    }
}

/* -- the vector a bfloat16 product takes ----------------------------------------------------
   The vector a bfloat16 weight multiplies is rounded to bfloat16 first (as torch's bfloat16
   path rounds it), so each product is exact in float32; `xq` is how the vector is kept. How
   the products are summed is chosen per CPU when the library is built:
   - BF16_DOT (-DGPTCLI_BF16_DOT, on AMD CPUs): the CPU's bfloat16 dot product (vdpbf16ps), 32
     products an instruction, on the vector kept in bfloat16. On Zen 4 it issues as often as
     a float32 multiply-add and does twice the work.
   - BF16_SPLIT (other AVX-512 CPUs): 32 weights are loaded as 16 pairs and widened to float32
     by two instructions (the even ones shifted up, the odd ones masked), then float32
     multiply-adds take the vector kept in float32, each 32 values as their 16 even ones then
     their 16 odd ones (`xq_at`). Intel's Sapphire Rapids issues vdpbf16ps at a quarter of
     the multiply-add's rate, so this sums about 1.7 times the products a cycle.
   Each way, every kernel below sums a row's products against a token in the same order. */
#if defined(__AVX512BF16__) && defined(GPTCLI_BF16_DOT)
#define BF16_DOT 1
typedef bf16 xq;
#else
typedef float xq;
#ifdef __AVX512F__
#define BF16_SPLIT 1
#endif
#endif

/* where value i of a vector of `cols` values goes in its xq form */
static inline int64_t xq_at(int64_t i, int64_t cols) {
#ifdef BF16_SPLIT
    if (cols % 32 == 0) return (i & ~(int64_t)31) | ((i & 1) << 4) | ((i & 31) >> 1);
#endif
    (void)cols;
    return i;
}

static inline void put_xq(xq *row, int64_t i, int64_t cols, float v) {
#ifdef BF16_DOT
    row[xq_at(i, cols)] = to_bf16(v);
#else
    row[xq_at(i, cols)] = from_bf16(to_bf16(v));
#endif
}

/* -- products of up to four weight rows with one vector (a decode step's token) ------------ */
#define ROWS(NAME, W, LOAD)                                                                 \
    static void NAME(const W *w, int64_t k, const float *x, float *out, int64_t count) {   \
        if (count == 4) {                                                                   \
            const W *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;                 \
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                           \
            _Pragma("omp simd reduction(+ : a0, a1, a2, a3)")                               \
            for (int64_t i = 0; i < k; i++) {                                               \
                float xi = x[i];                                                            \
                a0 += LOAD(w0[i]) * xi;                                                     \
                a1 += LOAD(w1[i]) * xi;                                                     \
                a2 += LOAD(w2[i]) * xi;                                                     \
                a3 += LOAD(w3[i]) * xi;                                                     \
            }                                                                               \
            out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;                             \
            return;                                                                         \
        }                                                                                   \
        for (int64_t r = 0; r < count; r++) {                                               \
            const W *wr = w + r * k;                                                        \
            float a = 0;                                                                    \
            _Pragma("omp simd reduction(+ : a)")                                            \
            for (int64_t i = 0; i < k; i++) a += LOAD(wr[i]) * x[i];                        \
            out[r] = a;                                                                     \
        }                                                                                   \
    }
#define AS_FLOAT(v) ((float)(v))
ROWS(rows_bf16_exact, bf16, from_bf16)
#ifdef __AVX512F__
/* float32 and int8 weights, 16 a vector; AVX-512 written out, as the compiler's own
   vectorization of the loops above ran at a sixth of this speed. One accumulator a row, in
   the order the tiles below sum, so a token gets the same sums either way. Each row's stream is
   prefetched AHEAD bytes ahead: on one core that took int8 from 6.8 to about 10 GB/s. */
#define AHEAD 4096
#define PREFETCH(p) _mm_prefetch((const char *)(p) + AHEAD, _MM_HINT_T0)
static inline __mmask16 tail(int64_t left) {
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}
#define ROWS512(NAME, W, LOAD)                                                              \
    static void NAME(const W *w, int64_t k, const float *x, float *out, int64_t count) {   \
        int64_t r = 0;                                                                      \
        for (; r + 4 <= count; r += 4) {                                                    \
            const W *w0 = w + r * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;              \
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                     \
            int64_t i = 0;                                                                  \
            for (; i + 32 <= k; i += 32) {                                                  \
                PREFETCH(w0 + i), PREFETCH(w1 + i), PREFETCH(w2 + i), PREFETCH(w3 + i);     \
                __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);       \
                a0 = _mm512_fmadd_ps(LOAD(0xffff, w0 + i), x0, a0);                         \
                a1 = _mm512_fmadd_ps(LOAD(0xffff, w1 + i), x0, a1);                         \
                a2 = _mm512_fmadd_ps(LOAD(0xffff, w2 + i), x0, a2);                         \
                a3 = _mm512_fmadd_ps(LOAD(0xffff, w3 + i), x0, a3);                         \
                a0 = _mm512_fmadd_ps(LOAD(0xffff, w0 + i + 16), x1, a0);                    \
                a1 = _mm512_fmadd_ps(LOAD(0xffff, w1 + i + 16), x1, a1);                    \
                a2 = _mm512_fmadd_ps(LOAD(0xffff, w2 + i + 16), x1, a2);                    \
                a3 = _mm512_fmadd_ps(LOAD(0xffff, w3 + i + 16), x1, a3);                    \
            }                                                                               \
            for (; i < k; i += 16) {                                                        \
                __mmask16 m = tail(k - i);                                                  \
                __m512 xv = _mm512_maskz_loadu_ps(m, x + i);                                \
                a0 = _mm512_fmadd_ps(LOAD(m, w0 + i), xv, a0);                              \
                a1 = _mm512_fmadd_ps(LOAD(m, w1 + i), xv, a1);                              \
                a2 = _mm512_fmadd_ps(LOAD(m, w2 + i), xv, a2);                              \
                a3 = _mm512_fmadd_ps(LOAD(m, w3 + i), xv, a3);                              \
            }                                                                               \
            out[r] = _mm512_reduce_add_ps(a0), out[r + 1] = _mm512_reduce_add_ps(a1);       \
            out[r + 2] = _mm512_reduce_add_ps(a2), out[r + 3] = _mm512_reduce_add_ps(a3);   \
        }                                                                                   \
        for (; r < count; r++) {                                                            \
            __m512 a = _mm512_setzero_ps();                                                 \
            for (int64_t i = 0; i < k; i += 16) {                                           \
                __mmask16 m = tail(k - i);                                                  \
                a = _mm512_fmadd_ps(LOAD(m, w + r * k + i), _mm512_maskz_loadu_ps(m, x + i), a); \
            }                                                                               \
            out[r] = _mm512_reduce_add_ps(a);                                               \
        }                                                                                   \
    }
#define LOAD_F32(m, p) _mm512_maskz_loadu_ps(m, p)
#define LOAD_I8(m, p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)))
ROWS512(rows_f32, float, LOAD_F32)
ROWS512(rows_i8, int8_t, LOAD_I8)

/* -- tiles: R weight rows (k apart) against T tokens' vectors (k apart) at once ------------
   Each weight vector loaded serves T tokens and each token's vector R rows, so the products
   are bound by the multiply-adds rather than by loads. out[t * 4 + r]; k % 32 == 0. Called
   with constant R and T (4 x 4, 2 x 8; 4 x 1 and 1 x 1 for bfloat16's decode step), which
   the compiler unrolls into registers. */
#define TILE static inline __attribute__((always_inline)) void
/* float32 rows (fetch: prefetched ahead, or in cache already) and int8 rows widened in
   registers: the same sums as tile_f32 on the int8 rows widened first */
#define TILE512(NAME, W, LOAD)                                                              \
    TILE NAME(const W *w, int64_t k, const float *x, float *out, const int R, const int T,  \
              const int fetch) {                                                            \
        __m512 a[8][4];                                                                     \
        for (int t = 0; t < T; t++)                                                         \
            for (int r = 0; r < R; r++) a[t][r] = _mm512_setzero_ps();                      \
        for (int64_t i = 0; i < k; i += 16) {                                               \
            __m512 wv[4];                                                                   \
            for (int r = 0; r < R; r++) {                                                   \
                if (fetch) PREFETCH(w + r * k + i);                                         \
                wv[r] = LOAD(w + r * k + i);                                                \
            }                                                                               \
            for (int t = 0; t < T; t++) {                                                   \
                const __m512 xv = _mm512_loadu_ps(x + t * k + i);                           \
                for (int r = 0; r < R; r++) a[t][r] = _mm512_fmadd_ps(wv[r], xv, a[t][r]);  \
            }                                                                               \
        }                                                                                   \
        for (int t = 0; t < T; t++)                                                         \
            for (int r = 0; r < R; r++) out[t * 4 + r] = _mm512_reduce_add_ps(a[t][r]);     \
    }
#define LOAD16_F32(p) _mm512_loadu_ps(p) /* (unmasked: a masked load ran prefill 1.4x slower) */
#define LOAD16_I8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
TILE512(tile_f32, float, LOAD16_F32)
TILE512(tile_i8, int8_t, LOAD16_I8)

#ifdef BF16_DOT
TILE tile_bf16(const bf16 *w, int64_t k, const bf16 *x, float *out, const int R, const int T) {
    __m512 a[8][4];
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) a[t][r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 32) {
        __m512bh wv[4];
        for (int r = 0; r < R; r++) {
            PREFETCH(w + r * k + i);
            wv[r] = (__m512bh)_mm512_loadu_si512(w + r * k + i);
        }
        for (int t = 0; t < T; t++) {
            const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + t * k + i);
            for (int r = 0; r < R; r++) a[t][r] = _mm512_dpbf16_ps(a[t][r], wv[r], xv);
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) out[t * 4 + r] = _mm512_reduce_add_ps(a[t][r]);
}
#else /* BF16_SPLIT */
TILE tile_bf16(const bf16 *w, int64_t k, const float *x, float *out, const int R, const int T) {
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    __m512 a[8][4];
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) a[t][r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 32) {
        __m512 even[4], odd[4];
        for (int r = 0; r < R; r++) {
            PREFETCH(w + r * k + i);
            const __m512i pairs = _mm512_loadu_si512(w + r * k + i);
            even[r] = _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
            odd[r] = _mm512_castsi512_ps(_mm512_and_si512(pairs, high));
        }
        for (int t = 0; t < T; t++) {
            const __m512 xe = _mm512_loadu_ps(x + t * k + i), xo = _mm512_loadu_ps(x + t * k + i + 16);
            for (int r = 0; r < R; r++) {
                a[t][r] = _mm512_fmadd_ps(even[r], xe, a[t][r]);
                a[t][r] = _mm512_fmadd_ps(odd[r], xo, a[t][r]);
            }
        }
    }
    for (int t = 0; t < T; t++)
        for (int r = 0; r < R; r++) out[t * 4 + r] = _mm512_reduce_add_ps(a[t][r]);
}
#endif

/* bfloat16 weights against one token's vector in its xq form */
static void rows_bf16(const bf16 *w, int64_t k, const xq *x, float *out, int64_t count) {
    if (k % 32) {
#ifdef BF16_DOT
        float plain[k];
        for (int64_t i = 0; i < k; i++) plain[i] = from_bf16(x[i]);
        rows_bf16_exact(w, k, plain, out, count);
#else
        rows_bf16_exact(w, k, x, out, count);
#endif
        return;
    }
    int64_t r = 0;
    for (; r + 4 <= count; r += 4) tile_bf16(w + r * k, k, x, out + r, 4, 1);
    for (; r < count; r++) tile_bf16(w + r * k, k, x, out + r, 1, 1);
}

/* T tokens from t (4 or 8) against the four rows from j0 (k % 32 == 0): out[t * 4 + r].
   wide: int8 rows widened to float32, else NULL. */
static void tiles(const Model *m, const Matrix *mat, const float *wide, int64_t j0, int64_t k,
                  const float *x, const xq *xb, int64_t t, int64_t count, float *out) {
    if (m->wtype == BF16) {
        const bf16 *w = (const bf16 *)mat->w + j0 * k;
        const xq *xt = xb + t * k;
        if (count == 8) {
            tile_bf16(w, k, xt, out, 2, 8);
            tile_bf16(w + 2 * k, k, xt, out + 2, 2, 8);
        } else {
            tile_bf16(w, k, xt, out, 4, 4);
        }
        return;
    }
    const float *xt = x + t * k;
    if (wide) { /* (4 x 4 only; in cache: nothing to fetch) */
        tile_f32(wide, k, xt, out, 4, 4, 0);
        return;
    }
    if (m->wtype == I8) { /* a batch's decode step: widened in registers */
        const int8_t *w = (const int8_t *)mat->w + j0 * k;
        if (count == 8) {
            tile_i8(w, k, xt, out, 2, 8, 1);
            tile_i8(w + 2 * k, k, xt, out + 2, 2, 8, 1);
        } else {
            tile_i8(w, k, xt, out, 4, 4, 1);
        }
        return;
    }
    const float *w = (const float *)mat->w + j0 * k;
    if (count == 8) {
        tile_f32(w, k, xt, out, 2, 8, 1);
        tile_f32(w + 2 * k, k, xt, out + 2, 2, 8, 1);
    } else {
        tile_f32(w, k, xt, out, 4, 4, 1);
    }
}
#else
ROWS(rows_f32, float, AS_FLOAT)
ROWS(rows_i8, int8_t, AS_FLOAT)
#endif

/* -- the team: thread t of n does its share of each loop, then waits for the others ------- */
typedef struct {
    atomic_int arrived, phase;
    int n;
} Barrier;

typedef struct {
    int t, n;
    Barrier *barrier;
} Team;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void wait_all(Team *team) {
    Barrier *b = team->barrier;
    if (b->n == 1) return;
    int phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, phase + 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == phase; spins++) {
        if (spins < 256) relax();
        else sched_yield();
    }
}

/* this thread's share [*lo, *hi) of `count` items */
static inline void share(const Team *team, int64_t count, int64_t *lo, int64_t *hi) {
    *lo = count * team->t / team->n;
    *hi = count * (team->t + 1) / team->n;
}

enum { PLAIN = 0, GELU = 1, RELU2 = 2, ADD = 3 };

/* tokens whose vectors (float32, cols each) stay in cache while the thread's weight rows
   pass: about 768 KB of them, a multiple of 8. A long prefill reads each weight once for
   every this many tokens (256 for GPT-2 small's 768 columns, 64 for its 3072). */
static inline int64_t tokens_at_once(int64_t cols) {
    int64_t n = (768 * 1024 / 4 / cols) & ~(int64_t)7;
    return n < 8 ? 8 : n;
}

/* y[t] = act(W x[t] + b), or y[t] += W x[t] + b (ADD), for the `tokens` rows of x (cols
   each) and y (rows each); called by every thread of the region, which share the weight's
   rows, so each weight is read from memory once for every tokens_at_once tokens. xb is x in
   its xq form (bfloat16 weights only). Ends at a barrier. */
static void matvec(Team *team, const Model *m, const Matrix *mat, int64_t rows, int64_t cols,
                   int64_t tokens, const float *x, const xq *xb, float *y, int mode) {
    int64_t lo, hi;
    (void)xb;
    share(team, (rows + 3) / 4, &lo, &hi);
    /* a long pass (prefill): int8 rows are widened to float32 once, not once a tile; a batch's
       decode step (8 tokens or fewer) widens them in registers (tile_i8) */
    float *wide = NULL;
#ifdef __AVX512F__ /* (where rows_f32 and rows_i8 sum in the same order: the same numbers) */
    if (m->wtype == I8 && tokens > 8) wide = malloc(sizeof(float) * 4 * cols);
#endif
    const int64_t at_once = tokens_at_once(cols);
    for (int64_t t0 = 0; t0 < tokens; t0 += at_once) {
        const int64_t t1 = tokens - t0 < at_once ? tokens : t0 + at_once;
        for (int64_t g = lo; g < hi; g++) {
            int64_t j0 = g * 4, count = rows - j0 < 4 ? rows - j0 : 4;
            if (wide)
                for (int64_t i = 0; i < count * cols; i++)
                    wide[i] = (float)((const int8_t *)mat->w)[j0 * cols + i];
            for (int64_t t = t0; t < t1;) {
                float out[32];
                int64_t n = 1; /* tokens done by this pass */
#ifdef __AVX512F__
                if (count == 4 && cols % 32 == 0 && t1 - t >= 4) {
                    /* 2 x 8 tiles for a batch's decode step (8 rows' tokens, each weight read
                       once for all), 4 x 4 for longer passes, where each tile reads the
                       tokens again from cache and 2 x 8 reads them twice as often (measured:
                       prefill 8 x 32 slower with 2 x 8) */
                    n = t1 - t >= 8 && tokens <= 8 ? 8 : 4;
                    tiles(m, mat, wide, j0, cols, x, xb, t, n, out);
                }
#endif
                const float *xt = x + t * cols;
                if (n > 1)
                    ;
                else if (wide)
                    rows_f32(wide, cols, xt, out, count);
                else if (m->wtype == F32)
                    rows_f32((const float *)mat->w + j0 * cols, cols, xt, out, count);
                else if (m->wtype == I8)
                    rows_i8((const int8_t *)mat->w + j0 * cols, cols, xt, out, count);
                else
#ifdef __AVX512F__
                    rows_bf16((const bf16 *)mat->w + j0 * cols, cols, xb + t * cols, out, count);
#else
                    rows_bf16_exact((const bf16 *)mat->w + j0 * cols, cols, xt, out, count);
#endif
                for (int64_t u = 0; u < n; u++) {
                    float *yt = y + (t + u) * rows;
                    for (int64_t r = 0; r < count; r++) {
                        int64_t j = j0 + r;
                        float v = out[u * 4 + r];
                        if (mat->scale) v *= mat->scale[j];
                        if (mat->bias) v += param(mat->bias, j, m->ptype);
                        if (mode == RELU2) v = v > 0 ? v * v : 0;
                        if (mode == ADD) yt[j] += v;
                        else yt[j] = v;
                    }
                }
                t += n;
            }
        }
    }
    free(wide);
    if (mode == GELU) /* on this thread's own rows, vectorized */
        for (int64_t t = 0; t < tokens; t++) {
            int64_t j0 = lo * 4, j1 = hi * 4 < rows ? hi * 4 : rows;
            gelu(y + t * rows + j0, j1 - j0);
        }
    wait_all(team);
}

/* y = norm(x) over n values: LayerNorm with gain and bias (gpt2), else RMSNorm with an
   optional gain; xb (if not NULL) gets y in its xq form. */
static void norm(const Model *m, const float *x, const void *gain, const void *bias, int64_t n,
                 float *y, xq *xb) {
    float mean = 0, var = 0;
    if (m->family == GPT2) {
        for (int64_t i = 0; i < n; i++) mean += x[i];
        mean /= n;
    }
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.0f / sqrtf(var / n + m->eps);
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - mean) * inv;
        if (gain) v *= param(gain, i, m->ptype);
        if (bias) v += param(bias, i, m->ptype);
        y[i] = v;
        if (xb) put_xq(xb, i, n, v);
    }
}

/* values [from, from + n) of a vector of `cols` (x holds them) into its xq form, row */
static void put_xq_range(const float *x, xq *row, int64_t from, int64_t n, int64_t cols) {
    for (int64_t i = 0; i < n; i++) put_xq(row, from + i, cols, x[i]);
}

/* norm of each of x's `tokens` rows (C each) into h and xb, shared by the threads; ends at a
   barrier */
static void norm_rows(Team *team, const Model *m, const float *x, const void *gain,
                      const void *bias, int64_t tokens, float *h, xq *xb) {
    int64_t lo, hi, C = m->n_embd;
    share(team, tokens, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) norm(m, x + t * C, gain, bias, C, h + t * C, xb + t * C);
    wait_all(team);
}

/* Several sequences in one pass (see Rows). ids: the rows' tokens one after the other (sum of count); rope_cos/rope_sin: (tokens,
   head_size / 2) at each token's position (modern), else NULL. logits: (n, vocab) float32,
   of each row's last token. Returns 0, or -1 when out of memory. */
int gptcli_forward_rows(const Model *m, const Rows *rows, const int64_t *ids,
                        const float *rope_cos, const float *rope_sin, float *logits,
                        int threads) {
    const int64_t C = m->n_embd, H = m->n_head, D = m->head_size, F = 4 * m->n_embd;
    const int64_t L = m->max_len, B = rows->n;
    int64_t T = 0;
    for (int64_t b = 0; b < B; b++) T += rows->count[b];
    if (threads < 1) threads = 1;
    float *buf = malloc(sizeof(float) * (T * (C + C + 3 * C + C + F) + threads * L));
    xq *xb = malloc(sizeof(xq) * T * F);
    int64_t *at = malloc(sizeof(int64_t) * (2 * T + B)); /* each token's position, its row's
                                                            cache offset; each row's last */
    if (!buf || !xb || !at) {
        free(buf), free(xb), free(at);
        return -1;
    }
    int64_t *where = at + T, *last = where + T;
    for (int64_t b = 0, t = 0; b < B; b++) {
        for (int64_t u = 0; u < rows->count[b]; u++, t++) {
            at[t] = rows->pos[b] + u;
            where[t] = rows->row[b] * rows->row_stride;
        }
        last[b] = t - 1;
    }
    float *x = buf, *h = x + T * C, *qkv = h + T * C, *att = qkv + T * 3 * C;
    float *f = att + T * C, *scores = f + T * F;
    const float scale = 1.0f / sqrtf((float)D);
    Barrier barrier = {0, 0, 1};

#pragma omp parallel num_threads(threads)
    {
        Team team = {omp_get_thread_num(), omp_get_num_threads(), &barrier};
        int64_t lo, hi;
#pragma omp single
        barrier.n = team.n; /* (the single's own barrier publishes it) */
        share(&team, T, &lo, &hi);
        for (int64_t t = lo; t < hi; t++) {
            float *xt = x + t * C;
            for (int64_t i = 0; i < C; i++) {
                xt[i] = param(m->wte, ids[t] * C + i, m->ptype);
                if (m->family == GPT2) xt[i] += param(m->wpe, at[t] * C + i, m->ptype);
            }
            if (m->embed_norm) norm(m, xt, NULL, NULL, C, xt, NULL);
        }
        wait_all(&team);
        norm_rows(&team, m, x, m->layers[0].ln1_w, m->layers[0].ln1_b, T, h, xb);
        for (int64_t l = 0; l < m->n_layer; l++) {
            const Layer *ly = &m->layers[l];
            float *kc = m->k_cache + l * m->layer_stride, *vc = m->v_cache + l * m->layer_stride;
            matvec(&team, m, &ly->attn, 3 * C, C, T, h, xb, qkv, PLAIN);
            share(&team, T * H, &lo, &hi);
            for (int64_t job = lo; job < hi; job++) { /* a token's key and value in a head */
                int64_t t = job / H, hd = job % H, slot = at[t] % L;
                float *q = qkv + t * 3 * C + hd * D, *k = q + C, *v = q + 2 * C;
                if (m->family == MODERN) {
                    const float *cs = rope_cos + t * (D / 2), *sn = rope_sin + t * (D / 2);
                    norm(m, q, ly->q_norm, NULL, D, q, NULL);
                    norm(m, k, ly->k_norm, NULL, D, k, NULL);
                    for (int64_t i = 0; i < D / 2; i++) {
                        float c = cs[i], s = sn[i];
                        float q1 = q[i], q2 = q[i + D / 2], k1 = k[i], k2 = k[i + D / 2];
                        q[i] = q1 * c - q2 * s, q[i + D / 2] = q1 * s + q2 * c;
                        k[i] = k1 * c - k2 * s, k[i + D / 2] = k1 * s + k2 * c;
                    }
                }
                memcpy(kc + where[t] + (hd * L + slot) * D, k, sizeof(float) * D);
                memcpy(vc + where[t] + (hd * L + slot) * D, v, sizeof(float) * D);
            }
            wait_all(&team);
            for (int64_t job = lo; job < hi; job++) { /* a token's attention in a head */
                int64_t t = job / H, hd = job % H;
                int64_t keys = at[t] + 1 < L ? at[t] + 1 : L;
                const float *q = qkv + t * 3 * C + hd * D;
                const float *kh = kc + where[t] + hd * L * D, *vh = vc + where[t] + hd * L * D;
                float *sc = scores + team.t * L, top = -INFINITY, sum = 0;
                for (int64_t j = 0; j < keys; j++) {
                    float s = 0;
                    const float *kj = kh + j * D;
#pragma omp simd reduction(+ : s)
                    for (int64_t i = 0; i < D; i++) s += q[i] * kj[i];
                    sc[j] = s * scale;
                    top = sc[j] > top ? sc[j] : top;
                }
#pragma omp simd reduction(+ : sum)
                for (int64_t j = 0; j < keys; j++) sum += (sc[j] = exp_approx(sc[j] - top));
                float *out = att + t * C + hd * D;
                for (int64_t i = 0; i < D; i++) out[i] = 0;
                for (int64_t j = 0; j < keys; j++) {
                    const float p = sc[j] / sum, *vj = vh + j * D;
#pragma omp simd
                    for (int64_t i = 0; i < D; i++) out[i] += p * vj[i];
                }
                if (m->wtype == BF16) put_xq_range(out, xb + t * C, hd * D, D, C);
            }
            wait_all(&team);
            matvec(&team, m, &ly->proj, C, C, T, att, xb, x, ADD);
            norm_rows(&team, m, x, ly->ln2_w, ly->ln2_b, T, h, xb);
            matvec(&team, m, &ly->fc, F, C, T, h, xb, f, m->family == GPT2 ? GELU : RELU2);
            if (m->wtype == BF16) {
                share(&team, T * F, &lo, &hi); /* (rows of F values: F % 32 == 0 or not) */
                for (int64_t i = lo; i < hi; i++) put_xq(xb + i / F * F, i % F, F, f[i]);
                wait_all(&team);
            }
            matvec(&team, m, &ly->mlp_proj, C, F, T, f, xb, x, ADD);
            if (l + 1 < m->n_layer)
                norm_rows(&team, m, x, m->layers[l + 1].ln1_w, m->layers[l + 1].ln1_b, T, h,
                          xb);
        }
        share(&team, B, &lo, &hi); /* only each row's last token goes on to the head */
        for (int64_t b = lo; b < hi; b++)
            norm(m, x + last[b] * C, m->ln_f_w, m->ln_f_b, C, h + b * C, xb + b * C);
        wait_all(&team);
        matvec(&team, m, &m->head, m->vocab, C, B, h, xb, logits, PLAIN);
    }
    free(buf);
    free(xb);
    free(at);
    return 0;
}

/* One sequence: `tokens` tokens at positions pos, pos + 1, ... of the cache row that
   Model.k_cache and v_cache point at (see gptcli_forward_rows); logits: (vocab,) of the last
   token. */
int gptcli_forward(const Model *m, const int64_t *ids, int64_t tokens, int64_t pos,
                   const float *rope_cos, const float *rope_sin, float *logits, int threads) {
    const int64_t row = 0;
    const Rows one = {1, &row, &pos, &tokens, 0};
    return gptcli_forward_rows(m, &one, ids, rope_cos, rope_sin, logits, threads);
}
