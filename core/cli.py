"""`octavo devices | generate | serve | bench`."""
from __future__ import annotations

import argparse
import dataclasses
import sys

from octavo.config import ConfigError


def cmd_devices(args: argparse.Namespace) -> int:
    from octavo.devices import list_devices

    for info in list_devices():
        a = info.availability
        if not a.ok:
            state = f"unusable: {a.reason}"
        elif not a.auto:
            state = f"usable by name only (--device {info.name}): {a.reason}"
        else:
            state = f"usable ({a.reason})" if a.reason else "usable"
        print(f"{info.name:10s} {state}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from octavo import LLM, SamplingParams
    from octavo.engine.args import config_from_args

    llm = LLM(**dataclasses.asdict(config_from_args(args)))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.sampling_seed)
    if args.chat:
        out = llm.chat([{"role": "user", "content": args.prompt}], params)[0]
    else:
        out = llm.generate(args.prompt, params)[0]
    print(out.outputs[0].text)
    return 0


def document_defaults(parser: argparse.ArgumentParser) -> None:
    """End every flag's help line with its default, in this parser and its subcommands
    (flags whose help already names its default are left as they are)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                document_defaults(sub)
            continue
        if action.dest == "help" or action.help == argparse.SUPPRESS or action.default == argparse.SUPPRESS:
            continue
        help_text = action.help or ""
        if "(default" not in help_text:
            action.help = f"{help_text} (default: {_default_text(action.default)})".strip()


def _default_text(value) -> str:
    if value is None:
        return "unset"
    if value is True or value is False:
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value).replace("%", "%%")


def main(argv: list[str] | None = None) -> int:
    from octavo.engine.args import add_engine_args

    parser = argparse.ArgumentParser(prog="octavo", description="Octavo LLM inference engine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("devices", help="list backends and whether each can run here").set_defaults(fn=cmd_devices)

    gen = sub.add_parser("generate", help="generate text for one prompt")
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--model", default=None, help="HF directory or .gguf (default: embedded SmolLM2-135M)")
    gen.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    gen.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    gen.add_argument("--sampling-seed", type=int, default=None, help="seed of this request's sampling")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                     help="wrap the prompt in the model's chat template")
    add_engine_args(gen)
    gen.set_defaults(fn=cmd_generate)

    from octavo.benchmarks import add_bench_parser

    add_bench_parser(sub)
    try:
        from octavo.server.cli import add_serve_parser
    except ImportError:
        add_serve_parser = None
    if add_serve_parser is not None:
        add_serve_parser(sub)

    document_defaults(parser)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"octavo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
