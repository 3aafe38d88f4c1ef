"""What hostile connections cost a `taskledger serve` with the default edge settings.

    .venv/bin/python -m bench.edge [--quick] [sizes]   (from the repo root)

Five phases over raw sockets, against one server (SQLite: the edge is the same on both
backends), each printing the answers, when the server closed the sockets, and the
server's RSS:

  header flood  N connections each streaming a header of up to M MiB (431 at the cap)
  headers       one request with 100,000 headers (431 past MAX_HEADERS)
  slowloris     N sockets sending a head a byte every 0.5 s (408 at HEADER_TIMEOUT_SECONDS)
  bodies        N POSTs declaring 65,000 bytes and sending 60,011 (408 at BODY_TIMEOUT_SECONDS)
  sigterm       SIGTERM with one half-sent body open (exit by SHUTDOWN_TIMEOUT_SECONDS)

The edge settings are passed explicitly at their defaults (api/settings.py), so a
value in the caller's environment cannot change them; the access log is off so that
thousands of refusals do not weigh on the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

from api.settings import Settings
from bench import harness as h
from bench.figures import MIB, figure, tally
from tests.support import in_threads

HEAD = b"GET /healthz HTTP/1.1\r\nHost: taskledger\r\n"
EDGE_SETTINGS = (
    "max_header_bytes",
    "max_headers",
    "header_timeout_seconds",
    "body_timeout_seconds",
    "keep_alive_seconds",
    "max_connections",
    "shutdown_timeout_seconds",
)
BODY_DECLARED = 65_000
BODY_USER = "edge-user"


def edge_defaults() -> dict[str, str]:
    return {name.upper(): str(Settings.model_fields[name].default) for name in EDGE_SETTINGS}


class Peak:
    """The highest VmRSS of pid, sampled every 20 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.mib = h.rss_mb(pid)[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):  # the server may exit (sigterm phase)
                self.mib = max(self.mib, h.rss_mb(self.pid)[0])

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def status_of(answer: bytes) -> str:
    """The status code of an HTTP answer, or what the socket did instead."""
    if answer.startswith(b"HTTP/"):
        return answer.split(b" ", 2)[1].decode()
    return "closed" if not answer else "garbled"


def answer(sock: socket.socket) -> str:
    try:
        return status_of(sock.recv(100))
    except TimeoutError:
        return "timeout"
    except OSError:
        return "reset"


@dataclass
class Watched:
    """What the server did to a set of sockets: each one's answer, and when it closed."""

    answers: Counter[str] = field(default_factory=Counter)
    closed_after: list[float] = field(default_factory=list)
    still_open: int = 0


def watch(
    socks: list[socket.socket], *, seconds: float, trickle: bytes = b"", since: float = 0
) -> Watched:
    """Until the server has closed every socket (or ``seconds`` pass): the first bytes
    each one receives, and when it is closed (seconds after ``since``, a monotonic time,
    by default now). With ``trickle``, each socket still open is sent its next byte every
    0.5 s."""
    watched = Watched()
    by_fd = {sock.fileno(): sock for sock in socks}
    answered: set[int] = set()
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    started = time.monotonic()
    since = since or started
    step = 0

    def close(fd: int) -> None:
        poller.unregister(fd)
        del by_fd[fd]
        watched.closed_after.append(time.monotonic() - since)
        if fd not in answered:
            watched.answers["closed"] += 1

    while by_fd and time.monotonic() - started < seconds:
        for fd, _ in poller.poll(500):
            try:
                data = by_fd[fd].recv(65536)
            except OSError:
                data = b""
            if data and fd not in answered:
                answered.add(fd)
                watched.answers[status_of(data)] += 1
            if not data:
                close(fd)
        if step < len(trickle) and time.monotonic() - started >= step * 0.5:
            for fd, sock in list(by_fd.items()):
                try:
                    sock.send(trickle[step : step + 1])
                except OSError:
                    close(fd)
            step += 1
    watched.still_open = len(by_fd)
    return watched


def report_watched(name: str, watched: Watched, after: str) -> None:
    figure(f"{name}: answers", tally(watched.answers))
    if watched.closed_after:
        figure(f"{name}: first closed, after {after}", min(watched.closed_after), "s")
        figure(f"{name}: last closed, after {after}", max(watched.closed_after), "s")
    figure(f"{name}: still open at the end", watched.still_open, "sockets")


# -- phases -------------------------------------------------------------------------------


def header_flood(server: h.Server, connections: int, mib: int) -> None:
    def flood(_: int) -> tuple[str, int]:
        with connect(server.port) as sock:
            sent = 0
            try:
                sock.sendall(HEAD + b"X-Flood: ")
                while sent < mib * MIB and not readable(sock):
                    sock.sendall(b"a" * MIB)
                    sent += MIB
            except OSError:
                pass
            return answer(sock), sent

    h.log(f"header flood: {connections} connections, up to {mib} MiB each")
    with Peak(server.pid) as peak:
        started = time.monotonic()
        results = in_threads(connections, flood)
        seconds = time.monotonic() - started
    done = [r for r in results if isinstance(r, tuple)]
    answers = Counter(status for status, _ in done)
    answers.update(type(r).__name__ for r in results if not isinstance(r, tuple))
    figure("header flood: connections", connections)
    figure("header flood: answers", tally(answers))
    figure("header flood: most sent by one connection", max(s for _, s in done) / MIB, "MiB")
    figure("header flood: time for all", seconds, "s", 2)
    figure("header flood: RSS before", peak.before, "MiB", 0)
    figure("header flood: RSS peak", peak.mib, "MiB", 0)


