// y = x @ W^T for a weight W kept in llama.cpp's block quantization, on the CPU.
//
// W is [n, k], cut along k into blocks of 32 weights that share a float scale (and, for
// the 4-bit kinds, a float offset): w = scale * q + offset. The loader repacks GGUF's
// Q4_0, Q4_1, Q4_K (4-bit codes, scale and offset) and Q8_0 (8-bit codes, scale) into
// panels of 16 output columns, each 64 bytes holding a few k of all 16 columns, column
// after column, so that one 32-bit lane of a vector is one column's codes for 4 k (the
// operand of an 8-bit dot product instruction):
//   codes    4-bit: uint8 [n / 16, k / 8, 16, 4]: byte (p, g, j, t) holds column 16p + j's
//            code for k = 8g + t in its low nibble and for k = 8g + 4 + t in its high one;
//            8-bit: uint8 [n / 16, k / 4, 16, 4]: byte (p, g, j, t) is the signed code for
//            k = 4g + t, as its two's-complement byte;
//   scales   float [n / 16, k / 32, 16]; offsets the same (4-bit only).
// (n is padded to whole panels with zero columns.)
//
// Two products:
// - float activations: a block's codes, as floats, multiply float32 activations and the
//   block's scale and offset apply to the block's sums (scale * sum(q * x) + offset *
//   sum(x)), so the result differs from a float32 matmul over the dequantized weight only
//   by the rounding of its sums;
// - 8-bit activations, as llama.cpp computes: each row of x is quantized per block of 32
//   to int8 (a float scale amax / 127 a block), the codes multiply in integers (AVX-512
//   VNNI's vpdpbusd, or the pair of multiply-adds it replaces on AVX-512 and AVX2) and one
//   float multiply-add a block applies both scales. Integer sums are exact, so every
//   instruction set gives the same bytes. It reads 4 bytes of codes per instruction where
//   the float product expands one code per lane.
//
// Decode is a matrix-vector product whose time is the weight's bytes: about 0.6 bytes a
// weight here against 4 in float32. Each thread takes a range of panels and runs every
// row of x against a panel while its codes are in the L1 cache.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

// -ffast-math lets GCC regroup acc + a * b + c * d as acc + (a * b + c * d): a multiply,
// a multiply-add and an add where two multiply-adds do.
#pragma GCC optimize("no-associative-math")

