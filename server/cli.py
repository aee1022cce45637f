"""`octavo serve [MODEL]` (flags named as `vllm serve`) and `octavo bench serve`.

Settings come from the command line, then a `--config FILE.yaml` (keys are the flag names,
with `-` or `_`), then the defaults: every flag's default is kept aside and the parser itself
has none, so "given on the command line" is told apart from "left at its default".
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading

from octavo.config import ConfigError

API_KEY_ENV = "OCTAVO_API_KEY"
SHUTDOWN_GRACE_S = 10.0  # past --shutdown-timeout, for the engine and HTTP threads to wind down
LOG_FORMAT = "%(levelname)s %(asctime)s %(name)s: %(message)s"


def _json_list(value: str) -> list[str]:
    try:
        out = json.loads(value)
    except json.JSONDecodeError:
        out = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(out, str):
        out = [out]
    if not isinstance(out, list):
        raise argparse.ArgumentTypeError(f"expected a JSON list, got {value!r}")
    return [str(v) for v in out]


def add_server_args(parser: argparse.ArgumentParser) -> None:
    from octavo.engine.args import add_engine_args

    parser.add_argument("model", nargs="?", default=None,
                        help="HF model directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--model", dest="model_flag", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, metavar="FILE.yaml",
                        help="YAML file of flag values (command line > config file > defaults)")
    g = parser.add_argument_group("server")
    g.add_argument("--host", default=None, help="interface to bind (default: all)")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="names the model is served under (the first one is reported) (default: the model path)")
    g.add_argument("--chat-template", default=None, help="chat template file or inline Jinja template")
    g.add_argument("--response-role", default="assistant", help="role of chat responses with a generation prompt")
    g.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on every route but /health (or set {API_KEY_ENV})")
    g.add_argument("--metrics-without-api-key", action="store_true", default=False,
                   help="let /metrics answer without the API key (for a Prometheus scraper)")
    g.add_argument("--trust-request-chat-template", action="store_true", default=False,
                   help="run a chat_template given in a request (a Jinja template from the client); refused by default")
    g.add_argument("--max-request-body-mib", type=float, default=16.0, metavar="MIB",
                   help="largest request body accepted (413 above it)")
    g.add_argument("--shutdown-timeout", type=float, default=20.0, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, how long in-flight requests may take to finish; a second signal "
                        "stops at once")
    g.add_argument("--allowed-origins", type=_json_list, default=["*"], help="CORS origins (JSON list)")
    g.add_argument("--allowed-methods", type=_json_list, default=["*"], help="CORS methods (JSON list)")
    g.add_argument("--allowed-headers", type=_json_list, default=["*"], help="CORS headers (JSON list)")
    g.add_argument("--allow-credentials", action="store_true", default=False, help="CORS: allow credentials")
    g.add_argument("--disable-log-requests", action="store_true", default=False,
                   help="no log line per request")
    g.add_argument("--disable-log-stats", action="store_true", default=False, help="no periodic stats line")
    g.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"], help="the HTTP server's log level")
    g.add_argument("--disable-uvicorn-access-log", action="store_true", default=False,
                   help="no access log line per HTTP request")
    g.add_argument("--disable-fastapi-docs", action="store_true", default=False,
                   help="no /docs, /redoc and /openapi.json")
    g.add_argument("--enable-log-requests", action="store_true", default=False,
                   help="a log line per request (vLLM's newer flag; on unless --disable-log-requests)")
    g.add_argument("--return-tokens-as-token-ids", action="store_true", default=False,
                   help='logprobs name tokens "token_id:N" (a request\'s own return_tokens_as_token_ids wins)')
    g.add_argument("--structured-outputs-config", type=json.loads, default=None, metavar="JSON",
                   help='vLLM\'s structured-output settings: {"backend", "disable_any_whitespace", '
                        '"reasoning_parser"}')
    t = parser.add_argument_group("tool calling")
    t.add_argument("--enable-auto-tool-choice", action="store_true", default=False,
                   help='tool_choice "auto": find calls in the output with --tool-call-parser')
    t.add_argument("--tool-call-parser", default=None, metavar="NAME",
                   help="hermes, mistral, llama3_json, pythonic, qwen2_5, or one a plugin registers")
    t.add_argument("--tool-parser-plugin", default=None, metavar="FILE",
                   help="Python file that registers a parser with @ToolParserManager.register(name)")
    r = parser.add_argument_group("reasoning")
    r.add_argument("--reasoning-parser", default=None, metavar="NAME",
                   help="deepseek_r1, qwen3, or one a plugin registers: the think block goes to `reasoning`")
    r.add_argument("--reasoning-parser-plugin", default=None, metavar="FILE",
                   help="Python file that registers a parser with @ReasoningParserManager.register(name)")
    add_engine_args(parser)


class _ConfigFileParser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError(message)


def _suppress_defaults(parser: argparse.ArgumentParser) -> dict:
    defaults = {}
    for action in parser._actions:
        if action.dest in (argparse.SUPPRESS, "help") or action.default is argparse.SUPPRESS:
            continue  # device options have no default here: the backend's options class holds it
        defaults[action.dest] = action.default
        action.default = argparse.SUPPRESS
    return defaults


def _yaml_argv(values: dict) -> list[str]:
    argv: list[str] = []
    model = values.pop("model", None)
    for key, value in values.items():
        flag = "--" + str(key).replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            if key in ("allowed_origins", "allowed-origins", "allowed_methods", "allowed-methods",
                       "allowed_headers", "allowed-headers"):
                argv += [flag, json.dumps(value)]
            else:
                argv += [flag, *map(str, value)]
        elif value is not None:
            argv += [flag, str(value)]
    if model is not None:
        argv.append(str(model))
    return argv


def load_config_file(path: str) -> argparse.Namespace:
    """The flags a YAML file sets, parsed and checked like command-line flags."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of flag names to values")
    if "config" in values:
        raise ConfigError(f"config file {path} may not name another config file")
    parser = _ConfigFileParser(prog=f"octavo serve --config {path}", add_help=False)
    add_server_args(parser)
    _suppress_defaults(parser)
    # '--no-x' for store_true flags set to false in the file: such flags are simply left out.
    argv = [a for a in _yaml_argv(dict(values)) if not (a.startswith("--no-") and _is_store_true(parser, a))]
    try:
        return parser.parse_args(argv)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _is_store_true(parser: argparse.ArgumentParser, flag: str) -> bool:
    positive = "--" + flag[len("--no-"):]
    return any(positive in a.option_strings and isinstance(a, argparse._StoreTrueAction) for a in parser._actions)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """defaults < config file < command line."""
    merged = dict(getattr(args, "_serve_defaults", {}))
    config = getattr(args, "config", None)
    if config:
        merged.update(vars(load_config_file(config)))
    merged.update({k: v for k, v in vars(args).items() if k != "_serve_defaults"})
    if merged.get("model") is None and merged.get("model_flag") is not None:
        merged["model"] = merged["model_flag"]
    _apply_structured_outputs_config(merged)
    return argparse.Namespace(**merged)


