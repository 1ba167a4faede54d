"""The run console in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (no browser download). Driven by host/tests/console.rs, which starts
`sandgraph serve` and passes its address and the test tokens in the environment.

Covers: a wrong token gets the login error; log in; a run started through the API is watched
live as its nodes turn from running to succeeded; a step shows its audit record; a denied egress
is highlighted with its reason; a tool output holding <script> renders as text; cancel; replay;
a read-only token cannot act; a run id that does not exist; an event kind the page does not know;
a 500-node graph's picture, timed. Screenshots go to $SCREENSHOTS. Prints a JSON summary.
"""

import base64
import http.server
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

BASE = os.environ["BASE"]
ADMIN = os.environ["ADMIN"]
READER = os.environ["READER"]
WRONG = "test-only-wrong-token-9999"
SHOTS = os.environ["SCREENSHOTS"]
XSS = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'

summary = {}


# ---- a loopback upstream the http-get tool reaches -------------------------------------------

release = threading.Event()
flaky_hits = []


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            release.wait(120)
            body = b"released"
        elif self.path.startswith("/hold"):
            time.sleep(120)
            body = b"too late"
        elif self.path.startswith("/flaky"):
            # Fails twice, then answers: the step retries with backoff.
            flaky_hits.append(1)
            if len(flaky_hits) <= 2:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b"third time"
        elif self.path.startswith("/xss"):
            body = XSS.encode()
        else:
            body = b"fine"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
upstream.daemon_threads = True
threading.Thread(target=upstream.serve_forever, daemon=True).start()
UP = f"http://127.0.0.1:{upstream.server_address[1]}"


# ---- the API, as any client -------------------------------------------------------------------

def call(method, path, body=None, token=ADMIN, content_type="application/json"):
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read().decode()
            return resp.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode() or "null")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


manifest = f"""apiVersion: sandgraph.dev/v1
kind: ToolManifest
metadata: {{ name: http-get }}
spec:
  egress:
    - {{ scheme: http, host: 127.0.0.1, port: {upstream.server_address[1]}, methods: [GET] }}
  limits: {{ timeout: 150s }}
"""
with open(os.environ["HTTP_GET_WASM"], "rb") as f:
    status, body = call("POST", "/v1/tools", {"manifest": manifest, "component": base64.b64encode(f.read()).decode()})
check(status == 201, f"upload http-get: {status} {body}")

WATCH = """apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: watch }
spec:
  input:
    type: object
    required: [url]
    properties: { url: { type: string } }
  nodes:
    - id: fetch
      kind: tool
      component: http-get
      input: { url: input.url }
      grant: { egressHosts: ["127.0.0.1"] }
      timeout: 150s
    - id: pick
      kind: tool
      component: json-query
      input: { document: nodes.fetch, path: "'$.status'" }
  edges:
    - { from: fetch, to: pick }
"""
status, body = call("POST", "/v1/graphs", WATCH.encode(), content_type="application/yaml")
check(status == 201, f"post graph: {status} {body}")

RETRY = WATCH.replace("name: watch", "name: retry").replace(
    "      input: { url: input.url }\n",
    "      input: { url: input.url, fail_on_error_status: \"true\" }\n"
    "      retry: { maxAttempts: 3, initialBackoff: 300ms, multiplier: 2 }\n")
status, body = call("POST", "/v1/graphs", RETRY.encode(), content_type="application/yaml")
check(status == 201, f"post retry graph: {status} {body}")

APPROVAL = """apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: approve }
spec:
  nodes:
    - { id: sum, kind: tool, component: calc, approval: required, input: { expr: "'6 * 7'" } }
"""
status, body = call("POST", "/v1/graphs", APPROVAL.encode(), content_type="application/yaml")
check(status == 201, f"post approval graph: {status} {body}")

THINK = """apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: think }
spec:
  nodes:
    - id: plan
      kind: agent
      component: planner
      tools: [calc]
      models: [default]
      maxTokens: 96
      input: { goal: "'Compute 17*23'" }
"""
status, body = call("POST", "/v1/graphs", THINK.encode(), content_type="application/yaml")
check(status == 201, f"post agent graph: {status} {body}")

