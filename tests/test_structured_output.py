"""Guided decoding on a tiny random Llama: its random weights write garbage, so every valid
output below is the grammar's doing. Both libraries, 20 seeds each, and the engine paths a
matcher must survive: batching, chunked prefill, preemption, n > 1, abort."""
from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
import torch

from octavo import LLM, SamplingParams
from octavo.engine.llm_engine import InputError
from octavo.sample.ops import SamplerOps
from octavo.sampling_params import SamplingParamError
from octavo.structured_output import StructuredOutputParams as Guided

BACKENDS = ("xgrammar", "llguidance")
SEEDS = range(20)
PROMPT = "Describe a pet:"

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "owner": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999},
                                                   "vip": {"type": "boolean"}},
                  "required": ["id", "vip"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
    },
    "required": ["name", "age", "kind", "owner", "tags"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,6}-[0-9]{1,3}"
CHOICES = ["yes", "no", "maybe not"]
EBNF = 'root ::= greeting " " name "!"\ngreeting ::= "hello" | "hi"\nname ::= [a-z] [a-z]? [a-z]?'
LARK = 'start: greeting " " name "!"\ngreeting: "hello" | "hi"\nname: /[a-z]{1,3}/'
GREETING = re.compile(r"(hello|hi) [a-z]{1,3}!")


def run(llm: LLM, guided: Guided | None, seeds=SEEDS, max_tokens: int = 400, **kw) -> list:
    params = [SamplingParams(max_tokens=max_tokens, seed=s, structured_outputs=guided, **kw) for s in seeds]
    return [o.outputs[0] for o in llm.generate([PROMPT] * len(params), params)]


def stopped_texts(outs) -> list[str]:
    """The grammar completes, so every output ends on EOS (finish_reason stop)."""
    assert [o.finish_reason for o in outs] == ["stop"] * len(outs), [o.text for o in outs]
    return [o.text for o in outs]


# ---------------------------------------------------------------------------- each constraint


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_schema_outputs_validate(llama_llm, backend):
    for text in stopped_texts(run(llama_llm, Guided(json=SCHEMA, backend=backend))):
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_schema_given_as_text(llama_llm, backend):
    for text in stopped_texts(run(llama_llm, Guided(json=json.dumps(SCHEMA), backend=backend), seeds=range(3))):
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("backend", BACKENDS)
def test_json_object_outputs_are_objects(llama_llm, backend):
    """Any object: random text fills strings for long, so quotes and braces get a push."""
    tok = llama_llm.get_tokenizer()
    closers = {t: 4.0 for t in range(len(tok)) if set(tok.decode([t])) & set('"}')}
    outs = run(llama_llm, Guided(json_object=True, backend=backend), max_tokens=480, logit_bias=closers)
    for text in stopped_texts(outs):
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("backend", BACKENDS)
def test_regex_outputs_match(llama_llm, backend):
    for text in stopped_texts(run(llama_llm, Guided(regex=REGEX, backend=backend))):
        assert re.fullmatch(REGEX, text), text


@pytest.mark.parametrize("backend", BACKENDS)
def test_choice_outputs_are_choices(llama_llm, backend):
    texts = stopped_texts(run(llama_llm, Guided(choice=CHOICES, backend=backend)))
    assert set(texts) <= set(CHOICES) and len(set(texts)) > 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grammar", [EBNF, LARK], ids=["ebnf", "lark"])
def test_grammar_outputs_match(llama_llm, backend, grammar):
    for text in stopped_texts(run(llama_llm, Guided(grammar=grammar, backend=backend))):
        assert GREETING.fullmatch(text), text


def test_llguidance_whitespace_pattern(llama_llm):
    guided = Guided(json=SCHEMA, whitespace_pattern=r"[ ]?", backend="llguidance")
    for text in stopped_texts(run(llama_llm, guided, seeds=range(5))):
        jsonschema.validate(json.loads(text), SCHEMA)
        assert "\n" not in text and "  " not in text


