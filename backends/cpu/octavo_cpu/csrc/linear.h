// A linear layer y = x W^T + b as the CPU backend holds it: GGUF-quantized row parts (each
// multiplied in its blocks, or a dense part), one bf16 weight in our panels (gemv_bf16.cpp)
// or one weight pre-packed by oneDNN. One C++ call per layer, from Python (QuantLinear,
// PanelLinear) or from the fused decoder layer.
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace octavo {

class Linear {
 public:
  // (first row, end row, ggml type or -1 for a dense [rows, K] weight, tensor) per part.
  using Part = std::tuple<int64_t, int64_t, int64_t, at::Tensor>;

  // panels: the CPU runs quant_panels_linear_out (AVX512-BF16), for batches of bf16 rows.
  static Linear quantized(std::vector<Part> parts, c10::optional<at::Tensor> bias, int64_t in_features, bool panels);
  static Linear packed(at::Tensor weight, c10::optional<at::Tensor> bias, int64_t in_features, int64_t out_features);
  static Linear panels(at::Tensor weight, c10::optional<at::Tensor> bias);

  // x [M, K] -> [M, N] in x's dtype.
  at::Tensor forward(const at::Tensor& x) const;

 private:
  std::vector<Part> parts_;
  at::Tensor packed_;  // oneDNN's blocked weight, or undefined
  at::Tensor panels_;  // bf16_pack's panels, or undefined
  c10::optional<at::Tensor> bias_;
  int64_t in_features_ = 0, out_features_ = 0;
  bool quantized_panels_ = false;
};

}  // namespace octavo
