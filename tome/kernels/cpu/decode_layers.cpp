// A decode step's pass through a Llama-family decoder stack in one call: for each layer the
// same kernels the Python layers call one by one (block-quantized products, RMSNorm, the
// rotary embedding, the K/V store, the paged decode attention, SiLU-and-multiply), in the
// same order on the same operands, so every value equals the layer-by-layer path's bit for
// bit. What it saves is Python: a step of SmolLM2's 30 layers spent about 6 ms in module
// calls, views and ctypes calls around 13 ms of kernels.
//
// The kernels live in their own libraries, each built with the flags its rounding needs;
// this file reaches them through the function pointers it is given, and only moves rows
// and adds (x + y rounds the same in any build), so it is built without -ffast-math.

#include <cstdint>
#include <cstring>

namespace {

using Matmul = int (*)(int kind, int activations, const float* x, int64_t m, int64_t k,
                       const uint8_t* codes, const float* scales, const float* offsets,
                       int64_t n, float* y);
using RmsNorm = void (*)(const float* x, int64_t x_stride, const float* weight, float eps,
                         int64_t rows, int64_t dim, float* out);
using Rotary = void (*)(float* x, int64_t token_stride, int64_t tokens, int64_t heads,
                        int64_t head_dim, const float* cos, const float* sin);
using SiluAndMul = void (*)(const float* gate_up, int64_t rows, int64_t width, float* out);
using StoreKV = int (*)(const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                        const int64_t* slots, int64_t tokens, int64_t heads, int64_t head_dim,
                        int kind, void* k_cache, void* v_cache, float* k_scales,
                        float* v_scales);
using Attention = int (*)(const float* q, float* out, int num_seqs, int num_heads,
                          int num_kv_heads, int head_dim, int block_size, int cache_kind,
                          const void* k_cache, const void* v_cache, const float* k_scale,
                          const float* v_scale, const float* table,
                          const int64_t* block_tables, int64_t table_stride,
                          const int64_t* context_lens, float scale, int split_blocks);

}  // namespace

extern "C" {

// The other libraries' entry points.
struct DecodeKernels {
    Matmul matmul;
    RmsNorm rms_norm;
    Rotary rotary;
    SiluAndMul silu_and_mul;
    StoreKV store_kv;
    Attention attention;
};

// A block-quantized linear layer: y = x @ W^T (+ bias).
struct DecodeLinear {
    const uint8_t* codes;
    const float* scales;
    const float* offsets;  // null without offsets
    const float* bias;     // null without bias
    int64_t n, k;
    int32_t kind, activations;
};

// One decoder layer's weights and its slice of the KV pool (float32 or bfloat16 K/V).
struct DecodeLayer {
    const float* input_norm;
    const float* post_attention_norm;
    const float* q_norm;  // null unless the layer normalizes q and k per head (Qwen3)
    const float* k_norm;
    float norm_eps;
    float attention_scale;
    DecodeLinear qkv, o, gate_up, down;
    int32_t heads, kv_heads, head_dim, block_size, cache_kind;
    void* k_cache;
    void* v_cache;
};

// One step: `tokens` sequences of one new token each. `residual` holds the embeddings on
// entry and the residual stream on return, `x` the last layer's MLP output, not yet added.
// The rest are scratch rows sized for the widest layer.
struct DecodeStep {
    int64_t tokens;
    float* residual;
    float* x;
    const float* cos;
    const float* sin;
    const int64_t* slots;
    const int64_t* block_tables;
    int64_t table_stride;
    const int64_t* context_lens;
    int32_t split_blocks;
    float* h;
    float* qkv;
    float* q;
    float* k;
    float* attention;
    float* gate_up;
    float* activated;
};

}  // extern "C"

namespace {

int linear(const DecodeKernels& f, const DecodeLinear& w, const float* x, int64_t m, float* y) {
    const int status = f.matmul(w.kind, w.activations, x, m, w.k, w.codes, w.scales, w.offsets,
                                w.n, y);
    if (status != 0 || w.bias == nullptr) return status;
    for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < w.n; ++c) y[r * w.n + c] += w.bias[c];
    return 0;
}

