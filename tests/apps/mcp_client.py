"""MCP client (official `mcp` SDK) over Streamable HTTP: lists the tools of
the server at URL and calls `add` with 20 and 22.

usage: mcp_client.py URL
"""

import asyncio
import sys

from mcp import Client


async def main() -> None:
    async with Client(sys.argv[1]) as client:
        tools = await client.list_tools()
        print("tools: " + ",".join(sorted(tool.name for tool in tools.tools)))
        result = await client.call_tool("add", {"a": 20, "b": 22})
        texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        print("add: " + " ".join(texts))


if __name__ == "__main__":
    asyncio.run(main())
