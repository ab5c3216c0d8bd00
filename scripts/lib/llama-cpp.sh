# shellcheck shell=bash
# The llama.cpp reference build, shared by scripts/golden/regenerate.sh and
# scripts/bench.sh. Source it, then call `llama_cpp_build TARGET...`.
#
# Idempotent: downloads the PyPI source package llama-cpp-python (which vendors
# llama.cpp 0c1e570) into $REF/dl once, extracts it once, configures a CPU-only
# cmake build in $REF/build once, and builds only the targets asked for.
# $REF defaults to .ref/ in the repository (gitignored).
#
# LLAMA_ISA=avx2 (or avx512) builds for that instruction set instead of the
# machine's own (-DGGML_NATIVE=OFF with the matching GGML_* switches) into
# $REF/build-$LLAMA_ISA, to compare with realm run under REALM_CPU_ISA.
# cmake and ninja come from PyPI (pinned, into $REF/tools) where the machine
# has none.

LLAMA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REF="${REF:-$LLAMA_ROOT/.ref}"

PKG=llama-cpp-python
PKG_VERSION=0.3.36
SDIST="llama_cpp_python-$PKG_VERSION.tar.gz"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_COMMIT="0c1e570 (0c1e57098bba43ac29e6e3b677cdceebdd22334f)"

CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
)

# the same switches as REALM_CPU_ISA's levels: avx2 is Haswell's set (AVX2,
# FMA, F16C, BMI2), avx512 adds F, BW, DQ, VL, VBMI and VNNI
LLAMA_ISA="${LLAMA_ISA:-native}"
case "$LLAMA_ISA" in
  native) CMAKE_FLAGS+=(-DGGML_NATIVE=ON); BUILD="$REF/build" ;;
  avx2) CMAKE_FLAGS+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
          -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
          -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF); BUILD="$REF/build-avx2" ;;
  avx512) CMAKE_FLAGS+=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
          -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
          -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF); BUILD="$REF/build-avx512" ;;
  *) echo "LLAMA_ISA: native, avx2 or avx512, not \`$LLAMA_ISA\`" >&2; return 2 2>/dev/null || exit 2 ;;
esac

JOBS="${JOBS:-2}"
SRC="$REF/src/llama_cpp_python-$PKG_VERSION/vendor/llama.cpp"
BIN="$BUILD/bin"
CMAKE_PIN="cmake==4.1.2"
NINJA_PIN="ninja==1.13.0"

# Downloads (once) and extracts (once) the sdist: llama.cpp's source in $SRC.
llama_cpp_fetch() {
  mkdir -p "$REF/dl"
  if [ ! -f "$REF/dl/$SDIST" ]; then
    python3 -m pip download --no-deps --no-binary "$PKG" "$PKG==$PKG_VERSION" -d "$REF/dl"
  fi
  echo "$SDIST_SHA256  $REF/dl/$SDIST" | sha256sum -c --quiet

  if [ ! -f "$SRC/include/llama.h" ]; then
    mkdir -p "$REF/src"
    tar -xzf "$REF/dl/$SDIST" -C "$REF/src"
  fi
}

# cmake (and ninja) on PATH: the machine's, or pinned ones from PyPI in $REF/tools.
llama_cpp_tools() {
  if ! command -v cmake >/dev/null; then
    local tools="$REF/tools"
    if [ ! -x "$tools/bin/cmake" ]; then
      python3 -m pip install --quiet --disable-pip-version-check --prefix "$tools" \
        "$CMAKE_PIN" "$NINJA_PIN" >&2
    fi
    local site
    site="$(find "$tools" -maxdepth 4 -type d -name site-packages | head -1)"
    export PATH="$tools/bin:$PATH" PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
}

# Builds the given cmake targets (e.g. llama llama-bench) of the reference llama.cpp.
llama_cpp_build() {
  llama_cpp_tools
  llama_cpp_fetch

  # configure once (again where an older configuration left the server out),
  # build what is asked for
  if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q "LLAMA_BUILD_SERVER:BOOL=ON" "$BUILD/CMakeCache.txt"; then
    local gen=()
    command -v ninja >/dev/null && gen=(-G Ninja)
    cmake -S "$SRC" -B "$BUILD" "${gen[@]}" "${CMAKE_FLAGS[@]}"
  fi
  cmake --build "$BUILD" -j "$JOBS" --target "$@"
}
