/* The CPU kernel of lovasz.torch and lovasz.jax: loss and gradient of float32 rows, with a radix sort.
 *
 * A row is one (set, class) pair: `segments` runs of `n` contiguous pixels,
 * `stride` elements apart (one run per image of a batch-mode row, one run for a
 * per-image row), so rows are read in the prediction's own [B, C, N] layout
 * with no transpose. Codes are 0 background, 1 foreground, 2 ignored.
 *
 * The error of each valid pixel becomes a 64-bit item, (~error bits) << 32 |
 * flags | offset. Errors are non-negative floats, whose bits sort like the
 * numbers, so sorting the items ascending by their high word orders the errors
 * decreasingly. Pixels with zero error (and ignored ones) would sort last, where
 * they change neither the loss nor any other pixel's Jaccard step: they are
 * left out of the sort.
 *
 * Items are made free of branches, a block of pixels at a time (labels and zero
 * errors come in no order a branch predictor could learn). The sort is a radix
 * sort in two levels, so that its scratch is one buffer of the row's items plus
 * one of its largest bucket, and every pass but the first runs in cache: the
 * items are scattered into 1024 buckets by the top 10 bits of their key
 * (stable); then each bucket, in order, is sorted by the remaining 21 bits (LSD,
 * 7 bits a pass, stable) and at once walked to accumulate the loss
 * and write d loss / d pred = (J(k) - J(k-1)) * d error / d pred at each offset.
 *
 * `grad` may be `pred` itself: each pixel is read for the last time before its
 * gradient is written.
 *
 * Loaded with ctypes (which releases the GIL): Python runs blocks of rows on several threads (torch's
 * OpenMP team through lovasz_team_worker, or a pool of its own). Compiled as an extension module so that
 * pip builds it, against CPython's limited API (setup.py). Portable C99 (SSE2 intrinsics where there
 * are some): tests/test_kernel_build.py compiles it with -std=c99 -Wall -Wextra -pedantic -Werror under
 * gcc and clang.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* SSE2's non-temporal stores, where the processor has them (every x86-64): see write_grid_row. */
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define HAVE_STREAM_STORES 1
#endif

#if defined(_WIN32)
#define EXPORT __declspec(dllexport) /* for ctypes to find it */
#else
#define EXPORT
#endif

/* The exponential's rounding, the NaN selects and the tests of NaN propagation need IEEE arithmetic. */
#if defined(__FAST_MATH__)
#error "lovasz's kernel must not be built with -ffast-math (or -Ofast): it relies on IEEE NaN and rounding"
#endif

/* The calling convention of the entries below; _ckernel.py refuses a library that says another. */
#define LOVASZ_ABI 2

enum { FOREGROUND = 1, IGNORED = 2 };
enum { SOFTMAX, HINGE, ERRORS }; /* how a prediction x becomes an error: see _ckernel.py */

/* Keys are ~error bits with the error's sign bit clear, so key bit 31 is always set. */
#define TOP_SHIFT 21 /* the first level: key bits 21..30 */
#define TOP_BUCKETS 1024
#define LOW_BITS 7 /* the second level: key bits 0..20, three passes */
#define LOW_PASSES 3
#define LOW_BUCKETS (1 << LOW_BITS)
#define SMALL_BUCKET 32 /* sorted by insertion */
/* The low word of an item: the pixel's offset from the row's start, and two flags. */
#define FG_FLAG 0x80000000u
#define NEGATIVE_FLAG 0x40000000u /* d error / d pred = -1 (else +1) */
#define OFFSET_MASK 0x3fffffffu

typedef struct {
    const float *pred;
    const uint8_t *codes;
    float *grad; /* NULL: no gradient wanted */
    int64_t segments, n, stride;
    int mode;
} Row;

/* The item of the pixel at `offset`; *keep says whether it goes into the sort (not an
 * ignored pixel, nor a zero error, whose gradient is 0). Free of branches on the data:
 * labels and zero errors come in no order that a branch predictor could learn. */
