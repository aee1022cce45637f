#!/usr/bin/env bash
# The out-of-tree example backend as a vendor's user installs it: a clean virtual environment
# with octavo and octavo-example from this repository (torch pinned to the local CPU build),
# then `octavo devices`, `octavo serve --device example` under the openai client, and the
# conformance kit with `--octavo-device example`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python -m venv "$venv"
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q "torch==2.13.0" . examples/octavo-example-backend pytest openai
devices="$("$venv/bin/octavo" devices)"  # not `tee /dev/stderr`: reopening it truncates a log file
echo "$devices"
grep -Eq '^example +usable' <<< "$devices"
cd examples/octavo-example-backend
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests
"$venv/bin/python" -m pytest -q -p no:cacheprovider --pyargs octavo.testing.conformance --octavo-device example \
    --octavo-families llama,gemma3
