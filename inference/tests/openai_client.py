"""Drives a running `sandgraph-infer serve` with the official OpenAI Python client.

Usage: python3 openai_client.py BASE_URL   (started by inference/tests/openai_client.rs)
Checks chat completion, streaming, response_format json_schema (properties in the schema's
order), a forced tool call (whole and streamed), the call carried back into the next prompt,
tool_choice auto, logit_bias, the OpenAI bookkeeping fields, and the server's API key.
"""
import json
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

try:
    client.chat.completions.create(model=model, messages=question, n=2)
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "n", e.body

print("openai client: chat, stream, json_schema, tool call and errors ok:", text, doc, args)
