"""The backend contract holds: one import surface, backend-owned options, a step that crosses a
process boundary, static-shape hooks, and a core that names no device."""
from __future__ import annotations

import ast
import logging
import pathlib
import pickle
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from typing import Literal

import pytest
import torch

import octavo.backend as contract
from octavo import LLM, SamplingParams
from octavo.backend import (BackendOptions, ConfigError, ScheduledRequest, SchedulerOutput, StepGraphs, StepSampler,
                            StepShape, TorchWorker, Worker, option)
from octavo.cli import main
from octavo.devices import KNOWN_DEVICES
from octavo.engine.options import add_option_groups, options_from_args, parse_options
from octavo.structured_output import StructuredOutputParams
from octavo.testing.checks import assert_no_leaks, varied_prompts
from octavo.testing.tiny_models import hf_greedy
from octavo_cpu import CpuBackend

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKEND_PACKAGES = sorted([*ROOT.glob("backends/*/octavo_*"), *ROOT.glob("examples/*/octavo_*")])


# ----------------------------------------------------------------------------- import surface


def imports_past_the_contract(source: str) -> list[str]:
    """Modules of `octavo` that `source` imports other than the contract `octavo.backend`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"octavo.{a.name}" for a in node.names] if node.module == "octavo" else [node.module]
        else:
            continue
        found += [n for n in names if n.split(".")[0] == "octavo" and n != "octavo.backend"]
    return found


def test_the_import_checker_catches_a_violation():
    assert imports_past_the_contract("from octavo.backend import Backend, TorchWorker") == []
    assert imports_past_the_contract("import octavo.backend") == []
    assert imports_past_the_contract("from octavo.worker.model_runner import ModelRunner") == ["octavo.worker.model_runner"]
    assert imports_past_the_contract("from octavo import config") == ["octavo.config"]
    assert imports_past_the_contract("import octavo.models.ops as ops") == ["octavo.models.ops"]
    assert imports_past_the_contract("def f():\n    from octavo.config import EngineConfig") == ["octavo.config"]
    assert imports_past_the_contract("from octavo_cpu.kernels import native") == []


def test_backend_packages_import_only_the_contract():
    assert BACKEND_PACKAGES, "no backend package found"
    offenders = {str(path.relative_to(ROOT)): bad for package in BACKEND_PACKAGES for path in package.rglob("*.py")
                 if (bad := imports_past_the_contract(path.read_text()))}
    assert not offenders, f"backends may import only octavo.backend: {offenders}"


def test_every_export_resolves():
    for name in contract.__all__:
        assert getattr(contract, name) is not None, name


def test_importing_the_contract_stays_light():
    """`octavo devices` lists backends by importing them; the contract must not pull the engine."""
    code = ("import sys, octavo.backend; heavy = [m for m in ('octavo.worker.torch_worker', 'octavo.loader', "
            "'transformers', 'octavo.testing') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_runtime_never_imports_the_test_kit():
    code = ("import sys; from octavo import LLM; import octavo.server.app, octavo.cli; "
            "assert not [m for m in sys.modules if m.startswith('octavo.testing')]")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- no device names in the core

DEVICE_NAMES = {*KNOWN_DEVICES, "openvino", "tpu", "xpu", "neuron", "example"} - {"cpu"}


def device_names_in(text: str) -> list[str]:
    return sorted({m.group(0).lower() for m in re.finditer(r"\b(" + "|".join(DEVICE_NAMES) + r")\b", text, re.I)})


def test_the_name_checker_catches_a_name():
    assert device_names_in("x = torch.cuda.is_available()") == ["cuda"]
    assert device_names_in("# runs on OpenVINO and TPUs") == ["openvino"]
    assert device_names_in("torch.device('cpu')  # scuda") == []


@pytest.mark.parametrize("folder", ["core", "server"])
def test_core_names_no_backend(folder):
    """The host CPU ("cpu") is every tensor's home, so it is not counted; the list of known
    device names is the one place the others may appear."""
    offenders = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("KNOWN_DEVICES = "))
        if names := device_names_in(text):
            offenders[str(path.relative_to(ROOT))] = names
    assert not offenders, f"the core names backends: {offenders}"


# ----------------------------------------------------------------------------- backend options


def test_help_lists_each_backends_options_in_its_own_group(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    cpu = text[text.index("cpu backend:"):]
    assert "--num-threads" in cpu.split("\n\n")[0]
    gpu = text[text.index("cuda, rocm, xpu backends:"):].split("\n\n")[0]  # one options class, shared
    for flag in ("--gpu-memory-utilization", "--cuda-graph-sizes", "--enforce-eager"):
        assert flag in gpu
    assert "(default: 0.9)" in gpu


def test_a_yaml_config_sets_a_backend_option(tmp_path):
    import argparse

    from octavo.engine.args import config_from_args
    from octavo.server.cli import add_serve_parser, resolve_args

    path = tmp_path / "serve.yaml"
    path.write_text("num_threads: 1\nmax_num_seqs: 3\nenforce_eager: true\n")
    parser = argparse.ArgumentParser(prog="octavo")
    add_serve_parser(parser.add_subparsers(dest="command"))
    config = config_from_args(resolve_args(parser.parse_args(["serve", "--config", str(path)])))
    assert config.device_options == {"num_threads": "1", "enforce_eager": True} and config.max_num_seqs == 3
    assert parse_options(CpuBackend, {"num_threads": "1"}).num_threads == 1


def test_an_option_two_backends_declare_is_one_flag(caplog):
    """Two backends' `quantization` options (cpu and openvino): one --quantization sets both."""
    import argparse

    @dataclass
    class First(BackendOptions):
        level: Literal["low", "high"] = option("low", "the first backend's level")

    @dataclass
    class Second(BackendOptions):
        level: Literal["low", "high"] = option("low", "the second backend's level")

    parser = argparse.ArgumentParser()
    with caplog.at_level(logging.WARNING, logger="octavo"):
        add_option_groups(parser, {"a": type("A", (), {"options_class": First}),
                                   "b": type("B", (), {"options_class": Second})})
    assert not caplog.text
    assert options_from_args(parser.parse_args(["--level", "high"])) == {"level": "high"}


