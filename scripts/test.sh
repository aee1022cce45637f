#!/usr/bin/env bash
# Sets up everything the tests need, then runs the whole suite (arguments go to pytest), then
# the conformance kit against each in-tree backend and the out-of-tree example, as a vendor
# runs it, then the TPU stage (scripts/test_tpu.sh: torch 2.9 in its own environment).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
python -m pytest "$@"
kit=(python -m pytest -q -p no:cacheprovider --pyargs octavo.testing.conformance)
"${kit[@]}" --octavo-device cpu
"${kit[@]}" --octavo-device openvino
TRITON_INTERPRET=1 "${kit[@]}" --octavo-backend backends/cuda/tests/cuda_emulation.py:InterpretedCudaBackend \
    --octavo-families llama
TRITON_INTERPRET=1 "${kit[@]}" --octavo-backend backends/xpu/tests/xpu_on_cpu.py:XpuOnCpuBackend \
    --octavo-families qwen2
"${kit[@]}" --octavo-backend backends/neuron/tests/neuron_on_fake_nxdi.py:FakeNxdiNeuronBackend \
    --octavo-families llama,qwen2
bash scripts/test_example_backend.sh
# The TPU backend needs torch 2.9: its own environment and stage (OCTAVO_SKIP_TPU_STAGE=1 skips it).
if [ "${OCTAVO_SKIP_TPU_STAGE:-0}" != 1 ]; then
  bash scripts/test_tpu.sh
fi
