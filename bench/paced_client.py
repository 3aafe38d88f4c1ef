"""The lag test's load generator: POSTs at a steady rate (open loop) over a fixed set of
keep-alive HTTP/1.1 connections, each write stamped when it was due, sent and answered.

Why not httpx, as before: its async pool's bookkeeping grows with the requests in flight,
and on a machine whose two cores also run the server, the projector and PostgreSQL, the
client was what fell behind: 0.8 cores for 157 writes/s, its writes sent seconds late,
and the "server's queue" it reported was its own. Here a write is a few bytes written to
a socket and one answer read back: no pool to search, nothing that grows with the load.
The answers are uvicorn's (always a Content-Length, never chunked); anything else is an
error, recorded as such.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson

# Connections to the server, each carrying one write at a time: at most this many, and
# a quarter of a second's writes (fewer at a low rate, so that none sits idle past the
# server's keep-alive). A write due while all are busy waits for one and is sent late:
# its lateness is reported (and "write p99 from its schedule" counts it), so a slow
# server shows as late writes, not as a slower pace.
CONNECTIONS = 128
# An answer not received by then is an error of its own (the run goes on).
TIMEOUT_SECONDS = 30.0
# What a write may fail with: the connection, the answer's form, the deadline.
_FAILURES = (OSError, ValueError, RuntimeError, asyncio.IncompleteReadError, TimeoutError)


@dataclass
class Write:
    """One timed write: when it was due, sent and answered (time.monotonic), and what the
    answer said."""

    i: int
    user: str
    due: float
    sent: float = 0.0
    done: float = 0.0
    status: int = 0
    position: int | None = None
    pending: bool = False
    error: str | None = None


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """``raw`` sent and its answer read; sent again once on a new connection when
        a kept one turns out closed before any of the answer came (the server's
        keep-alive ended it: the request never reached the application)."""
        reused = self.writer is not None
        try:
            return await asyncio.wait_for(self._exchange(raw), TIMEOUT_SECONDS)
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            nothing = not isinstance(error, asyncio.IncompleteReadError) or not error.partial
            if not (reused and nothing):
                raise
        return await asyncio.wait_for(self._exchange(raw), TIMEOUT_SECONDS)

    async def _exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if "content-length" not in headers:
                raise RuntimeError(f"an answer without Content-Length: {status_line}")
            body = await reader.readexactly(int(headers["content-length"]))
            if headers.get("connection", "").lower() == "close":
                self.close()
            return int(status_line.split(" ", 2)[1]), headers, body
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _get(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode("latin-1")


def _post(host: str, path: str, authorization: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def paced_writes(
    url: str,
    users: Sequence[str],
    authorizations: dict[str, str],
    rate: float,
    seconds: float,
    *,
    connections: int = CONNECTIONS,
) -> list[Write]:
    """POST ``rate`` tasks a second for ``seconds``, round-robin over ``users`` (each with
    its Authorization header), and return every write, answered or failed."""
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    netloc = split.netloc
    queue: asyncio.Queue[Write | None] = asyncio.Queue()
    writes: list[Write] = []

    async def carry(connection: _Connection) -> None:
        while (write := await queue.get()) is not None:
            body = orjson.dumps({"title": f"lag probe {write.i}"})
            raw = _post(netloc, f"/api/{write.user}/tasks", authorizations[write.user], body)
            write.sent = time.monotonic()
            try:
                write.status, headers, _ = await connection.request(raw)
            except _FAILURES as error:
                write.done, write.error = time.monotonic(), repr(error)
                continue
            write.done = time.monotonic()
            position = headers.get("x-ledger-position")
            write.position = int(position) if position else None
            write.pending = headers.get("x-projection-pending") == "true"
        connection.close()

    pool = [_Connection(host, port) for _ in range(max(1, min(connections, round(rate / 4))))]
    # Every connection opened before the first write is due, so none pays for a connect.
    await asyncio.gather(*(c.request(_get(netloc, "/healthz")) for c in pool))
    carriers = [asyncio.create_task(carry(c)) for c in pool]
    start = time.monotonic() + 0.05
    for i in range(int(rate * seconds)):
        write = Write(i, users[i % len(users)], start + i / rate)
        delay = write.due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        writes.append(write)
        queue.put_nowait(write)
    for _ in carriers:
        queue.put_nowait(None)
    await asyncio.gather(*carriers)
    return writes
