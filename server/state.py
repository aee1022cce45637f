"""What every route needs: the engine, the server's settings and its metrics."""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from octavo.server.errors import APIError, bad_request
from octavo.server.logprobs import TokenTexts
from octavo.server.metrics import ServerMetrics


@dataclass
class ServerSettings:
    served_model_names: list[str]
    model_root: str | None = None  # what /v1/models reports as `root`
    response_role: str = "assistant"
    chat_template: str | None = None  # the template text (--chat-template, already loaded)
    api_key: str | None = None
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    log_requests: bool = True
    log_stats: bool = True
    stats_interval: float = 10.0
    tool_parser: type | None = None  # a ToolParser class: tool_choice "auto" is enabled
    trust_request_chat_template: bool = False  # a request's own chat_template is run (a Jinja template)
    max_request_body_bytes: int = 16 << 20
    metrics_without_api_key: bool = False  # /metrics open to scrapers without the key
    reasoning_parser: type | None = None  # a ReasoningParser class: think blocks go to `reasoning`
    disable_any_whitespace: bool = False  # compact JSON for every JSON constraint, not only tool calls
    structured_outputs_in_reasoning: bool = False  # constraints apply inside the think block too
    return_tokens_as_token_ids: bool = False  # logprobs name tokens "token_id:N"
    enable_docs: bool = True  # /docs, /redoc, /openapi.json (their assets served locally)


def default_model_name(model: str | None) -> str:
    """The name a model is served under when --served-model-name is not given (as vLLM: the
    model argument itself; the embedded default has a fixed name)."""
    if model is None:
        return "SmolLM2-135M-Instruct"
    return model.rstrip(os.sep) or model


class ServerState:
    def __init__(self, engine, settings: ServerSettings):
        if not settings.served_model_names:
            raise ValueError("at least one served model name is needed")
        self.engine = engine
        self.settings = settings
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.model_config.max_model_len
        self.vocab_size = engine.model_config.vocab_size
        self.runner = engine.runner  # "generate", or "pooling": embeddings only
        self.generation_defaults = engine.generation_defaults  # the model's, for unset sampling fields
        self.metrics = ServerMetrics(engine, settings.served_model_names[0], self.max_model_len)
        # Chat templates and tokenizers run here, off the event loop; one thread, so that this
        # work never takes more than one core from the engine.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="octavo-tokenize")
        self._token_texts = TokenTexts(self.tokenizer)
        self._token_ids = TokenTexts(self.tokenizer, as_token_ids=True)
        parser = settings.reasoning_parser
        self._reasoning_end = None if parser is None else tuple(
            self.tokenizer(parser.end, add_special_tokens=False).input_ids)

    async def run_blocking(self, fn, *args):
        """fn(*args) in the tokenizer thread, so slow rendering or tokenizing never stalls HTTP."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def token_texts(self, req) -> TokenTexts:
        """How this request's logprobs name tokens (one cache of token texts per server)."""
        if req.return_tokens_as_token_ids or (req.return_tokens_as_token_ids is None
                                              and self.settings.return_tokens_as_token_ids):
            return self._token_ids
        return self._token_texts

    def reasoning_end_ids(self, prompt: str) -> tuple[int, ...] | None:
        """The tokens that end the reply's think block, or None when the reply cannot reason
        (no reasoning parser, or the prompt closed the block): a constraint waits for them."""
        parser = self.settings.reasoning_parser
        if parser is None or self.settings.structured_outputs_in_reasoning or parser.prompt_ends_reasoning(prompt):
            return None
        return self._reasoning_end

    @property
    def model_name(self) -> str:
        return self.settings.served_model_names[0]

    def check_model(self, name: str | None) -> str:
        """The name to answer with; 404 for a model this server does not serve."""
        if name is None or name == "":
            return self.model_name
        if name in self.settings.served_model_names:
            return name
        raise APIError(f"The model `{name}` does not exist.", status=404, param="model", code="model_not_found")

    def check_runner(self, runner: str) -> None:
        """400 for a route the engine's runner does not serve (vLLM answers the same)."""
        if runner == self.runner:
            return
        if runner == "pooling":
            raise bad_request("The model does not support the Embeddings API: this server generates text "
                              "(serve the model with --runner pooling for embeddings)", "model")
        raise bad_request("The model does not support text generation: this server serves embeddings "
                          "(--runner pooling); use /v1/embeddings", "model")

    def engine_alive(self) -> bool:
        return self.engine.is_alive()
