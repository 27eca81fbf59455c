"""A tiny HTTP service on 127.0.0.1:PORT (the standard library's
http.server), for `agentnet serve --http`:

- any path: answers with the request's headers as a JSON object
  (lowercased names, every copy: {"name": ["value", ...]});
- /events: server-sent events: one event at once, the second only once
  the file RELEASE exists, then the response ends.

usage: echo_headers.py PORT RELEASE
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(b"data: first\n\n")
            self.wfile.flush()
            while not os.path.exists(RELEASE):
                time.sleep(0.05)
            self.wfile.write(b"data: second\n\n")
            self.wfile.flush()
            return
        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps(headers).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
