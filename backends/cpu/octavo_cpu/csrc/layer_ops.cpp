// The per-layer elementwise math of the core's models for bf16 tensors, fused: RMSNorm with
// its residual add, neox rotary embedding in place, and SiLU(gate) * up. Each op makes one
// pass over memory instead of torch's five to eight, and rounds to bf16 exactly where the
// plain-torch ops (octavo.models.ops.LayerOps) do, so results agree with them up to fp32
// summation order.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>

// AVX-512 code (the backend checks the CPU before calling); generic headers first.
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#include "vec.h"

namespace {

using octavo::kLanes;
using octavo::lanes;
using octavo::load;
using octavo::store;
using bf16 = c10::BFloat16;

// One row of RMSNorm: h = x (+ residual, rounded to bf16 and stored back as the new residual),
// out = w * bf16(h / rms(h)), or bf16(h / rms(h) * (1 + w)) for Gemma.
void norm_row(bf16* x, bf16* residual, const bf16* w, bf16* out, int64_t n, float eps, bool gemma) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 m = lanes(n - i);
    __m512 h = load(x + i, m);
    if (residual != nullptr) {
      h = octavo::to_bf16(_mm512_add_ps(h, load(residual + i, m)));
      store(residual + i, m, h);
    }
    sum = _mm512_fmadd_ps(h, h, sum);
  }
  const __m512 inv = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(sum) / n + eps));
  const bf16* src = residual != nullptr ? residual : x;
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 m = lanes(n - i);
    const __m512 h = _mm512_mul_ps(load(src + i, m), inv);
    const __m512 wv = load(w + i, m);
    store(out + i, m, gemma ? _mm512_mul_ps(h, _mm512_add_ps(wv, _mm512_set1_ps(1.f)))
                            : _mm512_mul_ps(wv, octavo::to_bf16(h)));
  }
}

void check_bf16(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous(), name, " must be a contiguous bf16 tensor");
}

}  // namespace

// x [T, n] (overwritten when residual is given); residual [T, n] or None, updated in place to
// x + residual; weight [n]. Returns the normed rows.
at::Tensor rms_norm(at::Tensor x, const at::Tensor& weight, double eps, c10::optional<at::Tensor> residual,
                    bool gemma) {
  check_bf16(x, "x");
  check_bf16(weight, "weight");
  const int64_t n = x.size(-1), rows = x.numel() / n;
  bf16* res = nullptr;
  if (residual.has_value()) {
    check_bf16(*residual, "residual");
    res = residual->data_ptr<bf16>();
  }
  auto out = at::empty_like(x);
  bf16* xp = x.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const bf16* wp = weight.data_ptr<bf16>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      norm_row(xp + r * n, res != nullptr ? res + r * n : nullptr, wp, op + r * n, n, static_cast<float>(eps), gemma);
  });
  return out;
}

// gate_up [T, 2 * n] -> bf16(bf16(silu(gate)) * up) [T, n].
at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  check_bf16(gate_up, "gate_up");
  const int64_t n = gate_up.size(-1) / 2, rows = gate_up.numel() / (2 * n);
  auto sizes = gate_up.sizes().vec();
  sizes.back() = n;
  auto out = at::empty(sizes, gate_up.options());
  const bf16* in = gate_up.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t i = 0; i < n; i += kLanes) {
        const __mmask16 m = lanes(n - i);
        const __m512 g = load(in + r * 2 * n + i, m);
        const __m512 e = octavo::exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
        const __m512 silu = octavo::to_bf16(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e)));
        store(op + r * n + i, m, _mm512_mul_ps(silu, load(in + r * 2 * n + n + i, m)));
      }
  });
  return out;
}

// Neox rotation in place of x [T, H, D] (rows contiguous) by cos, sin [T, D / 2] (bf16):
// x1' = bf16(bf16(x1 c) - bf16(x2 s)), x2' = bf16(bf16(x2 c) + bf16(x1 s)), as HF's rotate_half.
void rope_(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin) {
  check_bf16(cos, "cos");
  check_bf16(sin, "sin");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2),
              "x must be bf16 [T, H, D] with contiguous rows");
  const int64_t heads = x.size(1), half = x.size(2) / 2, token_stride = x.stride(0);
  bf16* xp = x.data_ptr<bf16>();
  const bf16* cp = cos.data_ptr<bf16>();
  const bf16* sp = sin.data_ptr<bf16>();
  at::parallel_for(0, x.size(0), 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        bf16* row = xp + t * token_stride + h * 2 * half;
        for (int64_t i = 0; i < half; i += kLanes) {
          const __mmask16 m = lanes(half - i);
          const __m512 c = load(cp + t * half + i, m), s = load(sp + t * half + i, m);
          const __m512 x1 = load(row + i, m), x2 = load(row + half + i, m);
          using octavo::to_bf16;
          store(row + i, m, _mm512_sub_ps(to_bf16(_mm512_mul_ps(x1, c)), to_bf16(_mm512_mul_ps(x2, s))));
          store(row + half + i, m, _mm512_add_ps(to_bf16(_mm512_mul_ps(x2, c)), to_bf16(_mm512_mul_ps(x1, s))));
        }
      }
  });
}
