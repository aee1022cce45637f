// The paged KV cache on the CPU: writing new tokens' K and V into their slots, and attention
// for decode rows (one query token per sequence) reading K and V in place from the blocks,
// with no gathered copy of the context.
//
// Two layouts per block and kv head, chosen by the caller:
// - AVX-512 (any dtype): K is [head_dim, block_size] (token-minor), V is [block_size,
//   head_dim]. With K token-minor, the scores of 16 tokens are one register built by
//   broadcast FMAs over head_dim, with no horizontal sums; V rows are then accumulated 16 dims
//   at a time.
// - AMX (bf16, where the CPU has it): the transpose, K [block_size, head_dim] and V
//   [head_dim, block_size], so that per 16 tokens scores^T = K q^T and out^T += V^T p^T are
//   tile products with the cache as the row-major A operand, loaded straight from the block.
// One task per (sequence, kv head) serves all query heads of its group, so each cache line is
// read once per step. Softmax is exact (two passes: scores, then V), in fp32.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <cpuid.h>

// The AVX-512 kernels (run where the CPU has AVX-512: the backend checks before calling).
// Generic headers come first, so their inline functions are not compiled for this target.
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#include "vec.h"

namespace {

using octavo::kLanes;
using octavo::lanes;
using octavo::load;

inline __m512 softcap(__m512 s, float cap) {
  alignas(64) float buf[kLanes];
  _mm512_store_ps(buf, s);
  for (float& x : buf) x = std::tanh(x / cap) * cap;
  return _mm512_load_ps(buf);
}

// Calls f.template operator()<T>() for the tensor dtypes the kernels take.
template <typename F>
void dispatch(at::ScalarType type, const char* name, F&& f) {
  switch (type) {
    case at::kFloat: f.template operator()<float>(); break;
    case at::kBFloat16: f.template operator()<c10::BFloat16>(); break;
    case at::kHalf: f.template operator()<c10::Half>(); break;
    default: TORCH_CHECK(false, name, ": unsupported dtype ", type);
  }
}

struct Shape {
  int64_t heads, kv_heads, group, dim, block_size, max_blocks;
};

// Scores of N query heads (fp32, pre-scaled, rows of `dim`) against one chunk of up to 16
// tokens of a K block ([dim, block_size]): s[i] lane t = q_i . k_t. Four partial sums per
// head keep enough FMAs in flight to hide their latency.
template <int N, typename T>
inline void scores(const float* q, int64_t dim, const T* k, int64_t bs, __mmask16 m, __m512* s) {
  __m512 a[4][N];
  for (auto& row : a)
    for (auto& x : row) x = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 4 <= dim; d += 4)
    for (int u = 0; u < 4; ++u) {
      const __m512 kv = load(k + (d + u) * bs, m);
      for (int i = 0; i < N; ++i) a[u][i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * dim + d + u]), kv, a[u][i]);
    }
  for (; d < dim; ++d) {
    const __m512 kv = load(k + d * bs, m);
    for (int i = 0; i < N; ++i) a[0][i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * dim + d]), kv, a[0][i]);
  }
  for (int i = 0; i < N; ++i) s[i] = _mm512_add_ps(_mm512_add_ps(a[0][i], a[1][i]), _mm512_add_ps(a[2][i], a[3][i]));
}

// acc[i] += sum over tokens t in [lo, hi) of p[i * stride + t] * v_t, for N heads; v rows
// are [block_size, dim]. Tokens go four at a time into separate partial sums, as in `scores`.
template <int N, typename T>
inline void accumulate(const float* p, int64_t stride, const T* v, int64_t dim, int lo, int hi, float* acc) {
  for (int64_t d = 0; d < dim; d += kLanes) {
    const __mmask16 dm = lanes(dim - d);
    __m512 a[4][N];
    for (int i = 0; i < N; ++i) {
      a[0][i] = _mm512_maskz_loadu_ps(dm, acc + i * dim + d);
      a[1][i] = a[2][i] = a[3][i] = _mm512_setzero_ps();
    }
    int t = lo;
    for (; t + 4 <= hi; t += 4)
      for (int u = 0; u < 4; ++u) {
        const __m512 row = load(v + (t + u) * dim + d, dm);
        for (int i = 0; i < N; ++i) a[u][i] = _mm512_fmadd_ps(_mm512_set1_ps(p[i * stride + t + u]), row, a[u][i]);
      }
    for (; t < hi; ++t) {
      const __m512 row = load(v + t * dim + d, dm);
      for (int i = 0; i < N; ++i) a[0][i] = _mm512_fmadd_ps(_mm512_set1_ps(p[i * stride + t]), row, a[0][i]);
    }
    for (int i = 0; i < N; ++i)
      _mm512_mask_storeu_ps(acc + i * dim + d, dm,
                            _mm512_add_ps(_mm512_add_ps(a[0][i], a[1][i]), _mm512_add_ps(a[2][i], a[3][i])));
  }
}