_SO_CONFIG_KEYS = ("backend", "disable_any_whitespace", "reasoning_parser", "disable_fallback",
                   "disable_additional_properties", "enable_in_reasoning")


def _apply_structured_outputs_config(values: dict) -> None:
    """vLLM's --structured-outputs-config onto the flags it stands for."""
    config = values.get("structured_outputs_config")
    if config is None:
        return
    if not isinstance(config, dict) or set(config) - set(_SO_CONFIG_KEYS):
        raise ConfigError(f"--structured-outputs-config takes a JSON object with the keys {', '.join(_SO_CONFIG_KEYS)}")
    if config.get("backend") is not None:
        values["guided_decoding_backend"] = {"guidance": "llguidance"}.get(config["backend"], config["backend"])
    if config.get("reasoning_parser"):
        values["reasoning_parser"] = config["reasoning_parser"]


def build_settings(args: argparse.Namespace):
    from octavo.server.chat_template import load_chat_template
    from octavo.server.state import ServerSettings, default_model_name

    try:
        template = load_chat_template(args.chat_template)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return ServerSettings(
        served_model_names=args.served_model_name or [default_model_name(args.model)],
        model_root=args.model or "SmolLM2-135M-Instruct (embedded)",
        response_role=args.response_role,
        chat_template=template,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        allowed_origins=args.allowed_origins,
        allowed_methods=args.allowed_methods,
        allowed_headers=args.allowed_headers,
        allow_credentials=args.allow_credentials,
        log_requests=args.enable_log_requests or not args.disable_log_requests,
        log_stats=not args.disable_log_stats,
        tool_parser=_tool_parser(args),
        trust_request_chat_template=args.trust_request_chat_template,
        max_request_body_bytes=_body_limit(args.max_request_body_mib),
        metrics_without_api_key=args.metrics_without_api_key,
        reasoning_parser=_reasoning_parser(args),
        disable_any_whitespace=bool((args.structured_outputs_config or {}).get("disable_any_whitespace")),
        structured_outputs_in_reasoning=bool((args.structured_outputs_config or {}).get("enable_in_reasoning")),
        return_tokens_as_token_ids=args.return_tokens_as_token_ids,
        enable_docs=not args.disable_fastapi_docs,
    )


def _body_limit(mib: float) -> int:
    if not mib > 0:
        raise ConfigError(f"--max-request-body-mib must be positive, got {mib}")
    return int(mib * (1 << 20))


