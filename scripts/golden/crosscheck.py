#!/usr/bin/env python3
"""Cross-check golden files against llama.cpp's own llama-tokenize and llama-simple.

usage: crosscheck.py BIN_DIR REFERENCE MODEL GOLDEN_DIR

Tokenizer ids must match `llama-tokenize --ids` exactly.
llama-simple runs with flash attention "auto" (= on for CPU) and 4 threads, so
the reference is re-run with those settings and must reproduce llama-simple's
text exactly. Whether the golden greedy.json (flash attention off) gives the
same text is only reported: FA on/off differ by up to ~0.5 in the logits.
Exit status 1 on any required mismatch.
"""
import json
import os
import subprocess
import sys
import tempfile


def llama_tokenize(bin_dir, model, text):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
    try:
        out = subprocess.run(
            [os.path.join(bin_dir, "llama-tokenize"), "-m", model, "-f", f.name,
             "--ids", "--no-escape", "--log-disable"],
            check=True, capture_output=True).stdout.decode("utf-8")
    finally:
        os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


def llama_simple(bin_dir, model, prompt, n):
    r = subprocess.run([os.path.join(bin_dir, "llama-simple"), "-m", model, "-n", str(n), prompt],
                       check=True, capture_output=True)
    return r.stdout.decode("utf-8", errors="replace")


def main():
    bin_dir, reference, model, golden = sys.argv[1:5]
    ok = True

    toks = json.load(open(os.path.join(golden, "tokenizer.json"), encoding="utf-8"))
    bad = [t for t in toks if llama_tokenize(bin_dir, model, t["text"]) != t["ids"]]
    for t in bad:
        print(f"  tokenize MISMATCH {t['text']!r}: reference {t['ids']}", file=sys.stderr)
    print(f"  llama-tokenize --ids: {len(toks) - len(bad)}/{len(toks)} strings agree")
    ok &= not bad

    goldens = json.load(open(os.path.join(golden, "greedy.json"), encoding="utf-8"))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"prompt": g["prompt"], "n": g["n"]} for g in goldens], f)
    try:
        fa_on = json.loads(subprocess.run([reference, "greedy", "-m", model, "-i", f.name, "--fa", "auto", "-t", "4"],
                                          check=True, capture_output=True).stdout)
    finally:
        os.unlink(f.name)
    for g, r in zip(goldens, fa_on):
        out = llama_simple(bin_dir, model, g["prompt"], g["n"])
        # llama-simple echoes the prompt (special tokens rendered), then generates until the first EOG
        at = out.find(g["prompt"])
        gen = out[at + len(g["prompt"]):] if at >= 0 else None
        same = gen == r["text_until_eos"] + "\n"
        golden_same = gen == g["text_until_eos"] + "\n"
        ok &= same
        print(f"  llama-simple {g['prompt']!r}: reference(fa=auto) {'agrees' if same else 'DIFFERS'}, "
              f"golden(fa=off) {'agrees' if golden_same else 'differs'}")
        if not same:
            print(f"    reference: {r['text_until_eos']!r}\n    simple:    {gen!r}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
