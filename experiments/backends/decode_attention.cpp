// Attention of one new position per row over that row's own cache: the static decoder's decoding step.
//
// Written by hand because every reduction here must have an order fixed by
// this source, whatever the batch holds: a row's numbers depend on its own
// queries, keys and values only, not on the other rows, on its slot, on the
// thread that runs it, or on how long the other rows are. torch's batched
// products keep that only for fixed shapes, so the torch version of this
// step read every row up to the longest row's length; here a row reads its
// own length, and does so once, at the speed of memory (torch's bmm on 3x64
// by 64x64 blocks ran at about a fifth of it).
//
// Layout (see static_decoder.py): keys are (slots, kv heads, chunks, head_dim, CHUNK), each chunk
// transposed so that one key dimension of CHUNK positions is contiguous; values are
// (slots, kv heads, positions, head_dim).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t CHUNK = 64;   // static_decoder.ATTENTION_CHUNK
constexpr int64_t LANES = 16;
constexpr int64_t PREFETCH_AHEAD = 8;  // positions of values asked for before they are read

// 16 float32 lanes: GCC's and clang's vector extension, lowered to this CPU's vector registers. Its
// arithmetic is lane by lane, so the order of every sum is the one written here.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

inline f32x16 load16(const float* source) {
  f32x16 lanes;
  std::memcpy(&lanes, source, sizeof lanes);
  return lanes;
}

inline f32x16 load16(const at::BFloat16* source) {  // bfloat16 is the top half of a float32
  u16x16 halves;
  std::memcpy(&halves, source, sizeof halves);
  const u32x16 bits = __builtin_convertvector(halves, u32x16) << 16;
  f32x16 lanes;
  std::memcpy(&lanes, &bits, sizeof lanes);
  return lanes;
}

inline void store16(f32x16 lanes, float* target) { std::memcpy(target, &lanes, sizeof lanes); }

inline f32x16 splat(float x) { return f32x16{} + x; }

inline float widen(float x) { return x; }
inline float widen(at::BFloat16 x) { return static_cast<float>(x); }
inline void narrow(float x, float* out) { *out = x; }
inline void narrow(float x, at::BFloat16* out) { *out = at::BFloat16(x); }  // round to nearest even

