// A pre-norm decoder layer's decode step (one new token per sequence, bf16) as one call:
// the same kernels, in the same order, as the layer's Python forward with the CPU backend's
// layer ops (octavo.models.llama.LlamaDecoderLayer), without its Python-level calls (module
// calls, views, one kernel call per op), which cost a batch-1 step of a small model more
// than its matmuls.
#include "decode_layer.h"

#include "kernels.h"

namespace octavo {

DecodeLayer::DecodeLayer(at::Tensor input_norm, at::Tensor post_attention_norm, double eps, Linear qkv, Linear o,
                         Linear gate_up, Linear down, int64_t heads, int64_t kv_heads, int64_t head_dim, double scale,
                         int64_t window)
    : input_norm_(std::move(input_norm)),
      post_attention_norm_(std::move(post_attention_norm)),
      eps_(eps),
      qkv_(std::move(qkv)),
      o_(std::move(o)),
      gate_up_(std::move(gate_up)),
      down_(std::move(down)),
      heads_(heads),
      kv_heads_(kv_heads),
      head_dim_(head_dim),
      scale_(scale),
      window_(window) {}

std::tuple<at::Tensor, at::Tensor> DecodeLayer::forward(at::Tensor x, c10::optional<at::Tensor> residual,
                                                         const at::Tensor& cos, const at::Tensor& sin,
                                                         at::Tensor& k_cache, at::Tensor& v_cache, bool amx,
                                                         const at::Tensor& slot_mapping, const at::Tensor& block_table,
                                                         const at::Tensor& seq_lens) const {
  const int64_t T = x.size(0), D = head_dim_;
  // On the first layer the residual stream starts as the embeddings themselves.
  at::Tensor stream = residual ? *residual : x;
  at::Tensor h = rms_norm(x, input_norm_, eps_, residual, false);

  const at::Tensor qkv = qkv_.forward(h);
  const at::Tensor q = qkv.narrow(1, 0, heads_ * D).view({T, heads_, D});
  const at::Tensor k = qkv.narrow(1, heads_ * D, kv_heads_ * D).view({T, kv_heads_, D});
  const at::Tensor v = qkv.narrow(1, (heads_ + kv_heads_) * D, kv_heads_ * D).view({T, kv_heads_, D});
  rope_(q, cos, sin);
  rope_(k, cos, sin);

  write_kv(k_cache, v_cache, k, v, slot_mapping, amx);
  const at::Tensor attn = paged_decode(q, k_cache, v_cache, block_table, seq_lens, scale_, window_, 0.0, amx);

  h = rms_norm(o_.forward(attn.view({T, heads_ * D})), post_attention_norm_, eps_, stream, false);
  return {down_.forward(silu_and_mul(gate_up_.forward(h))), stream};
}

}  // namespace octavo
