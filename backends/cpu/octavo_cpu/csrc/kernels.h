// The module's entry points, shared by the bindings and the fused decoder layer that chains them.
#pragma once

#include <torch/extension.h>

#include <string>

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& block_table, const at::Tensor& seq_lens, double scale, int64_t window,
                        double softcap, bool amx);
void write_kv(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& slot_mapping, bool amx);
bool amx_available();
at::Tensor rms_norm(at::Tensor x, const at::Tensor& weight, double eps, c10::optional<at::Tensor> residual,
                    bool gemma);
at::Tensor silu_and_mul(const at::Tensor& gate_up);
void rope_(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin);

namespace octavo {
at::Tensor bf16_pack(const at::Tensor& w);
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& packed);
void quant_panels_linear_out(const at::Tensor& x, const at::Tensor& w, int64_t type, at::Tensor& out);
}  // namespace octavo

namespace octavo::quant {
std::string quant_isa();
void set_quant_isa(const std::string& want);
void quant_linear_out(const at::Tensor& x, const at::Tensor& w, int64_t type, at::Tensor& out);
at::Tensor quant_dequantize(const at::Tensor& w, int64_t type, int64_t K, at::ScalarType dtype);
}  // namespace octavo::quant