static inline uint64_t pixel_item(const Row *row, uint32_t offset, uint32_t *keep, int64_t *gts) {
    const uint32_t code = row->codes[offset], fg = code == FOREGROUND;
    *gts += fg;
    uint32_t bits;
    memcpy(&bits, &row->pred[offset], sizeof bits);
    float x, flipped; /* x, and -x at the foreground */
    memcpy(&x, &bits, sizeof x);
    bits ^= fg << 31;
    memcpy(&flipped, &bits, sizeof flipped);
    /* the error is e(d) of a signed margin d; d error / d pred = d e / d d * d d / d pred */
    float d;
    uint32_t error_bits, negative;
    if (row->mode == SOFTMAX) { /* e = |d|, d = 1 - x or x */
        d = (float)fg + flipped;
        memcpy(&bits, &d, sizeof bits);
        error_bits = bits & 0x7fffffffu;
        negative = fg ^ (bits >> 31);
    } else { /* e = max(d, 0), d = 1 -+ x (hinge) or x (errors); NaN goes on to the loss */
        d = row->mode == HINGE ? 1.0f + flipped : x;
        memcpy(&bits, &d, sizeof bits);
        error_bits = bits & (0u - (uint32_t)((d > 0.0f) | (d != d))); /* all ones or 0 (0u -: MSVC's C4146) */
        negative = (row->mode == HINGE) & fg;
    }
    *keep = (code != IGNORED) & (error_bits != 0);
    return (uint64_t)~error_bits << 32 | offset | fg << 31 | negative << 30;
}

static inline uint32_t top_digit(uint64_t item) { return (uint32_t)(item >> (32 + TOP_SHIFT)) & (TOP_BUCKETS - 1); }

/* Stable ascending sort of items[0, m) by key bits 0..20; returns items or tmp, whichever holds the result. */
static uint64_t *sort_bucket(uint64_t *items, uint64_t *tmp, int64_t m) {
    if (m <= SMALL_BUCKET) {
        for (int64_t i = 1; i < m; i++) {
            const uint64_t item = items[i];
            const uint64_t key = item >> 32;
            int64_t j = i;
            for (; j > 0 && items[j - 1] >> 32 > key; j--) items[j] = items[j - 1];
            items[j] = item;
        }
        return items;
    }
    uint32_t count[LOW_PASSES][LOW_BUCKETS];
    memset(count, 0, sizeof count);
    for (int64_t i = 0; i < m; i++) {
        const uint32_t key = (uint32_t)(items[i] >> 32);
        for (int pass = 0; pass < LOW_PASSES; pass++) count[pass][(key >> (LOW_BITS * pass)) & (LOW_BUCKETS - 1)]++;
    }
    for (int pass = 0; pass < LOW_PASSES; pass++) {
        const int shift = 32 + LOW_BITS * pass;
        uint32_t *start = count[pass];
        if (start[(items[0] >> shift) & (LOW_BUCKETS - 1)] == (uint32_t)m) continue; /* nothing moves */
        uint32_t total = 0;
        for (int d = 0; d < LOW_BUCKETS; d++) {
            const uint32_t c = start[d];
            start[d] = total;
            total += c;
        }
        for (int64_t i = 0; i < m; i++) tmp[start[(items[i] >> shift) & (LOW_BUCKETS - 1)]++] = items[i];
        uint64_t *swap = items;
        items = tmp;
        tmp = swap;
    }
    return items;
}

/* A row's pixels go through in blocks: first their items, free of branches, into a small
 * buffer; then the buffer into the histogram or the buckets. Addresses that come from a
 * buffer are known early, where addresses computed from the data would keep the processor
 * guessing whether a store and the next load meet. */
#define BLOCK 1024

typedef struct {
    uint64_t item[BLOCK];
    uint32_t keep[BLOCK];
    int64_t length;
} Block;

static inline void block_items(const Row *row, int64_t s, int64_t i, Block *block, int64_t *gts) {
    block->length = row->n - i < BLOCK ? row->n - i : BLOCK;
    const uint32_t base = (uint32_t)(s * row->stride + i);
    for (int64_t j = 0; j < block->length; j++)
        block->item[j] = pixel_item(row, base + (uint32_t)j, &block->keep[j], gts);
}

/* The loss of one row. `items` holds room for every pixel of the row, `*tmp` for *tmp_size
 * items (grown as needed). Returns NAN with *failed set if memory runs out. */
