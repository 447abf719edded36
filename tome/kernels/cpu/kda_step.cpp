// One token of each of a batch of sequences through Kimi Delta Attention's recurrence, each
// sequence's state [heads, k_dim, v_dim] updated in place in its slot of the layer's pool.
// The torch step gathers the states out of the pool, passes over them five times (decay,
// read back, outer product, add, read out) and scatters them back: 3.1 ms for one sequence
// of Kimi Linear's 32 heads of 128 on one core, where the state is 2 MB. Here each head's
// state is read once and then updated in place while it is still in the cache.
//
// With q and k L2-normalised (q also scaled) and e = exp(g), the step is
//   S' = diag(e) S + k delta^T,  delta = beta (v - k^T diag(e) S),  o = q^T S',
// and o = (q e)^T S + (q . k) delta, so both reads of S come before its one write.

#include <cmath>
#include <cstdint>

namespace {

// Kimi Linear's heads are 128 wide; flash-linear-attention's kernels stop at 256.
constexpr int64_t MAX_DIM = 256;
constexpr float L2_EPS = 1e-6f;  // inside the root, as flash-linear-attention normalises

// x / sqrt(sum(x^2) + eps) * scale into out.
void normalize(const float* x, int64_t n, float scale, float* out) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
    const float factor = scale / std::sqrt(sum + L2_EPS);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * factor;
}

}  // namespace

extern "C" {

// q, k [seqs, heads, k_dim] and v [seqs, heads, v_dim], sequences q_stride, k_stride and
// v_stride floats apart (views of one fused row), heads contiguous; g [seqs, heads, k_dim]
// log decays and beta [seqs, heads], contiguous; states [slots, heads, k_dim, v_dim]
// read and written at slots[seq]; out [seqs, heads, v_dim]. Dimensions at most MAX_DIM.
void tome_kda_step(const float* q, const float* k, const float* v, int64_t q_stride,
                   int64_t k_stride, int64_t v_stride,
                   const float* g, const float* beta, float* states, const int64_t* slots,
                   int64_t seqs, int64_t heads, int64_t k_dim, int64_t v_dim, float scale,
                   float* out) {
#pragma omp parallel for collapse(2) schedule(static) if (seqs * heads > 1)
    for (int64_t s = 0; s < seqs; ++s) {
        for (int64_t h = 0; h < heads; ++h) {
            float qn[MAX_DIM], kn[MAX_DIM], decay[MAX_DIM];
            float read_k[MAX_DIM] = {}, read_q[MAX_DIM] = {}, delta[MAX_DIM];
            normalize(q + s * q_stride + h * k_dim, k_dim, scale, qn);
            normalize(k + s * k_stride + h * k_dim, k_dim, 1.0f, kn);
            const float* gh = g + (s * heads + h) * k_dim;
            float qk = 0.0f;
            for (int64_t i = 0; i < k_dim; ++i) {
                decay[i] = std::exp(gh[i]);
                qk += qn[i] * kn[i];
            }
            float* state = states + (slots[s] * heads + h) * k_dim * v_dim;
            for (int64_t i = 0; i < k_dim; ++i) {
                const float* row = state + i * v_dim;
                const float ke = kn[i] * decay[i], qe = qn[i] * decay[i];
#pragma omp simd
                for (int64_t j = 0; j < v_dim; ++j) {
                    read_k[j] += ke * row[j];
                    read_q[j] += qe * row[j];
                }
            }
            const float b = beta[s * heads + h];
            const float* vh = v + s * v_stride + h * v_dim;
            float* o = out + (s * heads + h) * v_dim;
#pragma omp simd
            for (int64_t j = 0; j < v_dim; ++j) {
                delta[j] = b * (vh[j] - read_k[j]);
                o[j] = read_q[j] + qk * delta[j];
            }
            for (int64_t i = 0; i < k_dim; ++i) {
                float* row = state + i * v_dim;
                const float e = decay[i], ki = kn[i];
#pragma omp simd
                for (int64_t j = 0; j < v_dim; ++j) row[j] = e * row[j] + ki * delta[j];
            }
        }
    }
}
}
