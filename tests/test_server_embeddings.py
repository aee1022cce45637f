"""POST /v1/embeddings on a pooling server (`--runner pooling`), through the official `openai`
client: float and base64, list and token-id inputs, usage, OpenAI-style 400s; and the routes
each runner does not serve answer a clear 400."""
from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F
from server_utils import MODEL_NAME, running_server, server_model_path

from octavo import PoolerConfig
from octavo.server.state import ServerSettings
from octavo.testing.tiny_models import hf_hidden_states


@pytest.fixture(scope="module")
def server():
    """The tiny Llama, last-token pooled; trained (so to say) for 16 or 64 Matryoshka dimensions."""
    with running_server(ServerSettings(served_model_names=[MODEL_NAME], log_stats=False), runner="pooling",
                        pooler_config=PoolerConfig(is_matryoshka=True, matryoshka_dimensions=[16, 64])) as srv:
        yield srv


@pytest.fixture(scope="module")
def tok(server):
    return server.state.tokenizer


def embed(client, **kw):
    return client.embeddings.create(**{"model": MODEL_NAME, "input": "Hello world", **kw})


def test_float_and_base64_equal_hf(openai_client, tok):
    ids = tok("Hello world").input_ids
    want = F.normalize(hf_hidden_states(server_model_path(), ids)[-1], dim=-1)
    floats = embed(openai_client, encoding_format="float")
    b64 = embed(openai_client, encoding_format="base64")
    default = embed(openai_client)  # the client asks for base64 and decodes it itself
    assert floats.object == "list" and floats.model == MODEL_NAME and floats.data[0].object == "embedding"
    assert torch.allclose(torch.tensor(floats.data[0].embedding), want, atol=1e-5, rtol=0)
    little_endian_f32 = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")
    assert little_endian_f32.tolist() == floats.data[0].embedding == default.data[0].embedding
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == len(ids)
    short = embed(openai_client, encoding_format="float", dimensions=16).data[0].embedding
    assert torch.allclose(torch.tensor(short), F.normalize(want[:16], dim=-1), atol=1e-5, rtol=0)


def test_list_and_token_id_inputs(openai_client, tok):
    texts = ["The quick brown fox", "jumps", "over the lazy dog"]
    ids = [tok(t).input_ids for t in texts]
    by_text = embed(openai_client, input=texts)
    assert [d.index for d in by_text.data] == [0, 1, 2]
    assert by_text.usage.prompt_tokens == by_text.usage.total_tokens == sum(map(len, ids))
    by_ids = embed(openai_client, input=ids)
    one = embed(openai_client, input=ids[1])
    for a, b in zip(by_text.data, by_ids.data):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert one.data[0].embedding == pytest.approx(by_ids.data[1].embedding, abs=1e-6)


@pytest.mark.parametrize("kw, param, message", [
    ({"dimensions": 8}, "dimensions", "dimensions must be one of [16, 64]"),
    ({"input": []}, "input", "must not be empty"),
    ({"input": ""}, "input", "empty string"),
    ({"input": [[]]}, "input", "empty"),
    ({"input": [1, 100000]}, "input", "token ids must be in"),
    ({"input": [7] * 600}, "input", "maximum context length is 512 tokens"),
    ({"input": 3}, "input", "invalid value"),
    ({"input": ["a", [1, 2]]}, "input", "invalid value"),
    ({"encoding_format": "int8"}, "encoding_format", "invalid value"),
])
def test_bad_requests_are_openai_400s(openai_client, kw, param, message):
    with pytest.raises(openai.BadRequestError) as err:
        embed(openai_client, **kw)
    assert err.value.body["param"].startswith(param) and message in err.value.body["message"]
    assert err.value.body["type"] == "invalid_request_error"


def test_unknown_model_is_404(openai_client):
    with pytest.raises(openai.NotFoundError):
        embed(openai_client, model="other")


def test_generation_routes_on_a_pooling_server_are_400(openai_client):
    with pytest.raises(openai.BadRequestError, match="this server serves embeddings"):
        openai_client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=4)
    with pytest.raises(openai.BadRequestError, match="this server serves embeddings"):
        openai_client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}])


def test_embeddings_on_a_generating_server_are_400():
    with running_server(ServerSettings(served_model_names=[MODEL_NAME], log_stats=False)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="does not support the Embeddings API"):
            embed(client)
