"""NeuronBaseForCausalLM: compile / load / forward, with the reference model in place of
the compiled graphs (see the package docstring)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.modules.generation.sampling import sample, validate_sampling_params

COMPILED_MODEL_FILE_NAME = "model.pt"  # the real one is a traced TorchScript; here: JSON


@dataclass
class CausalLMOutputWithPast:
    logits: torch.Tensor | None
    tokens: torch.Tensor
    hidden_states: torch.Tensor | None = None


class NeuronBaseForCausalLM(torch.nn.Module):
    """Context encoding (CTE) and token generation (TKG) over a block KV layout with prefix
    caching, the layout vLLM's Neuron plugin uses."""

    compile_count = 0  # compilations in this process: lets tests see the on-disk cache work

    def __init__(self, model_path: str, config: InferenceConfig | None = None):
        super().__init__()
        self.model_path = model_path
        self.config = config if config is not None else self.get_config_cls().load(model_path)
        self.neuron_config = self.config.neuron_config
        self.on_device_sampling = self.neuron_config.on_device_sampling_config is not None
        self.is_loaded_to_neuron = False

    @classmethod
    def get_config_cls(cls) -> type[InferenceConfig]:
        raise NotImplementedError

    @classmethod
    def get_neuron_config_cls(cls):
        return cls.get_config_cls().get_neuron_config_cls()

    # ------------------------------------------------------------ compile and load

    def compile(self, compiled_model_path: str, debug: bool = False) -> None:
        nc = self.neuron_config
        if not (nc.is_block_kv_layout and nc.is_prefix_caching and nc.enable_bucketing):
            raise NotImplementedError("the fake compiles only the block KV layout with prefix caching and buckets")
        for name in ("context_encoding_buckets", "prefix_buckets", "token_generation_buckets"):
            if any(b % nc.pa_block_size for b in getattr(nc, name)):
                raise ValueError(f"{name} {getattr(nc, name)} must be multiples of pa_block_size {nc.pa_block_size}")
        self.config.save(compiled_model_path)
        artifact = {"checkpoint": os.path.abspath(self.model_path),
                    "context_encoding_model": self._cte_buckets(), "token_generation_model": self._tkg_buckets()}
        with open(os.path.join(compiled_model_path, COMPILED_MODEL_FILE_NAME), "w", encoding="utf-8") as f:
            json.dump(artifact, f)
        NeuronBaseForCausalLM.compile_count += 1

    def load(self, compiled_model_path: str, start_rank_id=None, local_ranks_size=None, skip_warmup=False) -> None:
        with open(os.path.join(compiled_model_path, COMPILED_MODEL_FILE_NAME), encoding="utf-8") as f:
            artifact = json.load(f)
        nc = self.neuron_config
        self.model = AutoModelForCausalLM.from_pretrained(
            artifact["checkpoint"], dtype=nc.torch_dtype, attn_implementation="eager").eval()
        text = self.model.config
        kv_heads = text.num_key_value_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        shape = (nc.pa_num_blocks, nc.pa_block_size, kv_heads, head_dim)
        self.kv_cache = [(torch.zeros(shape, dtype=nc.torch_dtype), torch.zeros(shape, dtype=nc.torch_dtype))
                         for _ in range(text.num_hidden_layers)]
        self.is_loaded_to_neuron = True

    def _cte_buckets(self) -> list[list[int]]:
        nc = self.neuron_config
        return [[a, p] for a in nc.context_encoding_buckets for p in [0, *nc.prefix_buckets]]

    def _tkg_buckets(self) -> list[list[int]]:
        return [[1, b] for b in self.neuron_config.token_generation_buckets]

    # ------------------------------------------------------------ forward

    @torch.inference_mode()
    def forward(self, input_ids=None, seq_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, inputs_embeds=None, sampling_params=None, prev_hidden=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, adapter_ids=None,
                medusa_args=None, return_dict=None, llava_args=[], input_capture_hook=None,  # noqa: B006
                tensor_capture_hook=None, slot_mapping=None, block_table=None, full_context_lens=None,
                computed_context_lens=None, tf_args=None) -> CausalLMOutputWithPast:
        if not self.is_loaded_to_neuron:
            raise RuntimeError("Forward called before load. Run load() before calling forward")
        for name, value in (("input_ids", input_ids), ("position_ids", position_ids), ("seq_ids", seq_ids),
                            ("slot_mapping", slot_mapping), ("block_table", block_table),
                            ("full_context_lens", full_context_lens), ("computed_context_lens", computed_context_lens)):
            if value is None:
                raise ValueError(f"the block KV layout with prefix caching needs {name}")
        batch = input_ids.shape[0]
        if sampling_params is None:
            sampling_params = torch.tensor([[1.0, 1.0, 1.0]]).expand(batch, 3)
        if self.on_device_sampling:
            validate_sampling_params(sampling_params, self.neuron_config.on_device_sampling_config.global_topk)
        num_queries = full_context_lens - computed_context_lens
        is_context_encoding = input_ids.shape[-1] > 1 and not position_ids.min().item()
        if is_context_encoding:
            logits = torch.cat([self._context_encode(input_ids[i:i + 1], position_ids[i:i + 1], slot_mapping[i:i + 1],
                                                     block_table[i:i + 1], int(num_queries[i]),
                                                     int(computed_context_lens[i])) for i in range(batch)])
        else:
            logits = self._token_generate(input_ids, position_ids, slot_mapping, block_table, computed_context_lens)
        logits = logits.float().unsqueeze(1)  # [B, 1, V]: the last position of each sequence
        if not self.on_device_sampling:
            return CausalLMOutputWithPast(logits=logits, tokens=logits, hidden_states=logits)
        tokens = sample(logits[:, -1], sampling_params, self.neuron_config.on_device_sampling_config.global_topk)
        return CausalLMOutputWithPast(logits=logits if self.neuron_config.output_logits else None, tokens=tokens,
                                      hidden_states=tokens)

    def _context_encode(self, input_ids, position_ids, slot_mapping, block_table, active: int, prefix: int):
        """One sequence [1, prefix + active]: NxDI's 2D bucket (active, prefix), the prefix
        read from the cache through the block table, the active tokens' K/V written to their slots."""
        nc = self.neuron_config
        if input_ids.shape[-1] != prefix + active or not torch.equal(position_ids[0], torch.arange(prefix + active)):
            raise ValueError("context encoding takes the whole sequence with position ids 0..n-1")
        active_bucket, prefix_bucket = self._select_cte_bucket(active, prefix)
        # NxDI moves as much of the prefix into the active bucket as fits (recomputed, not rewritten).
        adjusted_prefix = max(0, prefix - (active_bucket - active))
        slots = torch.nn.functional.pad(slot_mapping[0], (prefix - adjusted_prefix, 0), value=-1)
        slots = torch.nn.functional.pad(slots, (0, active_bucket - slots.shape[0]), value=-1)
        width = prefix_bucket // nc.pa_block_size
        table = torch.nn.functional.pad(block_table[0], (0, width - block_table.shape[1]))
        if adjusted_prefix > width * nc.pa_block_size:
            raise AssertionError(f"Prefix len {adjusted_prefix} exceeds largest bucket {prefix_bucket}")
        real = prefix + active - adjusted_prefix
        return self._run(input_ids[0, adjusted_prefix:], adjusted_prefix, slots[:real], table)[None]

    def _token_generate(self, input_ids, position_ids, slot_mapping, block_table, computed_context_lens):
        nc = self.neuron_config
        if input_ids.shape[-1] != 1:
            raise ValueError(f"token generation takes one token per sequence, got {input_ids.shape[-1]}")
        if input_ids.shape[0] > nc.tkg_batch_size:
            raise ValueError(f"batch {input_ids.shape[0]} exceeds the token generation batch size {nc.tkg_batch_size}")
        bucket = self._select_tkg_bucket(int(computed_context_lens.max()))
        width = bucket // nc.pa_block_size
        table = torch.nn.functional.pad(block_table, (0, width - block_table.shape[1]))
        rows = []
        for i in range(input_ids.shape[0]):
            position = int(position_ids[i, 0])
            if position != int(computed_context_lens[i]):
                raise ValueError("token generation: position ids must equal computed_context_lens")
            # NxDI derives the slot from the position and the block table (generate_tokengen_slot_mapping).
            slot = int(table[i, position // nc.pa_block_size]) * nc.pa_block_size + position % nc.pa_block_size
            if int(slot_mapping[i, 0]) != slot:
                raise ValueError(f"row {i}: slot_mapping {int(slot_mapping[i, 0])} is not the slot of "
                                 f"position {position} ({slot})")
            rows.append(self._run(input_ids[i], position, torch.tensor([slot]), table[i]))
        return torch.stack(rows)

    def _select_cte_bucket(self, active: int, prefix: int) -> tuple[int, int]:
        """NxDI's first fit for context encoding (ModelWrapper.get_target_2d_bucket_for_prefix_caching)."""
        buckets = self._cte_buckets()
        if 256 < active + prefix <= 512 and [512, 0] in buckets:
            return 512, 0
        prefill = sorted({a for a, _ in buckets})
        prefixes = sorted({p for _, p in buckets})
        fits = [a for a in prefill if a >= active]
        if not fits:
            raise ValueError(f"Prefill len {active} exceeds largest bucket ({prefill[-1]}) for context_encoding_model")
        left = max(0, prefix - (fits[0] - active))
        fits_prefix = [p for p in prefixes if p >= left]
        if not fits_prefix:
            raise AssertionError(f"Prefix len {left} exceeds largest bucket {prefixes[-1]} for context_encoding_model")
        return fits[0], fits_prefix[0]

    def _select_tkg_bucket(self, position: int) -> int:
        fits = [b for _, b in self._tkg_buckets() if b > position]
        if not fits:
            raise ValueError(f"Input len {position} exceeds largest bucket ({self._tkg_buckets()[-1][1]}) "
                             "for token_generation_model")
        return fits[0]

    def _run(self, tokens: torch.Tensor, start: int, slots: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The reference model on `tokens` at positions start.., after `start` cached tokens;
        writes the K/V of tokens whose slot is not -1. Returns the last token's logits."""
        bs = self.neuron_config.pa_block_size
        past = DynamicCache()
        if start:
            index = torch.arange(start)
            blocks, offsets = table[index // bs], index % bs
            for layer, (k, v) in enumerate(self.kv_cache):
                past.update(k[blocks, offsets].transpose(0, 1)[None], v[blocks, offsets].transpose(0, 1)[None], layer)
        positions = torch.arange(start, start + tokens.shape[0])[None]
        out = self.model(input_ids=tokens.reshape(1, -1).long(), position_ids=positions, cache=past,
                         use_cache=True)
        write = slots >= 0
        blocks, offsets = slots[write] // bs, slots[write] % bs
        for layer, (k, v) in enumerate(self.kv_cache):
            cached = past.layers[layer]
            k[blocks, offsets] = cached.keys[0, :, start:].transpose(0, 1)[write]
            v[blocks, offsets] = cached.values[0, :, start:].transpose(0, 1)[write]
        return out.logits[0, -1]
