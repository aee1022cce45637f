"""Chat messages -> prompt text, through the model's (or a given) Jinja chat template."""
from __future__ import annotations

import os
from typing import Any

from octavo.server.errors import bad_request
from octavo.server.protocol import ChatMessage
from octavo.server.tool_calls import arguments_as_objects

# apply_chat_template arguments a request's chat_template_kwargs may not override.
_RESERVED = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "return_dict", "return_tensors", "padding", "truncation",
    "max_length", "tokenizer_kwargs", "return_assistant_tokens_mask",
})


def load_chat_template(value: str | None) -> str | None:
    """`--chat-template`: a file holding the template, or the template text itself."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" in value:
        return value
    raise ValueError(f"--chat-template {value!r} is neither a file nor a Jinja template")


def conversation(messages: list[ChatMessage], template: str | None = None) -> list[dict[str, Any]]:
    """Messages as the template sees them: content parts joined into one string, and the
    `developer` role as `system` where the template does not know it (OpenAI's newer models
    treat it so; most templates would drop it or raise)."""
    developer = "developer" if isinstance(template, str) and "developer" in template else "system"
    if not messages:
        raise bad_request("messages must hold at least one message", "messages")
    out = []
    for i, msg in enumerate(messages):
        content = msg.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type in ("text", "input_text") and part.text is None:
                    raise bad_request(f"messages[{i}].content: a {part.type!r} part needs a 'text' field",
                                      f"messages[{i}].content")
                if part.type not in ("text", "input_text"):
                    raise bad_request(f"messages[{i}].content: content parts of type {part.type!r} are not "
                                      "supported by this text-only model (use 'text')", f"messages[{i}].content")
                texts.append(part.text)
            content = "\n".join(texts)
        entry: dict[str, Any] = dict(msg.model_extra or {})
        role = developer if msg.role == "developer" else msg.role
        entry.update(role=role, content=content if content is not None else "")
        for key in ("name", "tool_calls", "tool_call_id"):
            value = getattr(msg, key)
            if value is not None:
                entry[key] = value
        if msg.tool_calls:
            entry["tool_calls"] = arguments_as_objects(msg.tool_calls)
        out.append(entry)
    return out


def render(tokenizer, messages: list[dict[str, Any]], *, chat_template: str | None,
           add_generation_prompt: bool, continue_final_message: bool,
           tools: list[dict] | None = None, documents: list[dict] | None = None,
           template_kwargs: dict[str, Any] | None = None) -> str:
    if add_generation_prompt and continue_final_message:
        raise bad_request("add_generation_prompt and continue_final_message cannot both be true",
                          "continue_final_message")
    kwargs = dict(template_kwargs or {})
    clash = sorted(_RESERVED & kwargs.keys())
    if clash:
        raise bad_request(f"chat_template_kwargs may not set {', '.join(clash)}", "chat_template_kwargs")
    if chat_template is None and getattr(tokenizer, "chat_template", None) is None:
        raise bad_request("this model has no chat template; pass chat_template in the request or start "
                          "the server with --chat-template", "chat_template")
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, documents=documents, chat_template=chat_template,
            add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
            tokenize=False, **kwargs)
    except Exception as exc:  # jinja2 errors, templates raising on bad roles, ...
        raise bad_request(f"the chat template failed on these messages: {type(exc).__name__}: {exc}",
                          "messages") from exc
    if not isinstance(text, str):  # some transformers versions return a list for one conversation
        text = text[0]
    return text
