/* The CPU kernel of lovasz.torch: loss and gradient of float32 rows, with a radix sort.
 *
 * A row is one (set, class) pair: `segments` runs of `n` contiguous pixels,
 * `stride` elements apart (one run per image of a batch-mode row, one run for a
 * per-image row), so rows are read in the prediction's own [B, C, N] layout
 * with no transpose. Codes are 0 background, 1 foreground, 2 ignored.
 *
 * Per row, in one pass: the error of each valid pixel becomes a 64-bit item,
 * (~error bits) << 32 | offset. Errors are non-negative floats, whose bits
 * sort like the numbers, so an ascending stable LSD radix sort of the items
 * orders the errors decreasingly (ties by offset). Pixels with
 * zero error (and ignored ones) would sort last, where they change neither the
 * loss nor any other pixel's Jaccard step: they are left out of the sort.
 * Then one pass over the sorted items accumulates the loss and writes
 * d loss / d pred = (J(k) - J(k-1)) * d error / d pred at each offset.
 *
 * Loaded with ctypes (which releases the GIL): Python runs blocks of rows on
 * several threads. Compiled as an extension module so that pip builds it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { FOREGROUND = 1, IGNORED = 2 };

/* 10-bit digits: 1024 buckets stay in L1; errors below 2 (every softmax error) share
 * the top two bits, so their fourth pass is skipped. */
#define DIGIT_BITS 10
#define PASSES ((32 + DIGIT_BITS - 1) / DIGIT_BITS)
#define BUCKETS (1 << DIGIT_BITS)
/* The low word of an item: the pixel's offset from the row's start, and two flags. */
#define FG_FLAG 0x80000000u
#define NEGATIVE_FLAG 0x40000000u /* d error / d pred = -1 (else +1) */
#define OFFSET_MASK 0x3fffffffu

/* Stable ascending sort of items[0, m) by their high 32 bits; tmp is scratch of
 * the same size; hist[p] counts digit p of every key. Returns the buffer that holds the result. */
static uint64_t *radix_sort(uint64_t *items, uint64_t *tmp, int64_t m, uint32_t hist[PASSES][BUCKETS]) {
    for (int pass = 0; pass < PASSES; pass++) {
        const int shift = 32 + DIGIT_BITS * pass;
        uint32_t *count = hist[pass];
        if (m == 0 || count[(items[0] >> shift) & (BUCKETS - 1)] == (uint32_t)m) continue; /* nothing moves */
        uint32_t total = 0;
        for (int d = 0; d < BUCKETS; d++) { /* counts become start offsets */
            const uint32_t c = count[d];
            count[d] = total;
            total += c;
        }
        for (int64_t i = 0; i < m; i++) {
            const uint64_t item = items[i];
            tmp[count[(item >> shift) & (BUCKETS - 1)]++] = item;
        }
        uint64_t *swap = items;
        items = tmp;
        tmp = swap;
    }
    return items;
}

static float lovasz_row(const float *pred, const uint8_t *codes, float *grad, int64_t segments, int64_t n,
                        int64_t stride, int hinge, uint64_t *items, uint64_t *tmp, uint8_t *present) {
    static __thread uint32_t hist[PASSES][BUCKETS];
    memset(hist, 0, sizeof hist);
    int64_t m = 0, gts = 0;
    for (int64_t s = 0; s < segments; s++) {
        for (int64_t i = 0; i < n; i++) {
            const uint32_t offset = (uint32_t)(s * stride + i);
            const int code = codes[offset];
            if (code == IGNORED) {
                if (grad) grad[offset] = 0.0f;
                continue;
            }
            const int fg = code == FOREGROUND;
            gts += fg;
            const float x = pred[offset];
            /* the error is e(d) of a signed margin d; d error / d pred = d e / d d * d d / d pred */
            float error;
            int negative;
            if (hinge) {
                const float d = fg ? 1.0f - x : 1.0f + x;
                error = d > 0.0f ? d : 0.0f;
                negative = fg;
            } else {
                const float d = fg ? 1.0f - x : x;
                error = fabsf(d);
                negative = fg ^ (d < 0.0f);
            }
            if (isnan(x)) error = x; /* propagate NaN to the loss rather than drop the pixel */
            if (error == 0.0f) {
                if (grad) grad[offset] = 0.0f;
                continue;
            }
            uint32_t bits;
            memcpy(&bits, &error, sizeof bits);
            const uint32_t key = ~(bits & 0x7fffffffu);
            for (int pass = 0; pass < PASSES; pass++) hist[pass][(key >> (DIGIT_BITS * pass)) & (BUCKETS - 1)]++;
            const uint32_t low = offset | (fg ? FG_FLAG : 0) | (negative ? NEGATIVE_FLAG : 0);
            items[m++] = (uint64_t)key << 32 | low;
        }
    }
    *present = gts > 0;
    const uint64_t *sorted = radix_sort(items, tmp, m, hist);

    /* J(k) - J(k-1) with I = fg not yet taken, U = gts + bg taken: a foreground
     * pixel adds 1 / U, a background pixel I / (U (U - 1)), and J(1) = 1 when gts = 0. */
    double loss = 0.0;
    int64_t fg_taken = 0, bg_taken = 0;
    for (int64_t k = 0; k < m; k++) {
        const uint32_t low = (uint32_t)sorted[k];
        const uint32_t bits = ~(uint32_t)(sorted[k] >> 32);
        float error;
        memcpy(&error, &bits, sizeof error);
        double step;
        if (low & FG_FLAG) {
            fg_taken++;
            step = 1.0 / (double)(gts + bg_taken);
        } else {
            bg_taken++;
            const double union_ = (double)(gts + bg_taken);
            step = union_ > 1.0 ? (double)(gts - fg_taken) / (union_ * (union_ - 1.0)) : 1.0;
        }
        loss += (double)error * step;
        if (grad) grad[low & OFFSET_MASK] = (float)(low & NEGATIVE_FLAG ? -step : step);
    }
    return (float)loss;
}

/* Rows [row_begin, row_end) of a [sets, rows, n] layout, where row r of set s starts at
 * (s * rows + r) * n; a row spans every set (batch mode: sets = B) or one (per image: sets = 1).
 * Writes loss[r], present[r] and, if grad is not NULL, the gradient in pred's layout.
 * Returns 0, or -1 if scratch memory could not be allocated. */
int lovasz_rows_f32(const float *pred, const uint8_t *codes, float *grad, int64_t sets, int64_t rows, int64_t n,
                    int hinge, int64_t row_begin, int64_t row_end, float *loss, uint8_t *present) {
    const int64_t capacity = sets * n;
    uint64_t *items = malloc((size_t)(capacity > 0 ? capacity : 1) * sizeof *items);
    uint64_t *tmp = malloc((size_t)(capacity > 0 ? capacity : 1) * sizeof *tmp);
    if (!items || !tmp) {
        free(items);
        free(tmp);
        return -1;
    }
    for (int64_t r = row_begin; r < row_end; r++) {
        const int64_t base = r * n;
        loss[r] = lovasz_row(pred + base, codes + base, grad ? grad + base : NULL, sets, n, rows * n, hinge,
                             items, tmp, present + r);
    }
    free(items);
    free(tmp);
    return 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernel",
                                    "C kernel of lovasz.torch, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
