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
#include <vector>

#include "quant.h"

#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

// The GGUF block decoders, compiled for this file's target.
#define OCTAVO_AVX512 1
namespace octavo::quant::panels {
#include "quant_formats.h"
}  // namespace octavo::quant::panels

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

// Weight rows [n0, n0 + 16) of GGUF blocks (format F, K per row) dequantized into one panel:
// each 32-block's bf16 pairs go to their k-pair rows, one 32-bit lane per weight row.
template <typename F>
void dequantize_panel(const uint8_t* w, int64_t K, int64_t n0, uint32_t* panel) {
  const int64_t row_bytes = K / F::kWeights * F::kBytes;
  const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32(kPanel));
  for (int64_t i = 0; i < kPanel; ++i)
    for (int64_t sb = 0; sb < K / F::kWeights; ++sb) {
      const uint8_t* bytes = w + (n0 + i) * row_bytes + sb * F::kBytes;
      const auto header = F::header(bytes);
      for (int j = 0; j < F::kWeights / 32; ++j) {
        const quant::panels::Block b = F::unpack(bytes, header, j);
        const __m128i low = _mm256_castsi256_si128(b.q), high = _mm256_extracti128_si256(b.q, 1);
        const __m512i q0 = F::Signed ? _mm512_cvtepi8_epi32(low) : _mm512_cvtepu8_epi32(low);
        const __m512i q1 = F::Signed ? _mm512_cvtepi8_epi32(high) : _mm512_cvtepu8_epi32(high);
        const __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q0), _mm512_set1_ps(b.d[0]), _mm512_set1_ps(b.m[0]));
        const __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q1), _mm512_set1_ps(b.d[1]), _mm512_set1_ps(b.m[1]));
        const int64_t pair0 = (sb * F::kWeights + 32 * j) / 2;
        _mm512_i32scatter_epi32(panel + pair0 * kPanel + i, lanes, (__m512i)_mm512_cvtne2ps_pbh(w1, w0), 4);
      }
    }
}

template <typename F>
void quantized_panels(const bf16* x, int64_t ldx, int64_t M, const uint8_t* w, int64_t N, int64_t K, bf16* out,
                      int64_t ldo) {
  at::parallel_for(0, N / kPanel, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<uint32_t> panel;
    panel.resize(K / 2 * kPanel);
    for (int64_t p = begin; p < end; ++p) {
      dequantize_panel<F>(w, K, p * kPanel, panel.data());
      panels_tile<1>(x, ldx, M, reinterpret_cast<const bf16*>(panel.data()), K, 0, kPanel, out + p * kPanel, ldo);
    }
  });
}

}  // namespace

// x [M, K] bf16 (rows contiguous) times GGUF-quantized w [N, row bytes] (type `type`,
// N % 16 == 0) into out [M, N] (rows may be strided): each 16 rows of w dequantized to a
// bf16 panel and multiplied as bf16_linear does. For batches of rows, where the integer
// kernels (quant_kernels.inc) are bound by their per-block scaling and VDPBF16PS is not.
void quant_panels_linear_out(const at::Tensor& x, const at::Tensor& w, int64_t type, at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && out.scalar_type() == at::kBFloat16 && x.stride(1) == 1 &&
                  out.stride(1) == 1 && w.is_contiguous() && w.size(0) % kPanel == 0,
              "quant_panels_linear_out: bf16 x and out with contiguous rows, w rows a multiple of 16");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const bf16* xp = x.data_ptr<bf16>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  bf16* op = out.data_ptr<bf16>();
  using namespace quant::panels;
  switch (static_cast<quant::QuantType>(type)) {
    case quant::QuantType::Q4_0: quantized_panels<Q4_0>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    case quant::QuantType::Q4_1: quantized_panels<Q4_1>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    case quant::QuantType::Q5_0: quantized_panels<Q5_0>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    case quant::QuantType::Q5_1: quantized_panels<Q5_1>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    case quant::QuantType::Q8_0: quantized_panels<Q8_0>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    case quant::QuantType::Q4_K: quantized_panels<Q4_K>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    case quant::QuantType::Q5_K: quantized_panels<Q5_K>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    case quant::QuantType::Q6_K: quantized_panels<Q6_K>(xp, x.stride(0), M, wp, N, K, op, out.stride(0)); break;
    default: TORCH_CHECK(false, "quantized type ", type, " has no CPU kernel");
  }
}

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
