#!/usr/bin/env bash
# Builds everything, fetches the default model, and serves the API.
#   scripts/serve.sh [realm-host serve options...]   (default: --listen 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-component.sh
cargo build --release -p realm-host
scripts/fetch-models.sh
exec target/release/realm-host serve --component target/realm.wasm --models-dir models "$@"
