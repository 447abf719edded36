// Stores a step's new K and V rows in their paged-cache slots, both in one call: float32
// rows copied, rounded to bfloat16, or (rows already rotated, as kv_quantization.py
// defines) quantized to int8 with one float32 scale per token and head. torch's
// index_copy_ takes 5.9 ms to store an 8,191-token prompt's K or V and, at decode, a
// quantized store is a dozen small ops per layer.
//
// Every stored value equals the torch reference's bit for bit: bfloat16 rounds to nearest
// even as torch does, and int8 divides (no reciprocal) and rounds half to even as
// torch.round does. So this file is built without -ffast-math (cpu_kv_store.py says so):
// with it, GCC multiplied by 1 / scale even inside a function marked no-reciprocal-math.

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

enum StoreKind { kFloat32 = 0, kBFloat16 = 1, kInt8 = 2 };

constexpr float kInt8Max = 127.0f;
// Tokens below this are stored by the calling thread: a parallel region costs more.
constexpr int64_t PARALLEL_FROM_TOKENS = 64;

struct Destination {
    void* values;    // [slots, heads, head_dim] of the cache's dtype
    float* scales;   // [slots, heads] for int8, else unused
};

uint16_t to_bfloat16(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    // NaN stored as torch's vectorized CPU conversion stores it.
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0xFFFF;
    return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// One head's row: scale = max|x| / 127 (1 for an all-zero row), codes round(x / scale).
void quantize_row(const float* in, int64_t head_dim, int8_t* codes, float* scale) {
    float largest = 0.0f;
    for (int64_t i = 0; i < head_dim; ++i) largest = std::fmax(largest, std::fabs(in[i]));
    float s = largest / kInt8Max;
    if (s == 0.0f) s = 1.0f;
    for (int64_t i = 0; i < head_dim; ++i) {
        const float scaled = std::fmin(std::fmax(in[i] / s, -kInt8Max), kInt8Max);
        codes[i] = static_cast<int8_t>(std::nearbyint(scaled));
    }
    *scale = s;
}

// One token's rows [heads, head_dim] (contiguous) into slot `slot` of `out`.
void store_token(const float* in, int64_t slot, int64_t heads, int64_t head_dim, int kind,
                 const Destination& out) {
    const int64_t row = heads * head_dim;
    if (kind == kFloat32) {
        std::memcpy(static_cast<float*>(out.values) + slot * row, in, row * sizeof(float));
    } else if (kind == kBFloat16) {
        uint16_t* values = static_cast<uint16_t*>(out.values) + slot * row;
        for (int64_t i = 0; i < row; ++i) values[i] = to_bfloat16(in[i]);
    } else {
        int8_t* codes = static_cast<int8_t*>(out.values) + slot * row;
        for (int64_t h = 0; h < heads; ++h) {
            quantize_row(in + h * head_dim, head_dim, codes + h * head_dim,
                         out.scales + slot * heads + h);
        }
    }
}

}  // namespace

extern "C" {

// k and v [tokens, heads, head_dim] float32, tokens `k_stride` / `v_stride` floats apart and
// each token's heads contiguous; slots [tokens] int64 (a negative slot is not stored, as the
// Triton kernel treats it). Returns 0, or 1 for a kind it does not store.
int tome_store_kv(const float* k, int64_t k_stride, const float* v, int64_t v_stride,
                  const int64_t* slots, int64_t tokens, int64_t heads, int64_t head_dim,
                  int kind, void* k_cache, void* v_cache, float* k_scales, float* v_scales) {
    if (kind != kFloat32 && kind != kBFloat16 && kind != kInt8) return 1;
    const Destination keys{k_cache, k_scales}, values{v_cache, v_scales};
#pragma omp parallel for schedule(static) if (tokens >= PARALLEL_FROM_TOKENS)
    for (int64_t t = 0; t < tokens; ++t) {
        if (slots[t] < 0) continue;
        store_token(k + t * k_stride, slots[t], heads, head_dim, kind, keys);
        // A latent cache's one tensor is K and V: it is written once.
        if (v_cache != k_cache)
            store_token(v + t * v_stride, slots[t], heads, head_dim, kind, values);
    }
    return 0;
}

}  // extern "C"
