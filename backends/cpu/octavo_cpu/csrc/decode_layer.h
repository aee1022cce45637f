#pragma once

#include <torch/extension.h>

#include <tuple>

#include "linear.h"

namespace octavo {

class DecodeLayer {
 public:
  DecodeLayer(at::Tensor input_norm, at::Tensor post_attention_norm, double eps, Linear qkv, Linear o, Linear gate_up,
              Linear down, int64_t heads, int64_t kv_heads, int64_t head_dim, double scale, int64_t window);

  // x [T, hidden] (bf16; overwritten), residual [T, hidden] or None on the first layer;
  // cos, sin [T, head_dim / 2]; k_cache, v_cache: the layer's cache as
  // TorchPagedAttention.block_views lays it out, amx saying which layout; slot_mapping [T]
  // int64; block_table [T, nb] and seq_lens [T] int32. Returns (the MLP's output, the
  // residual stream), as LlamaDecoderLayer.forward.
  std::tuple<at::Tensor, at::Tensor> forward(at::Tensor x, c10::optional<at::Tensor> residual, const at::Tensor& cos,
                                             const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                                             bool amx, const at::Tensor& slot_mapping, const at::Tensor& block_table,
                                             const at::Tensor& seq_lens) const;

 private:
  at::Tensor input_norm_, post_attention_norm_;
  double eps_;
  Linear qkv_, o_, gate_up_, down_;
  int64_t heads_, kv_heads_, head_dim_;
  double scale_;
  int64_t window_;
};

}  // namespace octavo
