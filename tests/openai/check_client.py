"""The official OpenAI Python client against a multi-tenant realm-host.

Starts `realm-host serve --config` with two tenants, then lists models,
completes and streams chat completions with a tenant's key, and checks that
bad input raises the client's matching error classes. Exits non-zero on the
first failure. Run by scripts/openai-client-check.sh (part of scripts/test.sh).
"""

import json
import os
import subprocess
import sys
import tempfile

import openai
from openai import OpenAI
from pydantic import BaseModel, Field

HOST = os.environ.get("REALM_HOST", "target/release/realm-host")
COMPONENT = os.environ.get("REALM_COMPONENT", "target/realm.wasm")
MODELS = os.environ.get("REALM_MODELS_DIR", "models")
MODEL = "SmolLM2-135M-Instruct.Q4_1"
# Checked too when scripts/fetch-models.sh --all has fetched it.
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m"


def key_hash(key):
    out = subprocess.run([HOST, "keys", "hash"], input=key + "\n", capture_output=True, text=True, check=True)
    return out.stdout.strip()


def start_server(workdir):
    # The default model twice: `smol-twin` is a model that `slow-lane` may not use.
    models = os.path.join(workdir, "models")
    os.mkdir(models)
    source = os.path.abspath(os.path.join(MODELS, MODEL + ".gguf"))
    for name in (MODEL, "smol-twin"):
        os.symlink(source, os.path.join(models, name + ".gguf"))
    if os.path.exists(os.path.join(MODELS, QWEN + ".gguf")):
        os.symlink(os.path.abspath(os.path.join(MODELS, QWEN + ".gguf")), os.path.join(models, QWEN + ".gguf"))
    tenants = f"""
[[tenant]]
id = "acme"
api_keys = ["{key_hash('acme-secret')}"]
[tenant.limits]
max_tokens_per_request = 64

[[tenant]]
id = "slow-lane"
api_keys = ["{key_hash('slow-secret')}"]
models = ["{MODEL}"]
[tenant.limits]
requests_per_minute = 1
"""
    config = os.path.join(workdir, "tenants.toml")
    with open(config, "w") as f:
        f.write(tenants)
    server = subprocess.Popen(
        [HOST, "serve", "--listen", "127.0.0.1:0", "--threads", "2", "--component", COMPONENT,
         "--models-dir", models, "--config", config],
        stdout=subprocess.PIPE, text=True,
    )
    line = server.stdout.readline().strip()
    if not line.startswith("listening on "):
        server.kill()
        sys.exit(f"realm-host did not start: {line!r}")
    return server, line.removeprefix("listening on ")


def expect_error(kind, call):
    try:
        call()
    except kind as e:
        return e
    except openai.APIStatusError as e:
        raise AssertionError(f"expected {kind.__name__}, got {type(e).__name__}: {e}") from e
    raise AssertionError(f"expected {kind.__name__}, the call succeeded")


class Capital(BaseModel):
    country: str = Field(max_length=30)
    city: str = Field(max_length=30)
    founded: int = Field(ge=-3000, le=2100)


def check_structured(client, messages):
    parsed = client.chat.completions.parse(model=MODEL, messages=messages, response_format=Capital,
                                           temperature=0, max_tokens=64)
    capital = parsed.choices[0].message.parsed
    assert isinstance(capital, Capital) and parsed.choices[0].finish_reason == "stop", parsed
    print(f"chat.completions.parse(response_format=Capital): {capital!r}")
    mode = client.chat.completions.create(messages=messages, response_format={"type": "json_object"},
                                          model=MODEL, temperature=0, max_tokens=64)
    print(f"response_format json_object: {mode.choices[0].message.content!r} ({mode.choices[0].finish_reason})")
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "string", "pattern": "(?<=a)b"}}}
    refused = expect_error(openai.BadRequestError,
                           lambda: client.chat.completions.create(messages=messages, response_format=bad, model=MODEL))
    assert refused.body["code"] == "invalid_constraint", refused.body
    print(f"an uncompilable schema: BadRequestError, param {refused.body['param']!r}")


WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False}}}]


def check_tools(client, model):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    whole = client.chat.completions.create(model=model, messages=ask, tools=WEATHER, tool_choice="required",
                                           temperature=0, max_tokens=64)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, whole
    call = choice.message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and isinstance(arguments.get("city"), str), call
    assert set(arguments) == {"city"}, arguments

    stream = client.chat.completions.create(model=model, messages=ask, tools=WEATHER, tool_choice="required",
                                            temperature=0, max_tokens=64, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"id": part.id, "name": part.function.name, "arguments": ""})
            entry["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls[0]["id"] and calls[0]["name"] == "get_weather", calls
    assert json.loads(calls[0]["arguments"]) == arguments, (calls, arguments)

    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "cloudy"}'}
    answer = client.chat.completions.create(model=model, messages=ask + [choice.message, result], tools=WEATHER,
                                            temperature=0, max_tokens=64)
    assert answer.choices[0].finish_reason in ("stop", "tool_calls", "length"), answer
    print(f"{model}: tool_choice=required -> {call.function.name}({call.function.arguments}), streamed alike; "
          f"after the result: {answer.choices[0].message.content!r} ({answer.choices[0].finish_reason})")


