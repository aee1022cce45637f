"""The OpenAI-compatible HTTP server (`octavo serve`) over the async engine.

Modules, one concept each:

* protocol            pydantic request/response models (OpenAI + vLLM's extra fields)
* errors              OpenAI error objects and the app's exception handlers
* sampling            request -> SamplingParams, with every range check
* chat_template       messages -> prompt text through the chat template
* logprobs            engine logprobs -> completions / chat logprob shapes
* tracking            one engine request: early validation, metrics, abort on disconnect
* serving_completion  POST /v1/completions
* serving_chat        POST /v1/chat/completions
* serving_common      ids, SSE framing, usage, prompt encoding
* metrics             Prometheus metrics (`octavo:` + vLLM's names) and the stats log line
* middleware          API key, JSON bodies without a content type
* state               server settings and per-app state
* app                 the FastAPI app and its routes
* cli                 `octavo serve` (flags as `vllm serve`, --config FILE.yaml)
* bench_serve         `octavo bench serve`, a load generator for any OpenAI-compatible server
"""