// e**x for x in [-30, 0]: Cephes' expf (range reduction by ln 2, a degree-5 polynomial; under 2 ulp),
// on 16 lanes. n = round(x / ln 2) by adding and subtracting 1.5 * 2**23.
inline f32x16 exp_nonpositive(f32x16 x) {
  const f32x16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  f32x16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  f32x16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// The sum of 16 lanes, always in the same pairwise order.
inline float sum_lanes(f32x16 lanes) {
  float level[LANES];
  std::memcpy(level, &lanes, sizeof level);
  for (int64_t width = LANES / 2; width >= 1; width /= 2)
    for (int64_t i = 0; i < width; ++i) level[i] = level[i] + level[i + width];
  return level[0];
}

inline float max_lanes(f32x16 lanes) {
  float level[LANES];
  std::memcpy(level, &lanes, sizeof level);
  float best = level[0];
  for (int64_t i = 1; i < LANES; ++i) best = level[i] > best ? level[i] : best;
  return best;
}

struct Scratch {  // one per thread, reused across its tasks
  std::vector<float> query, scores;
};

// Scores of BLOCK queries (rows of `query`, `dim` apart) against one chunk of keys, into `rows` (`padded`
// apart): a key's 64 positions are read and widened once for all the block's queries, and the key
// dimensions are added in order.
template <int64_t BLOCK, typename T>
inline void score_chunk(const float* query, int64_t dim, const T* block, float* rows, int64_t padded) {
  f32x16 sums[BLOCK][4] = {};
  for (int64_t d = 0; d < dim; ++d) {
    const T* key = block + d * CHUNK;
    // The next chunk's same key dimension: a row's keys stream from memory, not from the cache.
    __builtin_prefetch(key + dim * CHUNK);
    __builtin_prefetch(key + dim * CHUNK + CHUNK / 2 * (sizeof(float) / sizeof(T)));
    const f32x16 key0 = load16(key), key1 = load16(key + 16), key2 = load16(key + 32), key3 = load16(key + 48);
#pragma GCC unroll 8
    for (int64_t g = 0; g < BLOCK; ++g) {
      const float q = query[g * dim + d];
      sums[g][0] += q * key0;
      sums[g][1] += q * key1;
      sums[g][2] += q * key2;
      sums[g][3] += q * key3;
    }
  }
  for (int64_t g = 0; g < BLOCK; ++g)
    for (int64_t v = 0; v < 4; ++v) store16(sums[g][v], rows + g * padded + v * LANES);
}

// BLOCK weighted sums of the values (weights in `rows`, `padded` apart), position by position in
// order, divided by their totals, into `out` (`dim` apart).
template <int64_t BLOCK, int64_t VECTORS, typename T>
inline void weigh_values(const float* rows, int64_t padded, const float* totals, const T* values, int64_t length,
                         int64_t dim, T* out) {
  const int64_t vectors = VECTORS > 0 ? VECTORS : dim / LANES;
  constexpr int64_t HELD = VECTORS > 0 ? VECTORS : 16;
  f32x16 sums[BLOCK][HELD] = {};
  for (int64_t p = 0; p < length; ++p) {
    const T* value = values + p * dim;
    for (int64_t line = 0; line < dim * static_cast<int64_t>(sizeof(T)); line += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(value + PREFETCH_AHEAD * dim) + line);
#pragma GCC unroll 16
    for (int64_t v = 0; v < vectors; ++v) {
      const f32x16 lanes = load16(value + v * LANES);
#pragma GCC unroll 8
      for (int64_t g = 0; g < BLOCK; ++g) sums[g][v] += rows[g * padded + p] * lanes;
    }
  }
  for (int64_t g = 0; g < BLOCK; ++g)
    for (int64_t v = 0; v < vectors; ++v) {
      const f32x16 mean = sums[g][v] / totals[g];
      for (int64_t l = 0; l < LANES; ++l) narrow(mean[l], out + g * dim + v * LANES + l);
    }
}

// e**(score - max) in place over positions 0..padded-1, a weight below e**-30 of the largest counted
// as e**-30 (its share stays under 1e-10, and the arithmetic stays off subnormal numbers), positions
// from `length` on weighing exactly zero; returns the weights' total.
inline float softmax_weights(float* row, int64_t length, int64_t padded) {
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  i32x16 lane{};
  for (int64_t l = 0; l < LANES; ++l) lane[l] = static_cast<int32_t>(l);
  f32x16 best = splat(minus_infinity);
  for (int64_t p = 0; p < padded; p += LANES) {
    const f32x16 score = load16(row + p);
    best = (lane + static_cast<int32_t>(p)) < static_cast<int32_t>(length) && score > best ? score : best;
  }
  const float largest = max_lanes(best);
  f32x16 total{};
  for (int64_t p = 0; p < padded; p += LANES) {
    f32x16 shifted = load16(row + p) - largest;
    shifted = shifted < -30.0f ? splat(-30.0f) : shifted;
    const f32x16 weight = (lane + static_cast<int32_t>(p)) < static_cast<int32_t>(length)
                              ? exp_nonpositive(shifted) : f32x16{};
    total += weight;
    store16(weight, row + p);
  }
  return sum_lanes(total);
}

// BLOCK queries at a time (and the rest one at a time): few enough that their sums stay in registers.
template <int64_t HEAD_DIM>
constexpr int64_t value_block() { return HEAD_DIM == 64 ? 4 : HEAD_DIM == 128 ? 2 : 1; }

// One (row, kv head): `group` queries over positions 0..length-1. HEAD_DIM > 0 fixes the head size at
// compile time (the common sizes), so that the sums stay in registers; 0 takes `runtime_dim`.
template <typename T, int64_t HEAD_DIM>
void attend_one(const T* queries, float scale, const T* keys, const T* values, int64_t length, int64_t group,
                int64_t runtime_dim, T* out, Scratch& scratch) {
  constexpr int64_t VECTORS = HEAD_DIM / LANES, SCORE_BLOCK = 4, VALUE_BLOCK = value_block<HEAD_DIM>();
  const int64_t dim = HEAD_DIM > 0 ? HEAD_DIM : runtime_dim;
  const int64_t chunks = (length + CHUNK - 1) / CHUNK, padded = chunks * CHUNK;
  scratch.query.resize(group * dim + group);
  scratch.scores.resize(group * padded);
  float* query = scratch.query.data();
  float* totals = query + group * dim;
  float* scores = scratch.scores.data();
  for (int64_t i = 0; i < group * dim; ++i) query[i] = widen(queries[i]) * scale;

  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const T* block = keys + chunk * dim * CHUNK;
    for (int64_t g = 0; g < group; g += SCORE_BLOCK) {
      float* rows = scores + g * padded + chunk * CHUNK;
      switch (std::min(SCORE_BLOCK, group - g)) {
        case 4: score_chunk<4>(query + g * dim, dim, block, rows, padded); break;
        case 3: score_chunk<3>(query + g * dim, dim, block, rows, padded); break;
        case 2: score_chunk<2>(query + g * dim, dim, block, rows, padded); break;
        default: score_chunk<1>(query + g * dim, dim, block, rows, padded);
      }
    }
  }
  for (int64_t g = 0; g < group; ++g) totals[g] = softmax_weights(scores + g * padded, length, padded);
  for (int64_t g = 0; g < group; g += VALUE_BLOCK) {
    const float* rows = scores + g * padded;
    switch (std::min(VALUE_BLOCK, group - g)) {
      case 4: weigh_values<4, VECTORS>(rows, padded, totals + g, values, length, dim, out + g * dim); break;
      case 3: weigh_values<3, VECTORS>(rows, padded, totals + g, values, length, dim, out + g * dim); break;
      case 2: weigh_values<2, VECTORS>(rows, padded, totals + g, values, length, dim, out + g * dim); break;
      default: weigh_values<1, VECTORS>(rows, padded, totals + g, values, length, dim, out + g * dim);
    }
  }
}