// Runs f.template operator()<N>(offset) over the group in chunks of at most 4 heads, so each
// chunk's accumulators stay in registers.
template <typename F>
inline void by_chunks(int64_t group, F&& f) {
  int64_t g = 0;
  for (; g + 4 <= group; g += 4) f.template operator()<4>(g);
  switch (group - g) {
    case 3: f.template operator()<3>(g); break;
    case 2: f.template operator()<2>(g); break;
    case 1: f.template operator()<1>(g); break;
    default: break;
  }
}

// Per-thread buffers: the AVX-512 path uses q (fp32, scaled), the AMX path q_pairs, scores,
// probs and v_part; both keep softmax rows in p and the output sums in acc. (No vector
// types in std containers: their code may be compiled without AVX-512.)
struct Scratch {
  std::vector<float> q, acc, p, scores;
  std::vector<uint16_t> q_pairs;  // bf16 pairs (q[2j], q[2j + 1]) per head, the B operand
  std::vector<uint32_t> probs;    // bf16 pairs (p[2j], p[2j + 1]) per head
  std::vector<c10::BFloat16> v_part;  // a partial chunk's V rows [dim, 16], zero elsewhere
  Scratch(int64_t group, int64_t dim, bool amx)
      : q(amx ? 0 : group * dim), acc(group * dim), scores(amx ? group * kLanes : 0),
        q_pairs(amx ? group * dim : 0), probs(amx ? group * kLanes / 2 : 0), v_part(amx ? dim * kLanes : 0) {}
};

// Where a (sequence, kv head)'s scores live in Scratch::p: one row per query head, the row
// starting at the block of token `first` (`base`) and padded so 16-lane stores fit.
struct ScoreRows {
  int64_t base, stride;
  ScoreRows(std::vector<float>& p, int64_t group, int64_t first, int64_t len, int64_t bs)
      : base(first / bs * bs), stride((len - first / bs * bs + 2 * kLanes - 1) / kLanes * kLanes) {
    if (static_cast<int64_t>(p.size()) < group * stride) p.resize(group * stride);
  }
};

// Visits the 16-token chunks of tokens [first, len) block by block: f(block index, chunk
// offset c in the block, lo, hi), tokens b * bs + c + [lo, hi) being the chunk's wanted ones.
template <typename F>
inline void for_chunks(int64_t first, int64_t len, int64_t bs, F&& f) {
  for (int64_t b = first / bs; b * bs < len; ++b)
    for (int64_t c = 0; c < bs && b * bs + c < len; c += kLanes) {
      const int64_t t0 = b * bs + c;
      if (t0 + kLanes <= first) continue;
      f(b, c, static_cast<int>(std::max<int64_t>(0, first - t0)),
        static_cast<int>(std::min<int64_t>({kLanes, bs - c, len - t0})));
    }
}

// Softmax in place over x[0, n) (fp32): exp(x - max) / sum.
inline void softmax(float* x, int64_t n) {
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; i += kLanes) mx = _mm512_mask_max_ps(mx, lanes(n - i), mx, _mm512_loadu_ps(x + i));
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 k = lanes(n - i);
    const __m512 e = octavo::exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), m));
    _mm512_mask_storeu_ps(x + i, k, e);
    sum = _mm512_mask_add_ps(sum, k, sum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 k = lanes(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
  }
}

// Softmax of each head's row over tokens [first, len).
inline void softmax_rows(std::vector<float>& p, const ScoreRows& r, int64_t group, int64_t first, int64_t len) {
  for (int64_t g = 0; g < group; ++g) softmax(p.data() + g * r.stride + first - r.base, len - first);
}

