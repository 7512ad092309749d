"""An HTTP server for the network tests, run inside the test's network namespace on 127.0.0.1:PORT (the guest
reaches it at passt's gateway address): GET /hello.txt, GET /big (BIG_SIZE bytes of a fixed pattern),
POST /upload (answers the SHA-256 of what it received). Requests are logged on stdout.

    python3 httpserver.py PORT
"""
from __future__ import annotations

import hashlib
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

BIG_SIZE = 300_000


def big() -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(BIG_SIZE))


class Handler(BaseHTTPRequestHandler):
    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/hello.txt":
            self._send(b"hello from the host\n")
        elif self.path == "/big":
            self._send(big())
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self._send(f"received {len(body)} bytes sha256 {hashlib.sha256(body).hexdigest()}\n".encode())

    def log_message(self, fmt: str, *args) -> None:
        sys.stdout.write("http: " + fmt % args + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
