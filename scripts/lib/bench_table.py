#!/usr/bin/env python3
"""One markdown table from scripts/bench.sh's raw results.

    bench_table.py OUT_DIR THREADS MODEL...

Reads OUT_DIR/realm-speed-MODEL-ROUND.json (realm-host bench --json),
OUT_DIR/llama-speed-MODEL-ROUND.json (llama-bench -o json),
OUT_DIR/realm-tenants-MODEL-N.json and OUT_DIR/llama-tenants-MODEL-N.jsonl
(llama-batched-bench --output-format jsonl); prints the median of each test
over the rounds for realm and llama.cpp, and realm/llama.cpp.
"""

import glob
import json
import os
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def realm_speed(out, model):
    tests = {}
    for path in sorted(glob.glob(os.path.join(out, f"realm-speed-{model}-*.json"))):
        for row in load(path)["speed"]:
            tests.setdefault(row["test"], []).extend([row["tokens_per_s"]["median"]] * row["tokens_per_s"]["samples"])
    return tests


def llama_speed(out, model):
    tests = {}
    for path in sorted(glob.glob(os.path.join(out, f"llama-speed-{model}-*.json"))):
        for row in load(path):
            name = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
            tests.setdefault(name, []).extend(row["samples_ts"])
    return tests


def realm_tenants(out, model):
    rows = {}
    for path in glob.glob(os.path.join(out, f"realm-tenants-{model}-*.json")):
        for row in load(path)["tenants"]:
            rows[row["tenants"]] = row
    return rows


def llama_tenants(out, model):
    rows = {}
    for path in glob.glob(os.path.join(out, f"llama-tenants-{model}-*.jsonl")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rows[row["pl"]] = row
    return rows


def fmt(x, digits=2):
    return "" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main():
    out, threads, models = sys.argv[1], sys.argv[2], sys.argv[3:]
    print("| model | test | realm | llama.cpp | realm/llama.cpp | unit |")
    print("|---|---|---:|---:|---:|---|")
    for model in models:
        ours, theirs = realm_speed(out, model), llama_speed(out, model)
        order = sorted(set(ours) | set(theirs), key=lambda t: (t[:2] != "pp", int(t[2:])))
        for test in order:
            a = statistics.median(ours[test]) if test in ours else None
            b = statistics.median(theirs[test]) if test in theirs else None
            n = max(len(ours.get(test, [])), len(theirs.get(test, [])))
            print(f"| {model} | {test} (median of {n}) | {fmt(a)} | {fmt(b)} | {fmt(ratio(a, b))} | tokens/s |")
        ours_t, theirs_t = realm_tenants(out, model), llama_tenants(out, model)
        for n in sorted(set(ours_t) | set(theirs_t)):
            r = ours_t.get(n)
            a = r["aggregate_tokens_per_s"] if r else None
            b = theirs_t[n]["speed_tg"] if n in theirs_t else None
            print(
                f"| {model} | {n} tenants: decode, aggregate (llama.cpp: batched S_TG) "
                f"| {fmt(a)} | {fmt(b)} | {fmt(ratio(a, b))} | tokens/s |"
            )
            if r:
                print(
                    f"| {model} | {n} tenants: realm inter-token latency p50 / p99 "
                    f"| {fmt(r['itl_ms']['median'], 1)} / {fmt(r['itl_ms']['p99'], 1)} | | | ms |"
                )
    load = []
    for when in ("start", "end"):
        path = os.path.join(out, f"loadavg-{when}")
        if os.path.exists(path):
            with open(path) as f:
                load.append(f"{when} {' '.join(f.read().split()[:3])}")
    print(
        f"\n{threads} threads; kernels: {os.environ.get('REALM_CPU_ISA', 'native')}; "
        f"realm: realm-host bench; llama.cpp 0c1e570: llama-bench, llama-batched-bench; "
        f"load average (1/5/15 min): {', '.join(load) or 'unknown'}"
    )


if __name__ == "__main__":
    main()