// One (sequence, kv head): the group's query rows against tokens [first, len), in two
// passes over the blocks: all scores into a buffer (one row per head), softmax there, then
// the probability-weighted sum of V.
template <typename T>
void attend(const Shape& sh, const T* q, const T* k_cache, const T* v_cache, const int32_t* table, int64_t len,
            int64_t first, float scale, float cap, T* out, Scratch& w) {
  const int64_t G = sh.group, D = sh.dim, bs = sh.block_size;
  const ScoreRows rows(w.p, G, first, len, bs);
  const int64_t base = rows.base, row = rows.stride;
  for (int64_t i = 0; i < G * D; ++i) w.q[i] = static_cast<float>(q[i]) * scale;
  for_chunks(first, len, bs, [&](int64_t b, int64_t c, int lo, int hi) {
    const T* kb = k_cache + table[b] * sh.kv_heads * D * bs + c;
    by_chunks(G, [&]<int N>(int64_t g) {
      __m512 sc[N];
      scores<N>(w.q.data() + g * D, D, kb, bs, lanes(hi), sc);
      for (int i = 0; i < N; ++i)
        _mm512_mask_storeu_ps(w.p.data() + (g + i) * row + b * bs + c - base, lanes(hi),
                              cap > 0 ? softcap(sc[i], cap) : sc[i]);
    });
  });
  softmax_rows(w.p, rows, G, first, len);
  std::fill(w.acc.begin(), w.acc.end(), 0.f);
  for_chunks(first, len, bs, [&](int64_t b, int64_t c, int lo, int hi) {
    const T* vb = v_cache + table[b] * sh.kv_heads * bs * D + c * D;
    const int64_t off = b * bs + c - base;
    by_chunks(G, [&]<int N>(int64_t g) {
      accumulate<N>(w.p.data() + g * row + off, row, vb, D, lo, hi, w.acc.data() + g * D);
    });
  });
  for (int64_t i = 0; i < G * D; ++i) out[i] = static_cast<T>(w.acc[i]);
}

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-bf16")
// Tiles, configured once per thread: SCORES/OUT are C (16 rows x G fp32), KEYS/VALUES A
// (cache rows: 16 tokens x 32 dims, 16 dims x 16 tokens), QUERY/PROBS B (q and p as bf16
// pairs along the reduced dim: 16 dim pairs, 8 token pairs, x G).
// (Macros, not constants: GCC's tile intrinsics paste the tile number into the assembly.)
#define TILE_SCORES 0
#define TILE_KEYS 1
#define TILE_QUERY 2
#define TILE_OUT 3
#define TILE_VALUES 4
#define TILE_PROBS 5

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles(int64_t group) {
  static thread_local TileConfig c;  // not a local: GCC drops stores that only ldtilecfg reads
  c = TileConfig{};
  const auto g_bytes = static_cast<uint16_t>(4 * group);  // G fp32, or G bf16 pairs
  const std::pair<int, std::pair<uint8_t, uint16_t>> shapes[] = {
      {TILE_SCORES, {16, g_bytes}}, {TILE_KEYS, {16, 64}}, {TILE_QUERY, {16, g_bytes}},
      {TILE_OUT, {16, g_bytes}},    {TILE_VALUES, {16, 32}}, {TILE_PROBS, {8, g_bytes}}};
  for (const auto& [tile, shape] : shapes) c.rows[tile] = shape.first, c.colsb[tile] = shape.second;
  _tile_loadconfig(&c);
}

// Linux hands out the tile state only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
bool amx_permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

void release_tiles() { _tile_release(); }

