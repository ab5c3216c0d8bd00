#!/usr/bin/env bash
# realm-host serve under the load real clients send, alone or side by side with
# llama-server on the same model and threads.
#
#   scripts/bench-serve.sh [--peer llama-server] [--model M ...] [--threads 2]
#                          [--concurrency 1,4,16] [--requests-per-client 2]
#                          [--max-tokens 64] [--isa native|avx2|avx512]
#                          [--realm-args "ARGS"] [--out DIR]
#
# Builds what it needs (target/realm.wasm, realm-host; with --peer, llama.cpp's
# llama-server from the PyPI source package llama-cpp-python==0.3.36, built
# into .ref/ by scripts/lib/llama-cpp.sh; cmake from pip or apt). For each
# model, starts realm-host serve, then llama-server (--parallel as the highest
# concurrency, continuous batching, the same threads), one after the other on
# a free port, and drives each with scripts/lib/serve_load.py: N concurrent
# clients of the official `openai` client, each sending streamed chat
# completions one after the other (the prompts a spread of lengths, through
# each server's chat template, `ignore_eos`, `--max-tokens` tokens each), under
# three sampling presets: greedy, temperature 1.0 / top_p 0.95, temperature
# 0.7 / top_p 0.95. Prints one markdown table: output tokens/s, requests/s,
# TTFT p50/p99, ITL p50/p99 per server, and realm/llama-server ratios
# (output tokens/s: higher is better; TTFT: realm's over llama-server's, lower
# is better). --isa avx2 (or avx512) runs both servers at that instruction
# set (as scripts/bench.sh --isa). --realm-args passes more options to
# realm-host serve (e.g. "--max-prefill-beside-decode 64"). Models default to the three of scripts/fetch-models.sh --all
# that are present.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

peer=""
models=()
threads=2
isa=native
realm_args=()
concurrency=1,4,16
per_client=2
max_tokens=64
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --peer) peer="$2"; shift 2 ;;
    --model) models+=("$2"); shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --isa) isa="$2"; shift 2 ;;
    --realm-args) read -ra realm_args <<<"$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --requests-per-client) per_client="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$peer" in
  ""|llama-server) ;;
  *) echo "--peer: only llama-server is known, not \`$peer\`" >&2; exit 2 ;;
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
IFS=, read -ra levels <<<"$concurrency"
most=0
for n in "${levels[@]}"; do (( n > most )) && most=$n; done

# builds, and the pinned client (as scripts/openai-client-check.sh installs it)
scripts/build-component.sh
cargo build --quiet --release -p realm-host
pkgs="$ROOT/target/openai-pkgs"
export PYTHONPATH="$pkgs${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import openai" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --target "$pkgs" "openai==3.54.0"
fi
if [ -n "$peer" ]; then
  # shellcheck source=lib/llama-cpp.sh
  source scripts/lib/llama-cpp.sh
  llama_cpp_build llama-server >&2
fi

out="${out:-$(mktemp -d)}"
mkdir -p "$out"
echo "raw results: $out" >&2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

server=""
stop() { [ -z "$server" ] || { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; server=""; }; }
trap stop EXIT
start() { # name model
  case "$1" in
    realm) target/release/realm-host serve --listen "127.0.0.1:$port" --threads "$threads" --device cpu \
             --component target/realm.wasm --models-dir models --instances "$most" --ctx-size 2048 \
             "${realm_args[@]}" > "$out/$1-$2.log" 2>&1 & ;;
    llama-server) "$BIN/llama-server" -m "models/$2.gguf" --host 127.0.0.1 --port "$port" -t "$threads" \
             --parallel "$most" -c $(( most * 2048 )) --cont-batching > "$out/$1-$2.log" 2>&1 & ;;
  esac
  server=$!
  for _ in $(seq 1 600); do
    curl -sf "$base/health" >/dev/null 2>&1 && return 0
    kill -0 "$server" 2>/dev/null || { echo "$1 exited; see $out/$1-$2.log" >&2; return 1; }
    sleep 0.2
  done
  echo "$1 did not become healthy; see $out/$1-$2.log" >&2
  return 1
}

presets=("greedy 0 1" "T1.0 1.0 0.95" "T0.7 0.7 0.95")
servers=(realm)
[ -z "$peer" ] || servers+=(llama-server)
for m in "${models[@]}"; do
  for s in "${servers[@]}"; do
    echo "== $m: $s" >&2
    start "$s" "$m"
    # Warm-up: the model mapped (realm) and a first request's allocations.
    python3 scripts/lib/serve_load.py "$base" "$m" 1 1 8 0 1 > /dev/null
    for p in "${presets[@]}"; do
      read -r name t top_p <<<"$p"
      for n in "${levels[@]}"; do
        python3 scripts/lib/serve_load.py "$base" "$m" "$n" $(( n * per_client )) "$max_tokens" "$t" "$top_p" \
          "$s $m $name $n" | tee -a "$out/results.jsonl" >&2
      done
    done
    stop
  done
done

python3 - "$out/results.jsonl" "$threads" "$isa" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    server, model, preset, n = r["label"].split()
    by[(model, preset, int(n), server)] = r
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = " ".join(f for f in flags if f in ("avx2", "fma", "f16c") or f.startswith("avx512"))
isa = sys.argv[3]
print(f"{cpu}, {sys.argv[2]} threads; {simd}; kernels: {isa}\n")
peer = any(k[3] == "llama-server" for k in by)
head = "| model | sampling | N | realm tok/s | realm req/s | realm TTFT p50/p99 ms | realm ITL p50/p99 ms |"
sep = "|---|---|---:|---:|---:|---:|---:|"
if peer:
    head += " llama-server tok/s | llama-server TTFT p50/p99 ms | llama-server ITL p50/p99 ms | tok/s ratio | TTFT p50 ratio |"
    sep += "---:|---:|---:|---:|---:|"
print(head)
print(sep)
for (model, preset, n, server), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] != "greedy", kv[0][1], kv[0][2])):
    if server != "realm":
        continue
    line = (f"| {model} | {preset} | {n} | {r['output_tokens_per_s']:.1f} | {r['requests_per_s']:.2f} | "
            f"{r['ttft_ms']['p50']:.0f} / {r['ttft_ms']['p99']:.0f} | {r['itl_ms']['p50']:.1f} / {r['itl_ms']['p99']:.1f} |")
    l = by.get((model, preset, n, "llama-server"))
    if peer and l:
        line += (f" {l['output_tokens_per_s']:.1f} | {l['ttft_ms']['p50']:.0f} / {l['ttft_ms']['p99']:.0f} | "
                 f"{l['itl_ms']['p50']:.1f} / {l['itl_ms']['p99']:.1f} | "
                 f"{r['output_tokens_per_s'] / l['output_tokens_per_s']:.2f} | {r['ttft_ms']['p50'] / l['ttft_ms']['p50']:.2f} |")
    print(line)
EOF
