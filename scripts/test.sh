#!/usr/bin/env bash
# Sets up everything the tests need, then runs the whole suite (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
python -m pytest "$@"
