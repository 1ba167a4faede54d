"""The main job's planner -> executor -> reviewer loop written in LangGraph, for
host/benches/langgraph_compare.rs (benchmark only; run in a throwaway venv).

The model requests are the ones Sandgraph's planner and reviewer agents made in the same
benchmark run (OpenAI bodies, read from Sandgraph's journal), sent verbatim through the
OpenAI client to the same `sandgraph-infer serve`, so both sides ask for the same tokens.
The tools are plain Python functions in this process (no isolation), doing what calc,
http-get and text-stats do. Prints one JSON object: per node wall time and model time, and
the end-to-end time of each repetition.

usage: python langgraph_compare.py REQUESTS_JSON BASE_URL REPS
"""

import ast
import json
import operator
import sys
import time
import urllib.request
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from openai import OpenAI

GRANTED = ["calc", "http-get", "text-stats"]


def calc(inp):
    ops = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
        ast.Mod: operator.mod,
        ast.Pow: operator.pow,
        ast.USub: operator.neg,
        ast.UAdd: operator.pos,
    }

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return float(n.value)
        if isinstance(n, ast.BinOp) and type(n.op) in ops:
            return ops[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and type(n.op) in ops:
            return ops[type(n.op)](ev(n.operand))
        raise ValueError("unsupported expression")

    return {"value": ev(ast.parse(inp["expr"].replace("^", "**"), mode="eval"))}


def http_get(inp):
    with urllib.request.urlopen(inp["url"], timeout=10) as r:
        body = r.read().decode("utf-8", "replace")
        return {"status": r.status, "headers": dict(r.headers), "body": body}


def text_stats(inp):
    text = inp["text"]
    return {"chars": len(text), "words": len(text.split()), "lines": len(text.splitlines())}


TOOLS = {"calc": calc, "http-get": http_get, "text-stats": text_stats}


def resolve(value, results):
    """`$tool.field...` strings become that part of the latest successful output of `tool`."""
    if isinstance(value, dict):
        return {k: resolve(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, results) for v in value]
    if isinstance(value, str) and value.startswith("$"):
        tool, *path = value[1:].split(".")
        for r in reversed(results):
            if r["tool"] == tool and r["ok"]:
                out = r["output"]
                for p in path:
                    out = out[int(p)] if isinstance(out, list) else out[p]
                return out
        raise KeyError(f"no output of {tool}")
    return value


def references(value):
    text = json.dumps(value)
    return [t for t in GRANTED if f'"${t}' in text]


class State(TypedDict, total=False):
    goal: str
    steps: list
    results: list
    verdict: str
    answer: str
    rounds: int


def main():
    requests_path, base_url, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(requests_path) as f:
        recorded = json.load(f)
    plan_body, review_body = recorded["plan"], recorded["review"]
    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    timings: dict[str, list] = {}

    def chat(body):
        body = dict(body)
        known = {
            k: body.pop(k)
            for k in ["model", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "response_format"]
            if k in body
        }
        body.pop("stream", None)
        started = time.perf_counter()
        answer = client.chat.completions.create(**known, extra_body=body or None)
        return answer.choices[0].message.content, time.perf_counter() - started

    def timed(name, fn):
        def node(state):
            started = time.perf_counter()
            update, model_s = fn(state)
            timings.setdefault(name, []).append(
                {"wall": time.perf_counter() - started, "model": model_s}
            )
            return update

        return node

    def planner(state):
        content, model_s = chat(plan_body)
        form = json.loads(content)
        steps = [{"tool": t, "input": form[t]} for t in GRANTED if form.get(t) is not None]
        steps.sort(key=lambda s: len(references(s["input"])))
        return {"steps": steps[:3], "rounds": state.get("rounds", 0) + 1}, model_s

    def executor(state):
        results = []
        for s in state["steps"]:
            try:
                inp = resolve(s["input"], results)
                results.append({"tool": s["tool"], "input": inp, "ok": True, "output": TOOLS[s["tool"]](inp)})
            except Exception as e:  # noqa: BLE001 - recorded like the executor agent does
                results.append({"tool": s["tool"], "input": s["input"], "ok": False, "error": str(e)})
        return {"results": results}, 0.0

    def reviewer(state):
        content, model_s = chat(review_body)
        verdict = json.loads(content)["verdict"]
        facts = "; ".join(
            f"{r['tool']}: {json.dumps(r.get('output'))[:80]}" for r in state["results"] if r["ok"]
        )
        return {"verdict": verdict, "answer": facts}, model_s

    graph = StateGraph(State)
    graph.add_node("plan", timed("plan", planner))
    graph.add_node("execute", timed("execute", executor))
    graph.add_node("review", timed("review", reviewer))
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "execute")
    graph.add_edge("execute", "review")
    graph.add_conditional_edges(
        "review",
        lambda s: END if s["verdict"] == "approve" or s["rounds"] >= 3 else "plan",
    )
    app = graph.compile()

    runs = []
    for _ in range(reps):
        started = time.perf_counter()
        final = app.invoke({"goal": "bench"})
        runs.append({"wall": time.perf_counter() - started, "verdict": final["verdict"], "rounds": final["rounds"]})
    print(json.dumps({"nodes": timings, "runs": runs}))


if __name__ == "__main__":
    main()
