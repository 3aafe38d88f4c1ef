"""Operators' figures for ``GET /metrics``, kept by prometheus_client.

What happens in a process (requests, commands, event-store transactions, waits for the
projection, projector batches, JWKS fetches) is recorded as it happens, by the hooks
the write side, the read side and the API offer (neither side imports this module).
What the databases say (each build's position, lag and state) is read at the scrape:
it is the same whichever process reads it, so it is collected then, never stored.

Under ``serve --workers N`` each worker records into files of one folder (the library's
multiprocess mode: ``serve`` points PROMETHEUS_MULTIPROC_DIR at a fresh one), and a
scrape, whichever worker answers it, adds up every worker's files. Only counters and
histograms are recorded, which need no multiprocess mode of their own (they add up);
the one gauge, when each worker started, is kept per worker ("all": a ``pid`` label),
and tells the scrape whose process figures to read from ``/proc``.

A projector run on its own (``taskledger project --metrics-port``) serves the same
figures, and whether it is the active projector, on a port of its own (the end of this
module).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.routing import Match
from starlette.types import Scope

if TYPE_CHECKING:
    from api.services import Services
    from read_side.status import BuildStatus

log = logging.getLogger(__name__)

# The library chose at its import whether values live in files shared by processes.
SHARED_BY_WORKERS = values.ValueClass is not values.MutexValue
# No ``_created`` line beside each series: a scrape half the size (and multiprocess
# mode has none).
disable_created_metrics()  # type: ignore[no-untyped-call]

# The label of a request that matched no route (any path: the label set stays small).
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Histogram(
    "taskledger_http_request_duration_seconds",
    "HTTP requests answered (the _count), and their seconds from the request to the last "
    "byte of the answer, by method, route template and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMMANDS = Counter(
    "taskledger_commands",
    "Commands run, by command (the TaskLedger method) and outcome: saved, unchanged, "
    "replayed (an idempotency key's recorded outcome), rejected (by the task rules), "
    "exhausted (by conflicts), failed (the store).",
    ["command", "outcome"],
)
CONFLICTS_RETRIED = Counter(
    "taskledger_conflicts_retried",
    "Attempts of a command beaten by a concurrent save and run again, by command.",
    ["command"],
)
SAVE_TRANSACTIONS = Histogram(
    "taskledger_save_transaction_commands",
    "Event-store transactions that saved commands (the _count), and the commands each "
    "saved (several share one under load: the group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
READ_YOUR_WRITES = Histogram(
    "taskledger_read_your_writes_wait_seconds",
    "How long a write's answer waited for the read tables to show it, by outcome "
    "(projected, or timed_out: answered with X-Projection-Pending).",
    ["outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PROJECTOR_BATCH_EVENTS = Histogram(
    "taskledger_projector_batch_events",
    "Events applied per projector batch (one read-side transaction), by projection.",
    ["projection"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000),
)
PROJECTOR_BATCH_SECONDS = Histogram(
    "taskledger_projector_batch_seconds",
    "Seconds per projector batch, by projection.",
    ["projection"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
JWKS_FETCHES = Counter(
    "taskledger_jwks_fetches",
    "Fetches of the auth server's key set, by outcome: ok, no_usable_key (answered, but "
    "with no asymmetric signing key), failed (network, deadline, size or format).",
    ["outcome"],
)
_WORKER_STARTED = "taskledger_worker_start_time_seconds"
WORKER_STARTED = Gauge(
    _WORKER_STARTED,
    "When each process serving the API started (per pid under serve --workers N).",
    multiprocess_mode="all",
)
WORKER_STARTED.set(time.time())

# What write_side.commands counts, as the outcome of a command.
_OUTCOMES = {
    "commands_saved": "saved",
    "commands_unchanged": "unchanged",
    "idempotent_replays": "replayed",
    "commands_rejected": "rejected",
    "commands_exhausted": "exhausted",
    "commands_failed": "failed",
}


# Hooks given to the write side, the read side and the API's own parts ---------------


def counted(name: str, command: str) -> None:
    """write_side.commands counted ``name`` for ``command``."""
    if name == "conflicts_retried":
        CONFLICTS_RETRIED.labels(command).inc()
    elif (outcome := _OUTCOMES.get(name)) is not None:
        COMMANDS.labels(command, outcome).inc()


def committed(commands: int) -> None:
    SAVE_TRANSACTIONS.observe(commands)


def waited(seconds: float, reached: bool) -> None:
    READ_YOUR_WRITES.labels("projected" if reached else "timed_out").observe(seconds)


def batched(projection: str, events: int, seconds: float) -> None:
    PROJECTOR_BATCH_EVENTS.labels(projection).observe(events)
    PROJECTOR_BATCH_SECONDS.labels(projection).observe(seconds)


def jwks_fetched(keys: Mapping[str, Any] | None) -> None:
    """A fetch ended with ``keys`` (None: it failed)."""
    outcome = "failed" if keys is None else "ok" if keys else "no_usable_key"
    JWKS_FETCHES.labels(outcome).inc()


# Requests ---------------------------------------------------------------------------


def request_answered(scope: Scope, status: int | None, seconds: float) -> None:
    """Time one HTTP request (``status`` None: no answer started, so the server's error
    middleware outside answers 500), labelled with the route it matched (its path
    format, ``/api/{user_id}/tasks/{task_id}``: a user's or a task's id is never a
    label). Called by the request context's middleware, which already follows each
    request from arrival to end."""
    method = scope["method"] if scope["method"] in _METHODS else "other"
    answered = "500" if status is None else str(status)
    REQUESTS.labels(method, route_template(scope), answered).observe(seconds)


def route_template(scope: Scope) -> str:
    """The path format of the route that served the request; UNMATCHED if none."""
    route = scope.get("route")
    if route is None:
        # Answered before routing (a CORS preflight, a body refused by RequestLimits),
        # or routed on a copy of the scope: the route the path belongs to.
        route = _route_of_path(scope)
    path = getattr(route, "path_format", None)
    return path if isinstance(path, str) else UNMATCHED


def _route_of_path(scope: Scope) -> Any:
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return route
    return None


# The scrape -------------------------------------------------------------------------


def exposition(services: Services) -> bytes:
    """Every figure, in Prometheus' text format."""
    return generate_latest(_Scrape(services))


