"""Load generator for OpenAI-compatible servers: N concurrent streaming chat clients on
127.0.0.1, each sending requests back to back. Prints one table row per concurrency with
output tokens/s, TTFT p50/p99 and inter-token latency p50 (from SSE chunk arrival times).

Usage: python3 server_load.py BASE_URL LABEL [--concurrency 1 8 32] [--requests-per-client 2]
       [--max-tokens 64]
Standard library only (raw HTTP/1.1 over asyncio streams, chunked decoding).
"""
import argparse
import asyncio
import json
import statistics
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


async def sse_lines(base, path, body):
    """POSTs `body` and yields the response's lines as they arrive (chunked or not)."""
    u = urllib.parse.urlparse(base)
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    data = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
    )
    await writer.drain()
    status = (await reader.readline()).decode()
    assert " 200 " in status, status
    chunked = False
    while True:
        h = (await reader.readline()).decode().strip()
        if not h:
            break
        if h.lower() == "transfer-encoding: chunked":
            chunked = True
    buf = b""
    while True:
        if chunked:
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
    writer.close()


async def one(base, model, prompt, max_tokens, stats):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    last = None
    tokens = 0
    async for line in sse_lines(base, "/v1/chat/completions", body):
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
        tokens += 1
    stats["tokens"] += tokens


async def run(base, concurrency, per_client, max_tokens):
    with urllib.request.urlopen(base + "/v1/models") as r:
        model = json.load(r)["data"][0]["id"]
    # Warm-up request (not measured).
    await one(base, model, PROMPTS[0], 8, {"ttft": [], "itl": [], "tokens": 0})
    stats = {"ttft": [], "itl": [], "tokens": 0}

    async def worker(i):
        for k in range(per_client):
            await one(base, model, PROMPTS[(i + k) % len(PROMPTS)], max_tokens, stats)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return stats, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("label")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    print("| server | concurrency | requests | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for c in a.concurrency:
        stats, wall = asyncio.run(run(a.base, c, a.requests_per_client, a.max_tokens))
        print(
            f"| {a.label} | {c} | {c * a.requests_per_client} | {stats['tokens'] / wall:.1f} | "
            f"{pct(stats['ttft'], 50) * 1e3:.0f} | {pct(stats['ttft'], 99) * 1e3:.0f} | "
            f"{statistics.median(stats['itl']) * 1e3 if stats['itl'] else float('nan'):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
