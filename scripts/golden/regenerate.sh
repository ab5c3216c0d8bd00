#!/usr/bin/env bash
# Regenerate tests/golden/<model-stem>/ from the llama.cpp reference.
#
# Idempotent: downloads the llama-cpp-python sdist into .ref/ once, builds the
# vendored llama.cpp (CPU only) once, rebuilds scripts/golden/reference.cpp,
# then writes golden files for every model of the table below that exists in
# models/. Set SKIP_CROSSCHECK=1 to skip the llama-tokenize/llama-simple check.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/scripts/golden"

# shellcheck source=../lib/llama-cpp.sh
source "$ROOT/scripts/lib/llama-cpp.sh"

# model file (in models/)                 greedy prompts (in scripts/golden/)
MODELS=(
  "SmolLM2-135M-Instruct.Q4_1.gguf          greedy_prompts.json"
  "gemma-3-270m-q4_k_m.gguf                 greedy_prompts_gemma.json"
  "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf  greedy_prompts.json"
)

# reference settings (also recorded in VERSION)
THREADS=2
N_CTX=2048
FA=off
N_PREDICT=32

# (a)-(c) download, extract and build llama.cpp (scripts/lib/llama-cpp.sh)
llama_cpp_build llama llama-tokenize llama-simple llama-bench

# (d) build the reference dumper
mkdir -p "$REF/bin"
REFBIN="$REF/bin/reference"
if [ ! -x "$REFBIN" ] || [ "$HERE/reference.cpp" -nt "$REFBIN" ] || [ "$BUILD/src/libllama.a" -nt "$REFBIN" ]; then
  g++ -std=c++17 -O2 -march=native -o "$REFBIN" "$HERE/reference.cpp" \
    -I "$SRC/include" -I "$SRC/ggml/include" -I "$SRC/vendor" \
    "$BUILD/src/libllama.a" "$BUILD/ggml/src/libggml.a" "$BUILD/ggml/src/libggml-cpu.a" \
    "$BUILD/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl -lm
fi

# (e) golden files
cpu_model="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
for row in "${MODELS[@]}"; do
  read -r model prompts <<<"$row"
  path="$ROOT/models/$model"
  [ -f "$path" ] || { echo "skip $model (not in models/)"; continue; }
  out="$ROOT/tests/golden/${model%.gguf}"
  mkdir -p "$out"
  rm -f "$out"/greedy_*.f32
  echo "== $model -> ${out#$ROOT/}"

  "$REFBIN" meta -m "$path" > "$out/metadata.json"
  "$REFBIN" tokenize -m "$path" -i "$HERE/tokenizer_strings.json" > "$out/tokenizer.json"
  "$REFBIN" greedy -m "$path" -i "$HERE/$prompts" -n "$N_PREDICT" -t "$THREADS" -c "$N_CTX" --fa "$FA" \
    --logits-dir "$out" > "$out/greedy.json"
  # same prompts with flash attention on (what llama-simple/llama-cli use on CPU by default)
  "$REFBIN" greedy -m "$path" -i "$HERE/$prompts" -n "$N_PREDICT" -t "$THREADS" -c "$N_CTX" --fa on \
    > "$out/greedy_fa_on.json"

  cat > "$out/VERSION" <<EOF
llama_cpp: $PKG $PKG_VERSION / llama.cpp $LLAMA_COMMIT
sdist_sha256: $SDIST_SHA256
model: $model
model_sha256: $(sha256sum "$path" | cut -d' ' -f1)
cmake_flags: ${CMAKE_FLAGS[*]}
compiler: $(g++ --version | head -1)
cpu: $cpu_model
system_info: $("$REFBIN" sysinfo)
tokenize: add_special=llama_vocab_get_add_bos(vocab), parse_special=true (ids) / false (ids_no_parse_special)
greedy: n_ctx=$N_CTX n_batch=$N_CTX n_ubatch=512 threads=$THREADS flash_attn=$FA type_k=f16 type_v=f16 argmax(first max) n=$N_PREDICT, ignores EOG
greedy_0.f32: all first-step logits after the first greedy.json prompt, $(uname -m) little-endian f32
greedy_fa_on.json: as greedy.json but flash_attn=on, no logits files
metadata.json: GGUF kv (arrays as type/len), tensors (name/type/ne/offset), llama.cpp vocab view
EOF

  if [ "${SKIP_CROSSCHECK:-0}" != 1 ]; then
    python3 "$HERE/crosscheck.py" "$BIN" "$REFBIN" "$path" "$out"
  fi
done
