#!/usr/bin/env bash
# Install aiops and run the whole pipeline on the embedded synthetic shop (no servers needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m aiops demo "$@"
