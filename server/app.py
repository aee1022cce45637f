"""The FastAPI app: routes, API-key check, CORS, error handlers, the stats-logging task."""
from __future__ import annotations

import asyncio
import contextlib
import os

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

import octavo
from octavo.server import protocol as P
from octavo.server.errors import APIError, from_exception, install_error_handlers
from octavo.server.metrics import StatsLogger
from octavo.server.middleware import APIKeyMiddleware, RequestBodyMiddleware
from octavo.server.serving_chat import create_chat_completion, render_prompt
from octavo.server.serving_common import encode, request_id_for
from octavo.server.serving_completion import create_completion
from octavo.server.serving_embedding import create_embedding
from octavo.server.serving_responses import create_response
from octavo.server.state import ServerSettings, ServerState
from octavo.server.tracking import ClientDisconnected

_ERRORS = {400: {"model": P.ErrorResponse}, 401: {"model": P.ErrorResponse}, 404: {"model": P.ErrorResponse}}


async def _guarded(work, request_id: str | None = None):
    """Any failure of one request becomes that request's error response (500 for bugs)."""
    try:
        return await work
    except ClientDisconnected:
        return Response(status_code=499)
    except Exception as exc:
        return from_exception(exc, request_id).response()


def add_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts served from this machine (the
    fastapi-offline package ships them): the pages work without reaching a CDN."""
    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = os.path.join(os.path.dirname(fastapi_offline.__file__), "static")
    app.mount("/docs-static", StaticFiles(directory=assets), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/docs-static/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url="/docs-static/redoc.standalone.js",
                              redoc_favicon_url="/docs-static/favicon.png", with_google_fonts=False)


def build_app(engine, settings: ServerSettings) -> FastAPI:
    """An app serving `engine` (an AsyncLLM). The caller owns the engine's lifetime."""
    disable_created_metrics()  # no `*_created` series, as vLLM
    state = ServerState(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = None
        if settings.log_stats:
            task = asyncio.ensure_future(StatsLogger(state.metrics, engine, settings.stats_interval).run())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Octavo", version=octavo.__version__, lifespan=lifespan,
                  description="OpenAI-compatible API over the Octavo inference engine.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json" if settings.enable_docs else None)
    app.state.octavo = state
    if settings.enable_docs:
        add_offline_docs(app)
    install_error_handlers(app)

    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, __: ClientDisconnected):
        return Response(status_code=499)

    app.add_middleware(RequestBodyMiddleware, max_bytes=settings.max_request_body_bytes)
    if settings.api_key:
        open_paths = {"/health"} | ({"/metrics"} if settings.metrics_without_api_key else set())
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key, open_paths=frozenset(open_paths))
    app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins,
                       allow_credentials=settings.allow_credentials, allow_methods=settings.allowed_methods,
                       allow_headers=settings.allowed_headers)

    # ------------------------------------------------------------------ generation

    @app.post("/v1/completions", response_model=P.CompletionResponse, responses=_ERRORS)
    async def completions(request: P.CompletionRequest, raw: Request):
        request_id = request_id_for(raw, "cmpl")
        return await _guarded(create_completion(state, request, raw, request_id), request_id)

    @app.post("/v1/chat/completions", response_model=P.ChatCompletionResponse, responses=_ERRORS)
    async def chat_completions(request: P.ChatCompletionRequest, raw: Request):
        request_id = request_id_for(raw, "chatcmpl")
        return await _guarded(create_chat_completion(state, request, raw, request_id), request_id)

    @app.post("/v1/responses", responses=_ERRORS)
    async def responses(request: P.ResponsesRequest, raw: Request):
        return await _guarded(create_response(state, request, raw))

    @app.post("/v1/embeddings", response_model=P.EmbeddingResponse, responses=_ERRORS)
    async def embeddings(request: P.EmbeddingRequest, raw: Request):
        request_id = request_id_for(raw, "embd")
        return await _guarded(create_embedding(state, request, raw, request_id), request_id)

    # ------------------------------------------------------------------ models, tokenizer

    def model_card(name: str) -> P.ModelCard:
        return P.ModelCard(id=name, root=settings.model_root or name, max_model_len=state.max_model_len)

    @app.get("/v1/models", response_model=P.ModelList)
    async def models():
        return P.ModelList(data=[model_card(name) for name in settings.served_model_names])

    @app.get("/v1/models/{model:path}", response_model=P.ModelCard, responses=_ERRORS)
    async def model(model: str):
        return model_card(state.check_model(model))

    @app.post("/tokenize", response_model=P.TokenizeResponse, responses=_ERRORS)
    async def tokenize(request: P.TokenizeChatRequest | P.TokenizeCompletionRequest):
        def work():
            if isinstance(request, P.TokenizeChatRequest):
                _, _, ids = render_prompt(state, request)
            else:
                ids = encode(state.tokenizer, request.prompt, request.add_special_tokens)
            strs = state.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
            return P.TokenizeResponse(count=len(ids), max_model_len=state.max_model_len, tokens=ids,
                                      token_strs=strs)

        state.check_model(request.model)
        return await _guarded(state.run_blocking(work))

    @app.post("/detokenize", response_model=P.DetokenizeResponse, responses=_ERRORS)
    async def detokenize(request: P.DetokenizeRequest):
        state.check_model(request.model)
        bad = next((t for t in request.tokens if not 0 <= t < state.vocab_size), None)
        if bad is not None:
            raise APIError(f"token ids must be in [0, {state.vocab_size}), got {bad}", param="tokens")
        return P.DetokenizeResponse(prompt=await state.run_blocking(state.tokenizer.decode, request.tokens))

    # ------------------------------------------------------------------ operations

    @app.get("/health")
    async def health():
        if not state.engine_alive():
            return JSONResponse({"error": {"message": "the engine has stopped", "type": "server_error",
                                           "param": None, "code": None}}, status_code=503)
        return Response(status_code=200)

    @app.get("/version", response_model=P.VersionResponse)
    async def version():
        return P.VersionResponse(version=octavo.__version__)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
