#!/usr/bin/env bash
# The CUDA backend's checks and speeds on a lent GPU machine, which has no Rust
# toolchain and cannot reach the models: it runs binaries built here and
# carried in target/gpu/ (see scripts/gpu/pack.sh), on
#  - model files rebuilt from their headers with random weights
#    (scripts/gpu/gguf-skeleton.py): the real shapes, types and tokenizers;
#  - the real SmolLM2 when both halves of it were carried (target/gpu/a and
#    target/gpu/b, two calls; the first is kept in /tmp), for the greedy and logit checks against
#    llama.cpp's goldens.
# Everything goes to $OUT/log; a summary is printed last.
#
#   scripts/gpu/check.sh [all|synth|real]    (which of the two parts to run)
set -uo pipefail
part="${1:-all}"

ROOT="$(pwd)"
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT" target/release target/models-synth
LOG="$OUT/log"
summary=()
step() {
  local name="$1"; shift
  echo "=== $name: $*" >>"$LOG"
  local start=$SECONDS
  if "$@" >>"$LOG" 2>&1; then summary+=("ok   $name ($((SECONDS - start)) s)"); else summary+=("FAIL $name ($((SECONDS - start)) s)"); fi
}

# The test binaries look for the workspace where they were built.
mkdir -p /work && { [ -e /work/main ] || ln -s "$ROOT" /work/main; }
for b in realm-host unit e2e; do
  [ -f "target/gpu/bin/$b.xz" ] && xz -dc "target/gpu/bin/$b.xz" >"target/release/$b" && chmod +x "target/release/$b"
done
if ! ldconfig -p | grep -q 'libnvrtc.so.13'; then
  lib="$(find / -xdev -name 'libnvrtc.so.13*' 2>/dev/null | head -1)"
  [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nvidia-smi -L >>"$LOG" 2>&1
HOST=target/release/realm-host
export REALM_COMPONENT="$ROOT/target/realm.wasm"

[ "$part" = real ] || step "cuda unit tests" env REALM_REQUIRE_CUDA=1 target/release/unit compute::cuda --test-threads 1 --nocapture

for h in target/gpu/heads/*.head.xz; do
  name="$(basename "$h" .head.xz)"
  [ -f "target/models-synth/$name.gguf" ] || { xz -dc "$h" >"/tmp/$name.head" && python3 scripts/gpu/gguf-skeleton.py fill "/tmp/$name.head" "target/models-synth/$name.gguf"; } &
done
wait

SMOL=SmolLM2-135M-Instruct.Q4_1
[ -f target/gpu/a/part ] && mv target/gpu/a/part /tmp/smol-a
if [ -f /tmp/smol-a ] && [ -f target/gpu/b/part ] && [ ! -f "models/$SMOL.gguf" ]; then
  mkdir -p models && cat /tmp/smol-a target/gpu/b/part >"models/$SMOL.gguf"
fi
if [ "$part" != synth ] && [ -f "models/$SMOL.gguf" ]; then
  export REALM_MODELS_DIR="$ROOT/models" REALM_TEST_DEVICE=cuda
  step "real SmolLM2 sha256" sh -c "sha256sum models/$SMOL.gguf | grep -q b179c9523d0e6a0f || sha256sum models/$SMOL.gguf"
  for t in engine:: batching:: serve::; do
    step "e2e $t on cuda" target/release/e2e "$t" --test-threads 1 --nocapture
  done
  for d in cpu cuda; do
    step "run $d (real)" "$HOST" run --component "$REALM_COMPONENT" --models-dir models --device "$d" --model "$SMOL" \
      --max-tokens 32 --temperature 0 "The capital of France is"
  done
fi

for m in target/models-synth/*.gguf; do
  [ "$part" = real ] && break
  name="$(basename "$m" .gguf)"
  for d in cpu cuda; do
    step "run $d $name" "$HOST" run --component "$REALM_COMPONENT" --device "$d" --model "$ROOT/$m" \
      --max-tokens 16 --temperature 0 "The capital of France is"
  done
  [ -n "${SKIP_BENCH:-}" ] || step "bench cuda $name" "$HOST" bench --component "$REALM_COMPONENT" --device cuda --model "$ROOT/$m" \
    -p 128,512 -n 128 -r 3 --first-token 128 --instantiations 0 --constructions 0 --memory 0 --tenants 1,4,16,64
done
# Each op's device time over 200 decode steps of 16 and of 64 tenants.
for m in ${PROFILE_MODELS:-SmolLM2-135M-Instruct.Q4_1 qwen2.5-coder-0.5b-instruct-q4_k_m}; do
  [ "$part" = real ] && break
  step "profile ops $m" env REALM_CUDA_PROFILE=ops "$HOST" bench --component "$REALM_COMPONENT" --device cuda \
    --model "$ROOT/target/models-synth/$m.gguf" -p 0 -n 0 -r 1 --first-token 0 --instantiations 0 --constructions 0 \
    --memory 0 --tenants 16,64 --tenant-prompt 8 --tenant-gen 210
done
grep -E "^(===|\|)|tokens/s|error|panicked|FAIL|test result|max \||tokens equal|diverged" "$LOG" | tail -150
grep -A40 "cuda profile" "$LOG" | grep -v "INFO" | head -200
printf '%s\n' "${summary[@]}"
