// The paged KV cache on the CPU: writing new tokens' K and V into their slots, and attention
// for decode rows (one query token per sequence) reading K and V in place from the blocks,
// with no gathered copy of the context.
//
// Layout per block and kv head: K is [head_dim, block_size] (token-minor), V is
// [block_size, head_dim]. With K token-minor, the scores of 16 tokens are one AVX-512
// register built by broadcast FMAs over head_dim, so no horizontal sums are needed; V rows
// are then accumulated 16 dims at a time. One task per (sequence, kv head) serves all query
// heads of its group, so each cache line is read once per step. Softmax is online, block by
// block, in fp32.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

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

struct Scratch {
  std::vector<float> q, acc, p;
  std::vector<__m512> s;
  Scratch(int64_t group, int64_t dim) : q(group * dim), acc(group * dim), s(group) {}
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

// One (sequence, kv head): the group's query rows against tokens [first, len), in two
// passes over the blocks: all scores into a buffer (one row per head), softmax there, then
// the probability-weighted sum of V.
template <typename T>
void attend(const Shape& sh, const T* q, const T* k_cache, const T* v_cache, const int32_t* table, int64_t len,
            int64_t first, float scale, float cap, T* out, Scratch& w) {
  const int64_t G = sh.group, D = sh.dim, bs = sh.block_size;
  const int64_t base = first / bs * bs, row = (len - base + 2 * kLanes - 1) / kLanes * kLanes;
  if (static_cast<int64_t>(w.p.size()) < G * row) w.p.resize(G * row);
  for (int64_t i = 0; i < G * D; ++i) w.q[i] = static_cast<float>(q[i]) * scale;
  for_chunks(first, len, bs, [&](int64_t b, int64_t c, int lo, int hi) {
    const T* kb = k_cache + table[b] * sh.kv_heads * D * bs + c;
    by_chunks(G, [&]<int N>(int64_t g) { scores<N>(w.q.data() + g * D, D, kb, bs, lanes(hi), w.s.data() + g); });
    for (int64_t g = 0; g < G; ++g)
      _mm512_mask_storeu_ps(w.p.data() + g * row + b * bs + c - base, lanes(hi),
                            cap > 0 ? softcap(w.s[g], cap) : w.s[g]);
  });
  for (int64_t g = 0; g < G; ++g) softmax(w.p.data() + g * row + first - base, len - first);
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

template <typename T>
void decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& block_table,
            const at::Tensor& seq_lens, at::Tensor& out, double scale, int64_t window, double cap) {
  const Shape sh{q.size(1), k_cache.size(1), q.size(1) / k_cache.size(1), q.size(2), k_cache.size(3),
                 block_table.size(1)};
  const int64_t num_seqs = q.size(0), kv_stride = sh.dim * sh.block_size;
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int32_t* tables = block_table.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  at::parallel_for(0, num_seqs * sh.kv_heads, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(sh.group, sh.dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / sh.kv_heads, h = task % sh.kv_heads;
      const int64_t len = lens[s], first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t row = h * sh.group * sh.dim;
      attend<T>(sh, qp + s * q.stride(0) + row, kp + h * kv_stride, vp + h * kv_stride, tables + s * sh.max_blocks,
                len, first, static_cast<float>(scale), static_cast<float>(cap), op + s * sh.heads * sh.dim + row,
                scratch);
    }
  });
}

}  // namespace

// q [S, H, D] with contiguous head rows; k_cache [N, Hkv, D, block_size], v_cache [N, Hkv, block_size, D]
// contiguous, same dtype as q; block_table [S, nb] int32; seq_lens [S] int32.
// window <= 0: no sliding window; softcap <= 0: none. Returns [S, H, D].
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& block_table, const at::Tensor& seq_lens, double scale, int64_t window,
                        double softcap) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2), "q must be [S, H, D], head rows contiguous");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "q and cache dtypes differ");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
              "block_table and seq_lens must be int32");
  auto out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  const auto tables = block_table.contiguous(), lens = seq_lens.contiguous();
  switch (q.scalar_type()) {
    case at::kFloat: decode<float>(q, k_cache, v_cache, tables, lens, out, scale, window, softcap); break;
    case at::kBFloat16: decode<c10::BFloat16>(q, k_cache, v_cache, tables, lens, out, scale, window, softcap); break;
    case at::kHalf: decode<c10::Half>(q, k_cache, v_cache, tables, lens, out, scale, window, softcap); break;
    default: TORCH_CHECK(false, "paged_decode: unsupported dtype ", q.scalar_type());
  }
  return out;
}

namespace {

template <typename T>
void write(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v, const int64_t* slots) {
  const int64_t heads = k.size(1), dim = k.size(2), bs = k_cache.size(3);
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* kc = k_cache.data_ptr<T>();
  T* vc = v_cache.data_ptr<T>();
  at::parallel_for(0, k.size(0), 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t block = slots[t] / bs, offset = slots[t] % bs;
      for (int64_t h = 0; h < heads; ++h) {
        const T* krow = kp + t * k.stride(0) + h * dim;
        T* kdst = kc + (block * heads + h) * dim * bs + offset;
        for (int64_t d = 0; d < dim; ++d) kdst[d * bs] = krow[d];
        std::copy_n(vp + t * v.stride(0) + h * dim, dim, vc + ((block * heads + h) * bs + offset) * dim);
      }
    }
  });
}

}  // namespace

// k, v [T, Hkv, D] (head rows contiguous) into k_cache [N, Hkv, D, block_size] and v_cache
// [N, Hkv, block_size, D] at slot_mapping [T] (int64, block * block_size + offset).
void write_kv(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& slot_mapping) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == k_cache.scalar_type() &&
                  v_cache.scalar_type() == k_cache.scalar_type(),
              "k/v and cache dtypes differ");
  TORCH_CHECK(k.stride(2) == 1 && k.stride(1) == k.size(2) && v.stride(2) == 1 && v.stride(1) == v.size(2),
              "k and v must be [T, Hkv, D], head rows contiguous");
  const auto slots = slot_mapping.contiguous();
  const int64_t* sp = slots.data_ptr<int64_t>();
  switch (k.scalar_type()) {
    case at::kFloat: write<float>(k_cache, v_cache, k, v, sp); break;
    case at::kBFloat16: write<c10::BFloat16>(k_cache, v_cache, k, v, sp); break;
    case at::kHalf: write<c10::Half>(k_cache, v_cache, k, v, sp); break;
    default: TORCH_CHECK(false, "write_kv: unsupported dtype ", k.scalar_type());
  }
}
