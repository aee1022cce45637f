"""`octavo serve` flags and config file (command line > config file > defaults), the real
command in a subprocess, and `octavo bench serve` against a live server."""
from __future__ import annotations

import argparse
import json
import os

import httpx
import pytest
from server_utils import MODEL_NAME, free_port, octavo_serve, running_server, server_model_path

from octavo.config import ConfigError
from octavo.server.cli import add_serve_parser, build_settings, resolve_args


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="octavo")
    add_serve_parser(parser.add_subparsers(dest="command"))
    return resolve_args(parser.parse_args(argv))


def write_yaml(tmp_path, text: str) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return str(path)


def test_defaults():
    args = parse(["serve"])
    assert args.model is None and args.port == 8000 and args.host is None
    assert args.max_num_seqs == 128 and args.enable_prefix_caching is True and args.response_role == "assistant"
    settings = build_settings(args)
    assert settings.served_model_names == ["SmolLM2-135M-Instruct"] and settings.api_key is None


def test_command_line_beats_config_file_beats_defaults(tmp_path):
    cfg = write_yaml(tmp_path, "model: /m/from-yaml\nport: 1234\ndtype: bfloat16\nmax_num_seqs: 7\n"
                               "enable_prefix_caching: false\nenable-chunked-prefill: false\n"
                               "served_model_name: [a, b]\nallowed_origins: ['http://x.example']\n"
                               "disable_log_requests: true\n")
    args = parse(["serve", "--config", cfg, "--port", "9000", "--enable-prefix-caching"])
    assert args.port == 9000  # command line
    assert args.enable_prefix_caching is True  # command line over the file's false
    assert args.model == "/m/from-yaml" and args.dtype == "bfloat16" and args.max_num_seqs == 7  # file
    assert args.enable_chunked_prefill is False and args.disable_log_requests is True
    assert args.served_model_name == ["a", "b"] and args.allowed_origins == ["http://x.example"]
    assert args.max_model_len is None and args.block_size is None  # defaults
    assert parse(["serve", "/m/cli", "--config", cfg]).model == "/m/cli"
    # a value given on the command line equal to the default still wins over the file
    assert parse(["serve", "--config", cfg, "--max-num-seqs", "128"]).max_num_seqs == 128

    from octavo.engine.args import config_from_args

    config = config_from_args(args)
    assert config.max_num_seqs == 7 and config.enable_prefix_caching is True and config.model == "/m/from-yaml"


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="no-such-flag"):
        parse(["serve", "--config", write_yaml(tmp_path, "no_such_flag: 1\n")])
    with pytest.raises(ConfigError, match="max-num-seqs"):
        parse(["serve", "--config", write_yaml(tmp_path, "max_num_seqs: lots\n")])
    with pytest.raises(ConfigError, match="mapping"):
        parse(["serve", "--config", write_yaml(tmp_path, "- a\n- b\n")])
    with pytest.raises(ConfigError, match="cannot read"):
        parse(["serve", "--config", str(tmp_path / "missing.yaml")])


def test_server_settings_from_flags(tmp_path, monkeypatch):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    args = parse(["serve", "/some/model", "--served-model-name", "x", "y", "--chat-template", str(template),
                  "--response-role", "bot", "--api-key", "k1", "--allowed-methods", '["GET", "POST"]',
                  "--disable-log-stats", "--allow-credentials"])
    s = build_settings(args)
    assert s.served_model_names == ["x", "y"] and s.model_root == "/some/model"
    assert s.chat_template == template.read_text() and s.response_role == "bot" and s.api_key == "k1"
    assert s.allowed_methods == ["GET", "POST"] and s.log_stats is False and s.allow_credentials is True
    monkeypatch.setenv("OCTAVO_API_KEY", "from-env")
    assert build_settings(parse(["serve"])).api_key == "from-env"
    assert build_settings(parse(["serve", "--api-key", "flag"])).api_key == "flag"
    assert build_settings(parse(["serve", "/a/model/"])).served_model_names == ["/a/model"]
    with pytest.raises(ConfigError):
        build_settings(parse(["serve", "--chat-template", "not-a-file-nor-template"]))