def test_greedy_and_logprobs_follow_the_grammar(llama_llm):
    out = run(llama_llm, Guided(choice=CHOICES), seeds=[None], temperature=0.0, logprobs=2)[0]
    assert out.text in CHOICES and out.finish_reason == "stop"
    assert all(max(lp.values(), key=lambda x: x.logprob).logprob > -1e9 for lp in out.logprobs)


# ---------------------------------------------------------------------------- engine paths


def test_unguided_requests_unchanged_by_guided_neighbours(llama_llm):
    """Greedy unguided requests get the same tokens alone and batched with guided ones."""
    plain = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    prompts = ["Once upon a time", "The weather", "Numbers: 1 2 3"]
    alone = [o.outputs[0].token_ids for o in llama_llm.generate(prompts, plain)]
    guided = [SamplingParams(max_tokens=400, seed=s, structured_outputs=Guided(json=SCHEMA, backend=b))
              for s, b in enumerate(BACKENDS * 2)]
    outs = llama_llm.generate(prompts + [PROMPT] * len(guided), [plain] * len(prompts) + guided)
    assert [o.outputs[0].token_ids for o in outs[:len(prompts)]] == alone
    for o in outs[len(prompts):]:
        jsonschema.validate(json.loads(o.outputs[0].text), SCHEMA)


def test_n_sequences_have_their_own_matchers(llama_llm):
    params = SamplingParams(n=4, max_tokens=400, seed=7, structured_outputs=Guided(json=SCHEMA))
    outs = llama_llm.generate(PROMPT, params)[0].outputs
    texts = stopped_texts(outs)
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) == 4


@pytest.fixture(scope="module")
def chunked_llm(tiny_model):
    """A 16-token step budget: prompts prefill over several steps. llguidance by default."""
    return LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=256, max_num_batched_tokens=16,
               guided_decoding_backend="llguidance")


def test_chunked_prefill(chunked_llm):
    long_prompt = "A long prompt about pets and their owners, " * 4
    params = [SamplingParams(max_tokens=300, seed=s, structured_outputs=Guided(json=SCHEMA)) for s in range(6)]
    outs = chunked_llm.generate([long_prompt] * len(params), params)
    for text in stopped_texts([o.outputs[0] for o in outs]):
        jsonschema.validate(json.loads(text), SCHEMA)


@pytest.mark.parametrize("backend", BACKENDS)
def test_preemption_keeps_matcher_state(llama_llm, tiny_model, backend):
    """With too few KV blocks requests are preempted and recomputed; a matcher that accepted a
    token twice would change the output, so preempted runs equal the unpreempted ones."""
    small = LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=32, block_size=16)  # 512 tokens: one request fits, 8 do not
    guided = Guided(json=SCHEMA, backend=backend)
    reference = run(llama_llm, guided, seeds=range(8))
    outs = run(small, guided, seeds=range(8))
    assert small.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == [o.token_ids for o in reference]
    for text in stopped_texts(outs):
        jsonschema.validate(json.loads(text), SCHEMA)


def test_model_vocab_wider_than_tokenizer(tiny_model):
    """Logits for ids the tokenizer lacks are masked out: the mask covers the model's vocab."""
    llm = LLM(tiny_model("llama", vocab_size=1100), dtype="float32", num_kv_blocks=64)
    for backend in BACKENDS:
        outs = run(llm, Guided(regex=REGEX, backend=backend), seeds=range(5))
        assert all(t < 1000 for o in outs for t in o.token_ids)
        assert all(re.fullmatch(REGEX, t) for t in stopped_texts(outs))


