// y = x @ W^T for a weight W kept in llama.cpp's block quantization, on the CPU.
//
// W is [n, k], cut along k into blocks of 32 weights that share a float scale (and, for
// the 4-bit kinds, a float offset): w = scale * q + offset. The loader repacks GGUF's
// Q4_0, Q4_1, Q4_K (4-bit codes, scale and offset) and Q8_0 (8-bit codes, scale) into
// panels of 16 output columns, so that 16 bytes give one weight for each of 16 columns
// and a vector of scales serves them all:
//   codes    4-bit: uint8 [n / 16, k / 2, 16]: byte (p, i, j) holds column 16p + j's code
//            for k = 2i in its low nibble and for k = 2i + 1 in its high one;
//            8-bit: uint8 [n / 16, k, 16], the signed code's two's-complement byte;
//   scales   float [n / 16, k / 32, 16]; offsets the same (4-bit only).
// (n is padded to whole panels with zero columns.)
//
// Codes are expanded to float32 in registers exactly as the dequantizer would (scale * q +
// offset with scale * q exact) and multiplied into float32 activations broadcast one at a
// time, so the result differs from a float32 matmul over the dequantized weight only in the
// order of its sums. Up to 8 rows of x share each expanded vector of weights.
//
// Decode is a matrix-vector product whose time is the weight's bytes: about 0.75 bytes a
// weight here against 4 in float32. Each thread takes a range of panels and runs every
// row of x against a panel while its codes are in the L1 cache.

#include <cstdint>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif

// -ffast-math lets GCC regroup acc + a * b + c * d as acc + (a * b + c * d): a multiply,
// a multiply-add and an add where two multiply-adds do.
#pragma GCC optimize("no-associative-math")

namespace {

constexpr int BLOCK = 32;
constexpr int PANEL = 16;
// Codes and scales are prefetched a panel ahead: the hardware prefetcher alone let the
// expansion and the memory traffic take turns (12 GB/s at batch 1, 20 with this).
constexpr int AHEAD_PANELS = 1;

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));

enum Kind { FOUR_BIT = 0, EIGHT_BIT = 1 };

struct Weight {
    const uint8_t* codes;
    const float* scales;
    const float* offsets;
    int64_t k;
};