def test_octavo_serve_subprocess(tmp_path):
    """The real command: flags, config file, env API key, chat template, then a chat request."""
    port = free_port()
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<|im_start|>assistant"
    cfg = write_yaml(tmp_path, f"max_model_len: 256\nport: 1\nresponse_role: bot\nnum_kv_blocks: 64\n"
                               f"chat_template: {json.dumps(template)}\n")
    env = dict(os.environ, OCTAVO_API_KEY="env-key")
    args = [server_model_path(), "--config", cfg, "--dtype", "float32", "--num-threads", "1",
            "--served-model-name", "sub", "alias", "--disable-log-stats", "--uvicorn-log-level", "warning"]
    headers = {"Authorization": "Bearer env-key"}
    with octavo_serve(args, port, env=env) as proc:
        url = proc.url
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers=headers).json()["data"]
        assert [m["id"] for m in models] == ["sub", "alias"] and models[0]["max_model_len"] == 256
        import openai

        client = openai.OpenAI(base_url=url + "/v1", api_key="env-key", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="alias", messages=[{"role": "user", "content": "hi"}],
                                           max_completion_tokens=4, extra_body={"return_token_ids": True})
        assert r.choices[0].message.role == "bot" and r.usage.completion_tokens <= 4
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(server_model_path())
        expected = tok("<user>hi<|im_start|>assistant", add_special_tokens=False).input_ids
        assert r.model_extra["prompt_token_ids"] == expected
    out = proc.output()
    assert "/v1/chat/completions chatcmpl-" in out  # the per-request log line


@pytest.fixture(scope="module")
def live_server():
    from octavo.server.state import ServerSettings

    with running_server(ServerSettings(served_model_names=[MODEL_NAME], log_stats=False,
                                       log_requests=False)) as srv:
        yield srv


def test_bench_serve(live_server, tmp_path):
    from octavo.cli import main

    result, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["bench", "serve", "--target", f"a={live_server.url}", "--target", f"b={live_server.url}",
               "--num-prompts", "8", "--input-len", "16", "--output-len", "6", "--max-concurrency", "1", "4",
               "--num-warmups", "1", "--result-file", str(result), "--plot", str(plot)])
    assert rc == 0
    data = json.loads(result.read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert [(r["target"], r["max_concurrency"]) for r in data["runs"]] == [("a", 1), ("a", 4), ("b", 1), ("b", 4)]
    for run in data["runs"]:
        assert run["completed"] == 8 and run["failed"] == 0
        assert run["total_input_tokens"] == 8 * 16 and run["total_output_tokens"] == 8 * 6
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
            assert set(run[key]) == {"mean", "p50", "p90", "p99"} and run[key]["p50"] > 0
        assert run["request_throughput"] > 0 and run["output_throughput"] > 0
    assert len(data["ratios"]) == 2 and all(r["output_throughput"] > 0 for r in data["ratios"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_serve_chat_given_prompts_at_a_request_rate(live_server, tmp_path):
    from octavo.cli import main

    result = tmp_path / "chat.json"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is the capital of France?"}\n\n{"prompt": "Name three colours."}\n')
    rc = main(["bench", "serve", "--base-url", live_server.url, "--endpoint", "/v1/chat/completions",
               "--prompts-file", str(prompts),
               "--num-prompts", "6", "--input-len", "8", "--output-len", "5", "--request-rate", "50",
               "--num-warmups", "0", "--result-file", str(result)])
    assert rc == 0
    run = json.loads(result.read_text())["runs"][0]
    assert run["completed"] == 6 and run["total_output_tokens"] == 30 and run["request_rate"] == 50
    assert run["total_input_tokens"] > 6 * 5  # from the server's usage: the chat-templated given prompts


def test_tool_calling_flags(tmp_path, monkeypatch):
    from octavo.server.tool_parsers import ToolParserManager

    monkeypatch.setattr(ToolParserManager, "_parsers", dict(ToolParserManager._parsers))  # the plugin stays here
    assert build_settings(parse(["serve"])).tool_parser is None
    settings = build_settings(parse(["serve", "--enable-auto-tool-choice", "--tool-call-parser", "mistral"]))
    assert settings.tool_parser.__name__ == "MistralToolParser"
    with pytest.raises(ConfigError, match="needs --tool-call-parser"):
        build_settings(parse(["serve", "--enable-auto-tool-choice"]))
    with pytest.raises(ConfigError, match="unknown tool parser 'nope'; known: hermes"):
        build_settings(parse(["serve", "--enable-auto-tool-choice", "--tool-call-parser", "nope"]))
    plugin = tmp_path / "my_parser.py"
    plugin.write_text("from octavo.server.tool_parsers import ToolParser, ToolParserManager\n\n"
                      "@ToolParserManager.register('mine')\nclass Mine(ToolParser):\n    markers = ('<<',)\n")
    settings = build_settings(parse(["serve", "--tool-parser-plugin", str(plugin), "--enable-auto-tool-choice",
                                     "--tool-call-parser", "mine"]))
    assert settings.tool_parser.__name__ == "Mine"
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="--tool-parser-plugin .*boom"):
        build_settings(parse(["serve", "--tool-parser-plugin", str(broken)]))