@pytest.mark.parametrize("argv,message", [
    (["--num-threads", "many"], "--num-threads: expected an integer, got 'many'"),
    (["--num-threads", "0"], "--num-threads must be at least 1"),
])
def test_a_bad_option_value_is_a_clear_error(capsys, argv, message):
    assert main(["generate", "hi", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_llm_keywords_reach_the_backend_typed(tiny_model, caplog):
    llm = LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=32, num_threads=1)
    assert llm.engine.backend.options.num_threads == 1 and torch.get_num_threads() == 1
    with caplog.at_level(logging.WARNING, logger="octavo"):
        LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=32, enforce_eager=True)
    assert "ignoring enforce_eager: an option of the cuda, rocm, xpu backend" in caplog.text
    with pytest.raises(ConfigError, match="unknown option 'no_such_option' for the cpu backend"):
        LLM(tiny_model("llama"), no_such_option=1)


# ----------------------------------------------------------------------------- the step as plain data


class MirroredWorker(Worker):
    """The engine's worker, and a second one that receives every step through pickle (as a
    worker in another process would); their answers must be equal."""

    def __init__(self, primary: TorchWorker, shadow: TorchWorker):
        self.primary, self.shadow = primary, shadow
        self.steps: list[SchedulerOutput] = []

    def load_model(self):
        self.shadow.load_model()
        return self.primary.load_model()

    def num_kv_blocks(self, block_size: int) -> int:
        return self.primary.num_kv_blocks(block_size)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self.primary.allocate_kv_cache(num_blocks, block_size)
        self.shadow.allocate_kv_cache(num_blocks, block_size)

    def execute_model(self, batch: SchedulerOutput) -> None:
        self.steps.append(batch)
        self.primary.execute_model(batch)
        self.shadow.execute_model(pickle.loads(pickle.dumps(batch)))

    def sample_tokens(self, grammar):
        ours = self.primary.sample_tokens(grammar)
        assert self.shadow.sample_tokens(pickle.loads(pickle.dumps(grammar))) == ours
        return ours


class MirroredCpuBackend(CpuBackend):
    def create_worker(self, config):
        return MirroredWorker(super().create_worker(config), super().create_worker(config))


def test_scheduler_output_pickles_and_drives_a_worker_to_the_same_tokens(tiny_model):
    path = tiny_model("llama")
    llm = LLM(path, backend=MirroredCpuBackend(), dtype="float32", max_num_batched_tokens=24, num_kv_blocks=64)
    prompts = varied_prompts(1000)
    guided = StructuredOutputParams(regex=r"[a-z]{2,6}( [a-z]{2,6}){2}")
    params = [SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True) if i % 3 else
              SamplingParams(temperature=0.8, seed=i, max_tokens=30, structured_outputs=guided)
              for i in range(len(prompts))]
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    steps = llm.engine.worker.steps
    assert any(r.num_new_tokens < 70 and r.num_computed_tokens == 0 for s in steps for r in s.requests), \
        "no chunked prefill happened"
    for out, p, prompt in zip(outs, params, prompts):
        if p.structured_outputs is None:
            assert out.outputs[0].token_ids == hf_greedy(path, [prompt], 12)[0]
        else:
            assert re.fullmatch(guided.regex, out.outputs[0].text), out.outputs[0].text
    # Sent as changes: a request the worker already has carries at most its one new token.
    seen: set[str] = set()
    for step in steps:
        new = {n.request_id for n in step.new_requests}
        for r in step.requests:
            assert r.request_id in new or (r.request_id in seen and len(r.new_token_ids) <= 1)
        seen |= new
    assert_no_leaks(llm)


# ----------------------------------------------------------------------------- static shapes