template <typename T, int64_t HEAD_DIM>
void attend_all(const at::Tensor& queries, double scale, const at::Tensor& new_keys, const at::Tensor& new_values,
                at::Tensor& keys, at::Tensor& values, const at::Tensor& positions, at::Tensor& out) {
  const int64_t rows = queries.size(0), kv_heads = queries.size(1), group = queries.size(2);
  const int64_t dim = queries.size(3), key_chunks = keys.size(2), value_positions = values.size(2);
  const T* query_data = queries.data_ptr<T>();
  const T* new_key_data = new_keys.data_ptr<T>();
  const T* new_value_data = new_values.data_ptr<T>();
  T* key_data = keys.data_ptr<T>();
  T* value_data = values.data_ptr<T>();
  const int64_t* position_data = positions.data_ptr<int64_t>();
  T* out_data = out.data_ptr<T>();
  // One task per (row, kv head); a task writes only its own row's cache and output.
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / kv_heads, head = task % kv_heads, position = position_data[row];
      T* row_keys = key_data + (row * kv_heads + head) * key_chunks * dim * CHUNK;
      T* row_values = value_data + (row * kv_heads + head) * value_positions * dim;
      const T* key_in = new_key_data + task * dim;
      const T* value_in = new_value_data + task * dim;
      T* key_chunk = row_keys + (position / CHUNK) * dim * CHUNK + position % CHUNK;
      for (int64_t d = 0; d < dim; ++d) {
        key_chunk[d * CHUNK] = key_in[d];
        row_values[position * dim + d] = value_in[d];
      }
      attend_one<T, HEAD_DIM>(query_data + task * group * dim, static_cast<float>(scale), row_keys, row_values, position + 1, group, dim,
                              out_data + task * group * dim, scratch);
    }
  });
}

