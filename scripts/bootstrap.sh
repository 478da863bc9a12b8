#!/usr/bin/env bash
# Create .venv and install the project into it, once (with the extras the tests exercise: dev,
# ocr, fast = OpenVINO, scale = Ray + Milvus Lite). Re-runs only when pyproject.toml changes.
# torch is installed first at its pinned version: these machines carry that wheel on disk,
# and an unpinned torch would pull a multi-GB download.
#
# --gui (the run command, not the tests): make sure the window can open. Qt's X11 plugin links
# against system libraries a fresh Debian lacks (libxcb-icccm4, libxcb-keysyms1, ...);
# explorer/ui/qtdeps.py finds them with ldd. As root they are installed; otherwise the exact
# apt-get command is printed and the script stops.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GUI=0
[ "${1:-}" = "--gui" ] && GUI=1
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
if [ ! -f "$stamp" ]; then
  echo "[bootstrap] setting up .venv (first run only; a few minutes)..." >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,ocr,fast,scale]"
  # the OCR caption source; --no-deps: it asks for opencv-python, we ship opencv-python-headless
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps rapidocr_onnxruntime==1.4.4
  rm -f .venv/.installed-*
  touch "$stamp"
  echo "[bootstrap] done" >&2
fi
if [ "$GUI" = 1 ]; then
  missing=$(.venv/bin/python -m explorer.ui.qtdeps)
  if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "[bootstrap] installing what Qt's X11 plugin needs: $missing" >&2
      # shellcheck disable=SC2086
      apt-get install -y -qq $missing >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq $missing >/dev/null 2>&1; } || true
      missing=$(.venv/bin/python -m explorer.ui.qtdeps)
    fi
    if [ -n "$missing" ]; then
      echo "error: the window cannot open: Qt's X11 plugin needs Debian packages that are missing; install them with: sudo apt-get install -y $missing" >&2
      exit 1
    fi
  fi
fi
