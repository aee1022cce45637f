"""Tiny random Hugging Face models for every supported family, built offline in seconds.

Everything here is deterministic and needs no network:

* :func:`build_tokenizer` trains a byte-level BPE (vocab 1000) on a corpus generated in code
  and saves it as a ``transformers`` fast tokenizer with a ChatML chat template.
* :func:`make_tiny_model` writes ``config.json`` + ``model.safetensors`` (fp32) + that
  tokenizer for one of :data:`FAMILIES`.
* :func:`hf_greedy` / :func:`hf_logprobs` are the HF ``transformers`` reference that engine
  and backend tests compare against (greedy tokens identical, logprobs close).
* :func:`random_prompts` gives reproducible token-id prompts.

Family configs (all: hidden 64, 4 heads, 2 KV heads (GQA), head_dim 16, intermediate 128,
vocab 1000 = tokenizer size, max_position_embeddings 512, fp32, RMSNorm eps 1e-6):

* ``llama``   LlamaForCausalLM, 2 layers, untied lm_head (``tie_word_embeddings=True`` for
  the tied variant), rope_theta 1e4.
* ``qwen2``   Qwen2ForCausalLM, 2 layers, q/k/v bias (hard-wired in HF), tied, rope_theta 1e6.
* ``mistral`` MistralForCausalLM, 2 layers, untied, ``sliding_window=32`` on every layer.
* ``gemma3``  Gemma3ForCausalLM (``model_type="gemma3_text"``), 4 layers with
  ``layer_types`` = sliding, sliding, full, sliding; ``sliding_window=16``; q/k norm;
  ``query_pre_attn_scalar=32`` (!= head_dim, so the scale must come from it); rope_theta
  1e4 on sliding layers, 1e6 on full layers (``rope_parameters`` keyed by layer type);
  gelu_pytorch_tanh; tied; embeddings scaled by sqrt(64) inside the model.
* ``qwen3``   Qwen3ForCausalLM, 2 layers, q/k norm, no bias, untied, rope_theta 1e6.

HF's sliding window covers ``sliding_window`` keys *including* the query
(key j is visible from query i iff ``i - window < j <= i``), with eager and sdpa alike.

Tokenizer conventions (the same for every family):

* special tokens ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2;
* ``eos_token`` = ``<|im_end|>`` (the end of a ChatML turn, as in Qwen2.5-Instruct), so a chat
  completion stops there; ``pad_token`` = ``<|endoftext|>``; no BOS token is added;
* the model config carries ``eos_token_id=2``, ``pad_token_id=0``, ``bos_token_id=0``.

Weights are random with a larger scale than HF's default init (std ``0.2`` instead of
``0.02``) so greedy generation is not degenerate; norm weights and biases are random too
(not the usual ones/zeros), so an engine that forgets a norm weight, Gemma's ``1 + w`` norm
convention, or Qwen2's q/k/v bias produces different tokens. Gemma3 is the exception to
the 0.2 scale: its tied embedding has std 0.04 (the model multiplies it by sqrt(64) = 8) and
its final norm a gain of ~5 so logits are not flat. The same seed gives different weights
per family. Greedy output over 20 tokens has ~15-20 distinct ids (gemma3: ~5-10).

The HF reference runs on CPU in fp32 with ``attn_implementation="eager"`` by default
("sdpa" also accepted: same tokens) and one torch thread (``REFERENCE_NUM_THREADS``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import zlib
from typing import Any, Sequence

import torch

__all__ = [
    "FAMILIES",
    "SPECIAL_TOKENS",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "CHATML_TEMPLATE",
    "build_tokenizer",
    "make_tiny_model",
    "tiny_config",
    "load_hf_model",
    "clear_hf_cache",
    "hf_greedy",
    "hf_logprobs",
    "random_prompts",
]

FAMILIES = ("llama", "qwen2", "mistral", "gemma3", "qwen3")

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 1000

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Default init scale for the random weights (see module docstring).
WEIGHT_STD = 0.2
NORM_STD = 0.1
GEMMA_EMBED_STD = 0.04
GEMMA_FINAL_NORM_GAIN = 5.0


# --------------------------------------------------------------------------------------
# Corpus + tokenizer
# --------------------------------------------------------------------------------------

_ENGLISH = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a
single step. It was the best of times, it was the worst of times, it was the age of wisdom,
it was the age of foolishness. All happy families are alike; each unhappy family is unhappy
in its own way. Call me Ishmael. In the beginning the universe was created; this has made a
lot of people very angry and been widely regarded as a bad move.
Beautiful is better than ugly. Explicit is better than implicit. Simple is better than
complex. Complex is better than complicated. Flat is better than nested. Sparse is better
than dense. Readability counts. Special cases aren't special enough to break the rules.
Although practicality beats purity. Errors should never pass silently. Unless explicitly
silenced. In the face of ambiguity, refuse the temptation to guess. There should be one --
and preferably only one -- obvious way to do it. Now is better than never. Namespaces are
one honking great idea -- let's do more of those!
The scheduler gives each request a share of the token budget. The cache stores keys and
values in fixed-size blocks; a block table maps each sequence to its blocks. When memory
runs out, the newest request is preempted and recomputed later. Greedy decoding picks the
most likely token at every step, while sampling draws from the distribution after applying
temperature, top-k and top-p. What is the capital of France? Paris is the capital of France.
How many legs does a spider have? Eight. Please write a short poem about the sea.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 3.14159 2.71828 -1 1e-6 50% $19.99 #1
"""

