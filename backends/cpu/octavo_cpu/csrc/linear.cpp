#include "linear.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "kernels.h"

namespace octavo {
namespace {

// How a quantized part multiplies bf16 rows. The integer kernels run ~40-60 GMAC/s a core
// here at any M >= 4 (bound by their per-block scaling); dequantizing 16 weight rows at a
// time into bf16 panels runs 60 GMAC/s at M = 16, 90 at 32 and 140 at 128 (bench/README.md).
// Without panels (no AVX512-BF16, or AMX), prefills dequantize the whole part for oneDNN:
// 72 GMAC/s at M = 128 on a 4864 x 896 weight (24 at M = 32).
constexpr int64_t kPanelRows = 16;
constexpr int64_t kDenseRows = 64;

// torch's mkldnn::_linear_pointwise (what PackedLinear calls) on a pre-packed weight.
at::Tensor linear_pointwise(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<c10::Scalar>>, std::optional<c10::string_view>)>();
  return op.call(x, w, b, "none", c10::List<std::optional<c10::Scalar>>(), std::nullopt);
}

}  // namespace

Linear Linear::quantized(std::vector<Part> parts, c10::optional<at::Tensor> bias, int64_t in_features, bool panels) {
  TORCH_CHECK(!parts.empty(), "a quantized linear needs parts");
  Linear l;
  l.out_features_ = std::get<1>(parts.back());
  l.parts_ = std::move(parts), l.bias_ = std::move(bias), l.in_features_ = in_features, l.quantized_panels_ = panels;
  return l;
}

Linear Linear::packed(at::Tensor weight, c10::optional<at::Tensor> bias, int64_t in_features, int64_t out_features) {
  Linear l;
  l.packed_ = std::move(weight), l.bias_ = std::move(bias), l.in_features_ = in_features, l.out_features_ = out_features;
  return l;
}

Linear Linear::panels(at::Tensor weight, c10::optional<at::Tensor> bias) {
  Linear l;
  l.in_features_ = weight.size(1), l.out_features_ = weight.size(0);
  l.panels_ = std::move(weight), l.bias_ = std::move(bias);
  return l;
}

at::Tensor Linear::forward(const at::Tensor& input) const {
  const at::Tensor x = input.stride(-1) == 1 ? input : input.contiguous();
  TORCH_CHECK(x.dim() == 2 && x.size(1) == in_features_, "linear: x must be [M, ", in_features_, "]");
  if (packed_.defined()) return linear_pointwise(x, packed_, bias_);
  if (panels_.defined()) {
    at::Tensor out = bf16_linear(x, panels_);
    if (bias_) out.add_(*bias_);
    return out;
  }
  at::Tensor out = at::empty({x.size(0), out_features_}, x.options());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const bool panels = bf16 && quantized_panels_ && x.size(0) >= kPanelRows;
  const bool dense = bf16 && !quantized_panels_ && x.size(0) >= kDenseRows;
  for (const auto& [start, end, type, weight] : parts_) {
    at::Tensor target = parts_.size() == 1 ? out : out.narrow(1, start, end - start);
    if (type < 0)
      target.copy_(at::linear(x, weight));
    else if (panels && (end - start) % 16 == 0)
      quant_panels_linear_out(x, weight, type, target);
    else if (dense)
      target.copy_(at::linear(x, quant::quant_dequantize(weight, type, in_features_, x.scalar_type())));
    else
      quant::quant_linear_out(x, weight, type, target);
  }
  if (bias_) out.add_(*bias_);
  return out;
}

}  // namespace octavo
