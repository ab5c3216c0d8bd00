#!/usr/bin/env bash
# Runs every test: checks the host's dependency rules (scripts/check-layers.py),
# builds the engine component and the test components, fetches
# the default model, runs the workspace's unit and end-to-end tests, then checks
# the official OpenAI Python client against a multi-tenant server and structured
# outputs against a sample of JSONSchemaBench (in ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check-layers.py
scripts/build-component.sh
scripts/build-test-components.sh
scripts/fetch-models.sh
export REALM_COMPONENT="$PWD/target/realm.wasm" REALM_MODELS_DIR="$PWD/models"
cargo test --release --workspace "$@"
scripts/openai-client-check.sh
# Structured outputs on a sample of real JSON Schemas: every finished output validates.
scripts/check-schemas.sh --limit 24 --max-tokens 128