void add_into(float* residual, const float* x, int64_t count) {
    for (int64_t i = 0; i < count; ++i) residual[i] += x[i];
}

// q and k rotated (normalized per head first where the layer says so): q into s.q as
// [tokens, heads, head_dim]; returns where k's rows start and sets their stride.
const float* rotated_qk(const DecodeKernels& f, const DecodeLayer& l, const DecodeStep& s,
                        int64_t& k_stride) {
    const int64_t t = s.tokens, d = l.head_dim, width = l.qkv.n;
    const int64_t q_size = l.heads * d, kv_size = l.kv_heads * d;
    if (l.q_norm == nullptr) {
        f.rotary(s.qkv, width, t, l.heads + l.kv_heads, d, s.cos, s.sin);
        for (int64_t r = 0; r < t; ++r)
            std::memcpy(s.q + r * q_size, s.qkv + r * width, q_size * sizeof(float));
        k_stride = width;
        return s.qkv + q_size;
    }
    for (int64_t r = 0; r < t; ++r) {
        f.rms_norm(s.qkv + r * width, d, l.q_norm, l.norm_eps, l.heads, d, s.q + r * q_size);
        f.rms_norm(s.qkv + r * width + q_size, d, l.k_norm, l.norm_eps, l.kv_heads, d,
                   s.k + r * kv_size);
    }
    f.rotary(s.q, q_size, t, l.heads, d, s.cos, s.sin);
    f.rotary(s.k, kv_size, t, l.kv_heads, d, s.cos, s.sin);
    k_stride = kv_size;
    return s.k;
}

int attention_block(const DecodeKernels& f, const DecodeLayer& l, const DecodeStep& s) {
    const int64_t t = s.tokens, d = l.head_dim;
    int status = linear(f, l.qkv, s.h, t, s.qkv);
    if (status != 0) return status;
    int64_t k_stride = 0;
    const float* k = rotated_qk(f, l, s, k_stride);
    const float* v = s.qkv + (l.heads + l.kv_heads) * d;
    status = f.store_kv(k, k_stride, v, l.qkv.n, s.slots, t, l.kv_heads, d, l.cache_kind,
                        l.k_cache, l.v_cache, nullptr, nullptr);
    if (status != 0) return status;
    // No scales and no fp8 table: the pass takes float32 and bfloat16 caches only.
    status = f.attention(s.q, s.attention, static_cast<int>(t), l.heads, l.kv_heads,
                         static_cast<int>(d), l.block_size, l.cache_kind, l.k_cache,
                         l.v_cache, nullptr, nullptr, nullptr, s.block_tables,
                         s.table_stride, s.context_lens, l.attention_scale, s.split_blocks);
    if (status != 0) return status;
    return linear(f, l.o, s.attention, t, s.x);
}

int mlp_block(const DecodeKernels& f, const DecodeLayer& l, const DecodeStep& s) {
    const int status = linear(f, l.gate_up, s.h, s.tokens, s.gate_up);
    if (status != 0) return status;
    f.silu_and_mul(s.gate_up, s.tokens, l.gate_up.n / 2, s.activated);
    return linear(f, l.down, s.activated, s.tokens, s.x);
}

}  // namespace

extern "C" {

// Runs `count` layers over the step. Returns 0, or the first kernel's nonzero status.
int tome_decode_layers(const DecodeKernels* kernels, const DecodeLayer* layers, int64_t count,
                       const DecodeStep* step) {
    const DecodeKernels& f = *kernels;
    const DecodeStep& s = *step;
    for (int64_t i = 0; i < count; ++i) {
        const DecodeLayer& l = layers[i];
        const int64_t hidden = l.o.n;
        if (i > 0) add_into(s.residual, s.x, s.tokens * hidden);
        f.rms_norm(s.residual, hidden, l.input_norm, l.norm_eps, s.tokens, hidden, s.h);
        int status = attention_block(f, l, s);
        if (status != 0) return status;
        add_into(s.residual, s.x, s.tokens * hidden);
        f.rms_norm(s.residual, hidden, l.post_attention_norm, l.norm_eps, s.tokens, hidden,
                   s.h);
        status = mlp_block(f, l, s);
        if (status != 0) return status;
    }
    return 0;
}

}  // extern "C"
