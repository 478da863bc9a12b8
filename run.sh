#!/usr/bin/env bash
# The run command: sets up .venv when missing, makes the sample gallery from photos that
# scikit-image ships, indexes it with the offline default models, and opens the window.
# (bootstrap --gui also installs, or names, the system libraries Qt's X11 plugin needs.)
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh --gui
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python main.py --demo "$@"
