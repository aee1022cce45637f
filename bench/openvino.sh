#!/usr/bin/env bash
# OpenVINO backend (bf16, int8, int4 weights) vs the cpu backend vs vLLM-CPU vs llama.cpp,
# one engine after the other in one run, on one GGUF model:
#   batch-1 decode tok/s (128 in / 128 out): `octavo bench latency`, vLLM through
#     bench/throughput.py --batch-1, llama.cpp through llama-bench (tg128 on LLAMA_GGUF);
#   serving output tok/s at concurrency 1/8/32 (128 in / 128 out, greedy, ignore_eos):
#     each server in turn on 127.0.0.1, loaded by `octavo bench serve`.
#
#   nice -n 10 bash bench/openvino.sh MODEL.gguf OUT_DIR
#
# Environment:
#   ENGINES      default "ov-bf16 ov-int8 ov-int4 cpu vllm llama"
#   HF_DIR       bf16 HF directory of the same model, for vLLM and the prompts' tokenizer
#                (bench/prepare_model.py --gguf MODEL --out HF_DIR makes it)
#   LLAMA_GGUF   the GGUF llama.cpp runs (default: MODEL; the issue's comparison wants the Q8_0 file)
#   LLAMA_BIN    folder with llama-server and llama-bench (default /opt/peers/llama.cpp-build/bin)
#   VLLM_PY      python of the vLLM-CPU venv (default /opt/peers/vllm/bin/python)
#   SERVE_RUNS   concurrency:requests pairs (default "1:8 8:32 32:64")
# Writes OUT_DIR/<engine>-latency.json, OUT_DIR/serve-<engine>-c<N>.json and OUT_DIR/load.txt
# (each step with the time and load average: the machine is shared).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="$1"; OUT="$2"
HF_DIR="${HF_DIR:?set HF_DIR to the bf16 HF directory of the model (bench/prepare_model.py)}"
ENGINES="${ENGINES:-ov-bf16 ov-int8 ov-int4 cpu vllm llama}"
LLAMA_GGUF="${LLAMA_GGUF:-$MODEL}"
LLAMA_BIN="${LLAMA_BIN:-/opt/peers/llama.cpp-build/bin}"
VLLM_PY="${VLLM_PY:-/opt/peers/vllm/bin/python}"
SERVE_RUNS="${SERVE_RUNS:-1:8 8:32 32:64}"
PORT=8300
mkdir -p "$OUT"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0-1}"

note() { echo "== $* ($(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$OUT/load.txt" >&2; }

octavo_args() {  # engine -> octavo flags
    case "$1" in
        ov-bf16) echo "--device openvino --dtype bfloat16" ;;
        ov-int8) echo "--device openvino --dtype bfloat16 --quantization int8 --kv-cache-dtype u8" ;;
        ov-int4) echo "--device openvino --dtype bfloat16 --quantization int4 --kv-cache-dtype u8" ;;
        cpu) echo "--device cpu --dtype bfloat16" ;;
    esac
}

wait_healthy() {  # url pid
    for _ in $(seq 600); do
        curl -sf "$1/health" > /dev/null && return 0
        kill -0 "$2" 2> /dev/null || return 1
        sleep 1
    done
    return 1
}

start_server() {  # engine port -> pid on stdout
    case "$1" in
        vllm)
            "$VLLM_PY" -m vllm.entrypoints.openai.api_server --model "$HF_DIR" --host 127.0.0.1 --port "$2" \
                --dtype bfloat16 --max-model-len 2048 > "$OUT/vllm-server.log" 2>&1 & ;;
        llama)
            "$LLAMA_BIN/llama-server" -m "$LLAMA_GGUF" --host 127.0.0.1 --port "$2" -t 2 -c 16384 --parallel 32 \
                --cont-batching --no-webui > "$OUT/llama-server.log" 2>&1 & ;;
        *)
            # shellcheck disable=SC2046
            octavo serve "$MODEL" $(octavo_args "$1") --host 127.0.0.1 --port "$2" --max-model-len 2048 \
                --disable-log-stats > "$OUT/$1-server.log" 2>&1 & ;;
    esac
    echo $!
}

for engine in $ENGINES; do
    note "$engine batch-1"
    case "$engine" in
        vllm) "$VLLM_PY" "$here/throughput.py" --engine vllm --model "$HF_DIR" --batch-1 \
                  --output "$OUT/vllm-latency.json" > /dev/null ;;
        llama) "$LLAMA_BIN/llama-bench" -m "$LLAMA_GGUF" -p 128 -n 128 -t 2 -o json > "$OUT/llama-latency.json" ;;
        # shellcheck disable=SC2046
        *) octavo bench latency --model "$MODEL" $(octavo_args "$engine") --input-len 128 --output-len 128 \
               --num-iters 3 --output-json "$OUT/$engine-latency.json" > /dev/null ;;
    esac
    note "$engine serving"
    pid=$(start_server "$engine" "$PORT")
    if wait_healthy "http://127.0.0.1:$PORT" "$pid"; then
        for run in $SERVE_RUNS; do
            octavo bench serve --base-url "http://127.0.0.1:$PORT" --label "$engine" --input-len 128 \
                --output-len 128 --max-concurrency "${run%%:*}" --num-prompts "${run##*:}" --tokenizer "$HF_DIR" \
                --result-file "$OUT/serve-$engine-c${run%%:*}.json" > /dev/null || note "$engine c=${run%%:*} FAILED"
        done
    else
        note "$engine server did not come up"
    fi
    kill "$pid" 2> /dev/null; wait "$pid" 2> /dev/null
    PORT=$((PORT + 1))
done
note "done"
