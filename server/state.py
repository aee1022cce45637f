"""What every route needs: the engine, the server's settings and its metrics."""
from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from octavo.server.errors import APIError
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
        self.metrics = ServerMetrics(engine, settings.served_model_names[0], self.max_model_len)
        # Chat templates and tokenizers run here, off the event loop; one thread, so that this
        # work never takes more than one core from the engine.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="octavo-tokenize")

    async def run_blocking(self, fn, *args):
        """fn(*args) in the tokenizer thread, so slow rendering or tokenizing never stalls HTTP."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

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

    def engine_alive(self) -> bool:
        return self.engine.is_alive()
