"""NxD Inference replaced by the tests' fake: the one place octavo-neuron's SDK is substituted.

Importing this module puts `fake_nxdi/` (a package named `neuronx_distributed_inference`
that defines only what octavo-neuron calls, running the HF model on the CPU over a paged
cache; see its docstring) first on `sys.path`. `FakeNxdiNeuronBackend` is `NeuronBackend`
with its availability answered for the fake; everything else is the real backend.

Conformance run: python -m pytest --pyargs octavo.testing.conformance
    --octavo-backend backends/neuron/tests/neuron_on_fake_nxdi.py:FakeNxdiNeuronBackend
"""
from __future__ import annotations

import os
import sys

FAKE_NXDI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_nxdi")
if FAKE_NXDI not in sys.path:
    sys.path.insert(0, FAKE_NXDI)

import neuronx_distributed_inference  # noqa: E402

assert neuronx_distributed_inference.__version__.endswith("+octavo.fake"), neuronx_distributed_inference.__file__

from octavo.backend import Availability  # noqa: E402
from octavo_neuron import NeuronBackend  # noqa: E402


class FakeNxdiNeuronBackend(NeuronBackend):
    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "NxD Inference replaced by the tests' fake (HF model on the CPU)")
