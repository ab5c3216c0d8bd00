#!/usr/bin/env bash
# realm's speed, alone or side by side with llama.cpp on the same models and threads.
#
#   scripts/bench.sh [--peer llama.cpp] [--model M ...] [--threads 2] [--repetitions 3]
#                    [--tenants 1,4,16,64] [--peer-args "ARGS"] [--isa native|avx2|avx512]
#                    [--full] [--out DIR]
#
# Builds what it needs (target/realm.wasm, realm-host; with --peer, llama.cpp's
# CPU llama-bench and llama-batched-bench from the PyPI source package
# llama-cpp-python==0.3.36, built once into .ref/ by scripts/lib/llama-cpp.sh),
# then runs pp128, pp512 and tg128 on each model, one repetition at a time,
# alternating realm and llama.cpp (and which goes first) so that a noisy machine
# slows both alike. With --tenants, each N runs as realm-host bench --tenants N
# (N tenants, own instance each, 128 prompt tokens and 128 decode steps) against
# llama-batched-bench -npp 128 -ntg 128 -npl N (S_TG). Prints one markdown
# table: realm, llama.cpp and realm/llama.cpp per row (medians).
# --peer-args passes extra options to llama-bench and llama-batched-bench
# (e.g. "--poll 0" to see llama.cpp without busy-waiting threads).
# --isa avx2 (or avx512) runs both at that instruction set: realm under
# REALM_CPU_ISA, llama.cpp built for it alone (GGML_NATIVE off, into
# .ref/build-ISA), so that an AVX2 machine can be measured on an AVX-512 one.
# --full also prints realm-host bench's own report of each model (first token,
# instantiation, memory of 1 and 16 tenants, the boundary's share).
# Models default to the three of scripts/fetch-models.sh --all that are present.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

peer=""
peer_args=()
models=()
threads=2
reps=3
tenants=""
full=0
out=""
isa=native
while [ $# -gt 0 ]; do
  case "$1" in
    --peer) peer="$2"; shift 2 ;;
    --peer-args) read -ra peer_args <<<"$2"; shift 2 ;;
    --model) models+=("$2"); shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --repetitions|-r) reps="$2"; shift 2 ;;
    --tenants) tenants="$2"; shift 2 ;;
    --full) full=1; shift ;;
    --isa) isa="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$peer" in
  ""|llama.cpp) ;;
  *) echo "--peer: only llama.cpp is known, not \`$peer\`" >&2; exit 2 ;;
esac
case "$isa" in
  native) ;;
  avx2|avx512) export REALM_CPU_ISA="$isa" LLAMA_ISA="$isa" ;;
  *) echo "--isa: native, avx2 or avx512, not \`$isa\`" >&2; exit 2 ;;
esac

if [ ${#models[@]} -eq 0 ]; then
  for m in SmolLM2-135M-Instruct.Q4_1 gemma-3-270m-q4_k_m qwen2.5-coder-0.5b-instruct-q4_k_m; do
    [ -f "models/$m.gguf" ] && models+=("$m")
  done
  [ ${#models[@]} -gt 0 ] || { echo "no models in models/: run scripts/fetch-models.sh --all" >&2; exit 1; }
fi
for m in "${models[@]}"; do
  [ -f "models/$m.gguf" ] || { echo "models/$m.gguf is missing (scripts/fetch-models.sh --all)" >&2; exit 1; }
done

# builds
scripts/build-component.sh
cargo build --quiet --release -p realm-host
REALM=(target/release/realm-host bench --component target/realm.wasm --models-dir models
       --threads "$threads" --device cpu)
if [ -n "$peer" ]; then
  # shellcheck source=lib/llama-cpp.sh
  source scripts/lib/llama-cpp.sh
  llama_cpp_build llama-bench llama-batched-bench >&2
fi

out="${out:-$(mktemp -d)}"
mkdir -p "$out"
cat /proc/loadavg > "$out/loadavg-start"
echo "raw results: $out" >&2

realm_speed() { # model round
  "${REALM[@]}" --model "$1" -p 128,512 -n 128 --first-token 0 -r 1 \
    --instantiations 0 --constructions 0 --memory 0 --json \
    > "$out/realm-speed-$1-$2.json"
}
llama_speed() { # model round
  "$BIN/llama-bench" -m "models/$1.gguf" -t "$threads" -p 128,512 -n 128 -r 1 -o json "${peer_args[@]}" \
    > "$out/llama-speed-$1-$2.json" 2>/dev/null
}
realm_tenants() { # model n
  "${REALM[@]}" --model "$1" -p 0 -n 0 --first-token 0 --instantiations 0 --constructions 0 --memory 0 \
    --tenants "$2" --tenant-prompt 128 --tenant-gen 128 --json > "$out/realm-tenants-$1-$2.json"
}
llama_tenants() { # model n
  # one sequence per tenant: N x (128 + 128) positions
  "$BIN/llama-batched-bench" -m "models/$1.gguf" -t "$threads" -c $(( $2 * 256 )) -b 2048 -ub 512 \
    -npp 128 -ntg 128 -npl "$2" --output-format jsonl "${peer_args[@]}" 2>&1 | grep '^{"n_kv_max"' \
    > "$out/llama-tenants-$1-$2.jsonl"
}

for m in "${models[@]}"; do
  for ((r = 1; r <= reps; r++)); do
    echo "== $m: pp128 pp512 tg128, round $r/$reps" >&2
    if [ -z "$peer" ]; then
      realm_speed "$m" "$r"
    elif (( r % 2 )); then
      realm_speed "$m" "$r"; llama_speed "$m" "$r"
    else
      llama_speed "$m" "$r"; realm_speed "$m" "$r"
    fi
  done
  if [ -n "$tenants" ]; then
    IFS=, read -ra counts <<<"$tenants"
    for n in "${counts[@]}"; do
      echo "== $m: $n concurrent tenants" >&2
      realm_tenants "$m" "$n"
      [ -z "$peer" ] || llama_tenants "$m" "$n"
    done
  fi
done

cat /proc/loadavg > "$out/loadavg-end"
echo "instruction set: $isa" >&2
python3 scripts/lib/bench_table.py "$out" "$threads" "${models[@]}"

if [ "$full" = 1 ]; then
  for m in "${models[@]}"; do
    echo "== $m: realm-host bench (full report)" >&2
    "${REALM[@]}" --model "$m" -r "$(( reps > 0 ? reps : 3 ))" | tee "$out/realm-full-$m.md"
  done
fi