def test_requests_wait_for_their_grammar_without_blocking_others(llama_llm):
    """A grammar still compiling holds back only its own request."""
    engine = llama_llm.engine
    release = threading.Event()
    compile_ = engine.structured_output._compile

    def slow_compile(*args):
        assert release.wait(30)
        return compile_(*args)

    engine.structured_output._compile = slow_compile
    try:
        engine.add_request("g", PROMPT, SamplingParams(max_tokens=400, seed=1,
                                                       structured_outputs=Guided(regex="slow-[0-9]")))
        engine.add_request("p", PROMPT, SamplingParams(max_tokens=4, ignore_eos=True))
        finished = {}
        while "p" not in finished:
            finished.update({o.request_id: o for o in engine.step() if o.finished})
        assert engine.scheduler.requests["g"].num_computed_tokens == 0
        release.set()
        while engine.has_unfinished_requests():
            finished.update({o.request_id: o for o in engine.step() if o.finished})
    finally:
        engine.structured_output._compile = compile_
        release.set()
    assert re.fullmatch("slow-[0-9]", finished["g"].outputs[0].text)


def test_failed_compilation_aborts_only_that_request(llama_llm):
    engine = llama_llm.engine
    compile_ = engine.structured_output._compile

    def broken(*args):
        raise RuntimeError("out of memory")

    engine.structured_output._compile = broken
    try:
        engine.add_request("bad", PROMPT, SamplingParams(structured_outputs=Guided(regex="broken-[0-9]"), n=2))
    finally:
        engine.structured_output._compile = compile_
    engine.add_request("ok", PROMPT, SamplingParams(max_tokens=4, ignore_eos=True))
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert [c.finish_reason for c in finished["bad"].outputs] == ["abort", "abort"]
    assert finished["ok"].outputs[0].finish_reason == "length"
    engine.structured_output._cache.clear()  # later tests may reuse the regex


def test_abort_and_finish_free_the_matcher(llama_llm):
    engine = llama_llm.engine
    engine.add_request("a", PROMPT, SamplingParams(max_tokens=400, structured_outputs=Guided(json=SCHEMA)))
    engine.add_request("b", PROMPT, SamplingParams(max_tokens=400, structured_outputs=Guided(choice=CHOICES)))
    requests = dict(engine.scheduler.requests)
    while requests["a"].grammar.matcher is None or not requests["a"].output_token_ids:
        engine.step()
    engine.abort_request("a")
    while engine.has_unfinished_requests():
        engine.step()
    assert requests["a"].grammar is None and requests["b"].grammar is None
    assert not engine.scheduler.requests


def test_compiled_grammars_are_cached(llama_llm):
    manager = llama_llm.engine.structured_output
    first = manager.submit(Guided(json=SCHEMA))
    assert manager.submit(Guided(json=dict(SCHEMA))) is first
    assert manager.submit(Guided(json=SCHEMA, backend="llguidance")) is not first


# ---------------------------------------------------------------------------- invalid constraints


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("guided", [
    Guided(json={"type": "foo"}), Guided(json="{not json"), Guided(json='["a list"]'),
    Guided(json={"type": "object", "properties": 5}), Guided(regex="[a-"), Guided(regex="(abc"),
    Guided(grammar='root ::= "a" | undefined_rule'), Guided(grammar="start: missing"), Guided(choice=[]),
], ids=["schema-type", "schema-not-json", "schema-not-object", "schema-properties", "regex-class",
        "regex-group", "ebnf-undefined", "lark-undefined", "choice-empty"])
def test_invalid_constraints_are_input_errors(llama_llm, backend, guided):
    guided.backend = backend
    with pytest.raises(InputError) as info:
        llama_llm.generate(PROMPT, SamplingParams(structured_outputs=guided))
    assert info.value.param == "structured_outputs"
    assert backend in str(info.value)
    assert not llama_llm.engine.has_unfinished_requests()


def test_whitespace_pattern_needs_llguidance(llama_llm):
    with pytest.raises(InputError, match="llguidance"):
        llama_llm.generate(PROMPT, SamplingParams(structured_outputs=Guided(json=SCHEMA, whitespace_pattern=" ")))