// As `attend`, for the AMX layout; block_size a multiple of 16, head_dim of 32, G <= 16.
void attend_amx(const Shape& sh, const c10::BFloat16* q, const c10::BFloat16* k_cache, const c10::BFloat16* v_cache,
                const int32_t* table, int64_t len, int64_t first, float scale, float cap, c10::BFloat16* out,
                Scratch& w) {
  const int64_t G = sh.group, D = sh.dim, bs = sh.block_size, block_stride = sh.kv_heads * bs * D;
  const ScoreRows rows(w.p, G, first, len, bs);
  const int64_t base = rows.base, row = rows.stride;
  const __m512i token_rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                _mm512_set1_epi32(static_cast<int>(G)));
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(q);
  for (int64_t j = 0; j < D / 2; ++j)
    for (int64_t g = 0; g < G; ++g)
      for (int64_t u = 0; u < 2; ++u) w.q_pairs[(j * G + g) * 2 + u] = bits[g * D + 2 * j + u];
  for_chunks(first, len, bs, [&](int64_t b, int64_t c, int lo, int hi) {
    const c10::BFloat16* kb = k_cache + table[b] * block_stride + c * D;
    _tile_zero(TILE_SCORES);
    for (int64_t d = 0; d < D; d += 32) {
      _tile_loadd(TILE_KEYS, kb + d, D * 2);
      _tile_loadd(TILE_QUERY, w.q_pairs.data() + d * G, 4 * G);
      _tile_dpbf16ps(TILE_SCORES, TILE_KEYS, TILE_QUERY);
    }
    _tile_stored(TILE_SCORES, w.scores.data(), 4 * G);  // [16 tokens][G]: gather each head's row
    float* p = w.p.data() + b * bs + c - base;
    for (int64_t g = 0; g < G; ++g) {
      __m512 x = _mm512_mul_ps(_mm512_i32gather_ps(_mm512_add_epi32(token_rows, _mm512_set1_epi32(g)),
                                                   w.scores.data(), 4), _mm512_set1_ps(scale));
      _mm512_mask_storeu_ps(p + g * row, lanes(hi), cap > 0 ? softcap(x, cap) : x);
    }
  });
  softmax_rows(w.p, rows, G, first, len);
  std::fill(w.acc.begin(), w.acc.end(), 0.f);
  for_chunks(first, len, bs, [&](int64_t b, int64_t c, int lo, int hi) {
    const float* p = w.p.data() + b * bs + c - base;
    for (int64_t g = 0; g < G; ++g) {  // tokens outside [lo, hi) weigh 0: the V rows there may be stale
      alignas(64) uint32_t pairs[kLanes / 2];
      octavo::store(reinterpret_cast<c10::BFloat16*>(pairs), 0xFFFF,
                    _mm512_maskz_loadu_ps(lanes(hi) & ~lanes(lo), p + g * row));
      for (int j = 0; j < kLanes / 2; ++j) w.probs[j * G + g] = pairs[j];
    }
    _tile_loadd(TILE_PROBS, w.probs.data(), 4 * G);
    const c10::BFloat16* vb = v_cache + table[b] * block_stride + c;
    int64_t v_stride = bs;
    if (lo > 0 || hi < kLanes) {  // a zero weight does not mask a stale NaN: copy the wanted tokens only
      std::fill(w.v_part.begin(), w.v_part.end(), c10::BFloat16(0.f));
      for (int64_t d = 0; d < D; ++d) std::copy(vb + d * bs + lo, vb + d * bs + hi, w.v_part.data() + d * kLanes + lo);
      vb = w.v_part.data(), v_stride = kLanes;
    }
    for (int64_t d = 0; d < D; d += kLanes) {
      _tile_loadd(TILE_OUT, w.acc.data() + d * G, 4 * G);
      _tile_loadd(TILE_VALUES, vb + d * v_stride, v_stride * 2);
      _tile_dpbf16ps(TILE_OUT, TILE_VALUES, TILE_PROBS);
      _tile_stored(TILE_OUT, w.acc.data() + d * G, 4 * G);
    }
  });
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) out[g * D + d] = static_cast<c10::BFloat16>(w.acc[d * G + g]);
}
#pragma GCC pop_options

// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
bool cpu_has_amx() {
  unsigned a, b, c, d;
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1);
}

template <typename T>
void decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& block_table,
            const at::Tensor& seq_lens, at::Tensor& out, double scale, int64_t window, double cap, bool amx) {
  const Shape sh{q.size(1), k_cache.size(1), q.size(1) / k_cache.size(1), q.size(2), v_cache.size(amx ? 3 : 2),
                 block_table.size(1)};
  const int64_t num_seqs = q.size(0), kv_stride = sh.dim * sh.block_size;
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int32_t* tables = block_table.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  at::parallel_for(0, num_seqs * sh.kv_heads, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(sh.group, sh.dim, amx);
    if (amx) configure_tiles(sh.group);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / sh.kv_heads, h = task % sh.kv_heads;
      const int64_t len = lens[s], first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t row = h * sh.group * sh.dim;
      const T* qs = qp + s * q.stride(0) + row;
      T* os = op + s * sh.heads * sh.dim + row;
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        if (amx) {
          attend_amx(sh, qs, kp + h * kv_stride, vp + h * kv_stride, tables + s * sh.max_blocks, len, first,
                     static_cast<float>(scale), static_cast<float>(cap), os, scratch);
          continue;
        }
      }
      attend<T>(sh, qs, kp + h * kv_stride, vp + h * kv_stride, tables + s * sh.max_blocks, len, first,
                static_cast<float>(scale), static_cast<float>(cap), os, scratch);
    }
    if (amx) release_tiles();
  });
}

}  // namespace