class EagerReplayGraphs(StepGraphs):
    """A stand-in for a compiled device: shapes are "captured" (the forward function is kept)
    and "replayed" on the padded step, so the padding path runs on the CPU."""

    block_table_width = 9

    def __init__(self):
        self.captured: dict[StepShape, object] = {}
        self.runs: list[StepShape] = []

    def shapes(self) -> list[StepShape]:
        return [StepShape(t, r) for t in (8, 32, 128) for r in (1, 4, 16) if r <= t]

    def capture(self, shape, forward, input_ids, positions, metadata) -> None:
        assert input_ids.shape == (shape.num_tokens,)
        self.captured[shape] = forward

    def run(self, shape, input_ids, positions, metadata) -> torch.Tensor:
        assert input_ids.shape == (shape.num_tokens,)
        self.runs.append(shape)
        return self.captured[shape](input_ids, positions, metadata)


class WarmedSampler(StepSampler):
    """The core's sampler, with a warm-up task per static shape that checks the dummy step it
    gets (what a compiling sampler would trace)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.warmed: list[StepShape] = []

    def warm_up(self, shapes, step_for, compute_logits):
        def task(shape: StepShape) -> None:
            hidden, logits_indices = step_for(shape)
            assert hidden.shape[0] == shape.num_tokens and logits_indices.shape == (shape.num_reqs,)
            self.warmed.append(shape)

        return [(f"sampler, {s.num_tokens} tokens", partial(task, s)) for s in shapes]


class PaddedCpuBackend(CpuBackend):
    """The CPU kernels cannot skip a write, so padding tokens write into a block of the
    worker's own, one more than the engine hands out."""

    def step_graphs(self, config, model_config, device):
        return EagerReplayGraphs()

    def step_sampler(self, config, model_config, device):
        return WarmedSampler(self.sampler_ops(), device)

    def create_worker(self, config):
        worker = super().create_worker(config)
        allocate = worker.allocate_kv_cache

        def allocate_with_padding_block(num_blocks: int, block_size: int) -> None:
            allocate(num_blocks + 1, block_size)
            worker.runner.graphs.pad_slot = num_blocks * block_size

        worker.allocate_kv_cache = allocate_with_padding_block
        return worker


def test_steps_padded_to_captured_shapes_give_hf_tokens(tiny_model):
    """A static-shape backend pads each step to a shape from `StepGraphs.shapes`; the tokens
    stay HF's, and larger steps run eagerly. Warm-up runs the backend's sampler's tasks after
    the captures."""
    path = tiny_model("llama")
    llm = LLM(path, backend=PaddedCpuBackend(), dtype="float32", num_kv_blocks=64, max_num_batched_tokens=64)
    runner = llm.engine.worker.runner
    graphs = runner.graphs
    assert set(graphs.captured) == set(graphs.shapes())
    assert graphs.runs == graphs.shapes(), "warm-up runs each shape once, after its capture"
    assert runner.sampler.warmed == graphs.shapes()
    assert [label.split(",")[0] for label, _ in runner.warm_up_times] == \
        ["forward"] * len(graphs.shapes()) + ["sampler"] * len(graphs.shapes())
    graphs.runs.clear()
    prompts = varied_prompts(1000)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    assert got == hf_greedy(path, prompts, 10)
    assert StepShape(32, 16) in graphs.runs or StepShape(128, 16) in graphs.runs
    assert any(s.num_tokens > s.num_reqs for s in graphs.runs), "no mixed prefill step was padded"
    assert_no_leaks(llm)


def test_pad_inputs_leaves_real_rows_alone():
    from octavo.backend import BatchLayout, pad_inputs
    from octavo.worker.model_runner import StepInputs

    layout = BatchLayout(torch.tensor([0, 3, 4], dtype=torch.int32), torch.tensor([3, 9], dtype=torch.int32),
                         torch.tensor([[4, 0], [5, 6]], dtype=torch.int32), torch.tensor([64, 65, 66, 104]),
                         3, 9, 16)
    inputs = StepInputs(torch.tensor([7, 8, 9, 10]), torch.tensor([0, 1, 2, 8]), layout, torch.tensor([2, 3]), [0, 1])
    padded = pad_inputs(inputs, StepShape(8, 4), pad_slot=-1, block_table_width=4)
    assert padded.input_ids.tolist() == [7, 8, 9, 10, 0, 0, 0, 0]
    assert padded.layout.query_start_loc.tolist() == [0, 3, 4, 4, 4]
    assert padded.layout.seq_lens.tolist() == [3, 9, 0, 0]
    assert padded.layout.slot_mapping.tolist() == [64, 65, 66, 104, -1, -1, -1, -1]
    assert padded.layout.block_tables.tolist() == [[4, 0, 0, 0], [5, 6, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert padded.logits_indices.tolist() == [2, 3, 0, 0] and padded.layout.num_tokens == 8
    with pytest.raises(ValueError, match="does not fit"):
        pad_inputs(inputs, StepShape(2, 4), -1, None)


def test_scheduled_request_is_plain_data():
    r = ScheduledRequest("a", 5, 1, [42], [], samples=True)
    assert pickle.loads(pickle.dumps(r)) == r
