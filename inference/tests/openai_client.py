"""Drives a running `sandgraph-infer serve` with the official OpenAI Python client.

Usage: python3 openai_client.py BASE_URL   (started by inference/tests/openai_client.rs)
Checks chat completion, streaming, response_format json_schema (properties in the schema's
order), a forced tool call (whole and streamed), the call carried back into the next prompt,
tool_choice auto, logit_bias, the OpenAI bookkeeping fields, logprobs (chat, streamed and
legacy), n > 1, models.retrieve, 404 for unknown models, penalties, and the server's API key.
"""
import json
import math
import sys
import time
import urllib.request

import openai

base = sys.argv[1]

# Wait for the model to load: /health is 503 until then.
deadline = time.time() + 120
while True:
    try:
        with urllib.request.urlopen(base + "/health") as r:
            if r.status == 200:
                break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("server never became healthy")
    time.sleep(0.1)

API_KEY = "sk-sandgraph-test"  # the key openai_client.rs starts the server with
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong API key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body
client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0)
model = client.models.list().data[0].id
question = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]

chat = client.chat.completions.create(model=model, messages=question, max_tokens=24, temperature=0)
text = chat.choices[0].message.content
assert "Paris" in text, text
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0, chat.usage

stream = client.chat.completions.create(
    model=model, messages=question, max_tokens=24, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert "".join(parts) == text, (parts, text)
assert finish == chat.choices[0].finish_reason, finish
assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage

schema = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
        "population_millions": {"type": "number"},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "country", "is_capital"],
    "additionalProperties": False,
}
structured = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Describe Paris as JSON."}],
    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    max_tokens=120,
    temperature=0,
)
doc = json.loads(structured.choices[0].message.content)
assert set(doc) <= set(schema["properties"]) and {"city", "country", "is_capital"} <= set(doc), doc
assert isinstance(doc["city"], str) and isinstance(doc["is_capital"], bool), doc

tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}]
called = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    max_tokens=80,
    temperature=0,
)
msg = called.choices[0].message
assert called.choices[0].finish_reason == "tool_calls", called
assert msg.tool_calls and msg.tool_calls[0].function.name == "get_weather", msg
args = json.loads(msg.tool_calls[0].function.arguments)
assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit"), args

# The same forced call streamed: OpenAI's delta.tool_calls (id, type and name first, then
# argument fragments) reassemble into the call above.
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    max_tokens=80,
    temperature=0,
    stream=True,
)
call_id, name, fragments, finish = None, "", [], None
for chunk in stream:
    for c in chunk.choices:
        for d in c.delta.tool_calls or []:
            assert d.index == 0, d
            if d.id:
                call_id, name = d.id, d.function.name
            if d.function and d.function.arguments:
                fragments.append(d.function.arguments)
        if c.finish_reason:
            finish = c.finish_reason
assert finish == "tool_calls" and call_id and name == "get_weather", (finish, call_id, name)
assert "".join(fragments) == msg.tool_calls[0].function.arguments, (fragments, msg)

# tool_choice auto: the model answers in text or calls the tool; either way the shape is valid.
auto = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=tools,
    max_tokens=80,
    temperature=0,
)
amsg = auto.choices[0].message
if auto.choices[0].finish_reason == "tool_calls":
    aargs = json.loads(amsg.tool_calls[0].function.arguments)
    assert amsg.tool_calls[0].function.name == "get_weather" and aargs["unit"] in ("celsius", "fahrenheit"), amsg
else:
    assert amsg.tool_calls is None and isinstance(amsg.content, str), amsg
    assert not amsg.content.startswith("{"), amsg

# The call made is in the next prompt: the same conversation with an empty assistant turn
# instead has fewer prompt tokens.
call = msg.tool_calls[0]
result = {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}
weather_q = [{"role": "user", "content": "What is the weather in Paris?"}]
with_call = client.chat.completions.create(
    model=model, max_tokens=8, temperature=0,
    messages=weather_q + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}, result,
    ],
)
empty = client.chat.completions.create(
    model=model, max_tokens=8, temperature=0,
    messages=weather_q + [{"role": "assistant", "content": ""}, result],
)
assert with_call.usage.prompt_tokens > empty.usage.prompt_tokens + 5, (with_call.usage, empty.usage)