# 500 nodes: an entry fanning out to 83 chains of 6 that join at the end.
nodes = ["    - { id: start, kind: tool, component: calc, input: { expr: \"'1'\" } }"]
edges = []
for c in range(83):
    for i in range(6):
        nodes.append(f"    - {{ id: c{c}n{i}, kind: tool, component: calc, input: {{ expr: \"'1'\" }} }}")
        edges.append(f"    - {{ from: {'start' if i == 0 else f'c{c}n{i - 1}'}, to: c{c}n{i} }}")
    edges.append(f"    - {{ from: c{c}n5, to: end }}")
nodes.append("    - { id: end, kind: tool, component: calc, input: { expr: \"'1'\" } }")
BIG = ("apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: big }\nspec:\n  limits: { maxSteps: 1000 }\n  nodes:\n"
       + "\n".join(nodes) + "\n  edges:\n" + "\n".join(edges) + "\n")
status, body = call("POST", "/v1/graphs", BIG.encode(), content_type="application/yaml")
check(status == 201, f"post big graph: {status} {body}")


def start(url, wait=False, graph="watch"):
    status, body = call("POST", "/v1/runs" + ("?wait=true" if wait else ""), {"graph": graph, "input": {"url": url}})
    check(status in (200, 202), f"start run: {status} {body}")
    return body["run"]


# ---- the browser ------------------------------------------------------------------------------

options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1000", "--no-first-run", "--disable-extensions"]:
    options.add_argument(arg)
