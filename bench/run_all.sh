#!/usr/bin/env bash
# Octavo vs HF transformers vs vLLM-CPU, one engine after the other in one run:
# offline throughput (64 prompts, 256 in / 128 out, ignore_eos) and batch-1 decode tokens/s
# (128 in / 128 out). Each engine loads once, warms up (not timed), then is measured.
#
#   bench/run_all.sh                      # all three engines
#   ENGINES="octavo vllm" bench/run_all.sh
#   nice -n 10 bench/run_all.sh --num-prompts 16   # extra args go to every throughput.py call
#
# Writes bench/results/throughput-<date>.json and prints a table with octavo/hf, octavo/vllm.
# Environment:
#   MODEL           bf16 HF directory (default /opt/models/smollm2-135m-instruct;
#                   made by bench/prepare_model.py if missing)
#   ENGINES         which engines, in order (default "octavo hf vllm")
#   PY              python with octavo + transformers (default: python3)
#   VLLM_PY         python of the vLLM-CPU venv (default /opt/peers/vllm/bin/python)
#   HF_BATCH_SIZES  HF generate batch sizes to try, best one counts (default 64)
#   VLLM_CPU_KVCACHE_SPACE / VLLM_CPU_OMP_THREADS_BIND  default 2 / 0-1 (shared/PEERS.md)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${MODEL:-/opt/models/smollm2-135m-instruct}"
ENGINES="${ENGINES:-octavo hf vllm}"
PY="${PY:-python3}"
VLLM_PY="${VLLM_PY:-/opt/peers/vllm/bin/python}"
HF_BATCH_SIZES="${HF_BATCH_SIZES:-64}"

export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0-1}"

stamp="$(date +%Y-%m-%d-%H%M%S)"
mkdir -p "$here/results"
jsonl="$here/results/throughput-$stamp.jsonl.tmp"
out="$here/results/throughput-$stamp.json"
: > "$jsonl"

if [ ! -f "$MODEL/config.json" ]; then
    echo "== $MODEL missing: converting the GGUF" >&2
    "$PY" "$here/prepare_model.py" --out "$MODEL" || exit 1
fi

meta=(--meta "model=$MODEL" --meta "engines=$ENGINES" --meta "started=$(date -Iseconds)"
      --meta "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg)" --meta "args=$*")
for engine in $ENGINES; do
    py="$PY"; extra=()
    case "$engine" in
        vllm) py="$VLLM_PY" ;;
        hf) extra=(--hf-batch-size "$HF_BATCH_SIZES") ;;
    esac
    echo "== $engine ($py) $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >&2
    if ! "$py" "$here/throughput.py" --engine "$engine" --model "$MODEL" --all \
            "${extra[@]}" "$@" --output "$jsonl" > /dev/null; then
        echo "== $engine FAILED" >&2
        meta+=(--meta "failed_$engine=$engine exited non-zero")
    fi
done
meta+=(--meta "finished=$(date -Iseconds)" --meta "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)")

"$PY" "$here/report.py" "$jsonl" --out "$out" "${meta[@]}"
rc=$?
rm -f "$jsonl"
exit $rc