_CODE = '''\
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Cache:
    def __init__(self, num_blocks, block_size=16):
        self.free = list(range(num_blocks))
        self.block_size = block_size

    def allocate(self, n):
        if n > len(self.free):
            raise MemoryError("out of blocks")
        return [self.free.pop() for _ in range(n)]


import json, os, sys
print(json.dumps({"name": "octavo", "tokens": [1, 2, 3], "ok": True}, indent=2))
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#include <stdio.h>
int main(void) { for (int i = 0; i < 10; ++i) printf("%d\\n", i * i); return 0; }

function add(a, b) { return a + b; }
const xs = [1, 2, 3].map((x) => x * 2).filter(x => x > 2);
SELECT id, name FROM users WHERE age >= 18 ORDER BY name LIMIT 10;
<div class="note"><p>Hello, <b>world</b>!</p></div>
{"role": "user", "content": "What's the weather in Paris?"}
'''

_UNICODE = """\
héllo wörld, naïve café, résumé, façade, Ångström, Straße, jalapeño, São Paulo, Zürich
世界 你好 中文 日本語 こんにちは カタカナ 한국어 안녕하세요 東京 北京 上海
Привет мир, Здравствуйте. Γειά σου κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया. สวัสดี
🎉 😀 🚀 🔥 👍 ❤️ 🐍 🌍 ✨ 🤖 👨‍👩‍👧 🇫🇷 — “quotes” ‘single’ … • → ← ≤ ≥ ≠ ∞ ∑ π µ ° € £ ¥ ©
"""

_WORDS = (
    "the of and to in is that for it as with was on be by at this are from or have an but not "
    "which they you one all we can there their if more when will would who so no what up out "
    "about into than them time only new some could these two may first then do any like my now "
    "over such our man even most made after also did many before must through back years where "
    "much your way well down should because each just those people how too little state good "
    "very make world still own see men work long get here between both life being under never "
    "day same another know while last might us great old year off come since against go came "
    "right used take three token model cache block request batch tensor kernel layer attention "
    "window sliding prefix decode prefill sample greedy logits device engine server stream"
).split()

_UNI_WORDS = ("世界", "你好", "héllo", "café", "🎉", "🚀", "Привет", "こんにちは", "naïve", "π≈3.14")


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    """A deterministic English + code + unicode corpus (a few hundred KB), built in code."""
    rng = random.Random(1234)
    lines: list[str] = []
    base = (_ENGLISH + _CODE + _UNICODE).splitlines()
    for _ in range(6):
        lines.extend(base)
    for _ in range(3000):
        n = rng.randint(4, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_UNI_WORDS))
        if rng.random() < 0.15:
            words.append(str(rng.randint(0, 10_000)))
        s = " ".join(words)
        s = s[0].upper() + s[1:] + rng.choice([".", ".", ".", "?", "!", ",", ":"])
        lines.append(s)
    for i in range(300):
        v = rng.choice(_WORDS)
        lines.append(f"    {v}_{i % 7} = {rng.choice(_WORDS)}({v}, {rng.randint(0, 99)})  # {rng.choice(_WORDS)}")
    return tuple(lines)


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok.to_str()


