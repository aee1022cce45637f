// Quantized linear layers on GGUF blocks, for torch: the ISA is picked once per process from
// the CPU's features (AVX-512 VNNI, else AVX2), never from the machine that built the module.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "quant.h"

namespace octavo::quant {
namespace {

enum class Isa { none, avx2, avx512 };

Isa detect() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return Isa::avx2;
  return Isa::none;
}

Isa& isa() {
  static Isa current = detect();
  return current;
}

const char* name(Isa i) { return i == Isa::avx512 ? "avx512_vnni" : i == Isa::avx2 ? "avx2" : "none"; }

QuantType quant_type(int64_t type) {
  switch (type) {
    case 2: case 3: case 6: case 7: case 8: case 12: case 13: case 14: return static_cast<QuantType>(type);
    default: TORCH_CHECK(false, "quantized type ", type, " has no CPU kernel");
  }
}

int64_t block_weights(QuantType t) { return static_cast<int>(t) >= 12 ? 256 : 32; }

// Calls f.template operator()<T>() for the activation dtypes.
template <typename F>
void dispatch_dtype(at::ScalarType type, F&& f) {
  switch (type) {
    case at::kFloat: f.template operator()<float>(); break;
    case at::kBFloat16: f.template operator()<c10::BFloat16>(); break;
    case at::kHalf: f.template operator()<c10::Half>(); break;
    default: TORCH_CHECK(false, "quantized linear: unsupported dtype ", type);
  }
}

// Calls the ISA's function: f(avx2 namespace tag) style, via two lambdas.
template <typename A, typename B>
void by_isa(A&& on_avx2, B&& on_avx512) {
  switch (isa()) {
    case Isa::avx512: on_avx512(); break;
    case Isa::avx2: on_avx2(); break;
    default: TORCH_CHECK(false, "the quantized kernels need AVX2, FMA and F16C");
  }
}

// Per-thread buffers for the quantized activations (a decode step reuses them).
struct Scratch {
  std::vector<int8_t> q;
  std::vector<float> d, sums;
  std::vector<int32_t> neg;
  QuantizedRows rows(int64_t M, int64_t K) {
    q.resize(M * K), d.resize(M * K / 32), neg.resize(M * K / 4), sums.resize(M * K / 4);
    return {q.data(), d.data(), neg.data(), sums.data()};
  }
};

}  // namespace

std::string quant_isa() { return name(isa()); }

// Tests force each target this CPU can run; "auto" restores the detected one.
void set_quant_isa(const std::string& want) {
  const Isa best = detect();
  Isa pick = want == "auto" ? best : want == "avx2" ? Isa::avx2 : want == "avx512_vnni" ? Isa::avx512 : Isa::none;
  TORCH_CHECK(pick != Isa::none, "unknown ISA ", want, " (auto, avx2, avx512_vnni)");
  TORCH_CHECK(static_cast<int>(pick) <= static_cast<int>(best), "this CPU cannot run ", want, " (best: ", name(best), ")");
  isa() = pick;
}

// x [M, K] (rows contiguous) times w [N, row_bytes] (GGUF blocks of `type`, K per row)
// transposed, into out [M, N] (rows may be strided: a column slice of a merged output).
void quant_linear_out(const at::Tensor& x, const at::Tensor& w, int64_t type, at::Tensor& out) {
  const QuantType t = quant_type(type);
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [M, K] with contiguous rows");
  TORCH_CHECK(out.dim() == 2 && out.stride(1) == 1 && out.scalar_type() == x.scalar_type(),
              "out must be [M, N] with contiguous rows, x's dtype");
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() && w.dim() == 2, "w must be contiguous uint8 [N, bytes]");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(K % block_weights(t) == 0, "K = ", K, " is not a whole number of blocks");
  TORCH_CHECK(out.size(0) == M && out.size(1) == N, "out must be [", M, ", ", N, "]");
  if (M == 0) return;
  thread_local Scratch scratch;
  QuantizedRows qx = scratch.rows(M, K);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  dispatch_dtype(x.scalar_type(), [&]<typename T>() {
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    by_isa([&] { avx2::quantize_activations(xp, x.stride(0), M, K, qx), avx2::gemm(t, wp, N, K, qx, M, op, out.stride(0)); },
           [&] { avx512::quantize_activations(xp, x.stride(0), M, K, qx), avx512::gemm(t, wp, N, K, qx, M, op, out.stride(0)); });
  });
}

// w [N, row_bytes] -> [N, K] in `dtype`.
at::Tensor quant_dequantize(const at::Tensor& w, int64_t type, int64_t K, at::ScalarType dtype) {
  const QuantType t = quant_type(type);
  TORCH_CHECK(w.scalar_type() == at::kByte && w.is_contiguous() && w.dim() == 2, "w must be contiguous uint8 [N, bytes]");
  TORCH_CHECK(K % block_weights(t) == 0, "K = ", K, " is not a whole number of blocks");
  auto out = at::empty({w.size(0), K}, w.options().dtype(dtype));
  dispatch_dtype(dtype, [&]<typename T>() {
    const uint8_t* wp = w.data_ptr<uint8_t>();
    T* op = out.data_ptr<T>();
    by_isa([&] { avx2::dequantize(t, wp, w.size(0), K, op); }, [&] { avx512::dequantize(t, wp, w.size(0), K, op); });
  });
  return out;
}

}  // namespace octavo::quant
