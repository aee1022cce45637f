"""POST /v1/chat/completions: messages -> chat template -> completion, streamed or not.

Each choice's text goes through a `ChoiceParser`: the reasoning parser (`--reasoning-parser`)
takes the think block, then the tool-call extractor finds calls in the content after it.
A streamed chunk carries at most one tool-call entry (OpenAI's streams do; LlamaIndex reads
only the first entry of a chunk, the openai SDK's stream helper merges entries by index).
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import aclosing
from collections.abc import AsyncIterator

from fastapi import Request

from octavo.server import chat_template, sampling
from octavo.server.errors import bad_request
from octavo.server.logprobs import chat_logprobs, prompt_logprobs
from octavo.server.protocol import (ChatChoiceLogprobs, ChatCompletionChoice, ChatCompletionRequest,
                                    ChatCompletionResponse, ChatResponseMessage, UsageInfo)
from octavo.server.reasoning_parsers import ReasoningParser
from octavo.server.serving_common import (DONE, check_token_ids, encode, new_request_id, sse_chunk, sse_error,
                                          streaming_response, usage, warn_unknown_fields)
from octavo.server.state import ServerState
from octavo.server.tool_calls import Extracted, ToolCallExtractor, ToolPlan, legacy_functions, plan_tools, with_tools
from octavo.server.tracking import EngineStream, merge, start_all, unless_disconnected

ENDPOINT = "/v1/chat/completions"


def _check(req: ChatCompletionRequest) -> None:
    sampling.check_common(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
    if req.top_logprobs is not None and req.top_logprobs < 0:
        raise bad_request(f"top_logprobs must be non-negative, got {req.top_logprobs}", "top_logprobs")
    if req.max_completion_tokens is not None and req.max_completion_tokens < 1:
        raise bad_request(f"max_completion_tokens must be at least 1, got {req.max_completion_tokens}",
                          "max_completion_tokens")


def render_prompt(state: ServerState, req, tools: list[dict] | None = None) -> tuple[list[dict], str, list[int]]:
    """The conversation, its prompt text and token ids (shared with /tokenize). Slow (a Jinja
    template, the tokenizer): run it with `state.run_blocking`."""
    if req.chat_template is not None and not state.settings.trust_request_chat_template:
        raise bad_request("this server runs only its own chat template: chat_template in a request is refused "
                          "unless the server is started with --trust-request-chat-template", "chat_template")
    template = req.chat_template or state.settings.chat_template
    conv = chat_template.conversation(req.messages, template or getattr(state.tokenizer, "chat_template", None))
    text = chat_template.render(
        state.tokenizer, conv, chat_template=template,
        add_generation_prompt=req.add_generation_prompt is not False,
        continue_final_message=bool(req.continue_final_message), tools=tools if tools is not None else req.tools,
        documents=getattr(req, "documents", None), template_kwargs=req.chat_template_kwargs)
    ids = encode(state.tokenizer, text, bool(req.add_special_tokens), "messages")
    return conv, text, ids


@dataclasses.dataclass(slots=True)
class ChatJobSpec:
    """What a chat request asks for, after its checks: shared by /v1/chat/completions and /v1/responses."""

    model: str
    prompt: str
    prompt_ids: list[int]
    role: str
    echo: str
    tools: ToolPlan
    legacy_functions: bool
    stream: EngineStream


async def start_chat(state: ServerState, req: ChatCompletionRequest, endpoint: str = ENDPOINT,
                     request_id: str | None = None) -> ChatJobSpec:
    """Check, render and submit `req`; errors are 400s raised before any output."""
    model = state.check_model(req.model)
    state.check_runner("generate")
    warn_unknown_fields(req, endpoint)
    _check(req)
    tools, tool_choice, legacy = legacy_functions(req.tools, req.tool_choice, req.functions, req.function_call)
    parallel = False if legacy else req.parallel_tool_calls
    plan = plan_tools(tools, tool_choice, parallel, state.settings.tool_parser)
    conv, text, ids = await state.run_blocking(render_prompt, state, req, tools)
    check_token_ids(ids, state.vocab_size, "messages")
    ids = sampling.truncate(ids, req.truncate_prompt_tokens, state.max_model_len)
    if req.max_completion_tokens is not None:
        max_tokens, param = req.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, param = req.max_tokens, "max_tokens"
    sampling.check_context(len(ids), max_tokens, state.max_model_len, param)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    guided, guided_param = sampling.structured_outputs(req, state.settings.disable_any_whitespace)
    params = sampling.build(req, max_tokens=max_tokens, logprobs=logprobs,
                            stream=bool(req.stream), structured_outputs=guided,
                            defaults=state.generation_defaults)
    params = sampling.after_reasoning(with_tools(params, plan), state.reasoning_end_ids(text))
    role = state.settings.response_role if req.add_generation_prompt is not False else conv[-1]["role"]
    echo = ""
    if req.echo and conv[-1].get("role") == role:
        echo = conv[-1].get("content") or ""
    request_id = request_id or new_request_id("chatcmpl")
    stream = EngineStream(state.engine, {"prompt_token_ids": ids}, params, request_id, state.metrics,
                          state.settings.log_requests, endpoint)
    with sampling.guided_errors(guided_param):
        await start_all([stream])
    return ChatJobSpec(model, text, ids, role, echo, plan, legacy, stream)


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, raw: Request, request_id: str):
    spec = await start_chat(state, req, request_id=request_id)
    job = ChatJob(state, req, spec)
    if req.stream:
        return streaming_response(job.stream())
    return await unless_disconnected(raw, job.full())


class ChoiceParser:
    """One choice's text -> reasoning, content and tool calls; streamed deltas add up to `full`."""

    def __init__(self, reasoning: ReasoningParser | None, tools: ToolCallExtractor):
        self.reasoning, self.tools = reasoning, tools

    def full(self, text: str) -> Extracted:
        reasoning, content = self.reasoning.split(text) if self.reasoning is not None else (None, text)
        found = self.tools.full(content) if content is not None else Extracted()
        found.reasoning = reasoning
        return found

    def stream(self, delta_text: str, finished: bool) -> Extracted:
        if self.reasoning is None:
            reasoning, content = "", delta_text
        else:
            reasoning, content = self.reasoning.stream(delta_text)
            if finished:
                more = self.reasoning.finish()
                reasoning, content = reasoning + more[0], content + more[1]
        found = self.tools.stream(content) if content else Extracted()
        if finished:
            rest = self.tools.finish()
            found = Extracted((found.content or "") + (rest.content or "") or None, found.tool_calls + rest.tool_calls)
        found.reasoning = reasoning or None
        return found