def build_tokenizer(path: str) -> None:
    """Train (once per process, deterministic) and save the tiny tokenizer to ``path``.

    Writes ``tokenizer.json`` + ``tokenizer_config.json`` (+ ``special_tokens_map.json``
    where transformers writes one), loadable with ``AutoTokenizer.from_pretrained(path)``.
    Byte-level BPE, vocab 1000 with specials ``<|endoftext|>``=0, ``<|im_start|>``=1,
    ``<|im_end|>``=2; ``eos_token`` = ``<|im_end|>``, ``pad_token`` = ``<|endoftext|>``,
    no BOS; ChatML ``chat_template``.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    os.makedirs(path, exist_ok=True)
    tok = Tokenizer.from_str(_trained_tokenizer_json())
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[SPECIAL_TOKENS[1]],
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    # save_jinja_files=False: keep chat_template inside tokenizer_config.json (the classic
    # layout every loader understands) rather than transformers 5's chat_template.jinja.
    hf_tok.save_pretrained(path, save_jinja_files=False)
    cfg_path = os.path.join(path, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    # transformers 5 writes "TokenizersBackend", unknown to transformers 4.x; the 4.x name
    # is an alias in 5.x, so use it.
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")


# --------------------------------------------------------------------------------------
# Model configs
# --------------------------------------------------------------------------------------

_COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    initializer_range=0.02,
    pad_token_id=0,
    bos_token_id=0,
    eos_token_id=2,
)


def _family_config(family: str) -> tuple[Any, dict[str, Any]]:
    """(config class, default kwargs) for ``family``."""
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig, dict(
            _COMMON,
            num_hidden_layers=2,
            head_dim=16,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    if family == "qwen2":
        from transformers import Qwen2Config

        # q/k/v bias is hard-wired in HF's Qwen2Attention; head_dim = hidden/heads = 16.
        return Qwen2Config, dict(
            _COMMON,
            num_hidden_layers=2,
            tie_word_embeddings=True,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    if family == "mistral":
        from transformers import MistralConfig

        return MistralConfig, dict(
            _COMMON,
            num_hidden_layers=2,
            head_dim=16,
            tie_word_embeddings=False,
            sliding_window=32,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    if family == "gemma3":
        from transformers import Gemma3TextConfig

        return Gemma3TextConfig, dict(
            _COMMON,
            num_hidden_layers=4,
            head_dim=16,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            sliding_window=16,
            layer_types=[
                "sliding_attention",
                "sliding_attention",
                "full_attention",
                "sliding_attention",
            ],
            # != head_dim on purpose: attention scale is query_pre_attn_scalar**-0.5.
            query_pre_attn_scalar=32,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
        )
    if family == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config, dict(
            _COMMON,
            num_hidden_layers=2,
            head_dim=16,
            tie_word_embeddings=False,
            attention_bias=False,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def tiny_config(family: str, vocab_size: int = VOCAB_SIZE, **config_overrides):
    """The tiny ``transformers`` config for ``family`` (overrides win)."""
    cls, kwargs = _family_config(family)
    kwargs["vocab_size"] = vocab_size
    kwargs.update(config_overrides)
    return cls(**kwargs)


def _family_seed(family: str, seed: int) -> int:
    # Different families with the same seed get different weights (llama and mistral have
    # identical parameter names and shapes).
    return (seed * 1_000_003 + zlib.crc32(family.encode())) % (2**63)


@torch.no_grad()
def _randomize(model: torch.nn.Module, family: str, seed: int) -> None:
    """Deterministic random init with a scale that keeps greedy generation varied."""
    gen = torch.Generator().manual_seed(_family_seed(family, seed))
    gemma = family == "gemma3"
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        # named_parameters() skips tied duplicates, so a shared embedding is drawn once.
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if "norm" in name:
            if not gemma:
                val = 1.0 + NORM_STD * noise
            elif name == "model.norm.weight":
                # Gemma RMSNorm computes x * (1 + w). The tied embedding is small (below), so
                # a final-norm gain of ~GEMMA_FINAL_NORM_GAIN gives logits a useful spread.
                val = (GEMMA_FINAL_NORM_GAIN - 1.0) + NORM_STD * noise
            else:
                val = NORM_STD * noise
        elif "embed_tokens" in name and gemma:
            # Gemma multiplies embeddings by sqrt(hidden_size) (= 8 here); a full-size
            # embedding would swamp the residual stream and greedy would echo one token.
            val = GEMMA_EMBED_STD * noise
        else:
            val = WEIGHT_STD * noise
        p.copy_(val.to(p.dtype))


def make_tiny_model(family: str, path: str, *, seed: int = 0, **config_overrides) -> str:
    """Write a tiny random ``family`` model (config.json, model.safetensors fp32,
    generation_config.json, tokenizer) to ``path`` and return ``path``.

    ``config_overrides`` go to the HF config (e.g. ``tie_word_embeddings=True``,
    ``num_hidden_layers=4``, ``sliding_window=None``).
    """
    from transformers import AutoModelForCausalLM

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    path = os.fspath(path)
    build_tokenizer(path)
    with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
        vocab = len(json.load(f)["model"]["vocab"])
    config_overrides.setdefault("vocab_size", vocab)
    config = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, family, seed)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.save_pretrained(path)
    clear_hf_cache()  # the path may have held another model
    return path


# --------------------------------------------------------------------------------------
# HF reference
# --------------------------------------------------------------------------------------

DEFAULT_ATTN_IMPLEMENTATION = "eager"
# Tiny models run fastest on one thread; with several threads on a busy machine, OpenMP
# spin-waiting made generate() ~20x slower here. Set to None to keep torch's setting.
REFERENCE_NUM_THREADS: int | None = 1


@contextlib.contextmanager
def _reference_threads():
    n = REFERENCE_NUM_THREADS
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _stamp(path: str) -> tuple:
    st = os.stat(os.path.join(path, "model.safetensors"))
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: str, attn_implementation: str, stamp: tuple):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    model.eval()
    # Reference greedy runs ignore EOS: generate() must emit exactly max_new_tokens.
    model.generation_config.eos_token_id = None
    return model


def clear_hf_cache() -> None:
    """Forget cached HF models (the cache is also keyed on model.safetensors' mtime/size)."""
    _load.cache_clear()


def load_hf_model(path: str, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION):
    """The HF model at ``path`` in fp32 (cached per path/attn/file stamp). Do not mutate."""
    path = os.fspath(path)
    return _load(path, attn_implementation, _stamp(path))


@torch.no_grad()
def hf_greedy(
    path: str,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
) -> list[list[int]]:
    """HF greedy reference: ``generate()`` per prompt (batch 1, no padding), EOS ignored,
    exactly ``max_new_tokens`` new ids per prompt. EOS is *not* masked (no
    ``min_new_tokens``), so an EOS id may appear in the output, as with ``ignore_eos``."""
    from transformers import GenerationConfig

    model = load_hf_model(path, attn_implementation)
    gc = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=None,
        pad_token_id=model.config.pad_token_id,
        bos_token_id=None,
        num_beams=1,
    )
    out: list[list[int]] = []
    for prompt in prompts:
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        with _reference_threads():
            seq = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                generation_config=gc,
            )
        new = seq[0, ids.shape[1]:].tolist()
        if len(new) != max_new_tokens:
            raise AssertionError(f"HF generated {len(new)} tokens, expected {max_new_tokens}")
        out.append(new)
    return out


