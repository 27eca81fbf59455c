"""An MCP host's side of `agentnet mcp` (official `mcp` SDK, stdio
transport): spawns the server the way hosts do (a command and its args),
lists its tools and calls the ones given, then prints one JSON object:
the server's name and version, the tool names, and per call whether it
was an error, its structured content and its text.

usage: agentnet_mcp_client.py CALLS_JSON COMMAND [ARG...]
  CALLS_JSON: [["tool", {arguments}], ...]
"""

import asyncio
import json
import sys

from mcp import Client, StdioServerParameters


async def main() -> None:
    calls = json.loads(sys.argv[1])
    server = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
    async with Client(server) as client:
        tools = await client.list_tools()
        results = []
        for name, arguments in calls:
            result = await client.call_tool(name, arguments)
            texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
            results.append(
                {
                    "tool": name,
                    "is_error": bool(result.is_error),
                    "structured": result.structured_content,
                    "text": "\n".join(texts),
                }
            )
        info = client.server_info if hasattr(client, "server_info") else None
        print(
            json.dumps(
                {
                    "server": getattr(info, "name", None),
                    "tools": sorted(tool.name for tool in tools.tools),
                    "schemas": {tool.name: tool.input_schema for tool in tools.tools},
                    "results": results,
                }
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