def delta_parts(found: Extracted, legacy_functions: bool = False) -> list[dict]:
    """The stream deltas of one choice's new output: reasoning, content, then one per tool-call entry."""
    parts: list[dict] = []
    if found.reasoning:
        parts.append({"reasoning": found.reasoning, "reasoning_content": found.reasoning})
    if found.content:
        parts.append({"content": found.content})
    for call in found.tool_calls:
        if legacy_functions:
            function = call["function"]
            parts.append({"function_call": {k: v for k, v in function.items() if v is not None}})
        else:
            parts.append({"tool_calls": [call]})
    return parts


class ChatJob:
    def __init__(self, state: ServerState, req: ChatCompletionRequest, spec: ChatJobSpec):
        self.state, self.req, self.spec = state, req, spec
        self.model, self.request_id = spec.model, spec.stream.request_id
        self.engine_stream, self.role, self.echo = spec.stream, spec.role, spec.echo
        self.prompt_tokens = len(spec.prompt_ids)
        self.n = req.n or 1
        reasoning = state.settings.reasoning_parser
        self.parsers = {i: ChoiceParser(reasoning.for_prompt(spec.prompt) if reasoning is not None else None,
                                        spec.tools.extractor()) for i in range(self.n)}
        self.created = int(time.time())

    def _logprobs(self, token_ids, positions) -> list | None:
        if not self.req.logprobs:
            return None
        return chat_logprobs(self.state.token_texts(self.req), token_ids, positions or [], self.req.top_logprobs or 0)

    def finish_reason(self, index: int, reason: str | None) -> str | None:
        reason = self.parsers[index].tools.finish_reason(reason)
        return "function_call" if self.spec.legacy_functions and reason == "tool_calls" else reason

    async def final_output(self):
        final = None
        async with aclosing(merge([self.engine_stream])) as outputs:
            async for _, out in outputs:
                final = out
        return final

    async def full(self) -> ChatCompletionResponse:
        final = await self.final_output()
        choices, completion_tokens = [], 0
        for c in final.outputs:
            completion_tokens += len(c.token_ids)
            content = self._logprobs(c.token_ids, c.logprobs)
            found = self.parsers[c.index].full(c.text)
            text = self.echo + found.content if found.content is not None else None
            message = ChatResponseMessage(role=self.role, content=text, reasoning=found.reasoning,
                                          reasoning_content=found.reasoning, tool_calls=found.tool_calls)
            if self.spec.legacy_functions and found.tool_calls:
                message.function_call, message.tool_calls = found.tool_calls[0]["function"], []
            choices.append(ChatCompletionChoice(
                index=c.index, message=message,
                logprobs=ChatChoiceLogprobs(content=content) if content is not None else None,
                finish_reason=self.finish_reason(c.index, c.finish_reason),
                stop_reason=c.stop_reason,
                token_ids=list(c.token_ids) if self.req.return_token_ids else None))
        choices.sort(key=lambda c: c.index)
        return ChatCompletionResponse(
            id=self.request_id, created=self.created, model=self.model, choices=choices,
            usage=UsageInfo(**usage(self.prompt_tokens, completion_tokens, final.num_cached_tokens)),
            prompt_logprobs=prompt_logprobs(final.prompt_logprobs) if self.req.prompt_logprobs is not None
            else None,
            prompt_token_ids=final.prompt_token_ids if self.req.return_token_ids else None)

    def _chunk(self, choices: list[dict], usage_info: dict | None = None) -> str:
        return sse_chunk("chat.completion.chunk", self.request_id, self.created, self.model, choices, usage_info)

    async def deltas(self) -> AsyncIterator[tuple[object, Extracted]]:
        """(engine delta, what it adds to its choice) as they come; the engine request is aborted
        however the iteration ends."""
        outputs = merge([self.engine_stream])
        try:
            async for _, out in outputs:
                for c in out.outputs:
                    yield c, self.parsers[c.index].stream(c.text, c.finish_reason is not None)
        finally:
            await outputs.aclose()
            await self.engine_stream.close()

    async def stream(self) -> AsyncIterator[str]:
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        self._continuous = bool(opts and opts.continuous_usage_stats)
        self._tokens = {i: 0 for i in range(self.n)}
        try:
            try:
                for i in range(self.n):  # the role first, before any token
                    yield self._choice_chunk(i, {"role": self.role, "content": ""})
                    if self.echo:
                        yield self._choice_chunk(i, {"content": self.echo})
                async with aclosing(self.deltas()) as deltas:
                    async for c, found in deltas:
                        for chunk in self._stream_chunks(c, found):
                            yield chunk
                if include_usage:
                    yield self._chunk([], usage(self.prompt_tokens, sum(self._tokens.values())))
            except Exception as exc:  # the stream has started: report in-band, then end it
                yield sse_error(exc, self.request_id)
            yield DONE
        finally:  # however the stream ends (client gone included): abort what still runs
            await self.engine_stream.close()

    def _live_usage(self, index: int) -> dict | None:
        return usage(self.prompt_tokens, self._tokens[index]) if self._continuous else None

    def _choice_chunk(self, index: int, delta: dict) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._chunk([choice], self._live_usage(index))

    def _stream_chunks(self, c, found: Extracted) -> list[str]:
        """The SSE events for one sequence's delta: none when there is nothing to send, else one per
        delta part; logprobs and token ids go with the first, the finish reason with the last."""
        self._tokens[c.index] = self._tokens.get(c.index, 0) + len(c.token_ids)
        parts = delta_parts(found, self.spec.legacy_functions)
        if c.finish_reason is None and not parts and not (c.token_ids and (self.req.logprobs or self.req.return_token_ids)):
            return []  # text held back (partial character, stop string, tool call): nothing to send
        content = self._logprobs(c.token_ids, c.logprobs)
        parts = parts or [{}]
        chunks = []
        for j, part in enumerate(parts):
            last = j == len(parts) - 1
            choice = {"index": c.index, "delta": part,
                      "logprobs": {"content": content} if content is not None and j == 0 else None,
                      "finish_reason": self.finish_reason(c.index, c.finish_reason) if last else None}
            if last and c.finish_reason is not None:
                choice["stop_reason"] = c.stop_reason
            if self.req.return_token_ids and j == 0:
                choice["token_ids"] = list(c.token_ids)
            chunks.append(self._chunk([choice], self._live_usage(c.index)))
        return chunks
