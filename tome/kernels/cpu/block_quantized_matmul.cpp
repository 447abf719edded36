// y = x @ W^T for a weight W kept in llama.cpp's block quantization, on the CPU.
//
// W is [n, k], cut along k into blocks of 32 weights that share a float scale (and, for
// the 4-bit kinds, a float offset): w = scale * q + offset. The loader repacks GGUF's
// Q4_0, Q4_1, Q4_K (4-bit codes, scale and offset) and Q8_0 (8-bit codes, scale) into
// three plain arrays, so this file reads:
//   codes   4-bit: uint8 [n, k / 2], a block's 16 bytes hold weight j in the low nibble
//           of byte j and weight j + 16 in the high one (GGUF's own order);
//           8-bit: int8 [n, k];
//   scales  float [n, k / 32]; offsets float [n, k / 32] (4-bit only).
// A block is expanded to float32 in registers exactly as the dequantizer would
// (scale * q + offset with q * scale exact) and multiplied into float32 activations, so
// the result differs from a float32 matmul over the dequantized weight only in the order
// of its sums. Decode is a matrix-vector product whose time is the weight's bytes: 0.75
// bytes a weight here against 4 in float32.
//
// Rows of x are taken 4 (then 2, 1) at a time against 4 (or 8) output columns, so that one
// expanded block serves several rows and one load of activations several columns; OpenMP
// splits the output columns.

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
constexpr int HALF = BLOCK / 2;

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

// Bytes to floats through 32-bit integers: GCC widens integers in vector instructions but
// scalarizes a direct byte-to-float conversion.
template <class Bytes>
inline f32x16 to_float(Bytes bytes) {
    return __builtin_convertvector(__builtin_convertvector(bytes, i32x16), f32x16);
}

enum Kind { FOUR_BIT = 0, EIGHT_BIT = 1 };

struct Weight {
    const uint8_t* codes;
    const float* scales;
    const float* offsets;
    int64_t k;
};