static float lovasz_row(const Row *row, uint64_t *items, uint64_t **tmp, int64_t *tmp_size, uint8_t *present,
                        int *failed) {
    Block block;
    uint32_t start[TOP_BUCKETS + 1];
    memset(start, 0, sizeof start);
    int64_t gts = 0;
    for (int64_t s = 0; s < row->segments; s++) {
        for (int64_t i = 0; i < row->n; i += BLOCK) {
            block_items(row, s, i, &block, &gts);
            for (int64_t j = 0; j < block.length; j++) start[top_digit(block.item[j]) + 1] += block.keep[j];
        }
    }
    *present = gts > 0;
    int64_t largest = 0;
    for (int d = 0; d < TOP_BUCKETS; d++) {
        if (start[d + 1] > largest) largest = start[d + 1];
        start[d + 1] += start[d];
    }
    if (largest > SMALL_BUCKET && largest > *tmp_size) {
        free(*tmp);
        *tmp = malloc((size_t)largest * sizeof **tmp);
        *tmp_size = *tmp ? largest : 0;
        if (!*tmp) {
            *failed = 1;
            return NAN;
        }
    }
    uint32_t next[TOP_BUCKETS];
    memcpy(next, start, sizeof next);
    const uint32_t discard = start[TOP_BUCKETS]; /* the slot after the kept items takes those left out */
    int64_t ignored_gts = 0;
    for (int64_t s = 0; s < row->segments; s++) {
        for (int64_t i = 0; i < row->n; i += BLOCK) {
            block_items(row, s, i, &block, &ignored_gts);
            for (int64_t j = 0; j < block.length; j++) {
                const uint32_t d = top_digit(block.item[j]), keep = block.keep[j];
                items[keep ? next[d] : discard] = block.item[j];
                next[d] += keep;
            }
            /* every gradient starts at 0, after the block's last read (grad may be pred) */
            if (row->grad) memset(row->grad + s * row->stride + i, 0, (size_t)block.length * sizeof *row->grad);
        }
    }

    /* J(k) - J(k-1) with I = fg not yet taken, U = gts + bg taken: a foreground pixel
     * adds 1 / U, a background pixel I / (U (U - 1)), and J(1) = 1 when gts = 0.
     * Integer selects, free of branches on the labels. */
    double loss = 0.0;
    int64_t fg_taken = 0, bg_taken = 0;
    for (int d = 0; d < TOP_BUCKETS; d++) {
        const int64_t size = start[d + 1] - start[d];
        if (size == 0) continue;
        const uint64_t *sorted = sort_bucket(items + start[d], *tmp, size);
        for (int64_t k = 0; k < size; k++) {
            const uint32_t low = (uint32_t)sorted[k], fg = low >> 31;
            uint32_t bits = ~(uint32_t)(sorted[k] >> 32);
            const uint32_t error_is_nan = bits > 0x7f800000u; /* (the sign bit is clear) */
            float error;
            memcpy(&error, &bits, sizeof error);
            fg_taken += fg;
            bg_taken += fg ^ 1;
            const int64_t union_ = gts + bg_taken;
            int64_t num = fg ? 1 : gts - fg_taken, den = fg ? union_ : union_ * (union_ - 1);
            num = den ? num : 1; /* the background formula's 0 / 0 */
            den = den ? den : 1;
            const double step = (double)num / (double)den;
            loss += (double)error * step;
            if (row->grad) {
                const float value = (float)step;
                memcpy(&bits, &value, sizeof bits);
                /* a NaN error (a NaN prediction at a valid pixel) gets a NaN gradient, as torch's own losses
                 * give one: the loss is NaN already, and AMP's GradScaler looks for it in the gradient */
                bits = error_is_nan ? 0x7fc00000u : bits;
                bits ^= (low & NEGATIVE_FLAG) << 1; /* the sign of d error / d pred */
                memcpy(&row->grad[low & OFFSET_MASK], &bits, sizeof bits);
            }
        }
    }
    return (float)loss;
}

/* Rows [row_begin, row_end) of a [sets, rows, n] layout, where row r of set s starts at
 * (s * rows + r) * n; a row spans every set (batch mode: sets = B) or one (per image: sets = 1).
 * Writes loss[r], present[r] and, if grad is not NULL, the gradient in pred's layout.
 * Returns 0, or -1 if scratch memory could not be allocated. */
EXPORT int lovasz_rows_f32(const float *pred, const uint8_t *codes, float *grad, int64_t sets, int64_t rows,
                           int64_t n, int mode, int64_t row_begin, int64_t row_end, float *loss, uint8_t *present) {
    uint64_t *items = malloc((size_t)(sets * n + 1) * sizeof *items); /* + 1: a slot for the pixels left out */
    uint64_t *tmp = NULL;
    int64_t tmp_size = 0;
    int failed = items == NULL;
    for (int64_t r = row_begin; r < row_end && !failed; r++) {
        const int64_t base = r * n;
        const Row row = {pred + base, codes + base, grad ? grad + base : NULL, sets, n, rows * n, mode};
        loss[r] = lovasz_row(&row, items, &tmp, &tmp_size, present + r, &failed);
    }
    free(items);
    free(tmp);
    return failed ? -1 : 0;
}

