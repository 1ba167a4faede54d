"""Drives a running `sandgraph-infer serve` with langchain-openai and instructor, as a new user
would. Usage: python compat_clients.py BASE_URL   (started by inference/tests/compat_clients.rs)
"""
import datetime
import json
import re
import sys
import time
import urllib.request

import instructor
import openai
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

base = sys.argv[1]
API_KEY = "sk-sandgraph-test"

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

# langchain-openai: a bound tool, its call, the result back, the next turn.
llm = ChatOpenAI(base_url=base + "/v1", api_key=API_KEY, model="smollm2", temperature=0,
                 max_tokens=60, max_retries=0)


class GetWeather(BaseModel):
    """Get the weather of a city."""
    city: str = Field(max_length=20)
    unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})


bound = llm.bind_tools([GetWeather], tool_choice="GetWeather")
q = HumanMessage("What is the weather in Paris?")
ai = bound.invoke([q])
assert ai.tool_calls and ai.tool_calls[0]["name"] == "GetWeather", ai
call = ai.tool_calls[0]
assert call["args"]["unit"] in ("celsius", "fahrenheit"), call
after = llm.invoke([q, ai, ToolMessage(content='{"temp_c": 21}', tool_call_id=call["id"])])
assert isinstance(after.content, str), after
# The call is part of the next prompt (more prompt tokens than the bare question + result).
bare = llm.invoke([q, ToolMessage(content='{"temp_c": 21}', tool_call_id=call["id"])])
assert after.usage_metadata["input_tokens"] > bare.usage_metadata["input_tokens"] + 5, (after, bare)

# langchain's structured output (json_schema), reasoning first.


class Answer(BaseModel):
    reasoning: str = Field(max_length=40)
    answer: bool


structured = llm.with_structured_output(Answer, method="json_schema", include_raw=True)
res = structured.invoke("Is Paris in France?")
raw = res["raw"].content
assert raw.index('"reasoning"') < raw.index('"answer"'), raw
assert isinstance(res["parsed"], Answer), res

# instructor: pydantic models in json_schema mode, with strict-mode keywords (bounds, formats,
# patterns) enforced while decoding, so validation never fails.
client = instructor.from_openai(
    openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0),
    mode=instructor.Mode.JSON_SCHEMA,
)


class City(BaseModel):
    name: str = Field(max_length=20)
    is_capital: bool


city = client.chat.completions.create(
    model="smollm2", response_model=City, max_retries=0, temperature=0, max_tokens=60,
    messages=[{"role": "user", "content": "Describe Paris."}],
)
assert isinstance(city, City), city


class Visit(BaseModel):
    city: str = Field(max_length=20)
    year: int = Field(ge=1900, le=2100)
    rating: float = Field(gt=0, le=5)
    day: datetime.date
    starts: datetime.datetime
    code: str = Field(pattern=r"^[A-Z]{3}$")
    contact: str = Field(json_schema_extra={"format": "email"})


visit = client.chat.completions.create(
    model="smollm2", response_model=Visit, max_retries=0, temperature=0, max_tokens=160,
    messages=[{"role": "user", "content": "Plan a visit to Paris: year, rating, day, start, airport code, contact."}],
)
assert isinstance(visit, Visit), visit
assert 1900 <= visit.year <= 2100 and 0 < visit.rating <= 5, visit
assert re.fullmatch(r"[A-Z]{3}", visit.code) and "@" in visit.contact, visit
print("langchain-openai and instructor ok:", call, raw, city, visit)
