#!/usr/bin/env bash
# Structured outputs over real JSON Schemas (the JSONSchemaBench sample in
# ../shared/data): every output that finishes must validate; refusals are
# counted with their reasons. Installs the pinned `jsonschema` package into
# target/schema-pkgs. Arguments go to scripts/lib/schema_corpus.py, e.g.
#   scripts/check-schemas.sh --model qwen2.5-coder-0.5b-instruct-q4_k_m --limit 0
set -euo pipefail
cd "$(dirname "$0")/.."
JSONSCHEMA_VERSION=4.26.0
pkgs="$PWD/target/schema-pkgs"
export PYTHONPATH="$pkgs${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import jsonschema, importlib.metadata as m, sys; sys.exit(m.version('jsonschema') != '$JSONSCHEMA_VERSION')" 2>/dev/null; then
  rm -rf "$pkgs"
  python3 -m pip install --quiet --disable-pip-version-check --target "$pkgs" "jsonschema==$JSONSCHEMA_VERSION"
fi
python3 scripts/lib/schema_corpus.py "$@"
