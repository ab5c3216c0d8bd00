# shellcheck shell=bash
# The llama.cpp reference build, shared by scripts/golden/regenerate.sh and
# scripts/bench.sh. Source it, then call `llama_cpp_build TARGET...`.
#
# Idempotent: downloads the PyPI source package llama-cpp-python (which vendors
# llama.cpp 0c1e570) into $REF/dl once, extracts it once, configures a CPU-only
# cmake build in $REF/build once, and builds only the targets asked for.
# $REF defaults to .ref/ in the repository (gitignored).

LLAMA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REF="${REF:-$LLAMA_ROOT/.ref}"

PKG=llama-cpp-python
PKG_VERSION=0.3.36
SDIST="llama_cpp_python-$PKG_VERSION.tar.gz"
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_COMMIT="0c1e570 (0c1e57098bba43ac29e6e3b677cdceebdd22334f)"

CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
)

JOBS="${JOBS:-2}"
SRC="$REF/src/llama_cpp_python-$PKG_VERSION/vendor/llama.cpp"
BUILD="$REF/build"
BIN="$BUILD/bin"

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

# Builds the given cmake targets (e.g. llama llama-bench) of the reference llama.cpp.
llama_cpp_build() {
  command -v cmake >/dev/null || { echo "cmake not found (pip install cmake, or apt-get install cmake)" >&2; return 1; }
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
