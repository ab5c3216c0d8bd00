#!/usr/bin/env bash
# Runs tests/openai/check_client.py: the official OpenAI Python client against
# realm-host with a tenants file. Installs the pinned client and its
# dependencies into target/openai-pkgs with pip (PyPI is reachable in CI; no
# venv module needed). Expects the component and the default model to be built
# and fetched (scripts/test.sh does that first).
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION=3.54.0
source scripts/lib/pip-pinned.sh
pip_pinned "$PWD/target/openai-pkgs" openai "$OPENAI_VERSION"
cargo build --release --quiet -p realm-host
python3 tests/openai/check_client.py
