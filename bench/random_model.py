"""Write a model with a real model's architecture and random weights.

For devices the real weights cannot reach (the GPU machine takes 64 MiB of files, the real
models are 93 and 478 MB): speed depends on shapes, not on weight values, so a random model
of the same config moves the same bytes and does the same work. The tokenizer is a small
trained one; ids beyond it still embed and decode to nothing, and the benchmarks feed token
ids and ignore EOS anyway.

    python bench/random_model.py smollm2-135m /tmp/smollm2-random
"""
from __future__ import annotations

import argparse

from octavo.testing.tiny_models import make_tiny_model

ARCHITECTURES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct
    "smollm2-135m": ("llama", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    # Qwen/Qwen2.5-Coder-0.5B-Instruct
    "qwen2.5-0.5b": ("qwen2", dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
        rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arch", choices=sorted(ARCHITECTURES))
    p.add_argument("path")
    args = p.parse_args()
    family, config = ARCHITECTURES[args.arch]
    print(make_tiny_model(family, args.path, **config))


if __name__ == "__main__":
    main()
