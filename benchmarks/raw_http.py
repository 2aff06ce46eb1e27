"""A minimal HTTP/1.1 keep-alive client for load generation in benchmarks.

The benchmarks measure the server, and the load generator shares the machine's two cores with
it: a general-purpose client (httpx) spent about a millisecond of CPU per 500-reading POST,
a quarter of the server's own cost, which the ratios then charged to the pipeline. This one
sends prepared request bytes on persistent connections and reads just the status line, the
Content-Length and the body: tens of microseconds per request.

Only what the benchmarks need: a server that answers every request with a Content-Length
(uvicorn does), no chunked bodies, no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


def post_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of one POST, ready to send as many times as needed."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One persistent connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, request: bytes) -> Response:
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, header_block = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        for line in header_block.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self._reader.readexactly(length) if length else b""
        return Response(status, body)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()
