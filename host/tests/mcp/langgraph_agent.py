"""A LangGraph agent using Sandgraph's tools through MCP, its model `sandgraph-infer serve`
(started by host/tests/mcp.rs). Packages from PyPI, pinned in `.tools/mcp-langgraph`:
langgraph, langchain-mcp-adapters (which brings the MCP Python SDK's 1.x line) and
langchain-openai.

    langgraph_agent.py MCP_URL TOKEN MODEL_BASE_URL

The graph: the model picks a call of Sandgraph's `calc` (tool choice forced: the model is
small), LangGraph's ToolNode runs it through the MCP session, the model answers from the
result. Prints what each step saw as one JSON document.
"""

import asyncio
import json
import sys

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode


async def main():
    mcp_url, token, model_url = sys.argv[1], sys.argv[2], sys.argv[3]
    client = MultiServerMCPClient(
        {
            "sandgraph": {
                "transport": "streamable_http",
                "url": mcp_url,
                "headers": {"Authorization": f"Bearer {token}"},
            }
        }
    )
    tools = await client.get_tools()
    calc = next(t for t in tools if t.name == "calc")
    llm = ChatOpenAI(
        base_url=model_url,
        api_key="sk-sandgraph-test",
        model="smollm2",
        temperature=0,
        max_tokens=60,
        max_retries=0,
    )
    chooser = llm.bind_tools([calc], tool_choice="calc")

    async def agent(state: MessagesState):
        return {"messages": [await chooser.ainvoke(state["messages"])]}

    async def answer(state: MessagesState):
        return {"messages": [await llm.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([calc], handle_tool_errors=True))
    graph.add_node("answer", answer)
    graph.add_edge(START, "agent")
    graph.add_edge("agent", "tools")
    graph.add_edge("tools", "answer")
    graph.add_edge("answer", END)
    result = await graph.compile().ainvoke(
        {"messages": [HumanMessage("What is 17 * 23? Use the calc tool.")]}
    )
    messages = result["messages"]
    call = next(m for m in messages if isinstance(m, AIMessage) and m.tool_calls)
    tool_message = next(m for m in messages if isinstance(m, ToolMessage))
    print(
        json.dumps(
            {
                "tools": sorted(t.name for t in tools),
                "tool_call": call.tool_calls[0],
                "tool_result": tool_message.content,
                "tool_status": tool_message.status,
                "answer": messages[-1].content,
                "steps": [type(m).__name__ for m in messages],
            },
            default=str,
        )
    )


asyncio.run(main())
