"""Load generator for OpenAI-compatible servers on 127.0.0.1: N concurrent chat clients sending
requests back to back, against several servers in the same run. Rounds interleave the servers
(round 1: A, B; round 2: A, B; ...) at every concurrency so machine noise hits all alike, and
the table reports medians over rounds plus each server's ratio to the reference server.

Per (server, concurrency, round) two phases:
- throughput: non-streamed requests; output tokens are the servers' own `usage.completion_tokens`
  summed, divided by the phase's wall time;
- latency: streamed requests; TTFT is request start to the first content chunk, inter-token
  latency the gaps between content chunks (one chunk per generated token on both servers,
  except where a server holds back bytes of an incomplete UTF-8 character or stop sequence).

Usage: python3 server_load.py --target NAME=URL [--target NAME=URL ...] [--reference NAME]
       [--rounds 3] [--concurrency 1 8 32] [--requests-per-client 2] [--max-tokens 64]
Standard library only (raw HTTP/1.1 over asyncio streams, chunked decoding).
"""
import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "List some facts about the planet Mars.",
    "Describe a walk through a forest in autumn.",
]


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def http_lines(base, path, body):
    """POSTs `body` and yields the response body's lines as they arrive (chunked or not)."""
    u = urllib.parse.urlparse(base)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    data = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
    )
    await writer.drain()
    status = (await reader.readline()).decode()
    chunked = False
    length = None
    while True:
        h = (await reader.readline()).decode().strip()
        if not h:
            break
        if h.lower() == "transfer-encoding: chunked":
            chunked = True
        if h.lower().startswith("content-length:"):
            length = int(h.split(":", 1)[1])
    buf = b""
    while True:
        if length is not None:
            # Read exactly the body: a server may keep the connection open after it.
            piece = await reader.readexactly(length)
            length = 0
            if not piece:
                break
        elif chunked:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            piece = await reader.readexactly(size)
            await reader.readline()
        else:
            piece = await reader.read(65536)
            if not piece:
                break
        buf += piece
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode().rstrip("\r")
    if buf:
        yield buf.decode()
    writer.close()
    if " 200 " not in status:
        raise RuntimeError(f"{base}{path}: {status.strip()}")


def request(model, prompt, max_tokens, stream):
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


async def whole(base, model, prompt, max_tokens, stats):
    lines = [line async for line in http_lines(base, "/v1/chat/completions",
                                               request(model, prompt, max_tokens, False))]
    v = json.loads("".join(lines))
    stats["tokens"] += v["usage"]["completion_tokens"]


async def streamed(base, model, prompt, max_tokens, stats):
    t0 = time.perf_counter()
    last = None
    async for line in http_lines(base, "/v1/chat/completions",
                                 request(model, prompt, max_tokens, True)):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if not chunk.get("choices") or not chunk["choices"][0]["delta"].get("content"):
            continue
        now = time.perf_counter()
        if last is None:
            stats["ttft"].append(now - t0)
        else:
            stats["itl"].append(now - last)
        last = now


async def phase(fn, base, model, concurrency, per_client, max_tokens):
    stats = {"ttft": [], "itl": [], "tokens": 0}

    async def worker(i):
        for k in range(per_client):
            await fn(base, model, PROMPTS[(i + k) % len(PROMPTS)], max_tokens, stats)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return stats, time.perf_counter() - t0


def model_of(base):
    with urllib.request.urlopen(base + "/v1/models") as r:
        return json.load(r)["data"][0]["id"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", required=True, help="NAME=BASE_URL")
    ap.add_argument("--reference", help="NAME the ratios are against (default: the last target)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    targets = [t.split("=", 1) for t in a.target]
    ref = a.reference or targets[-1][0]
    models = {name: model_of(base) for name, base in targets}
    for name, base in targets:  # warm-up, not measured
        asyncio.run(phase(whole, base, models[name], 1, 1, 8))
    # results[(name, c)] = list of per-round (tok/s, ttft p50, ttft p99, itl p50)
    results = {}
    for r in range(a.rounds):
        for c in a.concurrency:
            for name, base in targets:
                s, wall = asyncio.run(phase(whole, base, models[name], c,
                                            a.requests_per_client, a.max_tokens))
                tps = s["tokens"] / wall
                s, _ = asyncio.run(phase(streamed, base, models[name], c, 1, a.max_tokens))
                row = (tps, pct(s["ttft"], 50), pct(s["ttft"], 99),
                       statistics.median(s["itl"]) if s["itl"] else float("nan"))
                results.setdefault((name, c), []).append(row)
                print(f"round {r + 1} c={c} {name}: {tps:.1f} tok/s, TTFT p50 {row[1] * 1e3:.0f} ms, "
                      f"p99 {row[2] * 1e3:.0f} ms, ITL p50 {row[3] * 1e3:.1f} ms",
                      file=sys.stderr, flush=True)
    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in results.items()}
    print(f"{a.rounds} interleaved rounds, medians over rounds; ratios against {ref}")
    print("| server | concurrency | output tok/s (usage) | vs " + ref +
          " | TTFT p50 ms | TTFT p99 ms | ITL p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for c in a.concurrency:
        for name, _ in targets:
            tps, t50, t99, itl = med[(name, c)]
            ratio = tps / med[(ref, c)][0]
            print(f"| {name} | {c} | {tps:.1f} | {ratio:.2f}x | {t50 * 1e3:.0f} | "
                  f"{t99 * 1e3:.0f} | {itl * 1e3:.1f} |")


if __name__ == "__main__":
    main()