/* Rows [row_begin, row_end) of sets of points ("scenes", e.g. the point clouds of a batch):
 * scene s holds points [ends[s - 1], ends[s]) (ends[-1] = 0), and row r is (scene r / classes,
 * class r % classes), that scene's run of points in its class. `pred`, `codes` and `grad` are
 * [classes, n]. The caller checks that 0 <= ends[0] <= ... <= ends[scenes - 1] <= n. Writes
 * loss[r], present[r] and, if grad is not NULL, the gradient in pred's layout. Returns 0, or -1 if
 * scratch memory could not be allocated. */
EXPORT int lovasz_scene_rows_f32(const float *pred, const uint8_t *codes, float *grad, int64_t classes, int64_t n,
                                 const int64_t *ends, int mode, int64_t row_begin, int64_t row_end, float *loss,
                                 uint8_t *present) {
    int64_t largest = 0; /* points in the largest scene of these rows */
    if (row_begin < row_end) { /* (and so classes > 0) */
        for (int64_t s = row_begin / classes; s <= (row_end - 1) / classes; s++) {
            const int64_t length = ends[s] - (s ? ends[s - 1] : 0);
            largest = length > largest ? length : largest;
        }
    }
    uint64_t *items = malloc((size_t)(largest + 1) * sizeof *items); /* + 1: a slot for the pixels left out */
    uint64_t *tmp = NULL;
    int64_t tmp_size = 0;
    int failed = items == NULL;
    for (int64_t r = row_begin; r < row_end && !failed; r++) {
        const int64_t scene = r / classes, k = r % classes, start = scene ? ends[scene - 1] : 0;
        const int64_t offset = k * n + start;
        const Row row = {pred + offset, codes + offset, grad ? grad + offset : NULL, 1, ends[scene] - start, n, mode};
        loss[r] = lovasz_row(&row, items, &tmp, &tmp_size, present + r, &failed);
    }
    free(items);
    free(tmp);
    return failed ? -1 : 0;
}

/* Points are read and written a tile of TILE points at a time, so that both sides of a transpose,
 * points-first and class-major, stay in cache; _ckernel.py's blocks of points start at multiples of it. */
#define TILE 32

/* dst[j][i] = src[i][j] for a rows x cols block (row strides src_stride, dst_stride), a tile at a time. */
static void transpose_f32(const float *src, float *dst, int64_t rows, int64_t cols, int64_t src_stride,
                          int64_t dst_stride) {
    for (int64_t j0 = 0; j0 < cols; j0 += TILE) {
        const int64_t j1 = j0 + TILE < cols ? j0 + TILE : cols;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = j0; j < j1; j++) dst[j * dst_stride + i] = src[i * src_stride + j];
    }
}

/* e^x for x <= 0 (-inf included; not NaN), within 1.4e-7 relative (Cephes' expf): the exponent's integer
 * part n = round(x / ln 2) goes into the bits of 2^n, the rest into a polynomial; 0 below -87 (where
 * e^x is no normal float). The selects are on the bits, not float comparisons (which may trap, so a
 * compiler keeps them as branches): the loops over it are vectorised. */
