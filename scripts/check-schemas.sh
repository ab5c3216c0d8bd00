#!/usr/bin/env bash
# Structured outputs over real JSON Schemas (the JSONSchemaBench sample in
# ../shared/data): every output that finishes must validate; refusals are
# counted with their reasons. Installs the pinned `jsonschema` package into
# target/schema-pkgs. Arguments go to scripts/lib/schema_corpus.py, e.g.
#   scripts/check-schemas.sh --model qwen2.5-coder-0.5b-instruct-q4_k_m --limit 0
set -euo pipefail
cd "$(dirname "$0")/.."
JSONSCHEMA_VERSION=4.26.0
source scripts/lib/pip-pinned.sh
pip_pinned "$PWD/target/schema-pkgs" jsonschema "$JSONSCHEMA_VERSION"
python3 scripts/lib/schema_corpus.py "$@"
