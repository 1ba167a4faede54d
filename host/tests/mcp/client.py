"""The official MCP Python SDK as a client of Sandgraph's MCP server, for host/tests/mcp.rs.

    client.py stdio SANDGRAPH_BIN [ARGS...]    # `sandgraph mcp ...` as a subprocess
    client.py http URL TOKEN                   # `sandgraph serve`'s /mcp, bearer token

Scenario settings come from the environment:
  ALLOWED_URL   a loopback URL the operator and the manifest allow (answers "hello from the test")
  DENIED_URL    a loopback URL outside the grant
  HOLD_URL      an allowed URL that never answers (the slow call to cancel)
  UPLOAD        (http only) a JSON file: a POST /v1/tools body adding a tool during the session
Prints one JSON document with what each step saw; the Rust test asserts on it.
"""

import json
import os
import sys
import time

import anyio
import mcp.types as types
from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client


def result_json(r):
    return {
        "is_error": bool(r.is_error),
        "text": [c.text for c in r.content if getattr(c, "type", "") == "text"],
        "structured": r.structured_content,
    }


async def scenario(session, changed, upload):
    seen = {}
    init = await session.initialize()
    seen["protocol"] = init.protocol_version
    seen["server"] = init.server_info.name
    seen["list_changed"] = bool(init.capabilities.tools and init.capabilities.tools.list_changed)
    tools = (await session.list_tools()).tools
    seen["tools"] = sorted(t.name for t in tools)
    seen["calc_schema"] = next(t.input_schema for t in tools if t.name == "calc")
    seen["calc"] = result_json(await session.call_tool("calc", {"expr": "6 * 7"}))
    seen["allowed"] = result_json(
        await session.call_tool("http-get", {"url": os.environ["ALLOWED_URL"]})
    )
    seen["denied"] = result_json(
        await session.call_tool("http-get", {"url": os.environ["DENIED_URL"]})
    )
    seen["bad_arguments"] = result_json(await session.call_tool("calc", {"expr": 7}))
    try:
        await session.call_tool("no-such-tool", {})
        seen["unknown_tool"] = "answered"
    except MCPError as e:
        seen["unknown_tool"] = {"code": e.code, "message": e.message}
    # A slow call, cancelled: the SDK sends notifications/cancelled when the wait runs out.
    started = time.monotonic()
    try:
        await session.call_tool(
            "http-get", {"url": os.environ["HOLD_URL"]}, read_timeout_seconds=1.0
        )
        seen["cancelled"] = "answered"
    except MCPError as e:
        seen["cancelled"] = {"code": e.code, "message": e.message}
    # The session serves on after it.
    seen["after_cancel"] = result_json(await session.call_tool("calc", {"expr": "1 + 1"}))
    seen["after_cancel_s"] = time.monotonic() - started
    await session.send_ping()
    seen["ping"] = True
    if upload:
        import httpx2

        url, token = upload["url"], upload["token"]
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            r = await http.post(url, json=upload["body"], timeout=60)
            seen["upload_status"] = r.status_code
        with anyio.fail_after(30):
            await changed.wait()
        seen["tools_after_upload"] = sorted(t.name for t in (await session.list_tools()).tools)
    return seen


async def main():
    changed = anyio.Event()

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    mode = sys.argv[1]
    if mode == "stdio":
        params = StdioServerParameters(
            command=sys.argv[2], args=sys.argv[3:], env=dict(os.environ), cwd=os.getcwd()
        )
        with open(os.environ["SERVER_LOG"], "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(
                    read, write, read_timeout_seconds=60, message_handler=on_message
                ) as session:
                    seen = await scenario(session, changed, None)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        url, token = sys.argv[2], sys.argv[3]
        upload = None
        if os.environ.get("UPLOAD"):
            with open(os.environ["UPLOAD"]) as f:
                body = json.load(f)
            upload = {"url": url.rsplit("/", 1)[0] + "/v1/tools", "token": token, "body": body}
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx2.Timeout(60.0, read=120.0),
        )
        async with http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(
                    read, write, read_timeout_seconds=60, message_handler=on_message
                ) as session:
                    seen = await scenario(session, changed, upload)
    print(json.dumps(seen))


anyio.run(main)
