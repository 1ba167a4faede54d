# Writes the seed corpora of graph_load, cel_eval and api_request into fuzz/seeds/ from the
# example graphs, the validation fixtures and real request heads. Run from the repository root:
# `python3 fuzz/generate_seeds.py` (PyYAML, openssl). The JWT is signed with the test-only key
# and valid until 2100.
import base64, glob, hashlib, json, os, subprocess, yaml

def write(target, name, data):
    d = f"fuzz/seeds/{target}"
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    open(f"{d}/{name}", "wb").write(data)

graphs = sorted(glob.glob("graphs/*.yaml")) + sorted(glob.glob("host/tests/fixtures/graphs/*.yaml"))
for p in graphs:
    prefix = "example-" if p.startswith("graphs/") else "fixture-"
    write("graph_load", prefix + os.path.basename(p), open(p, "rb").read())

exprs = set()
def walk(v, key=None):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "input" and isinstance(x, dict):
                for e in x.values():
                    if isinstance(e, str):
                        exprs.add(e)
            if k == "when" and isinstance(x, str):
                exprs.add(x)
            walk(x, k)
    elif isinstance(v, list):
        for x in v:
            walk(x, key)
for p in graphs:
    try:
        walk(yaml.safe_load(open(p, "rb")))
    except Exception:
        pass
exprs |= {
    "!nodes.review.approved && size(state.comments) < 3",
    "nodes.s.x * 2",
    "double(input.n) * input.f",
    "state.value.filter(x, x > 10)",
    "state.value.map(x, x * 2)",
    "state.value.exists(x, x == 48)",
    "state.value.all(x, x > 0)",
    "state.value.exists_one(x, x == 6)",
    "has(nodes.double.value) && nodes.double.value in state.value",
    "{'a': input.start, 'b': [1, 2.5, 'x', null, true]}",
    "input.limit / 0",
    "input.start % 0",
    "9223372036854775807 + 1",
    "-9223372036854775808 - 1",
    "18446744073709551615u + 1u",
    "size(input) == 2 ? 'two' : 'other'",
    "string(b'\\xff') + 'x'",
    "timestamp('2026-12-05T00:00:00Z') + duration('1h')",
    "int('12') + int(2.9) + int(-1e30)",
    "'abc'.contains('b') && 'abc'.startsWith('a') && 'abc'.matches('^a.*c$')",
    "[1, 2, 3][5]",
    "{'k': 1}['missing']",
}
exprs = sorted(e for e in exprs if len(e.encode()) <= 8192)
states = [
    {"input": {"start": 3, "limit": 50}, "nodes": {"seed": {"value": 3}, "double": {"value": 48}}, "state": {"value": [6, 12, 24, 48]}},
    {"input": {"url": "http://127.0.0.1/"}, "nodes": {"fetch": {"status": 200, "headers": {"content-type": "text/html"}, "body": "<p>hi</p>"}, "stats": {"words": 1}, "title": {"count": 1}}, "state": {}},
    {"input": {"n": 2, "f": 1.5, "big": 18446744073709551615, "neg": -1e300}, "nodes": {"review": {"approved": False, "words": 3}, "s": {"x": 4}}, "state": {"comments": ["a", "b"]}},
]
for i, e in enumerate(exprs):
    st = states[i % len(states)]
    h = hashlib.sha256(e.encode()).hexdigest()[:16]
    write("cel_eval", f"expr-{h}", e.encode() + b"\0" + json.dumps(st).encode())

def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}).encode())
claims = b64(json.dumps({"iss": "https://issuer.test", "aud": "sandgraph-api", "sub": "fuzz", "exp": 4102444800, "iat": 1764892800, "scope": "runs:read runs:write"}).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", "host/tests/fixtures/auth/test-only-rsa.pem"],
                     input=f"{head}.{claims}".encode(), capture_output=True, check=True).stdout
jwt = f"{head}.{claims}.{b64(sig)}"
TOKEN = "fuzz-token-000000000001"
RUN = "5a" * 16

def req(method, path, headers=(), body=b"", auth=f"Bearer {TOKEN}"):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if auth:
        lines.append(f"Authorization: {auth}")
    lines += list(headers)
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

loop = open("graphs/conditional-loop.yaml", "rb").read()
seeds = {
    "healthz": req("GET", "/healthz", auth=None),
    "readyz": req("GET", "/readyz", auth=None),
    "metrics": req("GET", "/metrics", auth=None),
    "runs-page": req("GET", "/v1/runs?limit=2&status=failed&graph=fuzz"),
    "runs-cursor": req("GET", "/v1/runs?limit=1&cursor=AAAAAAAAAAA"),
    "run": req("GET", f"/v1/runs/{RUN}", ["X-Request-Id: fuzz-1"]),
    "events": req("GET", f"/v1/runs/{RUN}/events", ["Accept: text/event-stream"]),
    "events-last-id": req("GET", f"/v1/runs/{RUN}/events", ["Last-Event-ID: 0"]),
    "events-past-end": req("GET", f"/v1/runs/{RUN}/events", ["Last-Event-ID: 18446744073709551615"]),
    "cancel": req("POST", f"/v1/runs/{RUN}/cancel"),
    "graphs": req("GET", "/v1/graphs"),
    "graph-version": req("GET", "/v1/graphs/conditional-loop?version=00"),
    "post-graph": req("POST", "/v1/graphs", ["Content-Type: application/yaml"], loop),
    "post-run": req("POST", "/v1/runs?wait=true", ["Content-Type: application/json", "Idempotency-Key: fuzz-key-1"],
                    json.dumps({"graph": "conditional-loop", "input": {"start": 3, "limit": 50}}).encode()),
    "post-tool": req("POST", "/v1/tools", ["Content-Type: application/json"],
                     json.dumps({"manifest": open("tools/calc/calc.sandgraph.yaml").read(), "component": "AGFzbQ0AAQA="}).encode()),
    "tools": req("GET", "/v1/tools/calc"),
    "jwt": req("GET", "/v1/runs", auth=f"Bearer {jwt}"),
    "jwt-none": req("GET", "/v1/runs", auth="Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0."),
    "no-token": req("GET", "/v1/runs", auth=None),
    "basic-auth": req("GET", "/v1/runs", auth="Basic Zm9vOmJhcg=="),
    "pipelined": req("GET", "/healthz", auth=None) + req("GET", f"/v1/runs/{RUN}"),
    "chunked": b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
               b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"gra\r\n0\r\n\r\n",
    "http10": b"GET /healthz HTTP/1.0\r\n\r\n",
    "options": req("OPTIONS", "/v1/runs"),
}
for name, data in seeds.items():
    write("api_request", name, data)
print(len(graphs), "graphs,", len(exprs), "expressions,", len(seeds), "requests")
