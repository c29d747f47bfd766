"""A webhook receiver for the benchmark, in a process of its own: `python -m bench.receiver --port N`.

It answers every POST with 204 at once and counts them; GET /count answers the count, so the benchmark can check
every webhook arrived. asyncio and a few lines of HTTP/1.1, like bench/load.py: on the benchmark's shared cores a
receiver should cost little, since in a deployment it runs elsewhere (the benchmark reports its CPU apart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


class Receiver:
    """Counts POSTs; answers each at once."""

    def __init__(self) -> None:
        self.received = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests until the client closes it (the sender closes after each)."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                await reader.readexactly(int(fields.get("content-length", "0")))
                if lines[0].startswith("POST"):
                    self.received += 1
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                else:
                    body = str(self.received).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(Receiver().serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_main(parser.parse_args(argv).port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
