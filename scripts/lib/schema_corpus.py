"""Structured outputs over a corpus of real JSON Schemas.

Serves one model with `realm-host serve`, asks it for an instance of each
schema through `response_format: json_schema`, and validates every output that
finished with `stop` against its schema with the `jsonschema` package (formats
checked too). A schema the engine refuses to compile is counted with the
reason it gave. Exits non-zero if any finished output fails to parse or
validate, or if a request fails other than by a 400 refusal.

Run by scripts/check-schemas.sh, which installs `jsonschema`.
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jsonschema


def post(base, body, timeout=600):
    request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response), time.perf_counter() - started
    except urllib.error.HTTPError as e:
        return e.code, json.load(e), time.perf_counter() - started


def prompt_of(schema_text):
    shown = schema_text if len(schema_text) <= 1500 else schema_text[:1500] + " ..."
    return [{"role": "system", "content": "You write one JSON document and nothing else."},
            {"role": "user", "content": f"Write a short, realistic JSON instance of this JSON Schema:\n{shown}"}]


def one(base, model, path, max_tokens, seed):
    schema_text = open(path).read()
    schema = json.loads(schema_text)
    body = {"model": model, "messages": prompt_of(schema_text), "max_tokens": max_tokens, "temperature": 0.7,
            "seed": seed, "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    status, reply, seconds = post(base, body)
    result = {"path": path, "status": status}
    if status != 200:
        return {**result, "error": reply.get("error", {})}
    choice = reply["choices"][0]
    text, finish = choice["message"]["content"], choice["finish_reason"]
    result.update(finish=finish, tokens=reply["usage"]["completion_tokens"], seconds=seconds)
    if finish != "stop":
        return result
    try:
        instance = json.loads(text)
    except json.JSONDecodeError as e:
        return {**result, "invalid": f"not JSON: {e}", "text": text}
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        return {**result, "invalid": errors[0].message[:300], "text": text[:2000]}
    return result


def compile_ms(base, model, path):
    """A one-token request under the schema (its compile, a tiny prefill and
    a step), less the same request again (the compiled constraint cached)."""
    schema = json.load(open(path))
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    first = post(base, body)
    if first[0] != 200:
        return None
    return max(0.0, (first[2] - post(base, body)[2]) * 1e3)


def start_server(args):
    server = subprocess.Popen(
        [args.host, "serve", "--listen", "127.0.0.1:0", "--threads", str(args.threads), "--component",
         args.component, "--models-dir", args.models, "--instances", str(args.concurrency)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline().strip()
    if not line.startswith("listening on "):
        server.kill()
        sys.exit(f"realm-host did not start: {line!r}")
    return server, line.removeprefix("listening on ")


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))] if ordered else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct.Q4_1")
    parser.add_argument("--corpus", default="../shared/data/jsonschemabench")
    parser.add_argument("--limit", type=int, default=0, help="the first N schemas in name order; 0 = all")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="target/release/realm-host")
    parser.add_argument("--component", default="target/realm.wasm")
    parser.add_argument("--models", default="models")
    parser.add_argument("--json", help="also write every result here")
    args = parser.parse_args()

    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(args.corpus)
                   for name in names if name.endswith(".json"))
    if args.limit:
        # Spread the sample over the corpus's folders.
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    if not paths:
        sys.exit(f"no schemas under {args.corpus}")
    server, base = start_server(args)
    started = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            # Each instance builds its vocabulary's trie at its first
            # constrained request: once per instance, before the timings.
            warm = {"model": args.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1,
                    "response_format": {"type": "json_object"}}
            list(pool.map(lambda _: post(base, warm), range(args.concurrency)))
            results = list(pool.map(lambda p: one(base, args.model, p, args.max_tokens, args.seed), paths))
        # One request at a time, on a warm instance, so the times are the compile's alone.
        compiles = [compile_ms(base, args.model, p) for p in paths]
    finally:
        server.terminate()
        server.wait(timeout=60)
    elapsed = time.perf_counter() - started

    refused = [r for r in results if r["status"] == 400]
    failed = [r for r in results if r["status"] not in (200, 400)]
    ran = [r for r in results if r["status"] == 200]
    stopped = [r for r in ran if r["finish"] == "stop"]
    invalid = [r for r in stopped if "invalid" in r]
    compiled = [ms for ms in compiles if ms is not None]
    tokens = sum(r["tokens"] for r in ran)
    print(f"## {args.model}: {len(paths)} schemas from {args.corpus}, max_tokens {args.max_tokens}, "
          f"temperature 0.7, {args.concurrency} at once, {elapsed:.0f} s\n")
    print("| schemas | refused at compile | ran | finished (stop) | valid of finished | cut by length | "
          "compile p50 ms | compile p99 ms | tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(paths)} | {len(refused)} | {len(ran)} | {len(stopped)} | {len(stopped) - len(invalid)} "
          f"| {len(ran) - len(stopped)} | {percentile(compiled, 50):.1f} | {percentile(compiled, 99):.1f} "
          f"| {tokens} |\n")
    for r in refused:
        print(f"refused {os.path.relpath(r['path'], args.corpus)}: {r['error'].get('message', '')[:200]!r}")
    for r in failed:
        print(f"FAILED {os.path.relpath(r['path'], args.corpus)}: {r['status']} {r.get('error')}")
    for r in invalid:
        print(f"INVALID {os.path.relpath(r['path'], args.corpus)}: {r['invalid']}\n  {r['text'][:300]!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**r, "compile_ms": ms} for r, ms in zip(results, compiles)], f, indent=1)
    if failed or invalid:
        sys.exit(f"{len(invalid)} finished outputs do not validate; {len(failed)} requests failed")


if __name__ == "__main__":
    main()