def shared_folder() -> str:
    """A fresh folder for the workers' files, removed when this process (the one that
    starts the workers) exits: figures start from zero with each ``serve``."""
    folder = tempfile.mkdtemp(prefix="taskledger-metrics-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


class _Scrape(Collector):
    def __init__(self, services: Services) -> None:
        self._services = services

    def collect(self) -> Iterable[Metric]:
        if SHARED_BY_WORKERS:
            every_worker = CollectorRegistry()
            MultiProcessCollector(every_worker)  # type: ignore[no-untyped-call]
            recorded = list(every_worker.collect())
            yield from recorded
            yield from _process_figures(_worker_pids(recorded))
        else:
            # This process's own, with the library's process, platform and GC figures.
            yield from REGISTRY.collect()
        yield from _build_figures(self._services)


def _worker_pids(recorded: list[Metric]) -> list[int]:
    """The workers alive now, from the pids their start times are kept under."""
    pids = {
        int(sample.labels["pid"])
        for family in recorded
        if family.name == _WORKER_STARTED
        for sample in family.samples
        if sample.labels.get("pid", "").isdigit()
    }
    return sorted(pid for pid in pids if os.path.exists(f"/proc/{pid}"))


def _process_figures(pids: list[int]) -> Iterable[Metric]:
    """The library's process figures (memory, CPU, open files) of each worker, read
    from ``/proc`` by whichever worker answers, with a ``pid`` label."""
    merged: dict[str, Metric] = {}
    for pid in pids:
        for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
            into = merged.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            for sample in family.samples:
                into.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
    return merged.values()


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


# Figures read from the databases at the scrape; "state" is one of these.
_STATES = ("live", "building", "behind and moving", "stalled", "retired")


def _build_figures(services: Services) -> Iterable[Metric]:
    figures = services.projection_figures()
    if figures is None:
        return
    ready, statuses = figures
    for name, documentation in (
        ("log_position", "The last position in the event log."),
        ("projected_position", "The position the served build of the read model has reached."),
        ("projection_lag_events", "Events in the log the served build has not applied yet."),
    ):
        if name in ready:  # (not while the read tables are unavailable)
            yield GaugeMetricFamily(f"taskledger_{name}", documentation, value=ready[name])
    per_build = {
        "projection_position": ("position", "The position each build has reached."),
        "projection_lag_events": ("lag_events", "Events each build has not applied yet."),
        "projection_lag_seconds": (
            "lag_seconds",
            "Seconds since the oldest event each build has not applied was saved.",
        ),
    }
    labels = ["version", "build"]
    for metric, (field, documentation) in per_build.items():
        family = GaugeMetricFamily(f"taskledger_build_{metric}", documentation, labels=labels)
        for status in statuses:
            family.add_metric(_build_labels(status), status.fields()[field])
        yield family
    state = GaugeMetricFamily(
        "taskledger_build_state",
        "1 for the state each build is in, 0 for the others.",
        labels=[*labels, "state"],
    )
    for status in statuses:
        now = status.state.split(" (")[0]
        for name in _STATES:
            state.add_metric([*_build_labels(status), name], 1 if now == name else 0)
    yield state


def _build_labels(status: BuildStatus) -> list[str]:
    return [str(status.build.version), str(status.build.id)]


# The projector's own server (`taskledger project --metrics-port`) ------------------
#
# A projector process run apart from the API (compose, Kubernetes) records its batches
# in its own memory: only it can show them. It is one process, so its figures are this
# process's registry (no multiprocess mode), plus what the databases say, as above.


def projector_exposition(services: Services) -> bytes:
    """What a projector process's ``/metrics`` answers: every figure above, and
    whether this process is the active projector or a standby."""
    return generate_latest(_ProjectorScrape(services))


class _ProjectorScrape(_Scrape):
    def collect(self) -> Iterable[Metric]:
        yield from super().collect()
        yield GaugeMetricFamily(
            "taskledger_projector_active",
            "1 while this process projects (it holds the lock of the live build's "
            "projection, or builds a new version), 0 while it waits as a standby.",
            value=1 if _part(self._services) in ("active", "building") else 0,
        )


def _part(services: Services) -> str:
    """active, building, standby, aside (a newer version is live) or none."""
    keeper = services.worker
    if keeper is None:
        return "none"
    if keeper.role == "aside":
        return "aside"
    if not keeper.is_leader:
        return "standby"
    return "building" if keeper.role == "building" else "active"


def _metrics_answer(services: Services) -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, projector_exposition(services)


def _health_answer(services: Services) -> tuple[int, str, bytes]:
    # The process answers (a liveness probe): nothing here waits on a database.
    body = {"status": "ok", "projector": _part(services)}
    return 200, "application/json", json.dumps(body).encode()


_PROJECTOR_ANSWERS = {"/metrics": _metrics_answer, "/healthz": _health_answer}
# What the projector's server answers GET on (the deployment files' probes and scrape
# annotations are checked against it).
PROJECTOR_PATHS = frozenset(_PROJECTOR_ANSWERS)


class ProjectorFigures:
    """``/metrics`` and ``/healthz`` of a projector process, on ``host:port``, served
    by threads of their own. Bound when made (a port in use fails at once, before the
    projector starts), answering from ``start()``."""

    def __init__(self, services: Services, host: str, port: int) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(services))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="projector-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.ident is not None:
            self._server.shutdown()
        self._server.server_close()


def _handler(services: Services) -> type[BaseHTTPRequestHandler]:
    class Answer(BaseHTTPRequestHandler):
        # A client that sends nothing holds a thread no longer than this.
        timeout = 10
        # No "Server: BaseHTTP/0.6 Python/3.11" (the API sends no server header either).
        server_version, sys_version = "taskledger", ""

        def do_GET(self) -> None:
            answer = _PROJECTOR_ANSWERS.get(self.path.partition("?")[0])
            if answer is None:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")
                return
            try:
                status, content_type, body = answer(services)
            except Exception as error:
                log.warning("projector %s failed: %s", self.path, type(error).__name__)
                status, content_type, body = 500, "text/plain; charset=utf-8", b"failed\n"
            self._send(status, content_type, body)

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a line per scrape and probe says nothing the figures do not

    return Answer
