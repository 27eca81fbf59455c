"""An MCP server (official `mcp` SDK) with one tool, `add`, over
Streamable HTTP at http://HOST:PORT/mcp.

usage: mcp_server.py HOST PORT
"""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("agentnet-demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


if __name__ == "__main__":
    server.run("streamable-http", host=sys.argv[1], port=int(sys.argv[2]))
