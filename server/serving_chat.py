"""POST /v1/chat/completions: messages -> chat template -> completion, streamed or not."""
from __future__ import annotations

import time
from contextlib import aclosing
from collections.abc import AsyncIterator

from fastapi import Request

from octavo.server import chat_template, sampling
from octavo.server.errors import bad_request
from octavo.server.logprobs import chat_logprobs, prompt_logprobs
from octavo.server.protocol import (ChatChoiceLogprobs, ChatCompletionChoice, ChatCompletionRequest,
                                    ChatCompletionResponse, ChatResponseMessage, UsageInfo)
from octavo.server.serving_common import (DONE, check_token_ids, encode, sse_chunk, sse_error,
                                          streaming_response, usage, warn_unknown_fields)
from octavo.server.state import ServerState
from octavo.server.tool_calls import Extracted, ToolPlan, plan_tools, with_tools
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


def render_prompt(state: ServerState, req) -> tuple[list[dict], list[int]]:
    """The conversation and its prompt token ids (shared with /tokenize). Slow (a Jinja
    template, the tokenizer): run it with `state.run_blocking`."""
    if req.chat_template is not None and not state.settings.trust_request_chat_template:
        raise bad_request("this server runs only its own chat template: chat_template in a request is refused "
                          "unless the server is started with --trust-request-chat-template", "chat_template")
    conv = chat_template.conversation(req.messages)
    text = chat_template.render(
        state.tokenizer, conv, chat_template=req.chat_template or state.settings.chat_template,
        add_generation_prompt=req.add_generation_prompt is not False,
        continue_final_message=bool(req.continue_final_message), tools=req.tools,
        documents=getattr(req, "documents", None), template_kwargs=req.chat_template_kwargs)
    ids = encode(state.tokenizer, text, bool(req.add_special_tokens), "messages")
    return conv, ids


async def create_chat_completion(state: ServerState, req: ChatCompletionRequest, raw: Request, request_id: str):
    model = state.check_model(req.model)
    warn_unknown_fields(req, ENDPOINT)
    _check(req)
    tools = plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls, state.settings.tool_parser)
    conv, ids = await state.run_blocking(render_prompt, state, req)
    check_token_ids(ids, state.vocab_size, "messages")
    ids = sampling.truncate(ids, req.truncate_prompt_tokens, state.max_model_len)
    if req.max_completion_tokens is not None:
        max_tokens, param = req.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, param = req.max_tokens, "max_tokens"
    sampling.check_context(len(ids), max_tokens, state.max_model_len, param)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    guided, guided_param = sampling.structured_outputs(req)
    params = sampling.build(req, max_tokens=max_tokens, logprobs=logprobs, stream=bool(req.stream),
                            structured_outputs=guided)
    params = with_tools(params, tools)
    role = state.settings.response_role if req.add_generation_prompt is not False else conv[-1]["role"]
    echo = ""
    if req.echo and conv[-1].get("role") == role:
        echo = conv[-1].get("content") or ""
    stream = EngineStream(state.engine, {"prompt_token_ids": ids}, params, request_id, state.metrics,
                          state.settings.log_requests, ENDPOINT)
    with sampling.guided_errors(guided_param):
        await start_all([stream])
    job = _Chat(state, req, model, request_id, stream, role, echo, len(ids), tools)
    if req.stream:
        return streaming_response(job.stream())
    return await unless_disconnected(raw, job.full())


