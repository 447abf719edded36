// Decode attention on the CPU: each sequence's single query against its cached keys and
// values, read in place from the paged KV pool ([blocks, block_size, kv_heads, head_dim]).
//
// Why a kernel and not torch ops: a decode reads every cached key and value once, so its
// time is memory traffic. Torch ops read a GQA group's keys as one strided matrix per KV
// head (a third of each token's row at a time) and make separate passes for the scores,
// the softmax and the values. Here each worker walks its blocks in memory order, all heads
// of a token together, and folds the softmax into the same pass (flash decoding: a running
// max and sum per head; the context is split over workers and the partial results merged
// by their log-sum-exp).
//
// Quantized caches (int8, fp8) are read with their per token-and-head scales: a score is
// the dot product with the stored values times the key's scale, and a value's weight is
// multiplied by its scale. The caller rotates the query into and the output out of the
// cache's rotated space. fp8 bytes are read through a 256-entry table the caller fills
// with torch's own conversion.
//
// Loaded through ctypes (tome/kernels/cpu_kernels.py), built with -fopenmp: the parallel
// loops run on the OpenMP runtime torch has already loaded.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

// Ways the cache stores a row (one token's one KV head); each gives the row as floats,
// the stored row itself for float32, else converted into `scratch` once, to serve every
// query head of the group.
struct Float32 {
  using Stored = float;
  static const float* floats(const Stored* row, int, const float*, float*) { return row; }
};
struct BFloat16 {
  using Stored = uint16_t;
  static const float* floats(const Stored* row, int dim, const float*, float* scratch) {
    int d = 0;
#ifdef __AVX512F__  // without it GCC takes 16-lane widenings one lane at a time
    for (; d + 16 <= dim; d += 16) {
      u16x16 halves;
      std::memcpy(&halves, row + d, sizeof halves);
      const u32x16 bits = __builtin_convertvector(halves, u32x16) << 16;
      std::memcpy(scratch + d, &bits, sizeof bits);
    }
#endif
    for (; d < dim; ++d) {
      const uint32_t bits = uint32_t(row[d]) << 16;
      std::memcpy(scratch + d, &bits, sizeof(float));
    }
    return scratch;
  }
};
// 16 bytes at a time in vector instructions (with AVX-512; without it GCC takes 16-lane
// widenings one lane at a time). GCC (12) widens signed bytes one by one but unsigned ones
// in vectors, so each byte is read unsigned with its sign bit flipped (q + 128) and 128
// taken off as a float, which is exact.
struct Int8 {
  using Stored = int8_t;
  static const float* floats(const Stored* row, int dim, const float*, float* scratch) {
    int d = 0;
#ifdef __AVX512F__
    for (; d + 16 <= dim; d += 16) {
      u8x16 bytes;
      std::memcpy(&bytes, row + d, sizeof bytes);
      const f32x16 values =
          __builtin_convertvector(__builtin_convertvector(bytes ^ 0x80, i32x16), f32x16) - 128.f;
      std::memcpy(scratch + d, &values, sizeof values);
    }
#endif
    for (; d < dim; ++d) scratch[d] = float(row[d]);
    return scratch;
  }
};
struct Table8 {
  using Stored = uint8_t;
  static const float* floats(const Stored* row, int dim, const float* table, float* scratch) {
    for (int d = 0; d < dim; ++d) scratch[d] = table[row[d]];
    return scratch;
  }
};

enum CacheKind { kFloat32 = 0, kBFloat16 = 1, kInt8 = 2, kTable8 = 3 };

struct Problem {
  const float* q;  // [seqs, heads, head_dim]
  float* out;      // [seqs, heads, head_dim]
  int num_seqs, num_heads, num_kv_heads, head_dim, block_size;
  const void* k_cache;
  const void* v_cache;
  const float* k_scale;  // [blocks, block_size, kv_heads], or null when not quantized
  const float* v_scale;
  const float* table;  // Table8's 256 values
  const int64_t* block_tables;  // [seqs, table_stride]
  int64_t table_stride;
  const int64_t* context_lens;  // [seqs]
  float scale;
  int split_blocks;  // blocks per work item
};

