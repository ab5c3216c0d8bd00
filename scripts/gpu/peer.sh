#!/usr/bin/env bash
# llama.cpp's CUDA llama-batched-bench beside realm's tenants bench, in one
# run on the GPU machine, on the same model files (scripts/gpu/check.sh's
# skeleton models: the real headers with random weights of the same types).
# llama.cpp 0c1e570 comes as the trimmed source that scripts/gpu/pack.sh puts
# in target/gpu/llama; its build goes to /tmp and resumes if a call ran out
# of time (while the machine is still held).
#
#   scripts/gpu/peer.sh [model names...]      (default: the three models)
#   PEER_BUILD_ONLY=1 scripts/gpu/peer.sh     (only the build, e.g. in the background of check.sh)
set -uo pipefail
ROOT="$(pwd)"
OUT="${OUT:-/tmp/gpu-out}"
LOG="$OUT/peer.log"
mkdir -p "$OUT" target/release target/models-synth
SRC=/tmp/llama-src/llama.cpp
BUILD=/tmp/llama-build
[ -f "$SRC/include/llama.h" ] || { mkdir -p /tmp/llama-src && xz -dc target/gpu/llama/llama.tar.xz | tar x -C /tmp/llama-src; }
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DGGML_CUDA_FA_ALL_QUANTS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF >>"$LOG" 2>&1 || { tail -30 "$LOG"; exit 1; }
fi
cmake --build "$BUILD" -j "$(nproc)" --target llama-batched-bench >>"$LOG" 2>&1 || { tail -30 "$LOG"; exit 1; }
[ -z "${PEER_BUILD_ONLY:-}" ] || exit 0

[ -f target/gpu/bin/realm-host.xz ] && xz -dc target/gpu/bin/realm-host.xz >target/release/realm-host && chmod +x target/release/realm-host
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(SmolLM2-135M-Instruct.Q4_1 gemma-3-270m-q4_k_m qwen2.5-coder-0.5b-instruct-q4_k_m)
for name in "${models[@]}"; do
  m="target/models-synth/$name.gguf"
  [ -f "$m" ] || { xz -dc "target/gpu/heads/$name.head.xz" >"/tmp/$name.head" && python3 scripts/gpu/gguf-skeleton.py fill "/tmp/$name.head" "$m"; }
  echo "=== $name: llama.cpp 0c1e570 llama-batched-bench (CUDA, flash attention on)" | tee -a "$LOG"
  "$BUILD/bin/llama-batched-bench" -m "$m" -ngl 99 -fa on -c 17408 -b 2048 -ub 512 -npp 128 -ntg 128 -npl 1,4,16,64 \
    2>>"$LOG" | tee -a "$LOG" | grep -E "^\|"
  echo "=== $name: realm" | tee -a "$LOG"
  target/release/realm-host bench --component "$ROOT/target/realm.wasm" --device cuda --model "$ROOT/$m" -p 0 -n 0 \
    --first-token 0 --instantiations 0 --constructions 0 --memory 0 --tenants 1,4,16,64 2>>"$LOG" | tee -a "$LOG" | grep -E "^\|"
done