static inline float exp_nonpositive(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const uint32_t below = bits > 0xc2ae0000u; /* x < -87: a negative float's bits grow with its size */
    bits = below ? 0xc2ae0000u : bits;
    float clamped;
    memcpy(&clamped, &bits, sizeof clamped);
    const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    const float r = clamped - n * 0.693359375f + n * 2.12194440e-4f;             /* x - n ln 2, in two parts */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    bits = ((uint32_t)((int32_t)n + 127) << 23) & (below - 1u); /* 2^n, n in [-126, 0]; 0 below -87 */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* A float's bits with NaN as 0 (a test on the bits, vectorised where a float comparison is not). */
static inline float nan_to_zero(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits = (bits & 0x7fffffffu) > 0x7f800000u ? 0u : bits;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* The softmax over the classes of `count` (at most TILE) points in place, class-major: point j's
 * logit of class k is x[k * stride + j]. The loops run across the points, each lane a point of its
 * own, so that they are vectorised and no sum waits on the one before. A point with a NaN logit, a
 * +inf one, or only -inf gets NaN, as torch.softmax gives. */
static void softmax_tile(float *x, int64_t stride, int64_t count, int64_t classes) {
    float max[TILE], shift[TILE], sum[TILE];
    uint32_t bad[TILE];
    for (int64_t j = 0; j < count; j++) {
        max[j] = -INFINITY;
        bad[j] = 0;
        sum[j] = 0.0f;
    }
    for (int64_t k = 0; k < classes; k++) {
        const float *row = x + k * stride;
        for (int64_t j = 0; j < count; j++) {
            max[j] = row[j] > max[j] ? row[j] : max[j];
            bad[j] |= row[j] != row[j];
        }
    }
    for (int64_t j = 0; j < count; j++) {
        bad[j] |= max[j] == INFINITY || max[j] == -INFINITY;
        shift[j] = bad[j] ? 0.0f : max[j];
    }
    for (int64_t k = 0; k < classes; k++) {
        float *row = x + k * stride;
        for (int64_t j = 0; j < count; j++) {
            /* x - max, in [-inf, 0] where not bad, else 0: a select on the bits, after the subtraction (a
             * subtraction in one branch of a select would keep the loop from being vectorised) */
            float shifted = row[j] - shift[j];
            uint32_t bits;
            memcpy(&bits, &shifted, sizeof bits);
            bits &= bad[j] - 1u;
            memcpy(&shifted, &bits, sizeof shifted);
            row[j] = exp_nonpositive(shifted);
            sum[j] += row[j];
        }
    }
    for (int64_t j = 0; j < count; j++) sum[j] = bad[j] ? NAN : 1.0f / sum[j];
    for (int64_t k = 0; k < classes; k++) {
        float *row = x + k * stride;
        for (int64_t j = 0; j < count; j++) row[j] *= sum[j];
    }
}

/* The gradient of `count` (at most TILE) points, class-major g[k * stride + j] (d loss / d row), scaled
 * by coefficient[k]; with `probs` (their softmax, points-first, classes apart; `tile` a scratch of
 * TILE * classes), taken through the softmax: d / d x_k = p_k (g_k - sum_i p_i g_i), a NaN p (a NaN or
 * inf logit: an ignored point's, or the loss is NaN already) counting as 0. In place, class-major. */
static void gradient_tile(float *g, int64_t stride, int64_t count, int64_t classes, const float *coefficient,
                          const float *probs, float *tile) {
    float dot[TILE];
    for (int64_t k = 0; k < classes; k++) {
        float *row = g + k * stride;
        for (int64_t j = 0; j < count; j++) row[j] *= coefficient[k];
    }
    if (!probs) return;
    transpose_f32(probs, tile, count, classes, classes, TILE);
    for (int64_t j = 0; j < count; j++) dot[j] = 0.0f;
    for (int64_t k = 0; k < classes; k++) {
        const float *row = g + k * stride;
        float *p = tile + k * TILE;
        for (int64_t j = 0; j < count; j++) {
            p[j] = nan_to_zero(p[j]);
            dot[j] += p[j] * row[j];
        }
    }
    for (int64_t k = 0; k < classes; k++) {
        float *row = g + k * stride;
        const float *p = tile + k * TILE;
        for (int64_t j = 0; j < count; j++) row[j] = p[j] * (row[j] - dot[j]);
    }
}

/* Points of scenes laid out points-first, as a network gives them ([n, classes]), go through the kernel
 * in three passes, each split over the threads: lovasz_points_in_f32 transposes them class-major into a
 * scratch buffer, a tile at a time (with logits, taking their softmax); lovasz_scene_rows_f32 computes
 * each (scene, class) row's loss and gradient there, in place; lovasz_points_out_f32 scales each point's
 * gradient by its scene's coefficients, takes it back through the softmax and writes it points-first.
 * So the input needs no transposed copy, nor the gradient, and the rows of one scene can go to every
 * thread. */

/* Points [begin, end) of `pred` [n, classes] into `block` [classes, n]. With `logits`, their softmax
 * over the classes, also written points-first into `probs` if it is not NULL (for the softmax's
 * backward). `begin` is a multiple of TILE, or the callers' blocks would share tiles' cache lines. */
EXPORT int lovasz_points_in_f32(const float *pred, float *block, float *probs, int64_t classes, int64_t n,
                                int logits, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += TILE) {
        const int64_t count = end - i < TILE ? end - i : TILE;
        transpose_f32(pred + i * classes, block + i, count, classes, classes, n);
        if (!logits) continue;
        softmax_tile(block + i, n, count, classes);
        if (probs) transpose_f32(block + i, probs + i * classes, classes, count, n, classes);
    }
    return 0;
}

/* The gradient of points [begin, end) into `grad` [n, classes]: `block` [classes, n] holds each point's
 * d loss / d row, which is scaled by coefficient[s * classes + k] of the point's scene s (scene s the
 * points [ends[s - 1], ends[s])) and, with `probs` (points-first, not NULL after logits), taken through
 * the softmax. `grad` may be `pred` of lovasz_points_in_f32 (every point is read before the last pass).
 * Returns 0, or -1 if scratch memory could not be allocated. */
EXPORT int lovasz_points_out_f32(float *block, const float *probs, float *grad, int64_t classes, int64_t n,
                                 const int64_t *ends, int64_t scenes, const float *coefficient, int64_t begin,
                                 int64_t end) {
    float *tile = malloc((size_t)(TILE * classes) * sizeof *tile); /* a tile's probabilities */
    if (!tile) return -1;
    int64_t s = 0;
    for (int64_t i = begin; i < end;) {
        while (s < scenes && ends[s] <= i) s++; /* the scene of point i */
        if (s == scenes) { /* points after the last scene: in none, their gradient is 0 */
            memset(grad + i * classes, 0, (size_t)((end - i) * classes) * sizeof *grad);
            break;
        }
        const int64_t run_end = ends[s] < end ? ends[s] : end;
        for (; i < run_end; i += TILE) { /* tiles that stop at the scene's end */
            const int64_t count = run_end - i < TILE ? run_end - i : TILE;
            gradient_tile(block + i, n, count, classes, coefficient + s * classes, probs ? probs + i * classes : NULL,
                          tile);
            transpose_f32(block + i, grad + i * classes, classes, count, n, classes);
        }
        i = run_end;
    }
    free(tile);
    return 0;
}

/* A mostly ignored grid (a LiDAR scan's voxels: ~2% occupied) goes through the kernel as points of scenes:
 * lovasz_gather_f32 takes its valid pixels out class-major, and lovasz_scatter_f32 writes their gradient
 * back into the grid's layout, zeros everywhere else. */

/* Rows [begin, end) of `out` [rows, count]: out[r * count + m] = pred[at[m] + r * stride], where `at` holds
 * the offsets of `count` pixels in row 0 (in a [B, rows, n] grid, image b's pixel p is at b * rows * n + p,
 * and stride = n). The caller checks that every offset read lies in pred. */
EXPORT int lovasz_gather_f32(const float *pred, const int64_t *at, int64_t count, int64_t stride, float *out,
                             int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
        const float *row = pred + r * stride;
        float *dst = out + r * count;
        for (int64_t m = 0; m < count; m++) dst[m] = row[at[m]];
    }
    return 0;
}