// Per head of one work item: the running max score, the sum of exp(score - max) and the
// values weighted by those exps.
struct Partial {
  float* max;
  float* sum;
  float* acc;  // [heads, head_dim]
};

// Tokens whose scores a worker holds at once. Their keys and values (192 KB each for
// SmolLM2's heads in float32) stay in L2 for the passes over them.
constexpr int kChunkTokens = 256;
// How far ahead of the token being scored its successors' keys and values are fetched.
constexpr int kPrefetchTokens = 8;

// One work item's view of its sequence: kGroup and kDim are the query heads per KV head
// and the head size when known at compile time (0: read from the problem at run time).
// Known, the compiler unrolls the group and vectorizes each row whole.
template <class Cache, int kGroup, int kDim>
struct Worker {
  using Stored = typename Cache::Stored;
  const Problem& p;
  const int seq, heads, kv_heads, dim, group, block_size, chunk_blocks;
  const Stored* keys;
  const Stored* values;
  std::vector<float> query, scores, row_floats;
  std::vector<int64_t> slots;

  Worker(const Problem& problem, int sequence)
      : p(problem), seq(sequence), heads(p.num_heads), kv_heads(p.num_kv_heads),
        dim(kDim ? kDim : p.head_dim), group(kGroup ? kGroup : heads / kv_heads),
        block_size(p.block_size), chunk_blocks(std::max(1, kChunkTokens / block_size)),
        keys(static_cast<const Stored*>(p.k_cache)),
        values(static_cast<const Stored*>(p.v_cache)), query(size_t(heads) * dim),
        scores(size_t(heads) * chunk_blocks * block_size), row_floats(dim),
        slots(size_t(chunk_blocks) * block_size + kPrefetchTokens) {
    for (int i = 0; i < heads * dim; ++i) query[i] = p.q[size_t(seq) * heads * dim + i] * p.scale;
  }

  // The cache slot of each of the chunk's tokens and of the next few the item holds
  // (`known` in all), found once per chunk: row() below is asked for every token and KV
  // head twice, and dividing by the block size each time cost more than the arithmetic
  // of the attention itself.
  void find_slots(int chunk, int known) {
    for (int first = 0, b = chunk; first < known; first += block_size, ++b) {
      const int64_t block = p.block_tables[seq * p.table_stride + b];
      const int in_block = std::min(block_size, known - first);
      for (int t = 0; t < in_block; ++t) slots[first + t] = block * block_size + t;
    }
  }

  // Row (token slot, KV head) of the cache for token n of the current chunk.
  int64_t row(int n, int h) const { return slots[n] * kv_heads + h; }

  // Asks for token n's keys and values (all KV heads: contiguous) ahead of their use.
  void prefetch(int n) const {
    const int64_t bytes = int64_t(kv_heads) * dim * sizeof(Stored);
    const char* key = reinterpret_cast<const char*>(keys + row(n, 0) * dim);
    const char* value = reinterpret_cast<const char*>(values + row(n, 0) * dim);
    for (int64_t line = 0; line < bytes; line += 64) {
      __builtin_prefetch(key + line, 0, 1);
      __builtin_prefetch(value + line, 0, 1);
    }
  }

