"""`octavo serve --device openvino` (the real SmolLM2 GGUF, bf16 where the CPU has it) answers
the official openai client, streamed and not."""
import pytest

pytest.importorskip("octavo_openvino", reason="the OpenVINO backend is not installed: pip install -e backends/openvino")

import openai
from server_utils import check_chat, free_port, octavo_serve


def test_openvino_serve_answers_the_openai_client(smollm2_gguf, tmp_path):
    args = [smollm2_gguf, "--device", "openvino", "--model-cache-dir", str(tmp_path), "--max-model-len", "1024",
            "--disable-log-stats"]
    with octavo_serve(args, free_port(), timeout=240) as proc:
        check_chat(proc.url)
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="none", max_retries=0, timeout=120)
        completion = client.completions.create(model=client.models.list().data[0].id,
                                               prompt="The capital of France is", temperature=0, max_tokens=8)
        assert completion.choices[0].text