/* `to[0, length)` := `from[0, length)`, streamed (non-temporal stores) where `to` is 16-byte aligned and the
 * processor has them: a grid's gradient is larger than the caches, where an ordinary store would first
 * read each line from memory (half the traffic, for nothing). */
static void copy_out(float *to, const float *from, int64_t length) {
    int64_t j = 0;
#ifdef HAVE_STREAM_STORES
    if (((uintptr_t)to & 15) == 0)
        for (; j + 4 <= length; j += 4) _mm_stream_ps(to + j, _mm_loadu_ps(from + j));
#endif
    for (; j < length; j++) to[j] = from[j];
}

/* dst[0, n) := value[m] at pixel[m] for m < count (pixels rising), 0 at every other pixel. Pixels out of
 * order or out of [0, n) are never written out of bounds (some of them not at all). A block at a time: zeros
 * and values into a buffer in cache, then the buffer out in whole lines (the first block ends at a 64-byte
 * boundary, so that the others start at one). */
#define GRID_BLOCK 1024
static void write_grid_row(float *dst, int64_t n, const int64_t *pixel, const float *value, int64_t count) {
    float buffer[GRID_BLOCK];
    const int64_t head = (int64_t)((64 - ((uintptr_t)dst & 63)) & 63) / (int64_t)sizeof *dst;
    int64_t m = 0;
    for (int64_t begin = 0; begin < n;) {
        int64_t end = begin == 0 && head ? head : begin + GRID_BLOCK;
        end = end < n ? end : n;
        const int64_t length = end - begin;
        memset(buffer, 0, (size_t)length * sizeof *buffer);
        for (; m < count && pixel[m] < end; m++) {
            const uint64_t at = (uint64_t)(pixel[m] - begin); /* (below `begin` only out of order: skipped) */
            if (at < (uint64_t)length) buffer[at] = value[m];
        }
        copy_out(dst + begin, buffer, length);
        begin = end;
    }
#ifdef HAVE_STREAM_STORES
    _mm_sfence(); /* the streamed stores are seen before any later one (another thread's reads included) */
#endif
}

