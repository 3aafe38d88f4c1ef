"""What one connection may cost, against `taskledger serve` over raw sockets: heads
capped in bytes and headers (431), pipelined ones too, what follows a head capped (413),
heads and bodies that never finish closed at their deadlines (408), idle connections
closed, a connection cap (503) that reads nothing past it, a bounded shutdown that
answers unfinished requests 503 and lets the ones under way finish; and each of these
refusals, like any answer, with its request id, an access line and its count."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import selectors
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.limits import MAX_BODY_BYTES
from tests.support import (
    LiveProcess,
    LiveServer,
    User,
    assert_problem,
    free_port,
    in_threads,
    service_env,
    stop_process,
    wait_for,
    wait_until_ready,
)

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEP_ALIVE = 1
# Generous: four people run tests at once on two cores.
MARGIN = 8.0
HEAD = b"GET /healthz HTTP/1.1\r\nHost: taskledger\r\n"
NEW_ID = re.compile(r"^[0-9a-f]{32}$")
REQUESTS = "taskledger_http_request_duration_seconds_count"


def edge_env(data_dir: Path, **extra: str) -> dict[str, str]:
    settings = {
        "HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
        "SHUTDOWN_TIMEOUT_SECONDS": "2",
        "MAX_HEADER_BYTES": str(32 * 1024),
        "MAX_HEADERS": "100",
        **extra,
    }
    return service_env(None, data_dir, **settings)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LiveProcess]]:
    """One `taskledger serve` (SQLite: the edge is the same on both backends) shared by
    the tests that leave it as they found it."""
    tmp = tmp_path_factory.mktemp("edge")
    port = free_port()
    proc = LiveProcess(["serve", "--port", str(port)], edge_env(tmp / "data"), tmp / "serve.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        proc.start()
        wait_until_ready(base_url, proc)
        yield base_url, proc
    finally:
        proc.stop()


def connect(base_url: str) -> socket.socket:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_to_end(sock: socket.socket, timeout: float) -> bytes:
    """All the server sends until it closes; fails if it has not closed in ``timeout``."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {timeout}s; received {received[:200]!r}") from None
    return received


