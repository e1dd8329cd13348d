#!/usr/bin/env bash
# Installs the Helm library (the PyPI package helm-sdkpy, which carries Helm's Go code as a shared
# library) into .venv-helm, so tests/unit/test_deploy.py can run real `helm lint` on the chart.
# No helm binary is installable here (not in Debian, no PyPI wheel with the CLI), and helm-sdkpy
# needs Python 3.12 or newer, so it lives in its own venv beside the project's 3.11 one.
# Best effort: without it, that one test skips and says why.
set -uo pipefail
VENV=${HELM_VENV:-.venv-helm}
VERSION=0.1.32
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import helm_sdkpy" 2>/dev/null; then
  exit 0
fi
py=""
for candidate in python3.13 python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python" /root/.pyenv/versions/3.12.1/bin/python; do
  if command -v "$candidate" >/dev/null 2>&1 \
    && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
    py=$(command -v "$candidate"); break
  fi
done
if [ -z "$py" ]; then
  echo "warning: no Python >= 3.12 found; helm lint tests will be skipped" >&2
  exit 0
fi
"$py" -m venv "$VENV" && "$VENV/bin/python" -m pip install -q "helm-sdkpy==$VERSION" \
  || { echo "warning: could not install helm-sdkpy; helm lint tests will be skipped" >&2; rm -rf "$VENV"; }
exit 0