namespace {

constexpr int BLOCK = 32;
constexpr int PANEL = 16;
constexpr int GROUP_BYTES = 64;  // one vector: 4 bytes of codes for each of 16 columns
// Codes and scales are prefetched a panel ahead: the hardware prefetcher alone let the
// expansion and the memory traffic take turns (12 GB/s at batch 1, 20 with this).
constexpr int AHEAD_PANELS = 1;

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x64 __attribute__((vector_size(64)));

enum Kind { FOUR_BIT = 0, EIGHT_BIT = 1 };
enum Activations { FLOAT32 = 0, INT8 = 1 };

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

inline f32x16 to_float(i32x16 v) { return __builtin_convertvector(v, f32x16); }

template <int K>
constexpr int64_t groups_per_block() {
    return K == FOUR_BIT ? BLOCK / 8 : BLOCK / 4;
}

// The 64 bytes of group g of block b of panel p.
template <int K>
inline const uint8_t* group_codes(const Weight& w, int64_t p, int64_t b, int g) {
    const int64_t groups = w.k / BLOCK * groups_per_block<K>();
    return w.codes + (p * groups + b * groups_per_block<K>() + g) * GROUP_BYTES;
}

inline f32x16 block_vector(const float* values, const Weight& w, int64_t p, int64_t b) {
    return load<f32x16>(values + (p * (w.k / BLOCK) + b) * PANEL);
}

inline void prefetch_next_panel(const Weight& w, int64_t p, int64_t b, int bytes) {
    const int64_t blocks = w.k / BLOCK;
    const uint8_t* codes = w.codes + ((p + AHEAD_PANELS) * blocks + b) * bytes;
    for (int line = 0; line < bytes; line += 64) __builtin_prefetch(codes + line);
    __builtin_prefetch(w.scales + ((p + AHEAD_PANELS) * blocks + b) * PANEL);
    if (w.offsets) __builtin_prefetch(w.offsets + ((p + AHEAD_PANELS) * blocks + b) * PANEL);
}

// The code for k = step of one group, a lane per column: 4-bit steps 0-3 are the low
// nibbles of bytes 0-3, steps 4-7 the high ones; 8-bit step t is byte t, sign-extended.
template <int K>
inline i32x16 step_codes(i32x16 group, int step) {
    if constexpr (K == FOUR_BIT) return (group >> (8 * (step % 4) + 4 * (step / 4))) & 15;
    else return (group << (24 - 8 * step)) >> 24;
}

// The code for k = step as a float, a lane per column. For 4 bits with AVX-512 a lookup
// in a table of 0..15 (vpermps reads only an index's low 4 bits) replaces masking the
// nibble and converting it: the float product is bound by these instructions, not by
// memory, at decode.
template <int K>
inline f32x16 step_values(i32x16 group, int step) {
#ifdef __AVX512F__
    if constexpr (K == FOUR_BIT) {
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const i32x16 index = group >> (8 * (step % 4) + 4 * (step / 4));
        return f32x16(_mm512_permutexvar_ps(__m512i(index), iota));
    }
#endif
    return to_float(step_codes<K>(group, step));
}

// Panel p, block b: feeds `use(step, weights)` the block's weights one k at a time, each a
// vector over the panel's 16 columns, as the dequantizer computes them.
template <int K, class Use>
inline void for_block(const Weight& w, int64_t p, int64_t b, Use use) {
    constexpr int steps = K == FOUR_BIT ? 8 : 4;
    const f32x16 scale = block_vector(w.scales, w, p, b);
    const f32x16 offset = K == FOUR_BIT ? block_vector(w.offsets, w, p, b) : f32x16{};
    for (int g = 0; g < groups_per_block<K>(); ++g) {
        const i32x16 group = load<i32x16>(group_codes<K>(w, p, b, g));
        for (int step = 0; step < steps; ++step) {
            const f32x16 q = step_values<K>(group, step);
            use(g * steps + step, K == FOUR_BIT ? q * scale + offset : q * scale);
        }
    }
}

// ROWS rows of x times one k's weights (a vector over the panel's columns).
template <int ROWS>
inline void multiply_add(f32x16 (&acc)[ROWS], f32x16 weights, const float* x, int64_t ldx) {
    for (int r = 0; r < ROWS; ++r) acc[r] += weights * x[r * ldx];
}

template <int ROWS>
inline void store_rows(const f32x16 (&sums)[ROWS], float* y, int64_t ldy, int64_t n, int64_t p) {
    const int64_t columns = n - p * PANEL < PANEL ? n - p * PANEL : PANEL;
    for (int r = 0; r < ROWS; ++r)
        std::memcpy(y + r * ldy + p * PANEL, &sums[r], columns * sizeof(float));
}

// Rows [first_row, first_row + ROWS) of float x against panel p. Within a block the codes
// multiply x as they are and the block's scale (and offset, times the sum of x over the
// block) applies once at its end: scale * sum(q * x) + offset * sum(x), a multiply-add a
// weight fewer than expanding each weight first. Alternate k add into separate
// accumulators, so that one row's chain of multiply-adds does not wait on itself. (The
// loops are written out, not passed to for_block: accumulators a lambda captures live in
// memory, not in registers.)
template <int K, int ROWS>
void float_rows_times_panel(const Weight& w, const float* x_all, const float* x_sums,
                            int64_t first_row, float* y_all, int64_t n, int64_t p) {
    constexpr int steps = K == FOUR_BIT ? 8 : 4;
    const int64_t blocks = w.k / BLOCK, ldx = w.k;
    const float* x = x_all + first_row * ldx;
    f32x16 acc[ROWS] = {};
    for (int64_t b = 0; b < blocks; ++b) {
        prefetch_next_panel(w, p, b, BLOCK * PANEL * (K == FOUR_BIT ? 1 : 2) / 2);
        f32x16 even[ROWS] = {}, odd[ROWS] = {};
        for (int g = 0; g < groups_per_block<K>(); ++g) {
            const i32x16 group = load<i32x16>(group_codes<K>(w, p, b, g));
            const float* xg = x + b * BLOCK + g * steps;
            for (int step = 0; step < steps; step += 2) {
                multiply_add(even, step_values<K>(group, step), xg + step, ldx);
                multiply_add(odd, step_values<K>(group, step + 1), xg + step + 1, ldx);
            }
        }
        const f32x16 scale = block_vector(w.scales, w, p, b);
        for (int r = 0; r < ROWS; ++r) {
            acc[r] += (even[r] + odd[r]) * scale;
            if constexpr (K == FOUR_BIT)
                acc[r] += block_vector(w.offsets, w, p, b) * x_sums[(first_row + r) * blocks + b];
        }
    }
    store_rows(acc, y_all + first_row * n, n, n, p);
}

// The sum of each block of 32 of x's rows, [m, k / 32]: the offsets' share of a block.
std::vector<float> block_sums(const float* x, int64_t m, int64_t k) {
    std::vector<float> sums(m * (k / BLOCK));
    for (size_t i = 0; i < sums.size(); ++i) {
        float sum = 0.0f;
        for (int j = 0; j < BLOCK; ++j) sum += x[i * BLOCK + j];
        sums[i] = sum;
    }
    return sums;
}

// Rows of x quantized per block of 32: x ~ scale * q, q in [-127, 127].
struct QuantizedRows {
    std::vector<int8_t> codes;     // [m, k]
    std::vector<float> scales;     // [m, k / 32]: amax / 127
    std::vector<int32_t> sums;     // [m, k / 32]: the sum of the block's codes
    int64_t k;
};

// q = round(x * (127 / amax)), ties to even, as torch.round rounds.
QuantizedRows quantize_rows(const float* x, int64_t m, int64_t k) {
    const int64_t blocks = k / BLOCK;
    QuantizedRows rows{std::vector<int8_t>(m * k), std::vector<float>(m * blocks),
                       std::vector<int32_t>(m * blocks), k};
    for (int64_t i = 0; i < m * blocks; ++i) {
        const float* values = x + i * BLOCK;
        float amax = 0.0f;
        for (int j = 0; j < BLOCK; ++j) amax = std::fmax(amax, std::fabs(values[j]));
        const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < BLOCK; ++j) {
            const int32_t q = static_cast<int32_t>(std::nearbyint(values[j] * inverse));
            rows.codes[i * BLOCK + j] = static_cast<int8_t>(q);
            sum += q;
        }
        rows.scales[i] = amax / 127.0f;
        rows.sums[i] = sum;
    }
    return rows;
}

