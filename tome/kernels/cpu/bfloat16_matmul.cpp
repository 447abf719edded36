// y = x @ W^T for bfloat16 x [m, k] and W [n, k] with few rows of x (a decode step), on the
// CPU: each weight widened to float32 in registers (a bfloat16 is the top half of a
// float32), products summed in float32, each output rounded once to bfloat16 (to nearest,
// ties to even, as torch rounds).
//
// Why: at decode the product reads every weight once for a handful of rows, so its time is
// the weight's bytes; torch's bfloat16 product on a CPU without bfloat16 dot products
// (AVX2, AVX-512 without AVX512-BF16) widens through slower paths and ran SmolLM2's decode
// slower in bfloat16 than in float32. Here every thread streams its own columns' rows of W
// once, all rows of x against each.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

constexpr int MAX_ROWS = 8;  // rows of x a column is multiplied with at once
constexpr int64_t COLUMNS_PER_ITEM = 16;

inline f32x16 widen(const uint16_t* values) {
    u16x16 halves;
    std::memcpy(&halves, values, sizeof halves);
    const u32x16 bits = __builtin_convertvector(halves, u32x16) << 16;
    f32x16 out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

inline float widen_one(uint16_t value) {
    const uint32_t bits = uint32_t(value) << 16;
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

uint16_t to_bfloat16(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    // NaN stored as torch's vectorized CPU conversion stores it.
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFF;
    return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

inline float sum_lanes(f32x16 v) {
    float total = 0.0f;
    for (int i = 0; i < 16; ++i) total += v[i];
    return total;
}

// Rows [first, first + rows) of x (float32 [m, k]) against column j of W.
void column(const float* x, int64_t first, int rows, const uint16_t* w, int64_t k,
            float* sums) {
    f32x16 acc[MAX_ROWS] = {};
    int64_t d = 0;
    for (; d + 16 <= k; d += 16) {
        const f32x16 weights = widen(w + d);
        for (int r = 0; r < rows; ++r) {
            f32x16 xs;
            std::memcpy(&xs, x + (first + r) * k + d, sizeof xs);
            acc[r] += weights * xs;
        }
    }
    for (int r = 0; r < rows; ++r) {
        float total = sum_lanes(acc[r]);
        for (int64_t e = d; e < k; ++e) total += widen_one(w[e]) * x[(first + r) * k + e];
        sums[r] = total;
    }
}

}  // namespace

extern "C" {

// y [m, n] bfloat16 = x [m, k] bfloat16 @ W^T, W [n, k] bfloat16, all contiguous.
void tome_bfloat16_matmul(const uint16_t* x, int64_t m, int64_t k, const uint16_t* w,
                          int64_t n, uint16_t* y) {
    std::vector<float> rows(m * k);
    for (int64_t i = 0; i < m * k; ++i) rows[i] = widen_one(x[i]);
    const int64_t items = (n + COLUMNS_PER_ITEM - 1) / COLUMNS_PER_ITEM;
#pragma omp parallel for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
        const int64_t end = std::min(n, (item + 1) * COLUMNS_PER_ITEM);
        for (int64_t j = item * COLUMNS_PER_ITEM; j < end; ++j) {
            for (int64_t first = 0; first < m; first += MAX_ROWS) {
                const int count = int(std::min<int64_t>(MAX_ROWS, m - first));
                float sums[MAX_ROWS];
                column(rows.data(), first, count, w + j * k, k, sums);
                for (int r = 0; r < count; ++r) y[(first + r) * n + j] = to_bfloat16(sums[r]);
            }
        }
    }
}
}