def parse(answer: bytes) -> httpx.Response:
    """One HTTP/1.1 answer as a response, for assert_problem."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def pid_of(proc: LiveProcess) -> int:
    assert proc.proc is not None
    return proc.proc.pid


def test_a_streamed_20_mib_header_is_431_at_once_and_memory_stays_bounded(
    server: tuple[str, LiveProcess],
) -> None:
    base_url, proc = server
    pid = pid_of(proc)
    before = peak = vm_rss_mib(pid)
    flooding = threading.Event()

    def sample() -> None:
        nonlocal peak
        while flooding.is_set():
            peak = max(peak, vm_rss_mib(pid))
            time.sleep(0.02)

    def flood(_: int) -> tuple[int, bytes]:
        """Stream a 20 MiB header a MiB at a time until the server answers."""
        sock = connect(base_url)
        sent, chunk = 0, b"a" * 2**20
        try:
            sock.sendall(HEAD + b"X-Flood: ")
            while sent < 20 * 2**20:
                if select.select([sock], [], [], 0)[0]:
                    break  # answered: stop sending
                try:
                    sock.sendall(chunk)
                except OSError:
                    break
                sent += len(chunk)
            return sent, read_to_end(sock, 10)
        finally:
            sock.close()

    flooding.set()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        results = in_threads(20, flood)
    finally:
        flooding.clear()
        sampler.join()
    for result in results:
        assert isinstance(result, tuple), result
        sent, answer = result
        # Refused after its first 32 KiB: the rest of the 20 MiB was never sent.
        assert sent < 20 * 2**20, sent
        body = assert_problem(parse(answer), 431)
        assert "32768 bytes" in body["detail"]
    # Before: 98 → 548 MiB. Each connection now holds at most a 32 KiB head.
    assert peak - before < 60, (before, peak)
    assert httpx.get(base_url + "/healthz").status_code == 200


@pytest.mark.parametrize(("count", "reason"), [(101, "100 headers"), (10_000, "")])
def test_too_many_headers_is_431(server: tuple[str, LiveProcess], count: int, reason: str) -> None:
    base_url, _ = server
    sock = connect(base_url)
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(count))
    with contextlib.suppress(OSError):  # refused while still sending: the answer waits
        sock.sendall(HEAD + headers + b"\r\n")
    body = assert_problem(parse(read_to_end(sock, 10)), 431)
    assert reason in body["detail"]
    sock.close()


def test_up_to_the_limits_requests_are_served(server: tuple[str, LiveProcess]) -> None:
    base_url, _ = server
    headers = {f"X-{i}": "v" for i in range(90)}
    headers["X-Big"] = "b" * (24 * 1024)
    assert httpx.get(base_url + "/healthz", headers=headers).status_code == 200
    user = User()
    body = b'{"title": "t"' + b" " * (MAX_BODY_BYTES - 20) + b"}"
    with httpx.Client(base_url=base_url, headers=user.headers) as client:
        created = client.post(
            user.tasks_url(), content=body, headers={"Content-Type": "application/json"}
        )
        assert created.status_code == 201, created.text
        # Many requests on one kept-alive connection.
        for _ in range(200):
            assert client.get("/healthz").status_code == 200


def drip(
    sockets: dict[socket.socket, bytes], within: float
) -> tuple[dict[socket.socket, float], dict[socket.socket, bytes]]:
    """Send each socket its bytes one at a time, every 0.25 s, until the server closes
    it; when each closed (seconds from the start), and what the server sent it."""
    started = time.monotonic()
    closed: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = dict.fromkeys(sockets, b"")
    step = 0
    while len(closed) < len(sockets) and time.monotonic() - started < within:
        for sock, payload in sockets.items():
            if sock in closed:
                continue
            try:
                if select.select([sock], [], [], 0)[0]:
                    data = sock.recv(65536)
                    answers[sock] += data
                    if not data:
                        closed[sock] = time.monotonic() - started
                        continue
                sock.sendall(payload[step : step + 1])
            except OSError:
                closed[sock] = time.monotonic() - started
        step += 1
        time.sleep(0.25)
    return closed, answers


def test_slowloris_heads_and_bodies_are_closed_at_their_deadlines(
    server: tuple[str, LiveProcess],
) -> None:
    base_url, _ = server
    # 200 heads sent a byte at a time (never finished), 10 connections that send
    # nothing, and 10 GET bodies (which no route reads) sent a byte at a time.
    head = HEAD + b"X-Pad: " + b"p" * 1000
    dripping = [connect(base_url) for _ in range(200)]
    silent = [connect(base_url) for _ in range(10)]
    bodies = [connect(base_url) for _ in range(10)]
    for sock in bodies:
        sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")
    payloads = {sock: head for sock in dripping} | dict.fromkeys(silent, b"")
    payloads |= dict.fromkeys(bodies, b"x" * 1000)
    try:
        closed, answers = drip(payloads, 30)
    finally:
        for sock in payloads:
            sock.close()
    assert len(closed) == len(payloads), f"{len(payloads) - len(closed)} sockets never closed"
    for sock in dripping + silent:
        assert closed[sock] < HEADER_TIMEOUT + MARGIN, closed[sock]
    for sock in dripping:
        if answers[sock]:  # the answer can be lost to a reset; the close cannot
            assert_problem(parse(answers[sock]), 408)
    for sock in bodies:
        # The app does not read a GET's body: the protocol's backstop closes it.
        assert closed[sock] < BODY_TIMEOUT + 1 + MARGIN, closed[sock]


def test_an_unfinished_body_is_408_and_closed(server: tuple[str, LiveProcess]) -> None:
    base_url, _ = server
    user = User()
    socks = [connect(base_url) for _ in range(50)]
    for sock in socks:
        sock.sendall(
            f"POST {user.tasks_url()} HTTP/1.1\r\nHost: taskledger\r\n"
            f"Authorization: Bearer {user.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 65000\r\n\r\n".encode()
            + b'{"title": "'
            + b"t" * 1000
        )
    started = time.monotonic()
    for sock in socks:
        answer = read_to_end(sock, BODY_TIMEOUT + MARGIN)
        response = parse(answer)
        body = assert_problem(response, 408)
        assert "did not arrive" in body["detail"]
        assert response.headers["connection"] == "close"
        sock.close()
    assert time.monotonic() - started < BODY_TIMEOUT + MARGIN
    listed = httpx.get(base_url + user.tasks_url(), headers=user.headers)
    assert listed.headers["X-Total-Count"] == "0"


def test_an_idle_kept_alive_connection_is_closed(server: tuple[str, LiveProcess]) -> None:
    base_url, _ = server
    sock = connect(base_url)
    sock.sendall(HEAD + b"\r\n")
    sock.settimeout(10)
    # The head and the body can arrive in separate segments.
    first = b""
    while not first.endswith(b'{"status":"ok"}') and (chunk := sock.recv(65536)):
        first += chunk
    assert first.startswith(b"HTTP/1.1 200"), first
    started = time.monotonic()
    assert read_to_end(sock, 10) == b""
    # Before: uvicorn's 5 s default.
    assert time.monotonic() - started < KEEP_ALIVE + 2.5
    sock.close()


def test_past_max_connections_the_answer_is_503(live_server: LiveServer, tmp_path: Path) -> None:
    env = edge_env(tmp_path / "data", MAX_CONNECTIONS="3", HEADER_TIMEOUT_SECONDS="30")
    base_url, _ = live_server(env)
    held = [connect(base_url) for _ in range(3)]
    time.sleep(0.2)
    refused = httpx.get(base_url + "/healthz")
    assert_problem(refused, 503)
    held.pop().close()

    def served() -> bool:
        return httpx.get(base_url + "/healthz").status_code == 200

    wait_for(served, 10, "a request once a connection is free")
    for sock in held:
        sock.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_with_a_half_sent_body_exits_within_the_shutdown_timeout(
    live_server: LiveServer, tmp_path: Path, workers: str
) -> None:
    env = edge_env(tmp_path / "data", BODY_TIMEOUT_SECONDS="120", SHUTDOWN_TIMEOUT_SECONDS="2")
    base_url, proc = live_server(env, "--workers", workers)
    assert proc.proc is not None
    # Each worker process runs the capped protocol too.
    for _ in range(4):
        oversized = httpx.get(base_url + "/healthz", headers={"X-Big": "b" * 40_000})
        assert_problem(oversized, 431)
    user = User()
    sock = connect(base_url)
    sock.sendall(
        f"POST {user.tasks_url()} HTTP/1.1\r\nHost: taskledger\r\n"
        f"Authorization: Bearer {user.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n\r\n".encode()
        + json.dumps({"title": "half"}).encode()[:5]
    )
    time.sleep(0.5)
    started = time.monotonic()
    os.kill(proc.proc.pid, signal.SIGTERM)
    try:
        proc.proc.wait(2 + MARGIN)
    except Exception:
        stop_process(proc.proc, 1)
        raise AssertionError(f"still running:\n{proc.output()}") from None
    assert time.monotonic() - started < 2 + MARGIN
    sock.close()


def post_head(user: User, length: int, request_id: str | None = None) -> bytes:
    sent_id = f"X-Request-ID: {request_id}\r\n" if request_id else ""
    return (
        f"POST {user.tasks_url()} HTTP/1.1\r\nHost: taskledger\r\n{sent_id}"
        f"Authorization: Bearer {user.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_answers_a_half_sent_body_503_at_once_and_finishes_a_sent_request(
    live_server: LiveServer, tmp_path: Path, workers: str
) -> None:
    data_dir = tmp_path / "data"
    env = edge_env(
        data_dir,
        BODY_TIMEOUT_SECONDS="120",
        SHUTDOWN_TIMEOUT_SECONDS="10",
        LOG_FORMAT="json",
        LOG_LEVEL="info",
    )
    base_url, proc = live_server(env, "--workers", workers)
    assert proc.proc is not None
    user = User()
    body = json.dumps({"title": "sent in full"}).encode()
    # The event store held by another writer: the fully sent request is still being
    # handled (waiting for the lock) when SIGTERM comes.
    lock = sqlite3.connect(data_dir / "events.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    sent, half, half_head = connect(base_url), connect(base_url), connect(base_url)
    try:
        sent.sendall(post_head(user, len(body)) + body)
        half.sendall(post_head(user, 1000, "shutdown-body") + body[:5])
        half_head.sendall(HEAD + b"X-Request-ID: shutdown-head\r\nAccept: */*\r\n")
        time.sleep(0.5)
        started = time.monotonic()
        os.kill(proc.proc.pid, signal.SIGTERM)
        # Before: nothing for the whole shutdown timeout, then a 500.
        refused = parse(read_to_end(half, 3))
        assert time.monotonic() - started < 3
        problem = assert_problem(refused, 503)
        assert "shutting down" in problem["detail"]
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert refused_with_id(refused, 503) == "shutdown-body"
        assert refused_with_id(parse(read_to_end(half_head, 3)), 503) == "shutdown-head"
        assert not select.select([sent], [], [], 0)[0], "answered before the lock was released"
        lock.rollback()
        created = parse(read_to_end(sent, 5))
        assert created.status_code == 201, created.text
        try:
            proc.proc.wait(max(0.1, started + 5 - time.monotonic()))
        except Exception:
            stop_process(proc.proc, 1)
            raise AssertionError(f"still running:\n{proc.output()}") from None
    finally:
        lock.close()
        for sock in (sent, half, half_head):
            sock.close()
    output = proc.output()
    assert "Traceback" not in output, output
    assert "Exception in ASGI application" not in output, output
    assert access_line(proc, "shutdown-body")["method"] == "POST"
    assert access_line(proc, "shutdown-head")["status"] == 503


def test_a_streamed_5_mb_trailer_is_413_at_once_and_others_are_served(
    server: tuple[str, LiveProcess],
) -> None:
    base_url, proc = server
    pid = pid_of(proc)
    before = vm_rss_mib(pid)
    user = User()
    head = (
        f"POST {user.tasks_url()} HTTP/1.1\r\nHost: taskledger\r\n"
        f"Authorization: Bearer {user.token}\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: "
    ).encode()
    slowest = 0.0
    flooding = threading.Event()

    def probe() -> None:
        nonlocal slowest
        with httpx.Client(base_url=base_url) as client:
            while flooding.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.02)

    sock = connect(base_url)
    sent, chunk = 0, b"t" * 2**16
    flooding.set()
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        sock.sendall(head)
        while sent < 5 * 10**6 and not select.select([sock], [], [], 0)[0]:
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        answer = read_to_end(sock, 10)
    finally:
        flooding.clear()
        prober.join()
        sock.close()
    # Before: all 5 MB taken into one header value (54 MB: +58 MiB, /healthz 3.9 s late).
    assert sent < 5 * 10**6, sent
    body = assert_problem(parse(answer), 413)
    assert "trailers" in body["detail"]
    assert vm_rss_mib(pid) - before < 20
    assert slowest < 2, slowest


def test_connections_past_the_cap_are_503_before_their_head_is_read(
    live_server: LiveServer, tmp_path: Path
) -> None:
    env = edge_env(tmp_path / "data", MAX_CONNECTIONS="5", HEADER_TIMEOUT_SECONDS="30")
    base_url, proc = live_server(env)
    pid = pid_of(proc)
    before = vm_rss_mib(pid)
    socks = [connect(base_url) for _ in range(300)]
    answers = dict.fromkeys(socks, b"")
    started = time.monotonic()
    try:
        for sock in socks:
            with contextlib.suppress(OSError):  # refused and closed while sending
                sock.sendall(HEAD + b"X-Pad: " + b"p" * 30_000)
        grown = vm_rss_mib(pid) - before
        with selectors.DefaultSelector() as selector:
            for sock in socks:
                selector.register(sock, selectors.EVENT_READ)
            # The five let in wait for the rest of their heads (30 s).
            while len(selector.get_map()) > 5 and time.monotonic() - started < MARGIN:
                for key, _ in selector.select(0.1):
                    sock = cast(socket.socket, key.fileobj)
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    answers[sock] += data
                    if not data:
                        selector.unregister(sock)
    finally:
        for sock in socks:
            sock.close()
    refused = [parse(answer) for answer in answers.values() if answer]
    # Before: all 300 heads buffered (3000: +116 MiB) and no answer until the head timeout.
    assert len(refused) == 295, len(refused)
    for response in refused:
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "1"
        assert response.headers["connection"] == "close"
    assert grown < 20, grown


def test_a_pipelined_head_is_capped_as_the_first_one_is(server: tuple[str, LiveProcess]) -> None:
    base_url, _ = server
    filler = 60_000 - len(HEAD) - len(b"X-Big: \r\n\r\n")
    big = HEAD + b"X-Big: " + b"b" * filler + b"\r\n\r\n"
    sock = connect(base_url)
    with contextlib.suppress(OSError):  # refused while still sending: the answer waits
        sock.sendall(HEAD + b"\r\n" + big[:32_700])
        time.sleep(0.2)
        sock.sendall(big[32_700:])
    answer = read_to_end(sock, 10)
    sock.close()
    second_at = answer.index(b"HTTP/1.1 ", 1)
    assert parse(answer[:second_at]).status_code == 200
    # Before: the 32,700 bytes that came with the first request went uncounted, and
    # the 60,000-byte head was served.
    body = assert_problem(parse(answer[second_at:]), 431)
    assert "32768 bytes" in body["detail"]


# Refusals are answers like any other: an id, an access line, a count ------------------

CAP = 3


def refused_with_id(response: httpx.Response, status: int) -> str:
    """The id a refusal of ``status`` carries, in its header, its body and its timing."""
    body = assert_problem(response, status)
    request_id = response.headers["x-request-id"]
    assert body["request_id"] == request_id
    assert response.headers["server-timing"].startswith("total;dur="), response.headers
    return request_id


def access_line(proc: LiveProcess, request_id: str) -> dict[str, Any]:
    """The one access line of the request ``request_id`` (waited for)."""

    def lines() -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
        return [
            line
            for line in parsed
            if line["logger"] == "uvicorn.access" and line.get("request_id") == request_id
        ]

    wait_for(lambda: bool(lines()), 5, f"the access line of {request_id}")
    [line] = lines()
    assert line.keys() >= {"request_id", "method", "route", "status", "duration_ms", "client"}
    assert line["message"] == f"{line['method']} {line['route'] or '(no route)'} {line['status']}"
    return line


def counted(base_url: str, **labels: str) -> float:
    """How many requests /metrics counts with these labels (asked once a connection
    is free)."""
    answers: list[httpx.Response] = []

    def scraped() -> bool:
        answers.append(httpx.get(base_url + "/metrics", timeout=10))
        return answers[-1].status_code == 200

    wait_for(scraped, 10, "a scrape of /metrics")
    text = answers[-1].text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == REQUESTS and labels.items() <= sample.labels.items()
    )


@pytest.fixture(scope="module")
def logged(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, LiveProcess, Path]]:
    """One `taskledger serve` that writes its access lines as JSON, with a connection
    cap of CAP; its URL, process and data folder."""
    tmp = tmp_path_factory.mktemp("logged")
    port = free_port()
    env = edge_env(tmp / "data", MAX_CONNECTIONS=str(CAP), LOG_FORMAT="json", LOG_LEVEL="info")
    proc = LiveProcess(["serve", "--port", str(port)], env, tmp / "serve.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        proc.start()
        wait_until_ready(base_url, proc)
        yield base_url, proc, tmp / "data"
    finally:
        proc.stop()


# (httptools hands a header over once the next one begins: one follows the id.)
SENT_ID = b"X-Request-ID: %s\r\nAccept: */*\r\n"
REFUSED_HEADS = {
    "bytes": (HEAD + SENT_ID + b"X-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431),
    "headers": (HEAD + SENT_ID + b"".join(b"X-%d: v\r\n" % i for i in range(101)), 431),
    "deadline": (HEAD + SENT_ID + b"X-Pad: ", 408),
}


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param("edge/ticket-", True, id="kept"),
        pytest.param("not one token ", False, id="replaced"),
    ],
)
@pytest.mark.parametrize("refusal", REFUSED_HEADS)
def test_a_refused_head_carries_its_id_and_is_logged_and_counted(
    logged: tuple[str, LiveProcess, Path], refusal: str, sent: str, kept: bool
) -> None:
    base_url, proc, _ = logged
    payload, status = REFUSED_HEADS[refusal]
    sent += refusal
    before = counted(base_url, method="GET", route="unmatched", status=str(status))
    sock = connect(base_url)
    with contextlib.suppress(OSError):  # refused while still sending: the answer waits
        sock.sendall(payload.replace(b"%s", sent.encode()))
    answer = parse(read_to_end(sock, HEADER_TIMEOUT + MARGIN))
    sock.close()
    request_id = refused_with_id(answer, status)
    # Before: no X-Request-ID, no request_id, no access line, not counted.
    if kept:
        assert request_id == sent
    else:  # replaced, as on any request
        assert NEW_ID.match(request_id), request_id
    line = access_line(proc, request_id)
    assert (line["method"], line["route"], line["status"]) == ("GET", None, status)
    if status == 408:
        assert line["duration_ms"] >= HEADER_TIMEOUT * 1000 * 0.9, line
    after = counted(base_url, method="GET", route="unmatched", status=str(status))
    assert after == before + 1


def test_a_body_refused_after_its_head_is_counted_once_as_its_routes(
    logged: tuple[str, LiveProcess, Path],
) -> None:
    base_url, proc, _ = logged
    user = User()
    route = {"method": "POST", "route": "/api/{user_id}/tasks"}
    before = {status: counted(base_url, **route, status=status) for status in ("400", "413")}
    sock = connect(base_url)
    with contextlib.suppress(OSError):
        sock.sendall(
            f"POST {user.tasks_url()} HTTP/1.1\r\nHost: taskledger\r\n"
            f"X-Request-ID: trailer-1\r\nAuthorization: Bearer {user.token}\r\n"
            f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            f"0\r\nX-Trailer: ".encode()
            + b"t" * (MAX_BODY_BYTES + 64 * 1024)
        )
    answer = parse(read_to_end(sock, 10))
    sock.close()
    assert refused_with_id(answer, 413) == "trailer-1"
    assert access_line(proc, "trailer-1")["status"] == 413

    def counted_once() -> bool:
        return counted(base_url, **route, status="413") == before["413"] + 1

    # The app, whose reading was cut short, answered 400 to no one: it was counted so.
    wait_for(counted_once, 5, "the 413 counted")
    assert counted(base_url, **route, status="400") == before["400"]


def test_a_connection_past_the_cap_gets_an_id_of_its_own_and_is_logged_and_counted(
    logged: tuple[str, LiveProcess, Path],
) -> None:
    base_url, proc, _ = logged
    before = counted(base_url, method="other", route="unmatched", status="503")
    held = [connect(base_url) for _ in range(CAP)]
    try:
        time.sleep(0.2)
        # Refused before any of it is read: its X-Request-ID is never seen.
        refused = httpx.get(base_url + "/healthz", headers={"X-Request-ID": "unread"})
    finally:
        for sock in held:
            sock.close()
    request_id = refused_with_id(refused, 503)
    assert NEW_ID.match(request_id), request_id
    line = access_line(proc, request_id)
    assert (line["method"], line["route"], line["status"]) == ("-", None, 503)
    assert counted(base_url, method="other", route="unmatched", status="503") == before + 1


def test_a_request_that_finds_every_slot_busy_carries_its_id_and_is_counted(
    logged: tuple[str, LiveProcess, Path],
) -> None:
    base_url, proc, data_dir = logged
    before = counted(base_url, method="GET", route="unmatched", status="503")
    user = User()
    body = json.dumps({"title": "held"}).encode()
    # CAP writes waiting for the event store, whose clients have gone: their
    # connections are closed, but they take every slot until they end.
    lock = sqlite3.connect(data_dir / "events.sqlite3", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(CAP):
            sock = connect(base_url)
            sock.sendall(post_head(user, len(body)) + body)
            time.sleep(0.2)
            sock.close()
        time.sleep(0.5)
        refused = httpx.get(base_url + "/healthz", headers={"X-Request-ID": "busy-1"})
    finally:
        lock.rollback()
        lock.close()
    assert refused_with_id(refused, 503) == "busy-1"
    assert "connection limit" in refused.json()["detail"]
    line = access_line(proc, "busy-1")
    assert (line["method"], line["route"], line["status"]) == ("GET", None, 503)
    # Until the writes end, every request finds the slots busy (and is counted).
    probes = []

    def served() -> bool:
        probes.append(httpx.get(base_url + "/healthz").status_code)
        return probes[-1] == 200

    wait_for(served, 10, "the writes to end")
    busy = 1 + probes.count(503)
    assert counted(base_url, method="GET", route="unmatched", status="503") == before + busy