// acc + per 32-bit lane, the sum of its 4 unsigned bytes of u times the 4 signed bytes of
// s. Without VNNI, the two multiply-adds it replaces saturate their 16-bit pair sums, so
// callers keep u below 16 there (2 * 15 * 127 fits).
inline i32x16 dot4(i32x16 acc, u8x64 u, i32x16 s) {
#if defined(__AVX512VNNI__)
    return (i32x16)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)u, (__m512i)s);
#elif defined(__AVX512BW__)
    const __m512i pairs = _mm512_maddubs_epi16((__m512i)u, (__m512i)s);
    return acc + (i32x16)_mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
#elif defined(__AVX2__)
    __m256i halves[2], us[2], ss[2];
    std::memcpy(halves, &acc, 64);
    std::memcpy(us, &u, 64);
    std::memcpy(ss, &s, 64);
    for (int h = 0; h < 2; ++h) {
        const __m256i pairs = _mm256_maddubs_epi16(us[h], ss[h]);
        halves[h] = _mm256_add_epi32(halves[h], _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
    }
    std::memcpy(&acc, halves, 64);
    return acc;
#else
    int8_t signed_bytes[64];
    std::memcpy(signed_bytes, &s, 64);
    for (int lane = 0; lane < 16; ++lane)
        for (int t = 0; t < 4; ++t) acc[lane] += u[4 * lane + t] * signed_bytes[4 * lane + t];
    return acc;
#endif
}

#if defined(__AVX512VNNI__)
constexpr bool WIDE_DOT = true;  // dot4 takes any unsigned byte
#else
constexpr bool WIDE_DOT = false;
#endif

// Four bytes of row r's codes at k, in every lane.
inline i32x16 broadcast4(const int8_t* codes) { return i32x16{} + load<int32_t>(codes); }