def many_headers(server: h.Server, count: int) -> None:
    h.log(f"headers: one request with {count} headers")
    with connect(server.port) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(count)) + b"\r\n")
        status = answer(sock)
    figure(f"headers: answer to {count:,} headers", status)


def slowloris(server: h.Server, count: int, wait: float) -> None:
    h.log(f"slowloris: {count} sockets sending a head a byte every 0.5 s")
    with Peak(server.pid) as peak, contextlib.ExitStack() as stack:
        socks = [stack.enter_context(connect(server.port)) for _ in range(count)]
        pad = HEAD + b"X-Pad: " + b"p" * int(2 * wait)  # a byte every 0.5 s for `wait` s
        watched = watch(socks, seconds=wait, trickle=pad)
    figure("slowloris: sockets", count)
    report_watched("slowloris", watched, "all were open")
    figure("slowloris: RSS before", peak.before, "MiB", 0)
    figure("slowloris: RSS peak", peak.mib, "MiB", 0)


def unfinished_bodies(server: h.Server, count: int, wait: float) -> None:
    h.log(f"bodies: {count} POSTs declaring {BODY_DECLARED} bytes, left unfinished")
    head = (
        f"POST /api/{BODY_USER}/tasks HTTP/1.1\r\nHost: taskledger\r\n"
        f"Authorization: Bearer {h.token(BODY_USER)}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {BODY_DECLARED}\r\n\r\n"
    ).encode()
    partial = head + b'{"title": "' + b"t" * 60_000
    with Peak(server.pid) as peak, contextlib.ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(connect(server.port))
            sock.sendall(partial)
            socks.append(sock)
        last_sent = time.monotonic()
        time.sleep(0.5)
        all_open = h.rss_mb(server.pid)[0]
        watched = watch(socks, seconds=wait, since=last_sent)
    figure("bodies: sockets", count)
    report_watched("bodies", watched, "the last was sent")
    figure("bodies: RSS before", peak.before, "MiB", 0)
    figure("bodies: RSS with all sent", all_open, "MiB", 0)
    figure("bodies: RSS peak", peak.mib, "MiB", 0)
    figure("bodies: RSS after", h.rss_mb(server.pid)[0], "MiB", 0)


def sigterm_mid_body(server: h.Server, wait: float) -> None:
    h.log("sigterm: one half-sent body open")
    with connect(server.port) as sock:
        sock.sendall(
            f"POST /api/{BODY_USER}/tasks HTTP/1.1\r\nHost: taskledger\r\n"
            f"Authorization: Bearer {h.token(BODY_USER)}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
        )
        time.sleep(0.5)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(wait)
        except subprocess.TimeoutExpired:
            figure("sigterm: still running after", wait, "s", 0)
            return
        seconds = time.monotonic() - started
        status = answer(sock)
    figure("sigterm: exited after", seconds, "s")
    figure("sigterm: exit code", code)
    figure("sigterm: the half-sent request's answer", status)


def settle() -> None:
    time.sleep(1)  # sockets closed by the last phase are gone from the server's books


@dataclass
class Sizes:
    floods: int = 20
    flood_mib: int = 20
    headers: int = 100_000
    slowloris: int = 3000
    bodies: int = 1000


QUICK = Sizes(floods=4, slowloris=300, bodies=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer connections (4, 300, 100): ~50 s"
    )
    parser.add_argument("--floods", type=int, help="header flood connections (default 20)")
    parser.add_argument("--flood-mib", type=int, help="MiB each flood sends at most (20)")
    parser.add_argument("--headers", type=int, help="headers in one request (100,000)")
    parser.add_argument("--slowloris", type=int, help="slowloris sockets (3,000)")
    parser.add_argument("--bodies", type=int, help="unfinished bodies (1,000)")
    parser.add_argument(
        "--wait", type=float, default=60, help="longest wait for a phase's sockets or exit (s)"
    )
    opts = parser.parse_args()
    sizes = QUICK if opts.quick else Sizes()
    for name in ("floods", "flood_mib", "headers", "slowloris", "bodies"):
        if getattr(opts, name) is not None:
            setattr(sizes, name, getattr(opts, name))
    h.install_signal_handlers()
    env = edge_defaults() | {"ACCESS_LOG": "false"}
    with (
        h.fresh_storage("sqlite", "edge") as storage,
        h.running_server(storage, extra_env=env) as server,
    ):
        for key, value in env.items():
            figure(f"setting {key}", value)
        figure("RSS idle", server.rss_mb()[0], "MiB", 0)
        header_flood(server, sizes.floods, sizes.flood_mib)
        settle()
        many_headers(server, sizes.headers)
        settle()
        slowloris(server, sizes.slowloris, opts.wait)
        settle()
        unfinished_bodies(server, sizes.bodies, opts.wait)
        settle()
        sigterm_mid_body(server, opts.wait)


if __name__ == "__main__":
    main()
