"""From an API request to the engine's SamplingParams, with every range checked.

SamplingParams itself checks what it owns (temperature finite and >= 0, top_p in (0, 1],
seeds within 64 bits, ...) and the engine what needs the model (token ids within the
vocabulary, top_k); here go the checks of the context length and the limits the API adds
(logit_bias in [-100, 100], n and best_of <= 128).
"""
from __future__ import annotations

import contextlib
import dataclasses

from octavo.engine.llm_engine import InputError
from octavo.sampling_params import RequestOutputKind, SamplingParamError, SamplingParams
from octavo.structured_output import StructuredOutputParams

from octavo.server.errors import bad_request
from octavo.server.protocol import SamplingRequest

MAX_N = 128  # sequences per prompt: n, and best_of
MAX_PROMPTS = 256  # prompts in one completions request


def check_num_sequences(value: int | None, param: str) -> None:
    if value is not None and not 1 <= value <= MAX_N:
        raise bad_request(f"{param} must be in [1, {MAX_N}], got {value}", param)


def logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if not bias:
        return None
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            tid = int(key)
        except (TypeError, ValueError):
            raise bad_request(f"logit_bias keys must be token ids, got {key!r}", "logit_bias") from None
        if not -100.0 <= value <= 100.0:
            raise bad_request(f"logit_bias values must be in [-100, 100], got {value}", "logit_bias")
        out[tid] = float(value)
    return out


def check_context(prompt_len: int, max_tokens: int | None, max_model_len: int,
                  param: str = "max_tokens") -> None:
    """400 when the prompt (plus the requested completion) does not fit the context."""
    if prompt_len >= max_model_len:
        raise bad_request(f"This model's maximum context length is {max_model_len} tokens. However, your "
                          f"prompt has {prompt_len} tokens, and at least one token must be left for the "
                          "completion. Please reduce the length of the prompt.",
                          "prompt" if param == "max_tokens" else "messages", "context_length_exceeded")
    if max_tokens is not None and prompt_len + max_tokens > max_model_len:
        raise bad_request(f"This model's maximum context length is {max_model_len} tokens. However, you "
                          f"requested {prompt_len + max_tokens} tokens ({prompt_len} in the prompt, "
                          f"{max_tokens} for the completion). Please reduce the length of the prompt "
                          f"or of the completion.", param, "context_length_exceeded")


def truncate(ids: list[int], truncate_prompt_tokens: int | None, max_model_len: int) -> list[int]:
    """Keep the last `truncate_prompt_tokens` tokens (-1: the context length), as vLLM."""
    k = truncate_prompt_tokens
    if k is None:
        return ids
    if k == -1:
        k = max_model_len
    if k < 1:
        raise bad_request(f"truncate_prompt_tokens must be -1 or at least 1, got {k}", "truncate_prompt_tokens")
    if k > max_model_len:
        raise bad_request(f"truncate_prompt_tokens ({k}) must be at most the context length ({max_model_len})",
                          "truncate_prompt_tokens")
    return ids[-k:]


def check_common(req: SamplingRequest) -> None:
    """Checks that do not depend on the prompt (run before tokenizing)."""
    check_num_sequences(req.n, "n")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options can only be set when stream is true", "stream_options")
    if req.prompt_logprobs is not None and req.stream:
        raise bad_request("prompt_logprobs is not available when streaming", "prompt_logprobs")


_GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}
_GUIDED_OPTIONS = {"structured_outputs.whitespace_pattern": "guided_whitespace_pattern",
                   "structured_outputs.backend": "guided_decoding_backend"}
# vLLM's `structured_outputs` request field: one constraint and its options.
SO_KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
SO_OPTIONS = ("disable_any_whitespace", "whitespace_pattern", "backend", "disable_additional_properties",
              "disable_fallback")


def structured_outputs(req: SamplingRequest, disable_any_whitespace: bool = False
                       ) -> tuple[StructuredOutputParams | None, str | None]:
    """The request's guided-decoding constraint and the API field it came from (None, None
    without one); 400 for more than one, or a malformed one. Three forms are accepted:
    OpenAI's `response_format`, vLLM's `structured_outputs` and its older `guided_*` fields."""
    so = _so_options(req.structured_outputs)
    found: dict[str, dict] = {}
    if req.response_format is not None and req.response_format.type != "text":
        found["response_format"] = _response_format(req.response_format)
    found.update({f"structured_outputs.{kind}": {kind: so[kind]} for kind in SO_KINDS
                  if so.get(kind) not in (None, False)})
    found.update({name: {kind: getattr(req, name)} for name, kind in _GUIDED_FIELDS.items()
                  if getattr(req, name) is not None})
    if len(found) > 1:
        raise bad_request(f"only one guided-decoding constraint per request, got {', '.join(found)}",
                          list(found)[1])
    if not found:
        return None, None
    [(param, constraint)] = found.items()
    backend, compact = _backend_option(so.get("backend") or req.guided_decoding_backend)
    if so.get("disable_any_whitespace") is not None:
        compact = bool(so["disable_any_whitespace"])
    whitespace = so.get("whitespace_pattern") or req.guided_whitespace_pattern
    if compact is None:  # the server's default; a request's own whitespace pattern wins over it
        compact = disable_any_whitespace and whitespace is None and param != "structured_outputs.structural_tag"
    if so.get("disable_additional_properties") and "json" in constraint:
        constraint["strict"] = True
    try:
        return StructuredOutputParams(**constraint, whitespace_pattern=whitespace, backend=backend,
                                      disable_any_whitespace=compact), param
    except SamplingParamError as exc:
        name = _GUIDED_OPTIONS.get(exc.param, param)
        if exc.param.startswith("structured_outputs.") and req.structured_outputs is not None:
            name = exc.param
        raise bad_request(f"{name} {str(exc).removeprefix(exc.param).strip()}", name) from None


