"""The fake NxDI is the list of what octavo-neuron depends on in NxD Inference.

Only `octavo_neuron/nxdi.py` names the SDK, and every name it imports exists in the fake
(tests/fake_nxdi); the fake's NeuronConfig takes only the keyword arguments it lists, and
the worker's NeuronConfig goes through it. A backend change that reaches for anything more
of NxDI fails here, or in the engine tests that run the whole path on the fake.
"""
import ast
import importlib
from pathlib import Path

import octavo_neuron
from neuron_on_fake_nxdi import FAKE_NXDI

PACKAGE = Path(octavo_neuron.__file__).parent
SDK = "neuronx_distributed_inference"


def sdk_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from neuronx_distributed_inference... import name` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(SDK):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith(SDK)]
    return found


def test_only_the_adapter_imports_the_sdk():
    users = {p.name for p in PACKAGE.rglob("*.py") if SDK in p.read_text()}
    assert users == {"nxdi.py"}, users


def test_every_imported_name_is_in_the_fake():
    imports = sdk_imports(PACKAGE / "nxdi.py")
    assert {name for _, name in imports} == {"MODEL_TYPES", "OnDeviceSamplingConfig", "load_pretrained_config",
                                            "prepare_sampling_params"}
    for module, name in imports:
        mod = importlib.import_module(module)
        assert mod.__file__.startswith(FAKE_NXDI), mod.__file__
        assert hasattr(mod, name), f"{module}.{name} is not in the fake NxDI"