template <class T>
inline T load(const void* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Bytes to floats through 32-bit integers: GCC widens integers in vector instructions but
// scalarizes a direct byte-to-float conversion (and widens signed bytes one by one).
inline f32x16 to_float(u8x16 bytes) {
    return __builtin_convertvector(__builtin_convertvector(bytes, i32x16), f32x16);
}

// Panel p, block b: feeds `use(step, weights)` the block's weights one k at a time, each a
// vector over the panel's 16 columns.
template <int K, class Use>
inline void for_block(const Weight& w, int64_t p, int64_t b, Use use) {
    const int64_t blocks = w.k / BLOCK;
    const f32x16 scale = load<f32x16>(w.scales + (p * blocks + b) * PANEL);
    if constexpr (K == FOUR_BIT) {
        const f32x16 offset = load<f32x16>(w.offsets + (p * blocks + b) * PANEL);
        const uint8_t* codes = w.codes + (p * w.k / 2 + b * BLOCK / 2) * PANEL;
        for (int i = 0; i < BLOCK / 2; ++i) {
            const u8x16 bytes = load<u8x16>(codes + i * PANEL);
            use(2 * i, to_float(bytes & 15) * scale + offset);
            use(2 * i + 1, to_float(bytes >> 4) * scale + offset);
        }
    } else {
        // The flipped sign bit gives q + 128; scale * (q + 128) - 128 * scale is exact.
        const f32x16 offset = -128.0f * scale;
        const uint8_t* codes = w.codes + (p * w.k + b * BLOCK) * PANEL;
        for (int i = 0; i < BLOCK; ++i)
            use(i, to_float(load<u8x16>(codes + i * PANEL) ^ 0x80) * scale + offset);
    }
}

// ROWS rows of x times the block's weights at k = step (a vector over the panel's
// columns), into the even or odd accumulators.
template <int ROWS>
inline void multiply_add(f32x16 (&acc)[ROWS], f32x16 weights, const float* x, int64_t ldx) {
    for (int r = 0; r < ROWS; ++r) acc[r] += weights * x[r * ldx];
}

// Rows [first_row, first_row + ROWS) of x against panel p. Even and odd k add into separate
// accumulators, so that one row's chain of multiply-adds does not wait on itself. (The
// loops are written out, not passed to for_block: accumulators a lambda captures live in
// memory, not in registers.)
template <int K, int ROWS>
void rows_times_panel(const Weight& w, const float* x_all, int64_t first_row, float* y_all,
                      int64_t n, int64_t p) {
    const int64_t blocks = w.k / BLOCK, ldx = w.k, ldy = n;
    const float* x = x_all + first_row * ldx;
    float* y = y_all + first_row * ldy;
    {
        f32x16 even[ROWS] = {}, odd[ROWS] = {};
        for (int64_t b = 0; b < blocks; ++b) {
            const float* xb = x + b * BLOCK;
            const f32x16 scale = load<f32x16>(w.scales + (p * blocks + b) * PANEL);
            if constexpr (K == FOUR_BIT) {
                const f32x16 offset = load<f32x16>(w.offsets + (p * blocks + b) * PANEL);
                const uint8_t* codes = w.codes + (p * w.k / 2 + b * BLOCK / 2) * PANEL;
                const uint8_t* ahead = codes + AHEAD_PANELS * w.k / 2 * PANEL;
                for (int line = 0; line < BLOCK / 2 * PANEL; line += 64)
                    __builtin_prefetch(ahead + line);
                __builtin_prefetch(w.scales + ((p + AHEAD_PANELS) * blocks + b) * PANEL);
                __builtin_prefetch(w.offsets + ((p + AHEAD_PANELS) * blocks + b) * PANEL);
                for (int i = 0; i < BLOCK / 2; ++i) {
                    const u8x16 bytes = load<u8x16>(codes + i * PANEL);
                    multiply_add(even, to_float(bytes & 15) * scale + offset, xb + 2 * i, ldx);
                    multiply_add(odd, to_float(bytes >> 4) * scale + offset, xb + 2 * i + 1, ldx);
                }
            } else {
                const f32x16 offset = -128.0f * scale;
                const uint8_t* codes = w.codes + (p * w.k + b * BLOCK) * PANEL;
                const uint8_t* ahead = codes + AHEAD_PANELS * w.k * PANEL;
                for (int line = 0; line < BLOCK * PANEL; line += 64) __builtin_prefetch(ahead + line);
                __builtin_prefetch(w.scales + ((p + AHEAD_PANELS) * blocks + b) * PANEL);
                for (int i = 0; i < BLOCK; i += 2) {
                    const u8x16 first = load<u8x16>(codes + i * PANEL);
                    const u8x16 second = load<u8x16>(codes + (i + 1) * PANEL);
                    multiply_add(even, to_float(first ^ 0x80) * scale + offset, xb + i, ldx);
                    multiply_add(odd, to_float(second ^ 0x80) * scale + offset, xb + i + 1, ldx);
                }
            }
        }
        const int64_t columns = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;
        for (int r = 0; r < ROWS; ++r) {
            const f32x16 sum = even[r] + odd[r];
            std::memcpy(y + r * ldy + p * PANEL, &sum, columns * sizeof(float));
        }
    }
}

// Every row of x against panel p, while its codes are in the L1 cache.
template <int K>
void all_rows_times_panel(const Weight& w, const float* x, int64_t m, float* y, int64_t n,
                          int64_t p) {
    int64_t row = 0;
    for (; row + 8 <= m; row += 8) rows_times_panel<K, 8>(w, x, row, y, n, p);
    if (row + 4 <= m) {
        rows_times_panel<K, 4>(w, x, row, y, n, p);
        row += 4;
    }
    if (row + 2 <= m) {
        rows_times_panel<K, 2>(w, x, row, y, n, p);
        row += 2;
    }
    if (row < m) rows_times_panel<K, 1>(w, x, row, y, n, p);
}

// This thread's share [begin, end) of `total` work items: static ranges, so every thread
// streams its own part of the weights.
inline void my_share(int64_t total, int64_t& begin, int64_t& end) {
    int threads = 1, me = 0;
#ifdef _OPENMP
    threads = omp_get_num_threads();
    me = omp_get_thread_num();
#endif
    begin = total * me / threads;
    end = total * (me + 1) / threads;
}

template <int K>
void matmul(const Weight& w, const float* x, int64_t m, float* y, int64_t n) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel
    {
        int64_t begin, end;
        my_share(panels, begin, end);
        for (int64_t p = begin; p < end; ++p) all_rows_times_panel<K>(w, x, m, y, n, p);
    }
}

// Several weights of one shape, each times its own rows (a MoE layer's active experts):
// one parallel pass over all their panels, so that a few small products stream like one
// large one instead of each paying a thread team's start and a prefetch pipeline's fill.
template <int K>
void grouped_matmul(const Weight* weights, const float* const* xs, const int64_t* ms,
                    float* const* ys, int64_t count, int64_t n) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel
    {
        int64_t begin, end;
        my_share(count * panels, begin, end);
        for (int64_t item = begin; item < end; ++item) {
            const int64_t g = item / panels;
            all_rows_times_panel<K>(weights[g], xs[g], ms[g], ys[g], n, item % panels);
        }
    }
}

