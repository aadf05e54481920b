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
 * Loaded with ctypes (which releases the GIL): Python runs blocks of rows on
 * several threads. Compiled as an extension module so that pip builds it, against CPython's limited API
 * (setup.py). Portable C99: tests/test_kernel_build.py compiles it with -std=c99 -Wall -Wextra -pedantic
 * -Werror under gcc and clang.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#define EXPORT __declspec(dllexport) /* for ctypes to find it */
#else
#define EXPORT
#endif

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

/* dst[j][i] = src[i][j] for a rows x cols block (row strides src_stride, dst_stride), a tile at a time
 * so that both sides stay in cache. */
static void transpose_f32(const float *src, float *dst, int64_t rows, int64_t cols, int64_t src_stride,
                          int64_t dst_stride) {
    enum { TILE = 32 };
    for (int64_t i0 = 0; i0 < rows; i0 += TILE) {
        const int64_t i1 = i0 + TILE < rows ? i0 + TILE : rows;
        for (int64_t j0 = 0; j0 < cols; j0 += TILE) {
            const int64_t j1 = j0 + TILE < cols ? j0 + TILE : cols;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0; j < j1; j++) dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
}

/* Rows [row_begin, row_end) of sets of points ("scenes", e.g. the point clouds of a batch):
 * scene s holds points [ends[s - 1], ends[s]) (ends[-1] = 0), and row r is (scene r / classes,
 * class r % classes), that scene's run of points in its class. `codes` is [classes, n]; `pred`
 * and `grad` are [classes, n], or [n, classes] with points_first: then each scene's block of
 * points is transposed into a scratch buffer once (its rows contiguous there), and its gradient
 * transposed back, a tile at a time, in place of two transposed copies of the whole input.
 * The caller checks that 0 <= ends[0] <= ... <= ends[scenes - 1] <= n; with points_first and
 * grad == pred, [row_begin, row_end) covers whole scenes (a scene's points are all read before
 * its gradient is written). Writes loss[r], present[r] and, if grad is not NULL, the gradient in
 * pred's layout. Returns 0, or -1 if scratch memory could not be allocated. */
EXPORT int lovasz_scene_rows_f32(const float *pred, const uint8_t *codes, float *grad, int64_t classes, int64_t n,
                                 const int64_t *ends, int points_first, int mode, int64_t row_begin, int64_t row_end,
                                 float *loss, uint8_t *present) {
    uint64_t *items = malloc((size_t)(n + 1) * sizeof *items); /* + 1: a slot for the pixels left out */
    uint64_t *tmp = NULL;
    float *block = NULL; /* points_first: the current scene's points, [classes, length] */
    int64_t tmp_size = 0, block_size = 0, first_class = 0;
    int failed = items == NULL;
    for (int64_t r = row_begin; r < row_end && !failed; r++) {
        const int64_t scene = r / classes, k = r % classes, start = scene ? ends[scene - 1] : 0;
        const int64_t length = ends[scene] - start;
        const float *row_pred = pred + k * n + start;
        float *row_grad = grad ? grad + k * n + start : NULL;
        if (points_first) {
            if (k == 0 || r == row_begin) { /* a scene's first row here: its points, class-major */
                if (classes * length > block_size) {
                    free(block);
                    block = malloc((size_t)(classes * length) * sizeof *block);
                    block_size = block ? classes * length : 0;
                    if (!block) {
                        failed = 1;
                        break;
                    }
                }
                transpose_f32(pred + start * classes, block, length, classes, classes, length);
                first_class = k;
            }
            row_pred = block + k * length;
            row_grad = grad ? block + k * length : NULL; /* in place: each point is read before it is written */
        }
        const Row row = {row_pred, codes + k * n + start, row_grad, 1, length, length, mode};
        loss[r] = lovasz_row(&row, items, &tmp, &tmp_size, present + r, &failed);
        if (points_first && grad && (k == classes - 1 || r == row_end - 1)) /* the rows done, back in place */
            transpose_f32(block + first_class * length, grad + start * classes + first_class, k - first_class + 1,
                          length, length, classes);
    }
    free(items);
    free(tmp);
    free(block);
    return failed ? -1 : 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel", "C kernel of lovasz, called through ctypes.",
                                    -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
