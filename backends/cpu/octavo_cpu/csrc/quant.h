// Quantized weights (GGUF block formats) on the CPU: what the ISA-specific kernel files
// export and what quant.cpp dispatches to at run time.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace octavo::quant {

// GGUF's ggml_type numbers of the formats the kernels read.
enum class QuantType : int { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

// Activation rows quantized per 32 values: q [M, K] int8 and d [M, K / 32] scales; per
// 32-block also the sums of each 4 consecutive q's (the lanes of a byte dot product),
// negated as int32 (neg [M, K / 32, 8]: symmetric formats subtract c sum(q) in integers)
// and times d as floats (sums [M, K / 32, 8]: what the asymmetric formats' mins multiply).
struct QuantizedRows {
  int8_t* q;
  float* d;
  int32_t* neg;
  float* sums;
};

// One ISA's kernels. Each is compiled once per target (quant_avx2.cpp, quant_avx512.cpp).
#define OCTAVO_QUANT_ENTRY_POINTS(T)                                                                        \
  void quantize_activations(const T* x, int64_t ld, int64_t M, int64_t K, QuantizedRows& qx);              \
  void gemm(QuantType type, const uint8_t* w, int64_t N, int64_t K, const QuantizedRows& qx, int64_t M, T* out, \
            int64_t ldo);                                                                                    \
  void dequantize(QuantType type, const uint8_t* w, int64_t N, int64_t K, T* out);

#define OCTAVO_QUANT_ISA(ns)          \
  namespace ns {                      \
  OCTAVO_QUANT_ENTRY_POINTS(float)    \
  OCTAVO_QUANT_ENTRY_POINTS(c10::BFloat16) \
  OCTAVO_QUANT_ENTRY_POINTS(c10::Half)     \
  }

OCTAVO_QUANT_ISA(avx2)
OCTAVO_QUANT_ISA(avx512)

}  // namespace octavo::quant