# Properties come out in the schema's order (reasoning before answer), not alphabetically.
ordered = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Is Paris in France? Reason, then answer."}],
    response_format={"type": "json_schema", "json_schema": {"name": "qa", "schema": {
        "type": "object",
        "properties": {"reasoning": {"type": "string", "maxLength": 40}, "answer": {"type": "boolean"}},
        "required": ["reasoning", "answer"],
    }}},
    max_tokens=80, temperature=0,
)
otext = ordered.choices[0].message.content
assert otext.index('"reasoning"') < otext.index('"answer"'), otext

# logit_bias is honoured: +100 on one token makes every generated token that token.
bias = {"28": 100}
one = client.chat.completions.create(model=model, messages=question, max_tokens=1, temperature=0, logit_bias=bias)
three = client.chat.completions.create(model=model, messages=question, max_tokens=3, temperature=0, logit_bias=bias)
assert three.choices[0].message.content == one.choices[0].message.content * 3, (one, three)
assert not text.startswith(one.choices[0].message.content), (text, one)

# OpenAI's bookkeeping fields are accepted (and ignored).
kept = client.chat.completions.create(
    model=model, messages=question, max_tokens=24, temperature=0, store=False,
    metadata={"run": "test"}, service_tier="auto", user="u1",
    extra_body={"prompt_cache_key": "k", "safety_identifier": "s"},
)
assert kept.choices[0].message.content == text, kept

# logprobs: each generated token with its five most likely alternatives; greedy picks the
# first of them, and the alternatives hold at most the whole probability mass.
lp = client.chat.completions.create(
    model=model, messages=question, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5,
)
entries = lp.choices[0].logprobs.content
assert len(entries) == lp.usage.completion_tokens, (len(entries), lp.usage)
assert b"".join(bytes(e.bytes) for e in entries).decode() == lp.choices[0].message.content, lp
for e in entries:
    assert len(e.top_logprobs) == 5, e
    assert e.top_logprobs[0].token == e.token and abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6, e
    assert sum(math.exp(a.logprob) for a in e.top_logprobs) <= 1 + 1e-6, e
streamed_lp = []
for chunk in client.chat.completions.create(
    model=model, messages=question, max_tokens=8, temperature=0, logprobs=True, top_logprobs=5,
    stream=True,
):
    for c in chunk.choices:
        if c.logprobs and c.logprobs.content:
            streamed_lp.extend(c.logprobs.content)
assert [(e.token, e.logprob) for e in streamed_lp] == [(e.token, e.logprob) for e in entries]
legacy = client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=3,
)
ll = legacy.choices[0].logprobs
assert len(ll.tokens) == len(ll.token_logprobs) == len(ll.top_logprobs) == legacy.usage.completion_tokens, ll
assert all(tl == max(top.values()) for tl, top in zip(ll.token_logprobs, ll.top_logprobs)), ll

# n > 1: several choices from one request, each with its own index; usage counts the prompt
# once and the completions together.
two = client.chat.completions.create(model=model, messages=question, max_tokens=12, temperature=1, seed=3, n=2)
assert [c.index for c in two.choices] == [0, 1], two
assert two.usage.prompt_tokens == chat.usage.prompt_tokens, two.usage
try:
    client.chat.completions.create(model=model, messages=question, n=9)
    raise AssertionError("n=9 was accepted past --max-n")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "n", e.body

# models.retrieve, and a model this server does not serve is OpenAI's 404.
assert client.models.retrieve(model).id == model
for call_unknown in (
    lambda: client.models.retrieve("gpt-4o-does-not-exist"),
    lambda: client.chat.completions.create(model="gpt-4o-does-not-exist", messages=question, max_tokens=2),
):
    try:
        call_unknown()
        raise AssertionError("an unknown model was answered")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
# The catalog alias answers too.
assert client.chat.completions.create(model="smollm2", messages=question, max_tokens=2).model == model

# Penalties and vLLM's extensions are honoured, not refused.
pen = client.chat.completions.create(
    model=model, messages=question, max_tokens=24, temperature=0,
    frequency_penalty=1.0, presence_penalty=0.5, extra_body={"repetition_penalty": 1.3, "top_k": 20},
)
assert pen.choices[0].message.content != text, pen

print("openai client: chat, stream, json_schema, tool call, logprobs, n, models and errors ok:", text, doc, args)