  // Scores of the chunk's tokens, into scores[head][n]: keys read in memory order. The
  // keys and values of a token kPrefetchTokens on are fetched meanwhile: on its own the
  // hardware prefetcher left the loads waiting on memory most of the time.
  void score(int tokens, int known) {
    const int stride = chunk_blocks * block_size;
    for (int n = 0; n < tokens; ++n) {
      if (n + kPrefetchTokens < known) prefetch(n + kPrefetchTokens);
      for (int h = 0; h < kv_heads; ++h) {
        const int64_t r = row(n, h);
        const float* key = Cache::floats(keys + r * dim, dim, p.table, row_floats.data());
        const float key_scale = p.k_scale ? p.k_scale[r] : 1.f;
        for (int j = 0; j < group; ++j) {
          const float* q = query.data() + (h * group + j) * dim;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int d = 0; d < dim; ++d) dot += q[d] * key[d];
          scores[(h * group + j) * stride + n] = dot * key_scale;
        }
      }
    }
  }

  // Scores to exp(score - running max), the running max, sum and values rescaled to match.
  void softmax(int tokens, Partial part) {
    const int stride = chunk_blocks * block_size;
    for (int i = 0; i < heads; ++i) {
      float* row_scores = scores.data() + i * stride;
      float top = part.max[i];
      for (int n = 0; n < tokens; ++n) top = std::max(top, row_scores[n]);
      if (top > part.max[i]) {
        const float rescale = expf(part.max[i] - top);
        part.sum[i] *= rescale;
        for (int d = 0; d < dim; ++d) part.acc[size_t(i) * dim + d] *= rescale;
        part.max[i] = top;
      }
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int n = 0; n < tokens; ++n) {
        row_scores[n] = expf(row_scores[n] - top);
        total += row_scores[n];
      }
      part.sum[i] += total;
    }
  }

  // Values weighted by the exps, KV head by KV head: with the shape known at compile time
  // a group's sums live in a local array the compiler keeps in registers over the chunk.
  void accumulate(int chunk, int tokens, Partial part) {
    const int stride = chunk_blocks * block_size;
    for (int h = 0; h < kv_heads; ++h) {
      float* acc = part.acc + size_t(h) * group * dim;
      float local[kGroup && kDim ? kGroup * kDim : 1];
      float* __restrict__ sums = kGroup && kDim ? local : acc;
      if (kGroup && kDim) std::copy(acc, acc + group * dim, local);
      for (int n = 0; n < tokens; ++n) {
        const int64_t r = row(n, h);
        const float* __restrict__ value =
            Cache::floats(values + r * dim, dim, p.table, row_floats.data());
        const float value_scale = p.v_scale ? p.v_scale[r] : 1.f;
        for (int j = 0; j < group; ++j) {
          const float weight = scores[(h * group + j) * stride + n] * value_scale;
#pragma omp simd
          for (int d = 0; d < dim; ++d) sums[j * dim + d] += weight * value[d];
        }
      }
      if (kGroup && kDim) std::copy(local, local + group * dim, acc);
    }
  }

  // Blocks [first, last) of the sequence into `out`. The running state stays in this
  // worker's own memory until the end: the workers' slots of `out` sit side by side, and
  // writing them as it goes would bounce cache lines between cores at every chunk.
  void attend(int first, int last, Partial out) {
    // Not -inf: built with -ffast-math, which assumes finite values.
    std::vector<float> max(heads, -FLT_MAX), sum(heads, 0.f), acc(size_t(heads) * dim, 0.f);
    const Partial part{max.data(), sum.data(), acc.data()};
    const int64_t length = p.context_lens[seq];
    const int64_t item_end = std::min<int64_t>(int64_t(last) * block_size, length);
    for (int chunk = first; chunk < last; chunk += chunk_blocks) {
      const int64_t start = int64_t(chunk) * block_size;
      const int64_t end = std::min<int64_t>(int64_t(std::min(chunk + chunk_blocks, last)) * block_size, length);
      const int tokens = int(end - start);
      const int known = int(std::min<int64_t>(end + kPrefetchTokens, item_end) - start);
      find_slots(chunk, known);
      score(tokens, known);
      softmax(tokens, part);
      accumulate(chunk, tokens, part);
    }
    std::copy(max.begin(), max.end(), out.max);
    std::copy(sum.begin(), sum.end(), out.sum);
    std::copy(acc.begin(), acc.end(), out.acc);
  }
};

