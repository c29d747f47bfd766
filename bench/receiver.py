"""A webhook receiver for the benchmark, in a process of its own: `python -m bench.receiver --port N`.

It answers every POST with 204 at once (a fast receiver: the benchmark measures the service's cost of sending,
not a slow receiver's) and counts them; GET /count answers the count, so the benchmark can check every
webhook arrived.
"""

from __future__ import annotations

import argparse
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Counter(BaseHTTPRequestHandler):
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with _Counter.lock:
            _Counter.received += 1
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        body = str(_Counter.received).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        """Quiet: thousands of deliveries a minute."""


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    ThreadingHTTPServer(("127.0.0.1", args.port), _Counter).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
