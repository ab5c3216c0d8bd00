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
REF="$ROOT/.ref"

PKG=llama-cpp-python
PKG_VERSION=0.3.36
SDIST="llama_cpp_python-$PKG_VERSION.tar.gz"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_COMMIT="0c1e570 (0c1e57098bba43ac29e6e3b677cdceebdd22334f)"

# model file (in models/)                 greedy prompts (in scripts/golden/)
MODELS=(
  "SmolLM2-135M-Instruct.Q4_1.gguf          greedy_prompts.json"
  "gemma-3-270m-q4_k_m.gguf                 greedy_prompts_gemma.json"
  "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf  greedy_prompts.json"
)

CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
)
# reference settings (also recorded in VERSION)
THREADS=2
N_CTX=2048
FA=off
N_PREDICT=32

JOBS="${JOBS:-2}"
SRC="$REF/src/llama_cpp_python-$PKG_VERSION/vendor/llama.cpp"
BUILD="$REF/build"
BIN="$BUILD/bin"

command -v cmake >/dev/null || { echo "cmake not found (pip install cmake, or apt-get install cmake)" >&2; exit 1; }

# (a) download the sdist
mkdir -p "$REF/dl"
if [ ! -f "$REF/dl/$SDIST" ]; then
  python3 -m pip download --no-deps --no-binary "$PKG" "$PKG==$PKG_VERSION" -d "$REF/dl"
fi
echo "$SDIST_SHA256  $REF/dl/$SDIST" | sha256sum -c --quiet

# (b) extract
if [ ! -f "$SRC/include/llama.h" ]; then
  mkdir -p "$REF/src"
  tar -xzf "$REF/dl/$SDIST" -C "$REF/src"
fi

# (c) build llama + the tools used for cross-checking
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
  cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" "${CMAKE_FLAGS[@]}"
fi
cmake --build "$BUILD" -j "$JOBS" --target llama llama-tokenize llama-simple llama-bench

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