inline f32x16 load16(const float* p) {
    f32x16 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Halves added pairwise: four dependent adds where a running sum takes fifteen.
inline float sum16(f32x16 v) {
    float lanes[16];
    std::memcpy(lanes, &v, sizeof lanes);
    for (int width = 8; width >= 1; width /= 2)
        for (int i = 0; i < width; ++i) lanes[i] += lanes[i + width];
    return lanes[0];
}

// Block b of row n as two float vectors: weights 0-15 and 16-31.
template <int K>
inline void expand(const Weight& w, int64_t n, int64_t b, f32x16& low, f32x16& high);

template <>
inline void expand<FOUR_BIT>(const Weight& w, int64_t n, int64_t b, f32x16& low, f32x16& high) {
    const int64_t blocks = w.k / BLOCK;
    u8x16 bytes;
    std::memcpy(&bytes, w.codes + (n * blocks + b) * HALF, sizeof bytes);
    const float scale = w.scales[n * blocks + b], offset = w.offsets[n * blocks + b];
    low = to_float(bytes & 15) * scale + offset;
    high = to_float(bytes >> 4) * scale + offset;
}

// The codes are read as unsigned bytes with their sign bit flipped, q + 128, because GCC
// scalarizes a signed byte widening; scale * (q + 128) - 128 * scale is exact all the same.
template <>
inline void expand<EIGHT_BIT>(const Weight& w, int64_t n, int64_t b, f32x16& low, f32x16& high) {
    const int64_t blocks = w.k / BLOCK;
    u8x16 first, second;
    const uint8_t* codes = w.codes + (n * blocks + b) * BLOCK;
    std::memcpy(&first, codes, sizeof first);
    std::memcpy(&second, codes + HALF, sizeof second);
    const float scale = w.scales[n * blocks + b], offset = -128.0f * scale;
    low = to_float(first ^ 0x80) * scale + offset;
    high = to_float(second ^ 0x80) * scale + offset;
}

// A tile of ROWS rows of x by COLS output columns, over [n_begin, n_end) (a multiple of
// COLS long). Each block step loads the rows' 32 activations once and each column's block
// once; the ROWS x COLS accumulators are independent chains, enough to keep the FMA units
// busy where one chain would wait on its own latency.
template <int K, int ROWS, int COLS>
void tile(const Weight& w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t n_begin,
          int64_t n_end) {
    const int64_t blocks = w.k / BLOCK;
    for (int64_t n = n_begin; n < n_end; n += COLS) {
        f32x16 acc[ROWS][COLS] = {};
        for (int64_t b = 0; b < blocks; ++b) {
            f32x16 x_low[ROWS], x_high[ROWS];
            for (int r = 0; r < ROWS; ++r) {
                x_low[r] = load16(x + r * ldx + b * BLOCK);
                x_high[r] = load16(x + r * ldx + b * BLOCK + HALF);
            }
            for (int c = 0; c < COLS; ++c) {
                f32x16 low, high;
                expand<K>(w, n + c, b, low, high);
                for (int r = 0; r < ROWS; ++r) {
                    acc[r][c] += x_low[r] * low;
                    acc[r][c] += x_high[r] * high;
                }
            }
        }
        for (int r = 0; r < ROWS; ++r)
            for (int c = 0; c < COLS; ++c) y[r * ldy + n + c] = sum16(acc[r][c]);
    }
}

// ROWS rows of x against columns [n_begin, n_end): whole tiles, then single columns.
template <int K, int ROWS, int COLS>
void rows(const Weight& w, const float* x, int64_t ldx, float* y, int64_t ldy, int64_t n_begin,
          int64_t n_end) {
    const int64_t tiled_end = n_begin + (n_end - n_begin) / COLS * COLS;
    tile<K, ROWS, COLS>(w, x, ldx, y, ldy, n_begin, tiled_end);
    tile<K, ROWS, 1>(w, x, ldx, y, ldy, tiled_end, n_end);
}

template <int K>
void matmul(const Weight& w, const float* x, int64_t m, float* y, int64_t n) {
#pragma omp parallel
    {
        // Static column ranges: every thread streams its own share of the weight.
        int threads = 1, me = 0;
#ifdef _OPENMP
        threads = omp_get_num_threads();
        me = omp_get_thread_num();
#endif
        const int64_t begin = n * me / threads, end = n * (me + 1) / threads;
        const int64_t k = w.k;
        int64_t row = 0;
        for (; row + 4 <= m; row += 4)
            rows<K, 4, 4>(w, x + row * k, k, y + row * n, n, begin, end);
        if (row + 2 <= m) {
            rows<K, 2, 4>(w, x + row * k, k, y + row * n, n, begin, end);
            row += 2;
        }
        if (row < m) rows<K, 1, 8>(w, x + row * k, k, y + row * n, n, begin, end);
    }
}

template <int K>
void dequantize(const Weight& w, int64_t n, float* out) {
    const int64_t blocks = w.k / BLOCK;
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < n; ++row) {
        for (int64_t b = 0; b < blocks; ++b) {
            f32x16 low, high;
            expand<K>(w, row, b, low, high);
            std::memcpy(out + row * w.k + b * BLOCK, &low, sizeof low);
            std::memcpy(out + row * w.k + b * BLOCK + HALF, &high, sizeof high);
        }
    }
}

}  // namespace

extern "C" {

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

// out [n, k] float32 = W, expanded as the matmul expands it.
int tome_block_quantized_dequantize(int kind, int64_t k, const uint8_t* codes,
                                    const float* scales, const float* offsets, int64_t n,
                                    float* out) {
    if (k % BLOCK != 0) return -1;
    const Weight w{codes, scales, offsets, k};
    if (kind == FOUR_BIT) dequantize<FOUR_BIT>(w, n, out);
    else if (kind == EIGHT_BIT) dequantize<EIGHT_BIT>(w, n, out);
    else return -1;
    return 0;
}
}
