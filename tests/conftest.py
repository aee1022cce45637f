import pytest

from octavo.testing.tiny_models import make_tiny_model


def pytest_collection_finish(session):
    """Start the openai 2.x / LlamaIndex client process early: its imports then overlap other tests."""
    if any(item.module.__name__ == "test_server_openai2_clients" for item in session.items):
        from test_server_openai2_clients import start_clients

        start_clients()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family, **config) -> path, built once per session per variant."""
    built: dict[tuple, str] = {}

    def get(family: str = "llama", **overrides) -> str:
        key = (family, tuple(sorted(overrides.items())))
        if key not in built:
            path = tmp_path_factory.mktemp(f"tiny-{family}")
            built[key] = make_tiny_model(family, str(path), **overrides)
        return built[key]

    return get


@pytest.fixture(scope="session")
def hermes_server():
    """The tiny Llama served with the hermes tool parser, shared by the tool-calling modules."""
    from server_utils import tool_server

    with tool_server() as srv:
        yield srv


@pytest.fixture(scope="session")
def reasoning_server():
    """The tiny Qwen3 (think tokens, a think-opening template) served with the qwen3 reasoning
    parser and the hermes tool parser, shared by the reasoning and Responses modules."""
    from server_utils import tool_server

    with tool_server(reasoning=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    """An HTTP client for the module's `server` fixture (the server tests define one each)."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def openai_client(server):
    """The official `openai` client for the module's `server` fixture."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def llama_llm(tiny_model):
    """A shared fp32 engine over the tiny Llama, for tests that only add requests."""
    from octavo import LLM

    return LLM(tiny_model("llama"), dtype="float32", num_kv_blocks=256)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (4 logical CPUs) for the session's Ray tests; RAY_ADDRESS points to it."""
    pytest.importorskip("ray", reason="Ray is an optional dependency: pip install 'octavo[ray]'")
    from ray_cluster import local_ray_cluster

    with local_ray_cluster() as address:
        yield address