class _Chat:
    def __init__(self, state: ServerState, req: ChatCompletionRequest, model: str, request_id: str,
                 engine_stream: EngineStream, role: str, echo: str, prompt_tokens: int, tools: ToolPlan):
        self.state, self.req, self.model, self.request_id = state, req, model, request_id
        self.engine_stream, self.role, self.echo, self.prompt_tokens = engine_stream, role, echo, prompt_tokens
        self.n = req.n or 1
        self.extractors = {i: tools.extractor() for i in range(self.n)}
        self.created = int(time.time())

    def _logprobs(self, token_ids, positions) -> list | None:
        if not self.req.logprobs:
            return None
        return chat_logprobs(self.state.tokenizer, token_ids, positions or [], self.req.top_logprobs or 0)

    async def full(self) -> ChatCompletionResponse:
        final = None
        async with aclosing(merge([self.engine_stream])) as outputs:
            async for _, out in outputs:
                final = out
        choices, completion_tokens = [], 0
        for c in final.outputs:
            completion_tokens += len(c.token_ids)
            content = self._logprobs(c.token_ids, c.logprobs)
            extractor = self.extractors[c.index]
            found = extractor.full(c.text)
            text = self.echo + found.content if found.content is not None else None
            choices.append(ChatCompletionChoice(
                index=c.index, message=ChatResponseMessage(role=self.role, content=text, tool_calls=found.tool_calls),
                logprobs=ChatChoiceLogprobs(content=content) if content is not None else None,
                finish_reason=extractor.finish_reason(c.finish_reason),
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

    async def stream(self) -> AsyncIterator[str]:
        opts = self.req.stream_options
        include_usage = bool(opts and opts.include_usage)
        self._continuous = bool(opts and opts.continuous_usage_stats)
        self._tokens = {i: 0 for i in range(self.n)}
        outputs = merge([self.engine_stream])
        try:
            try:
                for i in range(self.n):  # the role first, before any token
                    yield self._choice_chunk(i, {"role": self.role, "content": ""})
                    if self.echo:
                        yield self._choice_chunk(i, {"content": self.echo})
                async for _, out in outputs:
                    for c in out.outputs:
                        chunk = self._stream_chunk(c)
                        if chunk is not None:
                            yield chunk
                if include_usage:
                    yield self._chunk([], usage(self.prompt_tokens, sum(self._tokens.values())))
            except Exception as exc:  # the stream has started: report in-band, then end it
                yield sse_error(exc, self.request_id)
            yield DONE
        finally:  # however the stream ends (client gone included): abort what still runs
            await outputs.aclose()
            await self.engine_stream.close()

    def _live_usage(self, index: int) -> dict | None:
        return usage(self.prompt_tokens, self._tokens[index]) if self._continuous else None

    def _choice_chunk(self, index: int, delta: dict) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._chunk([choice], self._live_usage(index))

    def _stream_chunk(self, c) -> str | None:
        """The SSE event for one sequence's delta, or None when there is nothing to send."""
        self._tokens[c.index] = self._tokens.get(c.index, 0) + len(c.token_ids)
        delta, finish_reason = self._delta(c)
        if c.finish_reason is None and not delta and not (c.token_ids and (self.req.logprobs or self.req.return_token_ids)):
            return None  # text held back (partial character, stop string, tool call): nothing to send
        content = self._logprobs(c.token_ids, c.logprobs)
        choice = {"index": c.index, "delta": delta,
                  "logprobs": {"content": content} if content is not None else None,
                  "finish_reason": finish_reason}
        if c.finish_reason is not None:
            choice["stop_reason"] = c.stop_reason
        if self.req.return_token_ids:
            choice["token_ids"] = list(c.token_ids)
        return self._chunk([choice], self._live_usage(c.index))

    def _delta(self, c) -> tuple[dict, str | None]:
        """The OpenAI delta of this text and the finish reason; tool calls come out of the text."""
        extractor = self.extractors[c.index]
        found = extractor.stream(c.text)
        if c.finish_reason is not None:
            rest = extractor.finish()
            found = Extracted((found.content or "") + (rest.content or "") or None, found.tool_calls + rest.tool_calls)
        delta: dict = {"content": found.content} if found.content else {}
        if found.tool_calls:
            delta["tool_calls"] = found.tool_calls
        return delta, extractor.finish_reason(c.finish_reason)
