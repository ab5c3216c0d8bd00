#!/usr/bin/env bash
# Builds the engine component: guest/ for wasm32-wasip2, written to target/realm.wasm
# (override with REALM_COMPONENT). Adds the wasm32-wasip2 target when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${REALM_COMPONENT:-target/realm.wasm}"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
# Components ship without debug info: wasmtime compiles less at a cold start.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --quiet --release -p realm-guest --target wasm32-wasip2
mkdir -p "$(dirname "$out")"
cp target/wasm32-wasip2/release/realm_guest.wasm "$out"
echo "component: $out" >&2