// W^T [k, n]: each expanded vector is 16 consecutive floats of a row of the output. A
// thread takes whole blocks of rows and walks the panels across them, so its 32 rows are
// written front to back: twice as fast as a panel at a time down all k rows.
template <int K>
void dequantize_transposed(const Weight& w, int64_t n, float* out) {
    const int64_t panels = (n + PANEL - 1) / PANEL, blocks = w.k / BLOCK;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t p = 0; p < panels; ++p) {
            const int64_t columns = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;
            for_block<K>(w, p, b, [&](int step, f32x16 weights) {
                std::memcpy(out + (b * BLOCK + step) * n + p * PANEL, &weights,
                            columns * sizeof(float));
            });
        }
    }
}

// Rows `index` of W (an embedding lookup), [count, k].
template <int K>
void gather_rows(const Weight& w, const int64_t* index, int64_t count, float* out) {
    const int64_t blocks = w.k / BLOCK;
    for (int64_t i = 0; i < count; ++i) {
        const int64_t p = index[i] / PANEL, column = index[i] % PANEL;
        for (int64_t b = 0; b < blocks; ++b)
            for_block<K>(w, p, b, [&](int step, f32x16 weights) {
                out[i * w.k + b * BLOCK + step] = weights[column];
            });
    }
}

}  // namespace

extern "C" {

// 1 where this build runs faster than float32 BLAS. It does with AVX-512; built for AVX2,
// GCC splits the 16-float vectors into halves that pass through memory, and a batch-1 pass
// over SmolLM2's layers took 18 ms against 5.4 (float32 MKL: about 22).
int tome_block_quantized_is_fast() {
#ifdef __AVX512F__
    return 1;
#else
    return 0;
#endif
}

// y [m, n] = x [m, k] @ W^T, x and y contiguous float32. Returns 0, or -1 for an unknown
// kind or a k that is not whole blocks.
int tome_block_quantized_matmul(int kind, const float* x, int64_t m, int64_t k,
                                const uint8_t* codes, const float* scales,
                                const float* offsets, int64_t n, float* y) {
    if (k % BLOCK != 0) return -1;
    const Weight w{codes, scales, offsets, k};
    if (kind == FOUR_BIT) matmul<FOUR_BIT>(w, x, m, y, n);
    else if (kind == EIGHT_BIT) matmul<EIGHT_BIT>(w, x, m, y, n);
    else return -1;
    return 0;
}

// For g < count: ys[g] [ms[g], n] = xs[g] [ms[g], k] @ W_g^T, every W_g of one kind and
// shape [n, k] (codes[g], scales[g], offsets[g]). Returns 0, or -1 as the matmul does.
int tome_block_quantized_grouped_matmul(int kind, int64_t count, const float* const* xs,
                                        const int64_t* ms, int64_t k,
                                        const uint8_t* const* codes,
                                        const float* const* scales,
                                        const float* const* offsets, int64_t n,
                                        float* const* ys) {
    if (k % BLOCK != 0 || count > 1024) return -1;
    Weight weights[1024];
    for (int64_t g = 0; g < count; ++g)
        weights[g] = Weight{codes[g], scales[g], offsets ? offsets[g] : nullptr, k};
    if (kind == FOUR_BIT) grouped_matmul<FOUR_BIT>(weights, xs, ms, ys, count, n);
    else if (kind == EIGHT_BIT) grouped_matmul<EIGHT_BIT>(weights, xs, ms, ys, count, n);
    else return -1;
    return 0;
}

// out [k, n] float32 = W^T, expanded as the matmul expands it.
int tome_block_quantized_dequantize_transposed(int kind, int64_t k, const uint8_t* codes,
                                               const float* scales, const float* offsets,
                                               int64_t n, float* out) {
    if (k % BLOCK != 0) return -1;
    const Weight w{codes, scales, offsets, k};
    if (kind == FOUR_BIT) dequantize_transposed<FOUR_BIT>(w, n, out);
    else if (kind == EIGHT_BIT) dequantize_transposed<EIGHT_BIT>(w, n, out);
    else return -1;
    return 0;
}

// out [count, k] float32 = rows `index` of W.
int tome_block_quantized_rows(int kind, int64_t k, const uint8_t* codes, const float* scales,
                              const float* offsets, const int64_t* index, int64_t count,
                              float* out) {
    if (k % BLOCK != 0) return -1;
    const Weight w{codes, scales, offsets, k};
    if (kind == FOUR_BIT) gather_rows<FOUR_BIT>(w, index, count, out);
    else if (kind == EIGHT_BIT) gather_rows<EIGHT_BIT>(w, index, count, out);
    else return -1;
    return 0;
}
}
