#!/usr/bin/env bash
# Runs tests/openai/check_client.py: the official OpenAI Python client against
# realm-host with a tenants file. Installs the pinned client into a venv under
# target/ (PyPI is reachable in CI). Expects the host, the component and the
# default model to be built and fetched (scripts/test.sh does that first).
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION=3.54.0
venv=target/openai-venv
if ! "$venv/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_VERSION')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
fi
cargo build --release --quiet -p realm-host
"$venv/bin/python" tests/openai/check_client.py
