"""A closed-loop load on an OpenAI-compatible server, as clients send it: N
concurrent clients, each sending streamed chat completions one after the
other with the official `openai` client, prompts of a spread of lengths, the
given sampling, `ignore_eos` so that every server produces the same counts.

    serve_load.py BASE_URL MODEL CONCURRENCY REQUESTS MAX_TOKENS TEMPERATURE TOP_P [LABEL]

Prints one JSON object: output tokens/s and requests/s over the run, time to
first token and inter-token latency (p50, p99, ms).
"""

import json
import sys
import threading
import time

from openai import OpenAI

TOPICS = ["a fox in winter", "how a bicycle works", "the history of paper", "the sea at night"]
# Prompts of about 20, 80 and 300 words, in turn.
LENGTHS = [1, 4, 15]


def prompt(run: str, i: int) -> str:
    """Request `i` of a run: its own first line, so that no server answers it
    from a cached prompt of another run or request (only the chat template's
    opening is shared)."""
    topic = TOPICS[i % len(TOPICS)]
    context = " ".join(f"Here is a note about {topic}, number {k}." for k in range(LENGTHS[i % len(LENGTHS)] * 2))
    return f"Request {run} {i}.\n{context}\nWrite a short essay about {topic}."


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def main():
    base, model, concurrency, requests, max_tokens, temperature, top_p = sys.argv[1:8]
    label = sys.argv[8] if len(sys.argv) > 8 else ""
    # The same prompts on every server: the label without its first word.
    run = " ".join(label.split()[1:])
    concurrency, requests, max_tokens = int(concurrency), int(requests), int(max_tokens)
    temperature, top_p = float(temperature), float(top_p)
    client = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
    lock = threading.Lock()
    next_request = [0]
    done = []
    errors = []

    def client_loop():
        while True:
            with lock:
                i = next_request[0]
                next_request[0] += 1
            if i >= requests:
                return
            start = time.perf_counter()
            stamps, tokens = [], 0
            try:
                stream = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": prompt(run, i)}],
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    seed=i,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        stamps.append(time.perf_counter())
                    if chunk.usage:
                        tokens = chunk.usage.completion_tokens
            except Exception as e:  # noqa: BLE001 - reported, and the run fails
                errors.append(repr(e))
                return
            with lock:
                done.append((start, stamps, tokens))

    began = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ended = time.perf_counter()
    if errors or not done:
        print(json.dumps({"label": label, "error": errors[:3] or "no request finished"}))
        sys.exit(1)
    tokens = sum(d[2] for d in done)
    ttft = [(d[1][0] - d[0]) * 1e3 for d in done if d[1]]
    itl = [(b - a) * 1e3 for d in done for a, b in zip(d[1], d[1][1:])]
    print(json.dumps({
        "label": label,
        "concurrency": concurrency,
        "requests": len(done),
        "temperature": temperature,
        "top_p": top_p,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / (ended - began),
        "requests_per_s": len(done) / (ended - began),
        "ttft_ms": {"p50": percentile(ttft, 0.5), "p99": percentile(ttft, 0.99)},
        "itl_ms": {"p50": percentile(itl, 0.5), "p99": percentile(itl, 0.99)},
    }))


if __name__ == "__main__":
    main()
