#!/usr/bin/env bash
# The CUDA backend on a GPU machine: its tests, the bandwidth roof, batch-1 decode and offline
# throughput at 64 and 256 sequences, with and without CUDA graphs, for random-weight models
# with the architectures of SmolLM2-135M and Qwen2.5-0.5B (bench/random_model.py says why).
#   bash bench/gpu.sh OUT_DIR            # JSON lines in OUT_DIR/gpu.jsonl, logs beside it
#   MODES=graphs SKIP_TESTS=1 bash bench/gpu.sh OUT_DIR   # a shorter run
set -uo pipefail
out=${1:?usage: gpu.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
[ -n "${SKIP_TESTS:-}" ] || OCTAVO_TRITON_DEVICE=cuda python -m pytest backends/cuda -q -x -p no:cacheprovider 2>&1 | tee "$out/tests.log" | tail -15
models=/tmp/octavo-bench-models
for arch in smollm2-135m qwen2.5-0.5b; do
  [ -d "$models/$arch" ] || python bench/random_model.py "$arch" "$models/$arch" > /dev/null 2>&1
done
python bench/gpu_roof.py "$models"/smollm2-135m "$models"/qwen2.5-0.5b | tee -a "$out/gpu.jsonl"
for arch in smollm2-135m qwen2.5-0.5b; do
  for mode in ${MODES:-graphs eager}; do
    flag=""; [ $mode = eager ] && flag=--enforce-eager
    for n in 64 256; do
      what=--all; [ $n = 256 ] && what=""
      python bench/throughput.py --engine octavo --device cuda --model "$models/$arch" $flag $what \
        --num-prompts $n --input-len 256 --output-len 128 --max-num-seqs 256 --b1-reps 5 \
        --tag "$arch $mode" --output "$out/gpu.jsonl" 2>> "$out/bench.log" > /dev/null \
        || { echo "FAILED: $arch $mode $n"; tail -20 "$out/bench.log"; }
    done
  done
done
python - "$out/gpu.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["mode"] == "roof":
        print(f"roof {r['model'].rsplit('/', 1)[-1]}: {r['copy_bandwidth_gb_s']} GB/s, {r['weight_bytes']/1e6:.0f} MB -> {r['roof_decode_tokens_per_s']} tok/s")
    elif r["mode"] == "batch-1":
        print(f"{r['tag']}: batch-1 decode {r['decode_tokens_per_s']} tok/s, ttft {r['ttft_s']} s")
    else:
        print(f"{r['tag']}: {r['num_prompts']} seqs {r['output_tokens_per_s']} out tok/s, {r['total_tokens_per_s']} total tok/s")
PY