// Rows [first_row, first_row + ROWS) of quantized x against panel p: per block, an exact
// integer dot product of the codes, then acc += isum * (w_scale * x_scale) (+ w_offset *
// x_scale * sum of x's codes, for 4-bit), in that order on every instruction set.
template <int K, int ROWS>
void int8_rows_times_panel(const Weight& w, const QuantizedRows& xq, int64_t first_row,
                           float* y_all, int64_t n, int64_t p) {
    const int64_t blocks = w.k / BLOCK, ldx = w.k;
    const int8_t* x = xq.codes.data() + first_row * ldx;
    const float* x_scales = xq.scales.data() + first_row * blocks;
    const int32_t* x_sums = xq.sums.data() + first_row * blocks;
    f32x16 acc[ROWS] = {};
    for (int64_t b = 0; b < blocks; ++b) {
        prefetch_next_panel(w, p, b, BLOCK * PANEL * (K == FOUR_BIT ? 1 : 2) / 2);
        i32x16 dots[ROWS] = {};
        if constexpr (K == FOUR_BIT) {
            for (int g = 0; g < 4; ++g) {
                const u8x64 bytes = load<u8x64>(group_codes<K>(w, p, b, g));
                const u8x64 low = bytes & 15, high = bytes >> 4;
                const int8_t* xg = x + b * BLOCK + 8 * g;
                for (int r = 0; r < ROWS; ++r) {
                    dots[r] = dot4(dots[r], low, broadcast4(xg + r * ldx));
                    dots[r] = dot4(dots[r], high, broadcast4(xg + r * ldx + 4));
                }
            }
        } else {
            // Codes as unsigned bytes q + 128 (the flipped sign bit); 128 * sum(x) comes
            // off after. Without VNNI they go in as two nibbles: 16 * high + low.
            i32x16 highs[ROWS] = {};
            for (int g = 0; g < 8; ++g) {
                const u8x64 shifted = load<u8x64>(group_codes<K>(w, p, b, g)) ^ 0x80;
                const int8_t* xg = x + b * BLOCK + 4 * g;
                for (int r = 0; r < ROWS; ++r) {
                    const i32x16 xr = broadcast4(xg + r * ldx);
                    if constexpr (WIDE_DOT) {
                        dots[r] = dot4(dots[r], shifted, xr);
                    } else {
                        dots[r] = dot4(dots[r], shifted & 15, xr);
                        highs[r] = dot4(highs[r], shifted >> 4, xr);
                    }
                }
            }
            for (int r = 0; r < ROWS; ++r)
                dots[r] += highs[r] * 16 - 128 * x_sums[r * blocks + b];
        }
        const f32x16 scale = block_vector(w.scales, w, p, b);
        for (int r = 0; r < ROWS; ++r) {
            const float x_scale = x_scales[r * blocks + b];
            acc[r] += to_float(dots[r]) * (scale * x_scale);
            if constexpr (K == FOUR_BIT) {
                const float x_sum = x_scale * static_cast<float>(x_sums[r * blocks + b]);
                acc[r] += block_vector(w.offsets, w, p, b) * x_sum;
            }
        }
    }
    store_rows(acc, y_all + first_row * n, n, n, p);
}

// The rows of x one product reads: float32 as they came, or quantized to 8 bits.
struct Rows {
    const float* x;
    const QuantizedRows* quantized;  // null for the float product
    int64_t m;
    const float* x_sums;  // the float product's block sums of x (4-bit only)
};

template <int K, int ROWS>
inline void rows_times_panel(const Weight& w, const Rows& x, int64_t row, float* y, int64_t n,
                             int64_t p) {
    if (x.quantized) int8_rows_times_panel<K, ROWS>(w, *x.quantized, row, y, n, p);
    else float_rows_times_panel<K, ROWS>(w, x.x, x.x_sums, row, y, n, p);
}

// Every row of x against panel p, while its codes are in the L1 cache.
template <int K>
void all_rows_times_panel(const Weight& w, const Rows& x, float* y, int64_t n, int64_t p) {
    int64_t row = 0;
    for (; row + 8 <= x.m; row += 8) rows_times_panel<K, 8>(w, x, row, y, n, p);
    if (row + 4 <= x.m) {
        rows_times_panel<K, 4>(w, x, row, y, n, p);
        row += 4;
    }
    if (row + 2 <= x.m) {
        rows_times_panel<K, 2>(w, x, row, y, n, p);
        row += 2;
    }
    if (row < x.m) rows_times_panel<K, 1>(w, x, row, y, n, p);
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
void matmul(const Weight& w, const Rows& x, float* y, int64_t n) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel
    {
        int64_t begin, end;
        my_share(panels, begin, end);
        for (int64_t p = begin; p < end; ++p) all_rows_times_panel<K>(w, x, y, n, p);
    }
}