options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
driver = webdriver.Chrome(options=options, service=Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")))
# Live views repaint under the test: an element replaced between finding and reading is looked up again.
wait = WebDriverWait(driver, 60, ignored_exceptions=[StaleElementReferenceException])


def shot(name):
    driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def css(sel):
    return driver.find_element(By.CSS_SELECTOR, sel)


def sign_in(token):
    wait.until(EC.visibility_of_element_located((By.ID, "token")))
    box = css("#token")
    box.clear()
    box.send_keys(token)
    css("#login-button").click()


def sign_out():
    css("#logout").click()
    wait.until(EC.visibility_of_element_located((By.ID, "login")))


def node(name, state):
    return (By.CSS_SELECTOR, f'#picture g.node[data-node="{name}"][data-state="{state}"]')


try:
    # A wrong token gets the login error, and the page stays on the login form.
    driver.get(BASE + "/ui/")
    sign_in(WRONG)
    wait.until(EC.text_to_be_present_in_element((By.ID, "login-error"), "refused"))
    check(css("#nav").get_attribute("hidden") is not None, "navigation hidden after a refused token")
    summary["login_error"] = css("#login-error").text
    shot("01-wrong-token")

    # Log in; the runs list loads.
    sign_in(ADMIN)
    wait.until(EC.presence_of_element_located((By.ID, "runs")))
    check(css("#who").text.startswith("admin"), css("#who").text)
    shot("02-signed-in")

    # A run started through the API, watched live: running, then succeeded, without a reload.
    run = start(UP + "/slow")
    driver.get(f"{BASE}/ui/#/runs/{run}")
    wait.until(EC.presence_of_element_located(node("fetch", "running")))
    driver.execute_script("window.__sameDocument = true;")
    shot("03-run-running")
    release.set()
    wait.until(EC.presence_of_element_located(node("fetch", "succeeded")))
    wait.until(EC.presence_of_element_located(node("pick", "succeeded")))
    wait.until(EC.text_to_be_present_in_element((By.ID, "run-status"), "succeeded"))
    check(driver.execute_script("return window.__sameDocument === true"), "the colours changed without a reload")
    bars = driver.find_elements(By.CSS_SELECTOR, "#timeline rect.bar-attempt")
    check(len(bars) == 2, f"one timeline bar per attempt, got {len(bars)}")
    summary["live_run"] = run
    shot("04-run-succeeded")

    # The step and its audit record: the allowed egress with the address it reached.
    driver.get(f"{BASE}/ui/#/runs/{run}/steps/fetch%231")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '.audit tr[data-verdict="allowed"]')))
    check(css(".audit .memory-peak").text.strip() != "", "memory peak shown")
    check("127.0.0.1" in css('.audit tr[data-verdict="allowed"]').text, "egress target shown")
    check(len(driver.find_elements(By.CSS_SELECTOR, '.crossing[data-kind="http_intent"]')) == 1, "the HTTP intent is listed")
    shot("05-step-audit")

    # Replay: every completed step reproduces its output.
    driver.get(f"{BASE}/ui/#/runs/{run}")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#view[data-status="succeeded"]')))
    wait.until(EC.element_to_be_clickable((By.ID, "replay-button"))).click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#replay-verdict [data-state="identical"]')))
    check(len(driver.find_elements(By.CSS_SELECTOR, '#replay-table [data-state="identical"]')) == 2, "both steps identical")
    shot("06-replay")

    # A denied egress: the node and the step row are marked, the audit row names the reason.
    denied = start("http://127.0.0.1:9/forbidden", wait=True)
    driver.get(f"{BASE}/ui/#/runs/{denied}")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#picture g.node.denied[data-node="fetch"]')))
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#steps-body tr.denied[data-step="fetch#1"]')))
    shot("07-run-denied")
    driver.get(f"{BASE}/ui/#/runs/{denied}/steps/fetch%231")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '.audit tr[data-verdict="denied"]')))
    reason = css('.audit tr[data-verdict="denied"]').text
    check("no egress rule" in reason, f"the denial names the missing rule: {reason}")
    summary["denial"] = reason
    shot("08-step-denied")

    # A tool output holding markup renders as text and runs nothing.
    xss = start(UP + "/xss", wait=True)
    driver.get(f"{BASE}/ui/#/runs/{xss}/steps/fetch%231")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '.crossing[data-kind="http_response"] pre')))
    check(XSS in css('.crossing[data-kind="http_response"] pre').text, "the body is shown as text")
    check(XSS.replace('"', '\\"') in css("#step-result pre").text, "the output is shown as text")
    check(driver.execute_script("return window.__pwned === undefined"), "no script from the journal ran")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#view script, #view img")) == 0, "no element was made from journal text")
    shot("09-markup-as-text")

    # Cancel a run held upstream.
    held = start(UP + "/hold")
    driver.get(f"{BASE}/ui/#/runs/{held}")
    wait.until(EC.presence_of_element_located(node("fetch", "running")))
    css("#cancel").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "run-status"), "cancelled"))
    wait.until(EC.presence_of_element_located(node("fetch", "cancelled")))
    shot("10-cancelled")

    # Retries: two failed attempts, their backoff waits, then success, on the timeline.
    flaky = start(UP + "/flaky", graph="retry")
    driver.get(f"{BASE}/ui/#/runs/{flaky}")
    wait.until(EC.presence_of_element_located(node("pick", "succeeded")))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '#timeline rect.bar-attempt[data-step="fetch#1"]')) == 3)
    check(len(driver.find_elements(By.CSS_SELECTOR, "#timeline rect.bar-attempt.retrying")) == 2, "two failed attempts")
    check(len(driver.find_elements(By.CSS_SELECTOR, "#timeline rect.bar-backoff")) == 2, "two backoff waits")
    shot("16-retries")

    # Approval: the paused step waits for a decision made in the page.
    status, body = call("POST", "/v1/runs", {"graph": "approve", "input": {}})
    check(status == 202, f"start approval run: {status} {body}")
    paused = body["run"]
    driver.get(f"{BASE}/ui/#/runs/{paused}")
    wait.until(EC.presence_of_element_located(node("sum", "waiting")))
    shot("17-awaiting-approval")
    css('.approval-comment[data-step="sum#1"]').send_keys("looks right")
    css('button.approve[data-step="sum#1"]').click()
    wait.until(EC.presence_of_element_located(node("sum", "succeeded")))
    wait.until(EC.text_to_be_present_in_element((By.ID, "run-output"), "42"))

    # An agent step: its model call with the prompt it sent, the answer and the tokens.
    status, body = call("POST", "/v1/runs?wait=true", {"graph": "think", "input": {}})
    check(status == 200, f"agent run: {status} {body}")
    agent = body["run"]
    driver.get(f"{BASE}/ui/#/runs/{agent}/steps/plan%231")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '.crossing[data-kind="model_request"] .message')))
    # Texts are read in one script call each: a live repaint may replace the elements.
    def text_of(selector):
        return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", selector)

    prompt = text_of('.crossing[data-kind="model_request"]')
    check("Compute 17*23" in prompt, f"the prompt is shown: {prompt[:300]}")
    answer = text_of('.crossing[data-kind="model_response"]')
    check("tokens in" in answer, f"the answer's tokens are shown: {answer[:300]}")
    shot("18-agent-model-call")
    driver.get(f"{BASE}/ui/#/runs/{agent}")
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#view[data-status]')))
    wait.until(lambda d: "Tokens" in text_of("#view") and " in / " in text_of("#view"))

    # The runs list: newest first, live, filtered by status, a page at a time. Rows are read in
    # one script call: the list refreshes itself every 2 s.
    def rows(d):
        return d.execute_script("return [...document.querySelectorAll('#runs-body tr[data-run]')].map(r => r.dataset.run)")

    runs = [agent, paused, flaky, held, xss, denied, run]
    driver.get(f"{BASE}/ui/#/runs")
    wait.until(lambda d: len(rows(d)) == len(runs))
    listed = rows(driver)
    check(listed == runs, f"newest first: {listed}")
    shot("15-runs")
    driver.get(f"{BASE}/ui/#/runs?status=cancelled")
    wait.until(lambda d: rows(d) == [held])
    driver.get(f"{BASE}/ui/#/runs?limit=4")
    wait.until(lambda d: rows(d) == runs[:4])
    css("#next-page").click()
    wait.until(lambda d: rows(d) == runs[4:])
    check(not driver.find_elements(By.ID, "next-page"), "the last page has no next")
    css("#prev-page").click()
    wait.until(lambda d: rows(d) == runs[:4])

    # A run id that does not exist, and one that is not a run id.
    driver.get(f"{BASE}/ui/#/runs/{'0' * 32}")
    wait.until(EC.text_to_be_present_in_element((By.ID, "not-found"), "not in the journal"))
    driver.get(f"{BASE}/ui/#/runs/not-a-run")
    wait.until(EC.text_to_be_present_in_element((By.ID, "not-found"), "is not a run id"))
    shot("11-unknown-run")

    # An event kind this page does not know (a newer host on a shared journal) is kept aside.
    kinds = driver.execute_script("return window.sandgraphConsole.applyEvent('from_a_newer_host', {seq: 1, at_ms: 1})")
    check(kinds == ["from_a_newer_host"], f"unknown kinds kept: {kinds}")

    # 500 nodes: laid out by the host, drawn under a second (the 2-node graph is the baseline).
    driver.get(f"{BASE}/ui/#/graphs/watch")
    wait.until(lambda d: d.find_element(By.ID, "picture").get_attribute("data-render-ms"))
    summary["small_graph_render_ms"] = int(css("#picture").get_attribute("data-render-ms"))
    driver.get(f"{BASE}/ui/#/graphs/big")
    wait.until(lambda d: d.find_element(By.ID, "picture").get_attribute("data-render-ms"))
    render_ms = int(css("#picture").get_attribute("data-render-ms"))
    count = len(driver.find_elements(By.CSS_SELECTOR, "#picture g.node"))
    check(count == 500, f"500 nodes drawn, got {count}")
    summary["big_graph_render_ms"] = render_ms
    shot("12-graph-500-nodes")

    # Tools: schemas and requested capabilities.
    driver.get(f"{BASE}/ui/#/tools/http-get")
    wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "main"), "Egress it requests"))
    shot("13-tool")

    # A read-only token sees runs but cannot act on them.
    sign_out()
    check(driver.execute_script("return sessionStorage.length") == 0, "signing out forgets the token")
    sign_in(READER)
    wait.until(EC.text_to_be_present_in_element((By.ID, "who"), "reader"))
    driver.get(f"{BASE}/ui/#/runs/{run}")
    wait.until(EC.presence_of_element_located((By.ID, "replay-button")))
    check(not css("#replay-button").is_enabled(), "replay is disabled without runs:write")
    shot("14-read-only")

    # The token never appears in a URL the page used.
    urls = driver.execute_script("return performance.getEntries().map(e => e.name)")
    check(not any(ADMIN in u or READER in u for u in urls + [driver.current_url]), "a token in a URL")
    # The page broke none of its own policy.
    violations = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
    check(not violations, f"policy violations: {violations}")
    summary["ok"] = True
except Exception as e:  # noqa: BLE001 - reported with a screenshot
    shot("failure")
    summary["ok"] = False
    summary["error"] = f"{type(e).__name__}: {e}"
    summary["url"] = driver.current_url
    summary["page"] = driver.find_element(By.TAG_NAME, "body").text[:4000]
finally:
    driver.quit()
    release.set()
    upstream.shutdown()

print(json.dumps(summary))
sys.exit(0 if summary.get("ok") else 1)