/* Rows [begin, end) of `grad` [images, classes, n], row r = (image r / classes, class r % classes): the
 * gradient of the image's pixels, value[k * count + m] at pixel[m] for m in its run [ends[b - 1], ends[b])
 * (ends[-1] = 0; pixels rising within a run), and 0 at every other pixel. The caller checks that the ends
 * rise to at most `count`. */
EXPORT int lovasz_scatter_f32(const float *value, const int64_t *pixel, const int64_t *ends, int64_t classes,
                              int64_t n, int64_t count, float *grad, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
        const int64_t b = r / classes, k = r % classes, start = b ? ends[b - 1] : 0;
        write_grid_row(grad + r * n, n, pixel + start, value + k * count + start, ends[b] - start);
    }
    return 0;
}

/* One of the entries above over blocks of its [begin, end) range, run by the threads of an OpenMP team:
 * GOMP_parallel(lovasz_team_worker, job, threads, 0) from _ckernel.py, on the team of the libgomp that torch
 * has loaded, whose threads spin for a while after each torch op: taking the blocks, they leave no thread
 * of ours to share the cores with them. No OpenMP is compiled in: the team's runtime gives each thread
 * its number through the two functions in the job. */
enum { ROWS_ENTRY, SCENE_ROWS_ENTRY, POINTS_IN_ENTRY, POINTS_OUT_ENTRY, GATHER_ENTRY, SCATTER_ENTRY };

typedef struct {
    int entry;
    int64_t args[10]; /* the entry's arguments but begin and end, in order, pointers as integers */
    const int64_t *bounds; /* block b is [bounds[2 b], bounds[2 b + 1]) */
    int64_t blocks;
    int *status; /* each block's return value */
    int (*thread_num)(void);
    int (*num_threads)(void);
} Job;

static int run_block(const Job *job, int64_t begin, int64_t end) {
    const int64_t *a = job->args;
#define ARG(i) ((void *)(intptr_t)a[i])
    switch (job->entry) {
    case ROWS_ENTRY:
        return lovasz_rows_f32(ARG(0), ARG(1), ARG(2), a[3], a[4], a[5], (int)a[6], begin, end, ARG(7), ARG(8));
    case SCENE_ROWS_ENTRY:
        return lovasz_scene_rows_f32(ARG(0), ARG(1), ARG(2), a[3], a[4], ARG(5), (int)a[6], begin, end, ARG(7),
                                     ARG(8));
    case POINTS_IN_ENTRY:
        return lovasz_points_in_f32(ARG(0), ARG(1), ARG(2), a[3], a[4], (int)a[5], begin, end);
    case POINTS_OUT_ENTRY:
        return lovasz_points_out_f32(ARG(0), ARG(1), ARG(2), a[3], a[4], ARG(5), a[6], ARG(7), begin, end);
    case GATHER_ENTRY:
        return lovasz_gather_f32(ARG(0), ARG(1), a[2], a[3], ARG(4), begin, end);
    case SCATTER_ENTRY:
        return lovasz_scatter_f32(ARG(0), ARG(1), ARG(2), a[3], a[4], a[5], ARG(6), begin, end);
    default:
        return -2;
    }
#undef ARG
}

EXPORT void lovasz_team_worker(void *data) {
    const Job *job = data;
    const int64_t threads = job->num_threads();
    for (int64_t b = job->thread_num(); b < job->blocks; b += threads)
        job->status[b] = run_block(job, job->bounds[2 * b], job->bounds[2 * b + 1]);
}

EXPORT int lovasz_abi_version(void) { return LOVASZ_ABI; }

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", "C kernel of lovasz, called through ctypes.",
                                    -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