// Several weights of one shape, each times its own rows (a MoE layer's active experts):
// one parallel pass over all their panels, so that a few small products stream like one
// large one instead of each paying a thread team's start and a prefetch pipeline's fill.
template <int K>
void grouped_matmul(const Weight* weights, const Rows* xs, float* const* ys, int64_t count,
                    int64_t n) {
    const int64_t panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel
    {
        int64_t begin, end;
        my_share(count * panels, begin, end);
        for (int64_t item = begin; item < end; ++item) {
            const int64_t g = item / panels;
            all_rows_times_panel<K>(weights[g], xs[g], ys[g], n, item % panels);
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

// run(kind) with the kind as a compile-time constant (decltype(K)::value); 0, or -1 for
// an unknown kind or a k that is not whole blocks.
template <class Run>
int by_kind(int kind, int64_t k, Run run) {
    if (k % BLOCK != 0) return -1;
    if (kind == FOUR_BIT) run(std::integral_constant<int, FOUR_BIT>{});
    else if (kind == EIGHT_BIT) run(std::integral_constant<int, EIGHT_BIT>{});
    else return -1;
    return 0;
}

}  // namespace

extern "C" {

// 1 where this build's float32 product beats float32 BLAS. It does with AVX-512; built for
// AVX2, GCC splits the 16-float vectors into halves that pass through memory, and a batch-1
// pass over SmolLM2's layers took 18 ms against 5.4 (float32 MKL: about 22). The 8-bit
// product is integer work and beats BLAS on AVX2 too.
int tome_block_quantized_is_fast(int activations) {
#ifdef __AVX512F__
    return 1;
#else
    return activations == INT8 ? 1 : 0;
#endif
}

// y [m, n] = x [m, k] @ W^T, x and y contiguous float32, x quantized to 8 bits per block
// first when activations is INT8. Returns 0, or -1 for an unknown kind or a k that is not
// whole blocks.
int tome_block_quantized_matmul(int kind, int activations, const float* x, int64_t m,
                                int64_t k, const uint8_t* codes, const float* scales,
                                const float* offsets, int64_t n, float* y) {
    const Weight w{codes, scales, offsets, k};
    if (k % BLOCK != 0) return -1;
    QuantizedRows quantized;
    std::vector<float> sums;
    if (activations == INT8) quantized = quantize_rows(x, m, k);
    else if (kind == FOUR_BIT) sums = block_sums(x, m, k);
    const Rows rows{x, activations == INT8 ? &quantized : nullptr, m, sums.data()};
    return by_kind(kind, k, [&](auto K) { matmul<decltype(K)::value>(w, rows, y, n); });
}

// For g < count: ys[g] [ms[g], n] = xs[g] [ms[g], k] @ W_g^T, every W_g of one kind and
// shape [n, k] (codes[g], scales[g], offsets[g]). Returns 0, or -1 as the matmul does.
int tome_block_quantized_grouped_matmul(int kind, int activations, int64_t count,
                                        const float* const* xs, const int64_t* ms, int64_t k,
                                        const uint8_t* const* codes,
                                        const float* const* scales,
                                        const float* const* offsets, int64_t n,
                                        float* const* ys) {
    if (k % BLOCK != 0) return -1;
    std::vector<Weight> weights(count);
    std::vector<QuantizedRows> quantized(activations == INT8 ? count : 0);
    std::vector<std::vector<float>> sums(activations == INT8 ? 0 : count);
    std::vector<Rows> rows(count);
    for (int64_t g = 0; g < count; ++g) {
        weights[g] = Weight{codes[g], scales[g], offsets ? offsets[g] : nullptr, k};
        if (activations == INT8) quantized[g] = quantize_rows(xs[g], ms[g], k);
        else if (kind == FOUR_BIT) sums[g] = block_sums(xs[g], ms[g], k);
        const float* x_sums = sums.empty() ? nullptr : sums[g].data();
        rows[g] = Rows{xs[g], activations == INT8 ? &quantized[g] : nullptr, ms[g], x_sums};
    }
    return by_kind(kind, k, [&](auto K) {
        grouped_matmul<decltype(K)::value>(weights.data(), rows.data(), ys, count, n);
    });
}

// out [k, n] float32 = W^T, expanded as the matmul expands it.
int tome_block_quantized_dequantize_transposed(int kind, int64_t k, const uint8_t* codes,
                                               const float* scales, const float* offsets,
                                               int64_t n, float* out) {
    const Weight w{codes, scales, offsets, k};
    return by_kind(kind, k, [&](auto K) {
        dequantize_transposed<decltype(K)::value>(w, n, out);
    });
}

// out [count, k] float32 = rows `index` of W.
int tome_block_quantized_rows(int kind, int64_t k, const uint8_t* codes, const float* scales,
                              const float* offsets, const int64_t* index, int64_t count,
                              float* out) {
    const Weight w{codes, scales, offsets, k};
    return by_kind(kind, k, [&](auto K) {
        gather_rows<decltype(K)::value>(w, index, count, out);
    });
}
}