def _so_options(value: dict | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("structured_outputs must be an object", "structured_outputs")
    unknown = sorted(set(value) - set(SO_KINDS) - set(SO_OPTIONS))
    if unknown:
        raise bad_request(f"structured_outputs has no field {unknown[0]!r}; it takes one of "
                          f"{', '.join(SO_KINDS)} and the options {', '.join(SO_OPTIONS)}",
                          f"structured_outputs.{unknown[0]}")
    return value


def _backend_option(value: str | None) -> tuple[str | None, bool | None]:
    """vLLM's older `backend:option,...` form ("xgrammar:disable-any-whitespace")."""
    if value is None or ":" not in value:
        return value, None
    backend, options = value.split(":", 1)
    flags = {o.strip() for o in options.split(",") if o.strip()}
    unknown = flags - {"disable-any-whitespace", "no-fallback"}
    if unknown:
        raise bad_request(f"unknown guided decoding backend option {sorted(unknown)[0]!r}", "guided_decoding_backend")
    return backend or None, True if "disable-any-whitespace" in flags else None


def after_reasoning(params: SamplingParams, reasoning_end_ids: tuple[int, ...] | None) -> SamplingParams:
    """A reasoning model's constraint starts after its think block (vLLM's reasoning-aware
    structured output): `reasoning_end_ids` is None where the reply cannot reason."""
    if params.structured_outputs is None or reasoning_end_ids is None:
        return params
    return dataclasses.replace(params, structured_outputs=dataclasses.replace(
        params.structured_outputs, reasoning_end_ids=reasoning_end_ids))


def _response_format(fmt) -> dict:
    if fmt.type == "json_object":
        return {"json_object": True}
    if fmt.type != "json_schema":
        raise bad_request(f"response_format type must be 'text', 'json_object' or 'json_schema', got {fmt.type!r}",
                          "response_format")
    if fmt.json_schema is None or fmt.json_schema.json_schema is None:
        raise bad_request("response_format of type 'json_schema' needs json_schema.schema", "response_format")
    spec = {"json": fmt.json_schema.json_schema}
    if fmt.json_schema.strict is not None:
        spec["strict"] = fmt.json_schema.strict
    return spec


@contextlib.contextmanager
def guided_errors(param: str | None):
    """The engine calls a bad constraint `structured_outputs`; the client knows it by its field."""
    try:
        yield
    except InputError as exc:
        if param is None or exc.param != "structured_outputs":
            raise
        raise bad_request(str(exc), param) from None


def build(req: SamplingRequest, *, max_tokens: int | None, logprobs: int | None,
          stream: bool, best_of: int | None = None, prompt_logprobs: int | None = None,
          structured_outputs: StructuredOutputParams | None = None,
          defaults: dict[str, float] | None = None) -> SamplingParams:
    """SamplingParams for `req`; range errors become 400s naming the parameter. `defaults`
    (the model's generation config) fill the sampling fields the request leaves unset."""
    stop = req.stop
    if isinstance(stop, str):
        stop = [stop]
    defaults = defaults or {}

    def pick(name: str, fallback):
        value = getattr(req, name)
        return value if value is not None else defaults.get(name, fallback)

    if max_tokens is None and "max_tokens" in defaults:
        max_tokens = defaults["max_tokens"]
    return SamplingParams(
        n=req.n or 1,
        best_of=best_of,
        temperature=pick("temperature", 1.0),
        top_p=pick("top_p", 1.0),
        top_k=pick("top_k", 0),
        min_p=pick("min_p", 0.0),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=pick("repetition_penalty", 1.0),
        seed=req.seed,
        stop=list(stop or []),
        stop_token_ids=list(req.stop_token_ids or []),
        include_stop_str_in_output=bool(req.include_stop_str_in_output),
        ignore_eos=bool(req.ignore_eos),
        max_tokens=max_tokens,
        min_tokens=req.min_tokens or 0,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs if prompt_logprobs is not None else req.prompt_logprobs,
        logit_bias=logit_bias(req.logit_bias),
        allowed_token_ids=None if req.allowed_token_ids is None else list(req.allowed_token_ids),
        skip_special_tokens=req.skip_special_tokens is not False,
        spaces_between_special_tokens=req.spaces_between_special_tokens is not False,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
        structured_outputs=structured_outputs,
    )
