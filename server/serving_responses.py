"""POST /v1/responses (OpenAI's Responses API), stateless, mapped onto the chat path.

`input` (text, or items: messages, function calls and their outputs), `instructions`, `tools`
(function tools), `tool_choice`, `text.format` and the sampling fields become a chat request;
the chat job's parsed output (reasoning, content, tool calls) becomes output items: a
`reasoning` item, a `message` with `output_text`, `function_call` items. Streaming sends the
documented event sequence (response.created ... response.completed), each event numbered.
Nothing is stored: `store: true` and `previous_response_id` get a 400.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import Request

from octavo.server.errors import bad_request, from_exception
from octavo.server.protocol import ChatCompletionRequest, ResponsesRequest
from octavo.server.serving_chat import ChatJob, delta_parts, start_chat
from octavo.server.serving_common import new_request_id, streaming_response
from octavo.server.state import ServerState
from octavo.server.tracking import unless_disconnected

ENDPOINT = "/v1/responses"
_PASSED = ("temperature", "top_p", "seed", "top_k", "min_p", "repetition_penalty", "logit_bias", "stop",
           "chat_template_kwargs", "parallel_tool_calls", "user")


async def create_response(state: ServerState, req: ResponsesRequest, raw: Request):
    chat = to_chat_request(req)
    response_id = new_request_id("resp")
    spec = await start_chat(state, chat, ENDPOINT, response_id)
    job = ChatJob(state, chat, spec)
    shape = _Shape(req, spec.model, response_id)
    if req.stream:
        return streaming_response(_Events(job, shape).stream())
    result = await unless_disconnected(raw, job.full())
    choice = result.choices[0]
    message = choice.message
    items = []
    if message.reasoning:
        items.append(shape.reasoning_item(message.reasoning))
    if message.content:
        items.append(shape.message_item(message.content))
    items += [shape.call_item(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message.tool_calls]
    return shape.response(items, choice.finish_reason, result.usage.model_dump())


def to_chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    if req.previous_response_id is not None:
        raise bad_request("previous_response_id needs stored responses, which this server does not keep: "
                          "send the whole conversation as input", "previous_response_id")
    if req.store:
        raise bad_request("this server keeps no responses: send store=false (or leave it out)", "store")
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + _messages(req.input)
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": bool(req.stream),
                            "max_completion_tokens": req.max_output_tokens}
    body.update({k: getattr(req, k) for k in _PASSED if getattr(req, k) is not None})
    if req.tools is not None:
        body["tools"] = [_chat_tool(t, i) for i, t in enumerate(req.tools)]
    if req.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(req.tool_choice)
    fmt = (req.text or {}).get("format")
    if fmt is not None:
        body["response_format"] = _response_format(fmt)
    return ChatCompletionRequest(**body)


def _messages(items: str | list[dict]) -> list[dict]:
    """Input items as chat messages; consecutive function calls become one assistant message."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = "\n".join(_text_part(p, i) for p in content)
            messages.append({"role": item.get("role", "user"), "content": content})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            if messages and messages[-1]["role"] == "assistant" and messages[-1].get("tool_calls"):
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": output if isinstance(output, str) else json.dumps(output)})
        elif kind != "reasoning":  # earlier reasoning is not sent back to the model
            raise bad_request(f"input[{i}]: items of type {kind!r} are not supported here", f"input[{i}]")
    if not messages:
        raise bad_request("input must hold at least one message", "input")
    return messages


def _text_part(part: dict, i: int) -> str:
    if part.get("type") not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
        raise bad_request(f"input[{i}].content: only text parts are supported by this text-only model",
                          f"input[{i}].content")
    return part["text"]


def _chat_tool(tool: dict, i: int) -> dict:
    if tool.get("type") != "function":
        raise bad_request(f"tools[{i}]: only function tools are supported, got {tool.get('type')!r}", f"tools[{i}]")
    function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict) -> str | dict:
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise bad_request('a named tool_choice is {"type": "function", "name": ...}', "tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(fmt: dict) -> dict:
    kind = fmt.get("type")
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": fmt.get("name"), "schema": fmt.get("schema"),
                                                       "strict": fmt.get("strict")}}
    if kind in ("json_object", "text"):
        return {"type": kind}
    raise bad_request(f"text.format type must be 'text', 'json_object' or 'json_schema', got {kind!r}", "text.format")