@pytest.mark.parametrize("kwargs, param", [
    ({}, "structured_outputs"), ({"regex": "a", "choice": ["a"]}, "structured_outputs"),
    ({"regex": "a", "backend": "outlines"}, "structured_outputs.backend"),
    ({"regex": "a", "whitespace_pattern": " "}, "structured_outputs.whitespace_pattern"),
])
def test_malformed_params(kwargs, param):
    with pytest.raises(SamplingParamError) as info:
        Guided(**kwargs)
    assert info.value.param == param


# ---------------------------------------------------------------------------- the sampler's mask


def test_apply_token_bitmask():
    """Rows map to logits rows; ids beyond the mask's 32 * width are forbidden."""
    logits = torch.zeros(3, 70)
    bitmask = torch.zeros(2, 2, dtype=torch.int32)
    bitmask[0, 0] = 1 << 5
    bitmask[1, 0], bitmask[1, 1] = -(1 << 31), 1  # token 31 (the sign bit) and token 32
    SamplerOps().apply_token_bitmask(logits, bitmask, torch.tensor([2, 0]))
    allowed = [torch.isfinite(row).nonzero().flatten().tolist() for row in logits]
    assert allowed == [[31, 32], list(range(70)), [5]]


# ---------------------------------------------------------------------------- the libraries' grammars


def _matcher(tiny_model, backend: str, spec: Guided):
    from transformers import AutoTokenizer

    from octavo.structured_output.manager import backend_class

    tok = AutoTokenizer.from_pretrained(tiny_model("llama"))
    lib = backend_class(backend)(tok, len(tok), tok.eos_token_id)
    matcher = lib.new_matcher(lib.compile(lib.parse(spec)))
    return tok, lambda ids: [lib.accept([matcher], [t])[0] for t in ids]


TAG = {"triggers": ["<tool_call>"], "structures": [
    {"begin": '<tool_call>\n{"name": "get_time", "arguments": ', "end": "}\n</tool_call>",
     "schema": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_structural_tag_constrains_only_after_its_trigger(tiny_model, backend):
    """Free text, then once `<tool_call>` is written (plain text in this tokenizer) only a call to
    the declared function with valid, compact arguments."""
    tok, accept = _matcher(tiny_model, backend, Guided(structural_tag=json.dumps(TAG), disable_any_whitespace=True))
    good = 'Any text { at all } <tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call> and more'
    assert all(accept(tok(good, add_special_tokens=False).input_ids))
    for bad in ('x <tool_call>\n{"name": "reverse"', 'x <tool_call>\n{"name": "get_time", "arguments": {"zone": "PST"',
                'x <tool_call>\n{"name": "get_time", "arguments": {  "zone"'):
        _, accept = _matcher(tiny_model, backend, Guided(structural_tag=TAG, disable_any_whitespace=True))
        assert not all(accept(tok(bad, add_special_tokens=False).input_ids)), bad


def test_xgrammar_json_strings_refuse_encoded_surrogates(tiny_model):
    """xgrammar's own string class took ED A0 80 (a UTF-8-encoded surrogate, not UTF-8): one
    character to its maxLength, three U+FFFD in the output."""
    from octavo.server.logprobs import _byte_decoder

    schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 4}}, "required": ["s"]}
    char_of = {b: c for c, b in _byte_decoder().items()}
    for spec in (Guided(json=schema), Guided(json=schema, disable_any_whitespace=True)):
        tok, accept = _matcher(tiny_model, "xgrammar", spec)
        head = tok('{"s": "', add_special_tokens=False).input_ids
        surrogate = [tok.convert_tokens_to_ids(char_of[b]) for b in (0xED, 0xA0, 0x80)]
        assert all(accept(head))
        assert accept(surrogate)[:2] == [True, False]  # ED may begin a character; ED A0 begins a surrogate