def _tool_parser(args: argparse.Namespace):
    """The parser class for tool_choice "auto", checked at startup (None when not enabled)."""
    from octavo.server.tool_parsers import ToolParserManager

    _import_plugin(ToolParserManager, args.tool_parser_plugin, "--tool-parser-plugin")
    if not args.enable_auto_tool_choice:
        return None
    if not args.tool_call_parser:
        raise ConfigError("--enable-auto-tool-choice needs --tool-call-parser")
    try:
        return ToolParserManager.get(args.tool_call_parser)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _reasoning_parser(args: argparse.Namespace):
    """The reasoning parser class, checked at startup (None without --reasoning-parser)."""
    from octavo.server.reasoning_parsers import ReasoningParserManager

    _import_plugin(ReasoningParserManager, args.reasoning_parser_plugin, "--reasoning-parser-plugin")
    if not args.reasoning_parser:
        return None
    try:
        return ReasoningParserManager.get(args.reasoning_parser)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _import_plugin(registry, path: str | None, flag: str) -> None:
    if path:
        try:
            registry.import_plugin(path)
        except Exception as exc:  # noqa: BLE001 - any error in the user's file is a config error
            raise ConfigError(f"{flag} {path}: {type(exc).__name__}: {exc}") from None


def run_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C (0) or until the engine breaks (1: for a supervisor to
    restart it). A signal drains: no new connections, in-flight requests finish within
    --shutdown-timeout, then the engine stops."""
    import uvicorn

    from octavo.engine.args import config_from_args
    from octavo.engine.async_engine import AsyncLLM
    from octavo.server.app import build_app

    args = resolve_args(args)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    log = logging.getLogger("octavo.server")
    settings = build_settings(args)
    if not args.shutdown_timeout >= 0:
        raise ConfigError(f"--shutdown-timeout must be non-negative, got {args.shutdown_timeout}")
    config = config_from_args(args)
    if config.data_parallel_size > 1:
        from octavo.engine.data_parallel import DataParallelLLM

        engine = DataParallelLLM(config)  # each replica steps in a thread of its own
    else:
        engine = AsyncLLM(config, start_loop=False)  # the loop runs on this thread
    try:
        app = build_app(engine, settings)
        log.info("serving %s on http://%s:%d (max_model_len %d)", ", ".join(settings.served_model_names),
                 args.host or "0.0.0.0", args.port, engine.model_config.max_model_len)
        server = uvicorn.Server(uvicorn.Config(
            app, host=args.host or "0.0.0.0", port=args.port, log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log, timeout_keep_alive=5,
            timeout_graceful_shutdown=args.shutdown_timeout))
        http = threading.Thread(target=_serve_http, args=(server, engine), name="octavo-http")
        http.start()

        def on_signal(signum, _frame):
            if server.should_exit:  # the second signal: stop now
                server.force_exit = True
                engine.stop()
                return
            log.info("%s: finishing in-flight requests (up to %g s), then stopping",
                     signal.Signals(signum).name, args.shutdown_timeout)
            server.should_exit = True
            # Whatever hangs (a step that never returns, a stuck connection), the process ends.
            watchdog = threading.Timer(args.shutdown_timeout + SHUTDOWN_GRACE_S, _exit_now)
            watchdog.daemon = True
            watchdog.start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        engine.run_engine_loop()  # until the HTTP server has drained, or the engine breaks
        server.should_exit = True
        http.join(timeout=args.shutdown_timeout + SHUTDOWN_GRACE_S)
    finally:
        engine.shutdown()
    if engine.dead is not None:
        log.critical("exiting with status 1: the engine is broken (%s)", engine.dead)
        return 1
    return 0


def _exit_now() -> None:
    logging.getLogger("octavo.server").critical("shutdown did not finish in time: exiting now")
    logging.shutdown()
    os._exit(1)


def _serve_http(server, engine) -> None:
    try:
        server.run()
    finally:
        engine.stop()  # however HTTP ends, the engine loop on the main thread returns


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Register `serve` (and `bench serve`) on the `octavo` command's subparsers."""
    from octavo.cli import document_defaults

    parser = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server",
                                   description="Serve a model over the OpenAI API (flags as `vllm serve`).")
    add_server_args(parser)
    document_defaults(parser)
    parser.set_defaults(fn=run_serve, _serve_defaults=_suppress_defaults(parser))
    from octavo.server.bench_serve import add_bench_serve_parser

    bench = subparsers.choices.get("bench")
    if bench is None:
        bench = subparsers.add_parser("bench", help="benchmarks")
        bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    else:  # the core registered `bench` (throughput, latency): add `serve` beside them
        bench_sub = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction))
    if "serve" not in bench_sub.choices:
        add_bench_serve_parser(bench_sub)
    return parser