@torch.no_grad()
def hf_logprobs(
    path: str,
    token_ids: Sequence[int],
    *,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
) -> torch.Tensor:
    """log_softmax of HF's logits at every position, fp32, shape ``[len(token_ids), vocab]``
    (row i is the distribution of the token after ``token_ids[i]``)."""
    model = load_hf_model(path, attn_implementation)
    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    with _reference_threads():
        logits = model(input_ids=ids, use_cache=False).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def hf_hidden_states(
    path: str,
    token_ids: Sequence[int],
    *,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
) -> torch.Tensor:
    """HF's final hidden states (after the last norm), fp32, ``[len(token_ids), hidden]``:
    what the pooling runner pools."""
    model = load_hf_model(path, attn_implementation)
    ids = torch.tensor([list(token_ids)], dtype=torch.long)
    with _reference_threads():
        return model.model(input_ids=ids, use_cache=False).last_hidden_state[0].float()


def random_prompts(
    tokenizer_or_vocab_size, n: int, min_len: int, max_len: int, seed: int
) -> list[list[int]]:
    """``n`` reproducible random prompts with lengths in ``[min_len, max_len]``.

    With an int, ids are drawn from ``[0, vocab_size)``. With a tokenizer (or a path to
    one), ids are drawn from its vocabulary excluding its special tokens.
    """
    if isinstance(tokenizer_or_vocab_size, int):
        pool = list(range(tokenizer_or_vocab_size))
    else:
        tok = tokenizer_or_vocab_size
        if isinstance(tok, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(os.fspath(tok))
        special = set(tok.all_special_ids)
        pool = [i for i in range(len(tok)) if i not in special]
    rng = random.Random(seed)
    return [
        [rng.choice(pool) for _ in range(rng.randint(min_len, max_len))] for _ in range(n)
    ]