template <class Cache, int kGroup, int kDim>
void decode(const Problem& p) {
  const int heads = p.num_heads, dim = p.head_dim;
  int64_t longest = 0;
  for (int s = 0; s < p.num_seqs; ++s) longest = std::max(longest, p.context_lens[s]);
  const int64_t longest_blocks = (longest + p.block_size - 1) / p.block_size;
  const int splits = int((longest_blocks + p.split_blocks - 1) / p.split_blocks);
  const int items = p.num_seqs * splits;
  std::vector<float> maxes(size_t(items) * heads), sums(size_t(items) * heads);
  std::vector<float> accs(size_t(items) * heads * dim);
#pragma omp parallel for schedule(dynamic, 1)
  for (int w = 0; w < items; ++w) {
    const int seq = w / splits;
    const int64_t blocks = (p.context_lens[seq] + p.block_size - 1) / p.block_size;
    const int first = (w % splits) * p.split_blocks;
    const int last = int(std::min<int64_t>(first + p.split_blocks, blocks));
    Partial part{maxes.data() + size_t(w) * heads, sums.data() + size_t(w) * heads,
                 accs.data() + size_t(w) * heads * dim};
    if (first < last) {
      Worker<Cache, kGroup, kDim>(p, seq).attend(first, last, part);
    } else {  // past this sequence's end: weighs nothing in the merge
      std::fill(part.max, part.max + heads, -FLT_MAX);
      std::fill(part.sum, part.sum + heads, 0.f);
      std::fill(part.acc, part.acc + size_t(heads) * dim, 0.f);
    }
  }
  // A second parallel region costs more than a small merge: waking the threads again.
  const bool merge_in_parallel = int64_t(items) * heads * dim > (int64_t(1) << 18);
#pragma omp parallel for if (merge_in_parallel)
  for (int sh = 0; sh < p.num_seqs * heads; ++sh) {
    const int seq = sh / heads, i = sh % heads;
    float top = -FLT_MAX;
    for (int s = 0; s < splits; ++s) top = std::max(top, maxes[(size_t(seq) * splits + s) * heads + i]);
    float total = 0.f;
    float* out = p.out + size_t(sh) * dim;
    std::fill(out, out + dim, 0.f);
    for (int s = 0; s < splits; ++s) {
      const size_t w = size_t(seq) * splits + s;
      const float weight = expf(maxes[w * heads + i] - top);
      total += sums[w * heads + i] * weight;
      const float* acc = accs.data() + (w * heads + i) * dim;
      for (int d = 0; d < dim; ++d) out[d] += acc[d] * weight;
    }
    for (int d = 0; d < dim; ++d) out[d] /= total;
  }
}

template <class Cache, int kDim>
void decode_group(const Problem& p) {
  switch (p.num_heads / p.num_kv_heads) {
    case 1: decode<Cache, 1, kDim>(p); break;
    case 2: decode<Cache, 2, kDim>(p); break;
    case 3: decode<Cache, 3, kDim>(p); break;
    case 4: decode<Cache, 4, kDim>(p); break;
    case 6: decode<Cache, 6, kDim>(p); break;
    case 7: decode<Cache, 7, kDim>(p); break;
    case 8: decode<Cache, 8, kDim>(p); break;
    default: decode<Cache, 0, kDim>(p);
  }
}

// The common shapes compiled for their sizes; any other shape runs the general loops.
template <class Cache>
void decode_shape(const Problem& p) {
  switch (p.head_dim) {
    case 64: decode_group<Cache, 64>(p); break;
    case 128: decode_group<Cache, 128>(p); break;
    default: decode<Cache, 0, 0>(p);
  }
}

}  // namespace

extern "C" int tome_paged_decode_attention(
    const float* q, float* out, int num_seqs, int num_heads, int num_kv_heads, int head_dim,
    int block_size, int cache_kind, const void* k_cache, const void* v_cache,
    const float* k_scale, const float* v_scale, const float* table,
    const int64_t* block_tables, int64_t table_stride, const int64_t* context_lens,
    float scale, int split_blocks) {
  const Problem p{q, out, num_seqs, num_heads, num_kv_heads, head_dim, block_size, k_cache,
                  v_cache, k_scale, v_scale, table, block_tables, table_stride, context_lens,
                  scale, split_blocks};
  switch (cache_kind) {
    case kFloat32: decode_shape<Float32>(p); return 0;
    case kBFloat16: decode_shape<BFloat16>(p); return 0;
    case kInt8: decode_shape<Int8>(p); return 0;
    case kTable8: decode_shape<Table8>(p); return 0;
    default: return 1;
  }
}