def check(base):
    client = OpenAI(base_url=base + "/v1", api_key="acme-secret", max_retries=0)
    greedy = dict(model=MODEL, temperature=0, max_tokens=24)
    messages = [{"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "What is the capital of France?"}]

    ids = [m.id for m in client.models.list()]
    assert MODEL in ids, ids
    print(f"models.list: {ids}")

    whole = client.chat.completions.create(messages=messages, **greedy)
    content = whole.choices[0].message.content
    assert whole.object == "chat.completion" and content, whole
    assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens > 0, whole.usage
    print(f"chat.completions.create: {content!r} ({whole.choices[0].finish_reason})")

    chunks = list(client.chat.completions.create(messages=messages, stream=True,
                                                  stream_options={"include_usage": True}, **greedy))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == content, (streamed, content)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    print(f"chat.completions.create(stream=True): {len(chunks)} chunks, same text, usage {chunks[-1].usage}")

    legacy = client.completions.create(prompt="The capital of France is", **greedy)
    assert legacy.choices[0].text.startswith(" Paris"), legacy
    print(f"completions.create: {legacy.choices[0].text!r}")

    scored = client.chat.completions.create(messages=messages, logprobs=True, top_logprobs=2, **greedy)
    entries = scored.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in entries).decode() == scored.choices[0].message.content, entries
    assert all(len(e.top_logprobs) == 2 and e.logprob == e.top_logprobs[0].logprob <= 0 for e in entries)
    legacy = client.completions.create(prompt="The capital of France is", logprobs=3, **greedy)
    lp = legacy.choices[0].logprobs
    assert "".join(lp.tokens) == legacy.choices[0].text and len(lp.top_logprobs[0]) == 3, lp
    several = client.chat.completions.create(messages=messages, n=3, seed=11, model=MODEL, max_tokens=8)
    assert [c.index for c in several.choices] == [0, 1, 2], several
    one = client.chat.completions.create(messages=messages, n=1, seed=12, model=MODEL, max_tokens=8)
    assert one.choices[0].message.content == several.choices[1].message.content, (one, several)
    print(f"n=3: {[c.message.content for c in several.choices]}")
    print(f"logprobs: chat {len(entries)} tokens, first {entries[0].token!r} at {entries[0].logprob:.3f}; "
          f"completions first {lp.tokens[0]!r} at {lp.token_logprobs[0]:.3f}")

    check_structured(client, messages)
    check_tools(client, MODEL)
    if QWEN in ids:
        check_tools(client, QWEN)

    bad_key = OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    expect_error(openai.AuthenticationError, lambda: bad_key.models.list())
    expect_error(openai.NotFoundError,
                 lambda: client.chat.completions.create(model="no-such-model", messages=messages))
    expect_error(openai.BadRequestError,
                 lambda: client.chat.completions.create(messages=messages, n=17, **greedy))
    expect_error(openai.BadRequestError,
                 lambda: client.chat.completions.create(messages=messages, model=MODEL, max_tokens=65))
    expect_error(openai.BadRequestError,
                 lambda: client.chat.completions.create(messages=messages, extra_body={"frobnicate": 1}, **greedy))
    expect_error(openai.BadRequestError,
                 lambda: client.chat.completions.create(messages=messages, temperature=-1, model=MODEL))
    slow = OpenAI(base_url=base + "/v1", api_key="slow-secret", max_retries=0)
    assert [m.id for m in slow.models.list()] == [MODEL]
    expect_error(openai.PermissionDeniedError,
                 lambda: slow.chat.completions.create(model="smol-twin", messages=messages))
    slow.completions.create(prompt="Hi", **greedy)
    limited = expect_error(openai.RateLimitError, lambda: slow.completions.create(prompt="Hi", **greedy))
    assert int(limited.response.headers["retry-after"]) >= 1
    print("errors: AuthenticationError, NotFoundError, PermissionDeniedError, BadRequestError (n, max_tokens, "
          "unknown field, temperature), RateLimitError with Retry-After")


def main():
    with tempfile.TemporaryDirectory() as workdir:
        server, base = start_server(workdir)
        try:
            check(base)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"openai {openai.__version__}: every check passed")


if __name__ == "__main__":
    main()
