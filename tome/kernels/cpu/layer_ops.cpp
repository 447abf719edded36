// The small float32 operations between a decoder layer's matrix products, each in one pass
// over its rows: RMSNorm, the half-split rotary embedding and SiLU-and-multiply. In torch
// they are five or six elementwise ops apiece, each a pass over memory (and, at decode, a
// dispatch); a 8k-token prefill of a small model spends a tenth of its time in them.
//
// RMSNorm and the rotation compute what the reference implementations compute, in the
// same order of operations for every output value; only the order of the RMSNorm's sum of
// squares differs, by rounding. SiLU's exponential is glibc's vector expf, within a few
// units in the last place of torch's.

#include <cmath>
#include <cstdint>

namespace {

// Rows below this are done by the calling thread: a parallel region costs more than they do.
constexpr int64_t PARALLEL_FROM_ROWS = 64;

}  // namespace

extern "C" {

// -ffast-math would fold x * inv * weight into x * (inv * weight), and a * b + c * d into
// one multiply-add: values transformers rounds twice. (Not for SiLU below: these options
// also keep GCC from calling the vector expf.)
#pragma GCC push_options
#pragma GCC optimize("no-associative-math", "fp-contract=off")

// out [rows, dim] = x * rsqrt(mean(x^2) + eps) * weight, per row; x rows are `x_stride` apart.
void tome_rms_norm(const float* x, int64_t x_stride, const float* weight, float eps,
                   int64_t rows, int64_t dim, float* out) {
#pragma omp parallel for schedule(static) if (rows >= PARALLEL_FROM_ROWS)
    for (int64_t r = 0; r < rows; ++r) {
        const float* in = x + r * x_stride;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < dim; ++i) sum += in[i] * in[i];
        const float inv = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
        float* o = out + r * dim;
#pragma omp simd
        for (int64_t i = 0; i < dim; ++i) o[i] = weight[i] * (in[i] * inv);
    }
}

// In place, x [tokens, heads, head_dim] with tokens `token_stride` floats apart and heads
// contiguous: x * cos + rotate_half(x) * sin, cos and sin [tokens, head_dim].
void tome_rotary(float* x, int64_t token_stride, int64_t tokens, int64_t heads,
                 int64_t head_dim, const float* cos, const float* sin) {
    const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (tokens >= PARALLEL_FROM_ROWS)
    for (int64_t t = 0; t < tokens; ++t) {
        const float* c = cos + t * head_dim;
        const float* s = sin + t * head_dim;
        for (int64_t h = 0; h < heads; ++h) {
            float* v = x + t * token_stride + h * head_dim;
#pragma omp simd
            for (int64_t i = 0; i < half; ++i) {
                const float first = v[i], second = v[i + half];
                v[i] = first * c[i] + (-second) * s[i];
                v[i + half] = second * c[i + half] + first * s[i + half];
            }
        }
    }
}

#pragma GCC pop_options

// out [rows, width] = silu(gate) * up, gate and up the two halves of each row of
// gate_up [rows, 2 * width].
void tome_silu_and_mul(const float* gate_up, int64_t rows, int64_t width, float* out) {
#pragma omp parallel for schedule(static) if (rows >= PARALLEL_FROM_ROWS)
    for (int64_t r = 0; r < rows; ++r) {
        const float* gate = gate_up + r * 2 * width;
        const float* up = gate + width;
        float* o = out + r * width;
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) o[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    }
}
}
