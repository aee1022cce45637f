#!/usr/bin/env bash
# Batch-1 decode, Octavo's cpu backend against llama.cpp on the same GGUF files, engines
# alternating per file and thread count (the machine is shared: compare within a row):
#   llama-bench -m FILE -p 0 -n 128 -t T (tg128)  vs
#   octavo bench latency --model FILE --input-len 128 --output-len 128 --num-threads T
#
#   bash bench/b1_vs_llamacpp.sh OUT.txt FILE.gguf...
# THREADS (default "1 2"), LLAMA_BIN (default /opt/peers/llama.cpp-build/bin).
set -euo pipefail
OUT="$1"; shift
LLAMA_BIN="${LLAMA_BIN:-/opt/peers/llama.cpp-build/bin}"
{
    echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), amx=$(grep -qw amx_tile /proc/cpuinfo && echo 1 || echo 0), commit $(git rev-parse --short HEAD)"
    echo "# file threads llama_tok_s octavo_tok_s ratio load"
} > "$OUT"
for file in "$@"; do
    for t in ${THREADS:-1 2}; do
        llama=$("$LLAMA_BIN/llama-bench" -m "$file" -p 0 -n 128 -t "$t" -o json | python -c "import json,sys; print(round(json.load(sys.stdin)[0]['avg_ts'], 1))")
        octavo=$(octavo bench latency --model "$file" --input-len 128 --output-len 128 --num-threads "$t" \
                 --max-model-len 1024 2> /dev/null | tail -1 | python -c "import json,sys; print(json.load(sys.stdin)['decode_tokens_per_s_median'])")
        echo "$(basename "$file") $t $llama $octavo $(python -c "print(round($octavo / $llama, 2))") $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$OUT"
    done
done
