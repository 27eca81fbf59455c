"""An A2A agent (official a2a-sdk) that answers every message with
"echo: <text>". Its Agent Card, at the well-known path, advertises the
overlay URL it is reached at (a NAME.agent.internal URL).

It is served the way the A2A samples serve theirs: uvicorn on
host="0.0.0.0" (IPv4, all interfaces), with uvicorn's access log on, so
the caller's address shows.

usage: a2a_server.py PORT PUBLIC_URL
"""

import sys

import uvicorn
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from starlette.applications import Starlette


class EchoExecutor(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        await event_queue.enqueue_event(
            new_text_message(f"echo: {text}", context_id=context.context_id)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise RuntimeError("nothing to cancel")


def main() -> None:
    port, public_url = int(sys.argv[1]), sys.argv[2]
    card = AgentCard(
        name="echo",
        description="Echoes messages over agentnet",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=public_url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(id="echo", name="echo", description="echoes", tags=["echo"])
        ],
    )
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, rpc_url="/")
    uvicorn.run(Starlette(routes=routes), host="0.0.0.0", port=port)


if __name__ == "__main__":
    main()
