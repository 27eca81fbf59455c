"""TCP with half-close, both ends.

server PORT: on 127.0.0.1:PORT, reads each connection to its end (the
    client's half-close), then answers "received N sha256 HEX" and closes.
client HOST PORT LEN: sends LEN random bytes, shuts its sending side,
    reads the answer to the end and checks it: prints "half-close ok".
reset HOST PORT: connects and expects the connection to be reset before
    any byte arrives: prints "reset".

usage: tcp_halfclose.py server PORT | client HOST PORT LEN | reset HOST PORT
"""

import hashlib
import os
import socket
import sys


def serve(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    while True:
        conn, _ = listener.accept()
        with conn:
            digest, count = hashlib.sha256(), 0
            while chunk := conn.recv(65536):
                digest.update(chunk)
                count += len(chunk)
            conn.sendall(f"received {count} sha256 {digest.hexdigest()}\n".encode())


def client(host, port, length):
    payload = os.urandom(length)
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    want = f"received {length} sha256 {hashlib.sha256(payload).hexdigest()}\n".encode()
    if answer != want:
        sys.exit(f"answer {answer!r}, expected {want!r}")
    print("half-close ok")


def reset(host, port):
    # The reset may come before connect() has returned (it then fails with
    # ECONNRESET, not ECONNREFUSED: the handshake had completed).
    try:
        with socket.create_connection((host, port), timeout=30) as conn:
            data = conn.recv(1)
    except ConnectionResetError:
        print("reset")
        return
    sys.exit(f"expected a reset, got {data!r}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "server":
        serve(int(sys.argv[2]))
    elif mode == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        reset(sys.argv[2], int(sys.argv[3]))