template <typename T>
void dispatch_dim(const at::Tensor& queries, double scale, const at::Tensor& new_keys, const at::Tensor& new_values,
                  at::Tensor& keys, at::Tensor& values, const at::Tensor& positions, at::Tensor& out) {
  switch (queries.size(3)) {
    case 64: return attend_all<T, 64>(queries, scale, new_keys, new_values, keys, values, positions, out);
    case 128: return attend_all<T, 128>(queries, scale, new_keys, new_values, keys, values, positions, out);
    default: return attend_all<T, 0>(queries, scale, new_keys, new_values, keys, values, positions, out);
  }
}

// queries (rows, kv heads, group, head_dim), multiplied by `scale` in float32; new_keys and new_values (rows, kv heads, head_dim):
// the row's key and value at `positions[row]`, written into the cache first. keys and values: one
// layer's cache, whose first `rows` slots are the rows. Returns (rows, kv heads, group, head_dim).
at::Tensor decode_attention(const at::Tensor& queries_in, double scale, const at::Tensor& new_keys_in,
                            const at::Tensor& new_values_in, at::Tensor keys, at::Tensor values,
                            const at::Tensor& positions_in) {
  TORCH_CHECK(queries_in.dim() == 4 && new_keys_in.dim() == 3 && new_values_in.dim() == 3,
              "decode_attention: queries (rows, kv, group, dim), new keys and values (rows, kv, dim)");
  TORCH_CHECK(keys.dim() == 5 && keys.size(4) == CHUNK && values.dim() == 4,
              "decode_attention: keys (slots, kv, chunks, dim, ", CHUNK, "), values (slots, kv, positions, dim)");
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous(), "decode_attention: the cache must be contiguous");
  const auto dtype = keys.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat, "decode_attention: bfloat16 or float32, not ", dtype);
  TORCH_CHECK(values.scalar_type() == dtype && queries_in.scalar_type() == dtype &&
              new_keys_in.scalar_type() == dtype && new_values_in.scalar_type() == dtype,
              "decode_attention: queries, keys and values of one dtype");
  const int64_t rows = queries_in.size(0), kv_heads = queries_in.size(1), dim = queries_in.size(3);
  TORCH_CHECK(rows <= keys.size(0) && keys.size(1) == kv_heads && keys.size(3) == dim &&
              values.size(1) == kv_heads && values.size(3) == dim && values.size(0) == keys.size(0),
              "decode_attention: the cache's shape does not match the queries'");
  TORCH_CHECK(new_keys_in.size(0) == rows && new_keys_in.size(1) == kv_heads && new_keys_in.size(2) == dim &&
              new_values_in.sizes() == new_keys_in.sizes(), "decode_attention: new keys and values (rows, kv, dim)");
  TORCH_CHECK(dim % LANES == 0 && dim <= 256, "decode_attention: head_dim ", dim, " is not a multiple of ", LANES,
              " up to 256");
  const at::Tensor positions = positions_in.to(at::kLong).contiguous();
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == rows, "decode_attention: one position per row");
  const int64_t* position_data = positions.data_ptr<int64_t>();
  const int64_t capacity = std::min(keys.size(2) * CHUNK, values.size(2));
  for (int64_t row = 0; row < rows; ++row)
    TORCH_CHECK(position_data[row] >= 0 && position_data[row] < capacity, "decode_attention: position ",
                position_data[row], " of row ", row, " is outside the cache's ", capacity, " positions");
  const at::Tensor queries = queries_in.contiguous();
  const at::Tensor new_keys = new_keys_in.contiguous();
  const at::Tensor new_values = new_values_in.contiguous();
  at::Tensor out = at::empty_like(queries);
  if (dtype == at::kBFloat16)
    dispatch_dim<at::BFloat16>(queries, scale, new_keys, new_values, keys, values, positions, out);
  else
    dispatch_dim<float>(queries, scale, new_keys, new_values, keys, values, positions, out);
  return out;
}

}  // namespace

TORCH_LIBRARY(creativity_harness, m) {
  m.def("decode_attention(Tensor queries, float scale, Tensor new_keys, Tensor new_values, Tensor(a!) keys, "
        "Tensor(b!) values, Tensor positions) -> Tensor");
}

TORCH_LIBRARY_IMPL(creativity_harness, CPU, m) { m.impl("decode_attention", &decode_attention); }
