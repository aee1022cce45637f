"""The conformance kit's pytest plugin (registered as `octavo` under `pytest11`): the options
that name the backend under test, and the summary a vendor pastes into a release note. The
kit's fixtures live in its own conftest (`octavo.testing.conformance`).

    python -m pytest --pyargs octavo.testing.conformance --octavo-device NAME
    python -m pytest --pyargs octavo.testing.conformance --octavo-backend path/to/file.py:MyBackend

`--octavo-backend` takes a backend class that is not registered (`module:Class` or
`file.py:Class`), e.g. one whose device is substituted by the CPU for testing.
`--octavo-engine-arg NAME=VALUE` (repeatable) sets an engine argument or backend option for
every engine the kit builds, under the checks' own (a compiled backend keeps its shapes few
with e.g. `max_num_seqs=16`).
"""
from __future__ import annotations

import importlib
import importlib.util
import platform
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest

KIT_DIR = Path(__file__).resolve().parent / "conformance"  # the kit's tests, wherever octavo is installed
FAMILY_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
                        "gemma3": "Gemma3ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass(slots=True)
class KitTarget:
    """The backend under test and how to build engines on it."""

    label: str
    device: str | None  # a registered device name, or None with `backend_class`
    backend_class: type
    families: list[str]
    logprob_atol: float
    engine_args: dict = field(default_factory=dict)  # under every check's own

    def make_llm(self, model_dir: str, **engine_args):
        from octavo import LLM

        engine_args = {**self.engine_args, **engine_args}
        if self.device is not None:
            return LLM(model_dir, device=self.device, **engine_args)
        return LLM(model_dir, backend=self.backend_class(), **engine_args)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("octavo", "Octavo backend conformance kit")
    group.addoption("--octavo-device", default=None, metavar="NAME", help="the installed backend to check")
    group.addoption("--octavo-backend", default=None, metavar="MODULE:CLASS",
                    help="a backend class to check that is not registered (module:Class or file.py:Class)")
    group.addoption("--octavo-families", default=None, metavar="LIST",
                    help="comma-separated model families (default: all the backend declares)")
    group.addoption("--octavo-logprob-atol", type=float, default=1e-4,
                    help="largest logprob difference to HF fp32 accepted (default: 1e-4)")
    group.addoption("--octavo-engine-arg", action="append", default=[], metavar="NAME=VALUE",
                    help="an engine argument or backend option for every engine (YAML value; repeatable)")


def _load_class(spec: str) -> type:
    where, _, name = spec.rpartition(":")
    if not where:
        raise pytest.UsageError(f"--octavo-backend {spec!r}: expected module:Class or file.py:Class")
    if where.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        if module_spec is None:
            raise pytest.UsageError(f"--octavo-backend: cannot load {where}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def kit_target(config: pytest.Config) -> KitTarget | None:
    """The backend named by --octavo-device / --octavo-backend (None: neither was given)."""
    cached = getattr(config, "_octavo_kit_target", False)
    if cached is not False:
        return cached
    device, spec = config.getoption("--octavo-device"), config.getoption("--octavo-backend")
    target = None
    if device or spec:
        from octavo.devices import installed_backends

        cls = _load_class(spec) if spec else installed_backends().get(device)
        if cls is None or isinstance(cls, Exception):
            raise pytest.UsageError(f"--octavo-device {device}: no such backend is installed ({cls!r})")
        declared = [f for f, arch in FAMILY_ARCHITECTURES.items()
                    if cls.architectures is None or arch in cls.architectures]
        chosen = config.getoption("--octavo-families")
        families = [f for f in chosen.split(",") if f in declared] if chosen else declared
        target = KitTarget(device or spec, device, cls, families, config.getoption("--octavo-logprob-atol"),
                           _engine_args(config.getoption("--octavo-engine-arg")))
    config._octavo_kit_target = target
    return target


def _engine_args(items: list[str]) -> dict:
    import yaml

    args = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise pytest.UsageError(f"--octavo-engine-arg {item!r}: expected NAME=VALUE")
        args[name] = yaml.safe_load(value)
    return args


# ----------------------------------------------------------------------------- the summary


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config._octavo_kit_items = {item.nodeid for item in items if KIT_DIR in item.path.resolve().parents}



def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    target = getattr(config, "_octavo_kit_target", None)
    if not target:
        return
    counts: dict[str, Counter] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if nodeid not in config._octavo_kit_items:
                continue
            if report.when == "teardown" or (report.when == "setup" and report.passed):
                continue
            check = nodeid.split("::")[-1].split("[")[0].removeprefix("test_")
            counts.setdefault(check, Counter())[outcome] += 1
    if not counts:
        return
    write = terminalreporter.write_line
    total = sum(counts.values(), Counter())
    verdict = "PASS" if not (total["failed"] or total["error"]) else "FAIL"
    write("")
    write("=" * 72)
    write(f"Octavo conformance kit (backend contract {_contract()}), octavo {_version('octavo')}, "
          f"torch {_version('torch')}, Python {platform.python_version()}, {platform.machine()}")
    write(f"backend: {target.label} ({target.backend_class.__module__}.{target.backend_class.__qualname__}, "
          f"{_distribution(target.backend_class)})")
    write(f"families: {', '.join(target.families)}")
    if target.engine_args:
        write(f"engine arguments: {', '.join(f'{k}={v}' for k, v in target.engine_args.items())}")
    write(f"{'check':36s} {'passed':>7s} {'failed':>7s} {'skipped':>8s}")
    for check, c in sorted(counts.items()):
        write(f"{check:36s} {c['passed']:7d} {c['failed'] + c['error']:7d} {c['skipped']:8d}")
    write(f"result: {verdict} ({total['passed']} passed, {total['failed'] + total['error']} failed, "
          f"{total['skipped']} skipped)")
    write("=" * 72)


def _contract() -> str:
    from octavo.backend import CONTRACT_VERSION

    return CONTRACT_VERSION


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "(not installed)"


def _distribution(cls: type) -> str:
    top = cls.__module__.split(".")[0]
    dists = packages_distributions().get(top, [])
    return ", ".join(f"{d} {_version(d)}" for d in dists) or "not an installed distribution"
