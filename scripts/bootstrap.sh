#!/usr/bin/env bash
# Create .venv and install the project into it, once. Re-runs only when pyproject.toml changes.
# torch is installed first at its pinned version: these machines carry that wheel on disk,
# and an unpinned torch would pull a multi-GB download.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Fashion-MNIST (Debian's dataset-fashion-mnist, MIT) backs the fusion benchmark and its test.
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "[bootstrap] installing Debian's dataset-fashion-mnist..." >&2
    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) \
      || echo "[bootstrap] could not install dataset-fashion-mnist; the Fashion-MNIST test will be skipped" >&2
  else
    echo "[bootstrap] note: 'sudo apt-get install dataset-fashion-mnist' enables the Fashion-MNIST fusion test" >&2
  fi
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "[bootstrap] setting up .venv (first run only; a few minutes)..." >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,fast]"
rm -f .venv/.installed-*
touch "$stamp"
echo "[bootstrap] done" >&2
