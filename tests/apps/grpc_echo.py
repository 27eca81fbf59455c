"""gRPC (grpcio) over the overlay, without generated code: a service
`agentnet.Echo` with a unary method `Say` (returns "echo: " + request) and
a server-streaming method `Count` (returns N messages for request "N"),
raw bytes on the wire.

The server prints the peer of every unary call (grpc's `context.peer()`,
e.g. `ipv4:100.64.1.2:41234`), so a test can see which family and which
source address reached it.

usage: grpc_echo.py serve HOST:PORT  (e.g. 0.0.0.0:50051, as servers bind)
       grpc_echo.py call TARGET      (e.g. dns:///bob.agent.internal:50051)
"""

import sys
from concurrent import futures

import grpc

SERVICE = "agentnet.Echo"


def say(request: bytes, context) -> bytes:
    print(f"call from {context.peer()}", flush=True)
    return b"echo: " + request


def count(request: bytes, context):
    for i in range(int(request)):
        yield f"item {i}".encode()


def serve(address: str) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(address) == 0:
        sys.exit(f"cannot listen on {address}")
    server.start()
    print(f"listening on {address}", flush=True)
    server.wait_for_termination()


def call(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        unary = channel.unary_unary(f"/{SERVICE}/Say")
        print(unary(b"hello", timeout=30).decode())
        stream = channel.unary_stream(f"/{SERVICE}/Count")
        items = [m.decode() for m in stream(b"5", timeout=30)]
        print(f"stream: {len(items)} items, last {items[-1]}")


if __name__ == "__main__":
    {"serve": serve, "call": call}[sys.argv[1]](sys.argv[2])
