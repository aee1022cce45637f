#!/usr/bin/env bash
# The TPU stage: torch-xla 2.9 requires torch 2.9, so this runs in its own virtual environment
# (the rest of CI keeps torch 2.13). The environment is kept under ~/.cache/octavo, keyed by
# backends/tpu/requirements-ci.txt (built on first use: ~4 min and 7.6 GB, the CUDA build of
# torch 2.9 being the only one on PyPI). Runs core tests on torch 2.9 (cpu backend) with the
# TPU backend's tests, then the conformance kit on XLA's CPU client (PJRT_DEVICE=CPU).
# Arguments go to every pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS=backends/tpu/requirements-ci.txt
VENV="${OCTAVO_TPU_VENV:-$HOME/.cache/octavo/tpu-venv-$(sha256sum "$REQUIREMENTS" | cut -c1-12)}"
PY="$VENV/bin/python"
if [ ! -f "$VENV/built" ]; then  # written last: a build cut short is redone
  rm -rf "$VENV"
  python -m venv "$VENV"
  "$PY" -m pip install -q -r "$REQUIREMENTS"
  touch "$VENV/built"
fi
# octavo from this checkout; octavo-cpu without its C++ kernels: built against torch 2.9 they would replace, in this
# checkout, the build the main environment's torch runs; the stage runs plain torch.
export OCTAVO_CPU_KERNELS=0
OCTAVO_CPU_BUILD=0 "$PY" -m pip install -q --no-deps --no-build-isolation -e . -e backends/cpu -e backends/tpu
# On torch 2.9: the core (cpu backend, plain torch: model math against HF, the KV cache,
# sampling parameters) and the TPU backend's own tests on XLA's CPU client (PJRT_DEVICE=CPU,
# chosen by name only, so `--device auto` stays on the cpu backend), in one process; then the
# whole conformance kit (fp32 against HF, the issue's four families; small limits keep each
# engine at 15 graphs).
export PJRT_DEVICE=CPU
"$PY" -m pytest -q tests/test_engine_vs_hf.py tests/test_kv_cache.py \
  tests/test_sampling_params.py tests/test_device_neutral_core.py backends/tpu/tests "$@"
"$PY" -m pytest -q --pyargs octavo.testing.conformance --octavo-device tpu \
  --octavo-families llama,qwen2,mistral,gemma3 \
  --octavo-engine-arg max_num_seqs=16 --octavo-engine-arg max_num_batched_tokens=64 "$@"