// Whether this CPU and this process may use AMX tiles (the AMX layout and attention).
bool amx_available() {
  static const bool ok = cpu_has_amx() && amx_permitted();
  return ok;
}

// q [S, H, D] with contiguous head rows; k_cache [N, Hkv, D, block_size] and v_cache
// [N, Hkv, block_size, D], or with `amx` K [N, Hkv, block_size, D] and V [N, Hkv, D,
// block_size] (bf16, block_size % 16 == 0, D % 32 == 0, H / Hkv <= 16); contiguous, same
// dtype as q; block_table [S, nb] int32; seq_lens [S] int32.
// window <= 0: no sliding window; softcap <= 0: none. Returns [S, H, D].
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& block_table, const at::Tensor& seq_lens, double scale, int64_t window,
                        double softcap, bool amx) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2), "q must be [S, H, D], head rows contiguous");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "q and cache dtypes differ");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
              "block_table and seq_lens must be int32");
  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == q.size(0) && seq_lens.numel() == q.size(0),
              "block_table and seq_lens need one row per query token");
  TORCH_CHECK(!amx || (amx_available() && q.scalar_type() == at::kBFloat16 && k_cache.size(2) % 16 == 0 &&
                       q.size(2) % 32 == 0 && q.size(1) / k_cache.size(1) <= 16),
              "the AMX layout needs AMX, bf16, block_size % 16 == 0, head_dim % 32 == 0 and a group <= 16");
  auto out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  const auto tables = block_table.contiguous(), lens = seq_lens.contiguous();
  dispatch(q.scalar_type(), "paged_decode", [&]<typename T>() {
    decode<T>(q, k_cache, v_cache, tables, lens, out, scale, window, softcap, amx);
  });
  return out;
}

namespace {

// One token's rows [Hkv, D] into a block: token-major [Hkv, bs, D] or dim-major [Hkv, D, bs].
template <typename T>
inline void put(T* block, const T* rows, int64_t heads, int64_t dim, int64_t bs, int64_t offset, bool token_major) {
  for (int64_t h = 0; h < heads; ++h) {
    T* dst = block + h * dim * bs;
    if (token_major) {
      std::copy_n(rows + h * dim, dim, dst + offset * dim);
    } else {
      for (int64_t d = 0; d < dim; ++d) dst[d * bs + offset] = rows[h * dim + d];
    }
  }
}

template <typename T>
void write(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v, const int64_t* slots,
           bool amx) {
  const int64_t heads = k.size(1), dim = k.size(2), bs = k_cache.numel() / (k_cache.size(0) * heads * dim);
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* kc = k_cache.data_ptr<T>();
  T* vc = v_cache.data_ptr<T>();
  at::parallel_for(0, k.size(0), 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t block = slots[t] / bs, offset = slots[t] % bs;
      put(kc + block * heads * dim * bs, kp + t * k.stride(0), heads, dim, bs, offset, amx);
      put(vc + block * heads * dim * bs, vp + t * v.stride(0), heads, dim, bs, offset, !amx);
    }
  });
}

}  // namespace

// k, v [T, Hkv, D] (head rows contiguous) into the caches (in `paged_decode`'s layouts) at
// slot_mapping [T] (int64, block * block_size + offset).
void write_kv(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& slot_mapping, bool amx) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type() &&
                  v_cache.scalar_type() == k_cache.scalar_type(),
              "k/v and cache dtypes differ");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(2) == 1 && v.stride(1) == v.size(2),
              "k and v must be [T, Hkv, D], head rows contiguous");
  const auto slots = slot_mapping.contiguous();
  const int64_t* sp = slots.data_ptr<int64_t>();
  dispatch(k.scalar_type(), "write_kv", [&]<typename T>() { write<T>(k_cache, v_cache, k, v, sp, amx); });
}
