#!/usr/bin/env bash
# Packs what scripts/gpu/check.sh needs on a GPU machine into target/gpu/ (under target/):
# stripped, xz-compressed release binaries (realm-host, the unit tests, the
# e2e tests), the three models' headers, and SmolLM2 cut in two halves that
# fit two calls' 64 MiB. Carry target/gpu/bin target/gpu/heads target/gpu/a target/realm.wasm
# target/test-components in one call, then target/gpu/b in the next;
# scripts/gpu/peer.sh needs target/gpu/bin target/gpu/heads target/gpu/llama
# target/realm.wasm.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p realm-host --bins --tests
rm -rf target/gpu && mkdir -p target/gpu/bin target/gpu/heads target/gpu/a target/gpu/b
exe() { cargo test --release -p realm-host "$@" --no-run 2>&1 | grep -o 'target/release/deps/[^)]*' | tail -1; }
strip -o target/gpu/bin/realm-host target/release/realm-host
strip -o target/gpu/bin/unit "$(exe --lib)"
strip -o target/gpu/bin/e2e "$(exe --test e2e)"
xz -T0 -6 target/gpu/bin/*
for m in models/*.gguf; do
  python3 scripts/gpu/gguf-skeleton.py head "$m" "target/gpu/heads/$(basename "$m" .gguf).head"
done
xz -T0 -6 target/gpu/heads/*
# llama.cpp's source for scripts/gpu/peer.sh, without what its CUDA build
# of llama-batched-bench does not read (docs, models, other backends).
# shellcheck source=../lib/llama-cpp.sh
source scripts/lib/llama-cpp.sh
llama_cpp_fetch
mkdir -p target/gpu/llama
tar cJf target/gpu/llama/llama.tar.xz -C "$SRC/.." \
  --exclude=llama.cpp/{docs,models,tests,benches,media,gguf-py,conversion,examples,tools/ui} \
  --exclude=llama.cpp/ggml/src/ggml-{metal,sycl,vulkan,opencl,hexagon,et} llama.cpp
smol=models/SmolLM2-135M-Instruct.Q4_1.gguf
head -c 40000000 "$smol" >target/gpu/a/part
tail -c +40000001 "$smol" >target/gpu/b/part
du -sh target/gpu/*
