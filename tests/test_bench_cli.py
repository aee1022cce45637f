"""`octavo bench throughput|latency` run end to end and report what they measured."""
import json

from octavo.cli import main


def test_bench_throughput_and_latency(tiny_model, tmp_path, capsys):
    model = tiny_model("llama")
    out = tmp_path / "t.json"
    assert main(["bench", "throughput", "--model", model, "--num-prompts", "4", "--input-len", "16",
                 "--output-len", "8", "--dtype", "float32", "--num-kv-blocks", "64",
                 "--output-json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_prompts"] == 4 and result["output_tokens_per_s"] > 0
    assert result["total_tokens_per_s"] > result["output_tokens_per_s"]
    assert main(["bench", "latency", "--model", model, "--batch-size", "2", "--input-len", "8",
                 "--output-len", "6", "--num-iters", "2", "--dtype", "float32", "--num-kv-blocks", "64"]) == 0
    latency = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert latency["batch_size"] == 2 and latency["decode_tokens_per_s_median"] > 0
