// Paged attention for decode rows (one query token per sequence), reading K/V straight from
// the block-paged cache: no gathered copy of the context. One task per (sequence, kv head)
// handles all query heads of its group, so each K/V row is loaded once for the group.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Widen one row to fp32 in a form the compiler vectorizes (bf16 is the top half of an fp32).
template <typename T>
inline void widen(const T* src, float* dst, int64_t dim) {
  for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<float>(src[d]);
}

template <>
inline void widen<c10::BFloat16>(const c10::BFloat16* src, float* dst, int64_t dim) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<uint32_t>(bits[d]) << 16;
}

inline float dot(const float* a, const float* b, int64_t dim) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t d = 0; d < dim; ++d) s += a[d] * b[d];
  return s;
}

inline void axpy(float a, const float* x, float* acc, int64_t dim) {
#pragma omp simd
  for (int64_t d = 0; d < dim; ++d) acc[d] += a * x[d];
}

template <typename T>
void decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
            const at::Tensor& block_table, const at::Tensor& seq_lens, at::Tensor& out,
            double scale, int64_t window, double softcap) {
  const int64_t num_seqs = q.size(0), num_heads = q.size(1), dim = q.size(2);
  const int64_t block_size = k_cache.size(1), num_kv_heads = k_cache.size(2);
  const int64_t group = num_heads / num_kv_heads, max_blocks = block_table.size(1);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t* tables = block_table.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t q_stride = q.stride(0), row = num_kv_heads * dim;

  at::parallel_for(0, num_seqs * num_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(group * dim), acc(group * dim), row_f(dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / num_kv_heads, h = task % num_kv_heads;
      const int64_t len = lens[s];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0;
      const int64_t n = len - first;
      const int64_t* table = tables + s * max_blocks;
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < dim; ++d)
          qf[g * dim + d] = static_cast<float>(qp[s * q_stride + (h * group + g) * dim + d]) * scale;
      scores.resize(group * n);
      for (int64_t t = first; t < len; ++t) {
        widen(kp + (table[t / block_size] * block_size + t % block_size) * row + h * dim, row_f.data(), dim);
        for (int64_t g = 0; g < group; ++g) {
          float x = dot(qf.data() + g * dim, row_f.data(), dim);
          if (softcap > 0) x = std::tanh(x / softcap) * softcap;
          scores[g * n + t - first] = x;
        }
      }
      for (int64_t g = 0; g < group; ++g) {
        float* sc = scores.data() + g * n;
        const float mx = *std::max_element(sc, sc + n);
        float sum = 0.f;
        for (int64_t i = 0; i < n; ++i) sum += (sc[i] = std::exp(sc[i] - mx));
        const float inv = 1.f / sum;
        for (int64_t i = 0; i < n; ++i) sc[i] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = first; t < len; ++t) {
        widen(vp + (table[t / block_size] * block_size + t % block_size) * row + h * dim, row_f.data(), dim);
        for (int64_t g = 0; g < group; ++g) axpy(scores[g * n + t - first], row_f.data(), acc.data() + g * dim, dim);
      }
      for (int64_t g = 0; g < group; ++g)
        for (int64_t d = 0; d < dim; ++d)
          op[s * num_heads * dim + (h * group + g) * dim + d] = static_cast<T>(acc[g * dim + d]);
    }
  });
}

}  // namespace

// q [S, H, D]; k_cache, v_cache [N, block_size, Hkv, D] contiguous; block_table [S, nb] int64;
// seq_lens [S] int64. window <= 0: no sliding window; softcap <= 0: none. Returns [S, H, D].
at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& block_table, const at::Tensor& seq_lens, double scale,
                        int64_t window, double softcap) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2), "q must be [S, H, D], rows contiguous");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "caches must be contiguous");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "q and cache dtypes differ");
  auto out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode", [&] {
    decode<scalar_t>(q, k_cache, v_cache, block_table.contiguous(), seq_lens.contiguous(), out, scale,
                     window, softcap);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("paged_decode", &paged_decode); }