class _Shape:
    """The Responses API's objects for one response."""

    def __init__(self, req: ResponsesRequest, model: str, response_id: str):
        self.req, self.model, self.id = req, model, response_id
        self.created_at = int(time.time())

    def reasoning_item(self, text: str, status: str = "completed") -> dict:
        return {"type": "reasoning", "id": new_request_id("rs"), "summary": [],
                "content": [{"type": "reasoning_text", "text": text}], "status": status}

    def message_item(self, text: str, status: str = "completed") -> dict:
        return {"type": "message", "id": new_request_id("msg"), "role": "assistant", "status": status,
                "content": [_text_part_out(text)]}

    def call_item(self, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
        return {"type": "function_call", "id": new_request_id("fc"), "call_id": call_id, "name": name,
                "arguments": arguments, "status": status}

    def response(self, output: list[dict], finish_reason: str | None, usage: dict | None,
                 status: str | None = None) -> dict:
        req = self.req
        incomplete = finish_reason == "length"
        fmt = (req.text or {}).get("format") or {"type": "text"}
        body = {
            "id": self.id, "object": "response", "created_at": self.created_at, "model": self.model,
            "status": status or ("incomplete" if incomplete else "completed"), "output": output,
            "error": None, "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": None,
            "reasoning": req.reasoning, "store": False, "temperature": req.temperature, "top_p": req.top_p,
            "text": {"format": fmt}, "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
            "truncation": "disabled", "metadata": req.metadata or {}, "user": req.user,
        }
        if usage is not None:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            body["usage"] = {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": cached},
                             "output_tokens": usage["completion_tokens"],
                             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": usage["total_tokens"]}
        return body


def _text_part_out(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class _Events:
    """The streamed event sequence: each output item opens (output_item.added), grows by deltas
    and closes (..._done, output_item.done) before the next one opens."""

    def __init__(self, job: ChatJob, shape: _Shape):
        self.job, self.shape = job, shape
        self.seq = 0
        self.output: list[dict] = []
        self.item: dict | None = None  # the open item
        self.text = ""  # what the open item has received

    def _event(self, kind: str, **fields) -> str:
        fields = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(fields, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def stream(self) -> AsyncIterator[str]:
        finish, completion_tokens = None, 0
        yield self._event("response.created", response=self.shape.response([], None, None, "in_progress"))
        yield self._event("response.in_progress", response=self.shape.response([], None, None, "in_progress"))
        try:
            async with aclosing(self.job.deltas()) as deltas:
                async for c, found in deltas:
                    completion_tokens += len(c.token_ids)
                    for part in delta_parts(found):
                        for event in self._part(part):
                            yield event
                    finish = c.finish_reason or finish
            for event in self._close():
                yield event
        except Exception as exc:  # the stream has started: report in-band
            error = from_exception(exc).body()["error"]
            yield self._event("error", code=error["code"], message=error["message"], param=error["param"])
            return
        finally:  # however the stream ends (client gone included): abort what still runs
            await self.job.engine_stream.close()
        prompt = len(self.job.spec.prompt_ids)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                 "total_tokens": prompt + completion_tokens}
        response = self.shape.response(self.output, self.job.finish_reason(0, finish), usage)
        # An incomplete response (max_output_tokens) ends with response.completed too, its status
        # "incomplete", as vLLM does: the openai SDK's stream helper waits for that event.
        yield self._event("response.completed", response=response)

    def _part(self, part: dict) -> list[str]:
        if "reasoning" in part:
            return self._grow("reasoning", part["reasoning"])
        if "content" in part:
            return self._grow("message", part["content"])
        [call] = part["tool_calls"]
        if "id" in call:
            events = self._close()
            self.item = self.shape.call_item(call["id"], call["function"]["name"], "", "in_progress")
            return events + [self._added()]
        return self._grow("function_call", call["function"]["arguments"])

    def _grow(self, kind: str, delta: str) -> list[str]:
        events = []
        if self.item is None or self.item["type"] != kind:
            events += self._close()
            if kind == "reasoning":
                self.item = self.shape.reasoning_item("", "in_progress")
                self.item["content"] = []
                events.append(self._added())
            else:
                self.item = self.shape.message_item("", "in_progress")
                self.item["content"] = []
                events.append(self._added())
                events.append(self._event("response.content_part.added", item_id=self.item["id"],
                                          output_index=len(self.output), content_index=0,
                                          part=_text_part_out("")))
        self.text += delta
        where = {"item_id": self.item["id"], "output_index": len(self.output)}
        if kind == "reasoning":
            events.append(self._event("response.reasoning_text.delta", **where, content_index=0, delta=delta))
        elif kind == "message":
            events.append(self._event("response.output_text.delta", **where, content_index=0, delta=delta,
                                      logprobs=[]))
        else:
            events.append(self._event("response.function_call_arguments.delta", **where, delta=delta))
        return events

    def _added(self) -> str:
        return self._event("response.output_item.added", output_index=len(self.output), item=self.item)

    def _close(self) -> list[str]:
        item, text = self.item, self.text
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": len(self.output)}
        events = []
        if item["type"] == "reasoning":
            events.append(self._event("response.reasoning_text.done", **where, content_index=0, text=text))
            done = self.shape.reasoning_item(text)
        elif item["type"] == "message":
            events.append(self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", **where, content_index=0,
                                      part=_text_part_out(text)))
            done = self.shape.message_item(text)
        else:
            events.append(self._event("response.function_call_arguments.done", **where, arguments=text,
                                      name=item["name"]))
            done = self.shape.call_item(item["call_id"], item["name"], text)
        done["id"] = item["id"]
        events.append(self._event("response.output_item.done", output_index=len(self.output), item=done))
        self.output.append(done)
        self.item, self.text = None, ""
        return events
