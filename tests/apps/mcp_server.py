"""An MCP server (official `mcp` SDK) with one tool, `add`, over
Streamable HTTP, started exactly as the SDK's docs start it: on its
defaults, so it listens on 127.0.0.1:PORT/mcp and accepts only localhost
Host headers (DNS-rebinding protection on). Peers reach it through
`agentnet serve --http PORT`.

usage: mcp_server.py PORT
"""

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("agentnet-demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


if __name__ == "__main__":
    server.run("streamable-http", port=int(sys.argv[1]))
