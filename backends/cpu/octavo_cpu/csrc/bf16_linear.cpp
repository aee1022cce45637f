// bf16 linears in a layout of our own: w [N, K] packed as [N / 16][K / 2][16][2] (16 output
// features per panel, each k-pair of them adjacent, as VDPBF16PS multiplies them), so a
// panel is read front to back and its 16 sums fill one register: no horizontal sums, and
// the weight streams from memory in order (prefetched a panel ahead) at decode batch sizes.
// Runs where the CPU has AVX512-BF16; the caller checks.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace octavo {
namespace {

using bf16 = c10::BFloat16;
constexpr int64_t kPanel = 16;  // output features per panel

// out[m0 + r, n0 + 16 p + j] for R rows of x and NP panels from n0: per k-pair, each panel's
// 16 x 2 weights are one load, each row's x pair one broadcast.
template <int R, int NP>
void tile(const bf16* x, int64_t ldx, const bf16* panels, int64_t K, int64_t m0, int64_t n0, int64_t N, bf16* out,
          int64_t ldo) {
  __m512 acc[R][NP];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  const bf16* w = panels + n0 * K;  // panel p starts at w + p * 16 * K
  const int64_t ahead = std::min<int64_t>(NP * kPanel * K, std::max<int64_t>(0, (N - n0 - NP * kPanel) * K));
  const char* next = reinterpret_cast<const char*>(w + NP * kPanel * K);
  for (int64_t k = 0; k < K; k += 2) {
    if ((k & 31) == 0)  // a 64-byte line per panel ahead, per 16 k-pairs: the next tile's panels by the end
      for (int64_t o = k * 2 * NP * kPanel; o < std::min<int64_t>((k + 32) * 2 * NP * kPanel, ahead * 2); o += 64)
        _mm_prefetch(next + o, _MM_HINT_T0);
    __m512bh wv[NP];
    for (int p = 0; p < NP; ++p) wv[p] = (__m512bh)_mm512_loadu_si512(w + p * kPanel * K + k * kPanel);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + (m0 + r) * ldx + k, 4);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_dpbf16_ps(acc[r][p], xv, wv[p]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < NP; ++p)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (m0 + r) * ldo + n0 + p * kPanel),
                          (__m256i)_mm512_cvtneps_pbh(acc[r][p]));
}

template <int NP>
void panels_tile(const bf16* x, int64_t ldx, int64_t M, const bf16* w, int64_t K, int64_t n0, int64_t N, bf16* out,
                 int64_t ldo) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) tile<8, NP>(x, ldx, w, K, m, n0, N, out, ldo);
  for (; m + 4 <= M; m += 4) tile<4, NP>(x, ldx, w, K, m, n0, N, out, ldo);
  switch (M - m) {
    case 3: tile<3, NP>(x, ldx, w, K, m, n0, N, out, ldo); break;
    case 2: tile<2, NP>(x, ldx, w, K, m, n0, N, out, ldo); break;
    case 1: tile<1, NP>(x, ldx, w, K, m, n0, N, out, ldo); break;
    default: break;
  }
}

}  // namespace

// w [N, K] bf16 (N % 16 == 0, K even) -> its panels, [N / 16, K / 2, 16, 2] flattened to [N, K].
at::Tensor bf16_pack(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kBFloat16 && w.size(0) % kPanel == 0 && w.size(1) % 2 == 0,
              "bf16_pack: w must be bf16 [N, K], N % 16 == 0, K even");
  const int64_t N = w.size(0), K = w.size(1);
  return w.reshape({N / kPanel, kPanel, K / 2, 2}).permute({0, 2, 1, 3}).contiguous().reshape({N, K});
}

// x [M, K] (rows contiguous, bf16) times `bf16_pack`ed w [N, K] transposed -> out [M, N].
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& packed) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16, "bf16_linear: bf16 only");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && packed.is_contiguous() && x.size(1) == packed.size(1),
              "bf16_linear: x [M, K] with contiguous rows, packed w [N, K]");
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  auto out = at::empty({M, N}, x.options());
  const bf16* xp = x.data_ptr<bf16>();
  const bf16* wp = packed.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, N / kPanel, 1, [&](int64_t begin, int64_t end) {
    int64_t p = begin;
    for (; p + 2 <= end; p += 2) panels_tile<2>(xp, x.stride(0), M, wp, K, p * kPanel, end * kPanel, op, N);
    if (p < end) panels_tile<1>(xp, x.stride(0), M, wp, K, p * kPanel, end * kPanel, op, N);
  });
  return out;
}

}  // namespace octavo
