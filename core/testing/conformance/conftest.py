"""The kit's fixtures: the backend under test (from the plugin's options), one tiny model per
family, and one shared fp32 engine per family."""
from __future__ import annotations

import pytest

from octavo.testing.plugin import KitTarget, kit_target


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "family" in metafunc.fixturenames:
        target = kit_target(metafunc.config)
        metafunc.parametrize("family", target.families if target else ["(no backend given)"], scope="session")


@pytest.fixture(scope="session")
def kit(request: pytest.FixtureRequest) -> KitTarget:
    target = kit_target(request.config)
    if target is None:
        pytest.skip("the conformance kit needs --octavo-device NAME or --octavo-backend MODULE:CLASS")
    return target


@pytest.fixture(scope="session")
def model_dir(kit: KitTarget, family: str, tmp_path_factory) -> str:
    """The tiny random model of `family`."""
    from octavo.testing.tiny_models import make_tiny_model

    return make_tiny_model(family, str(tmp_path_factory.mktemp(f"kit-{family}")))


@pytest.fixture(scope="session")
def llm(kit: KitTarget, model_dir: str):
    """One fp32 engine per family, shared by the checks that only add requests."""
    return kit.make_llm(model_dir, dtype="float32", num_kv_blocks=256)
