"""A2A client (official a2a-sdk): fetches the Agent Card from BASE_URL's
well-known path, sends one message to the URL the card advertises, and
prints the card's URL and the agent's reply.

usage: a2a_client.py BASE_URL TEXT
"""

import asyncio
import sys

import httpx
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.helpers.proto_helpers import get_stream_response_text, new_text_message
from a2a.types import Role, SendMessageRequest


async def main() -> None:
    base_url, text = sys.argv[1], sys.argv[2]
    async with httpx.AsyncClient(timeout=30) as http:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        print(f"card: {card.name} at {card.supported_interfaces[0].url}")
        client = await create_client(card, client_config=ClientConfig(httpx_client=http, streaming=False))
        request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
        replies = [get_stream_response_text(r) async for r in client.send_message(request)]
        print(f"reply: {' '.join(r for r in replies if r)}")


if __name__ == "__main__":
    asyncio.run(main())
