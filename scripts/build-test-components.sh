#!/usr/bin/env bash
# Builds the components the isolation tests load into target/test-components/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
# Components ship without debug info: wasmtime compiles less at a cold start.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --quiet --release -p realm-test-misbehaving --target wasm32-wasip2
mkdir -p target/test-components
cp target/wasm32-wasip2/release/realm_test_misbehaving.wasm target/test-components/misbehaving.wasm
