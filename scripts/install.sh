#!/usr/bin/env bash
# Install aiops into the current Python environment.
#   bash scripts/install.sh          runtime only
#   bash scripts/install.sh --test   plus test tools and the Debian prometheus,
#                                    promtool and alertmanager the tests start
# torch goes first: when no torch is installed we install torch==2.13.0 (set AIOPS_TORCH_SPEC
# to choose another build, e.g. a CUDA one); an installed torch is kept, so a GPU machine's
# own torch is used as is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "==> installing ${AIOPS_TORCH_SPEC:-torch==2.13.0}"
  "${PIP[@]}" "${AIOPS_TORCH_SPEC:-torch==2.13.0}"
fi

if [[ $want_test == 1 ]]; then
  echo "==> installing aiops with test extras"
  "${PIP[@]}" -e ".[test]"
  need=()
  command -v prometheus >/dev/null || need+=(prometheus)
  command -v promtool >/dev/null || need+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
  command -v amtool >/dev/null || need+=(prometheus-alertmanager)
  command -v chromium >/dev/null || need+=(chromium)  # the /ui browser tests
  command -v chromedriver >/dev/null || need+=(chromium-driver)
  if (( ${#need[@]} )); then
    echo "==> installing Debian packages: ${need[*]}"
    SUDO=""
    [[ $(id -u) != 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
else
  echo "==> installing aiops"
  "${PIP[@]}" -e .
fi
