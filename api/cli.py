"""The ``taskledger`` command line."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import jwt
import orjson
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from api.logs import logging_config
from api.progress import replay_progress
from api.settings import LogProfile, Settings

if TYPE_CHECKING:
    from write_side import HistoryPage, Task, TaskLedger

app = typer.Typer(help="taskledger: an event-sourced task service.", no_args_is_help=True)
err = Console(stderr=True)

# What a command says it is doing whatever LOG_LEVEL (scripts wait for these lines),
# in the log's format.
_said = logging.getLogger("taskledger.cli")
_said.setLevel(logging.INFO)

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _settings() -> Settings:
    try:
        return Settings()
    except (ValidationError, ValueError) as error:
        profile = LogProfile()
        if profile.json_logs:
            # A deployment's log collector reads JSON lines: the refusal is one too.
            logging.config.dictConfig(logging_config("info", json_lines=True))
            _said.error("refusing to start: %s", error)
        else:
            err.print(f"[red]Refusing to start:[/red] {error}")
        raise typer.Exit(2) from None


@contextmanager
def _reading() -> Iterator[None]:
    """Operator tools only read (they create no table and drop nothing): a store that is
    down or was never set up is said in words, not with a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as error:
        err.print(
            f"[red]Cannot read the store:[/red] {type(error).__name__}. "
            "`taskledger serve` or `taskledger project` sets it up at start-up."
        )
        raise typer.Exit(1) from None


def _plain(value: object) -> Text:
    """User data (titles, descriptions) shown as it is: as a Text, rich reads no markup
    in it (no ``[link=…]``), and every control or formatting character (escape
    sequences, hyperlinks, bidi overrides, line breaks) is shown escaped, not sent to
    the operator's terminal."""
    text = str(value)
    if not text.isprintable():
        text = "".join(
            ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text
        )
    return Text(text)


def _log_config(settings: Settings) -> dict[str, Any]:
    return logging_config(settings.log_level, json_lines=settings.json_logs)


def _logging(settings: Settings) -> None:
    logging.config.dictConfig(_log_config(settings))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    no_projector: Annotated[
        bool, typer.Option("--no-projector", help="Leave projecting to `taskledger project`")
    ] = False,
) -> None:
    """Run the HTTP API (with an in-process projector unless --no-projector)."""
    if no_projector:
        # Worker processes build their own Settings from the environment.
        os.environ["RUN_PROJECTOR"] = "false"
    if workers > 1:
        from api.metrics import shared_folder  # noqa: PLC0415 - only with workers

        # Every worker records its figures in this fresh folder, and a scrape adds them
        # all up (prometheus_client's multiprocess mode: api/metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared_folder()
    settings = _settings()
    _logging(settings)
    _ = settings.storage  # fail here, not in a worker, on a bad DATABASE_URL
    # uvicorn shuts down gracefully on SIGTERM, then raises it again, and the process
    # would end "killed by SIGTERM" (143): a supervisor with restart on failure would
    # take the orderly stop for a crash. It exits 0 instead (a SIGTERM before uvicorn
    # listens ends it at once, as before).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "api.app:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # httptools with caps and deadlines on request heads (api/http_protocol.py).
        http="api.http_protocol:EdgeProtocol",
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_seconds,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        # Applied again in each worker process: its lines are formatted alike.
        log_config=_log_config(settings),
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        proxy_headers=True,
        server_header=False,
    )


def _exit_cleanly(*_: object) -> None:
    raise SystemExit(0)


@app.command()
def project(
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Serve /metrics and /healthz on this port"),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Interface for --metrics-port to listen on")
    ] = "127.0.0.1",
) -> None:
    """Run the projector on its own (one active worker; others wait as standbys), and
    with --metrics-port its figures (batches, position, lag, active or standby) and a
    liveness check over HTTP."""
    from api.metrics import ProjectorFigures  # noqa: PLC0415 - heavy, only for this command
    from api.services import Services  # noqa: PLC0415

    settings = _settings()
    _logging(settings)
    _warn_if_pooled(settings)
    services = Services(settings, with_projector=True)
    figures = None
    if metrics_port is not None:
        try:
            figures = ProjectorFigures(services, metrics_host, metrics_port)
        except OSError as error:
            err.print(f"[red]Cannot serve metrics on {metrics_host}:{metrics_port}:[/red] {error}")
            raise typer.Exit(2) from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    services.start()
    # Answering once started, as the API does: a start-up probe waits for this.
    if figures is not None:
        figures.start()
    where = f"; metrics on {metrics_host}:{metrics_port}" if figures is not None else ""
    _said.info("projector running on %s%s; Ctrl-C stops it", settings.storage.kind, where)
    while not stop.wait(1.0):
        pass
    if figures is not None:
        figures.stop()
    services.close()


def _warn_if_pooled(settings: Settings) -> None:
    """Said when the database is reached through a pooled endpoint (Neon's host
    ``ep-…-pooler…``: PgBouncer in transaction mode). LISTEN/NOTIFY and the session
    advisory locks (a projector's leadership, a rebuild's) do not pass it: the projector
    hears of saves only every PROJECTOR_POLL_SECONDS, and a standby may take a lock
    the active one still thinks it holds. Each event is still applied once (the
    position row is locked in each batch), so it is said, not refused: a pooler in
    session mode that happens to be named so works."""
    storage = settings.storage
    host = storage.event_store_env.get("POSTGRES_HOST", "") if storage.kind == "postgres" else ""
    if "-pooler" in host.lower():
        _said.warning(
            "DATABASE_URL's host %s is a pooled endpoint (Neon's -pooler: PgBouncer in "
            "transaction mode). LISTEN/NOTIFY and session advisory locks do not pass it: "
            "the projector learns of new events only every PROJECTOR_POLL_SECONDS, and the "
            "lock that keeps one projector (or one rebuild) at work may be held by two. "
            "Use the direct endpoint: the same host without -pooler (docker compose: "
            "PROJECTOR_DATABASE_URL)",
            host,
            extra={"host": host},
        )


@app.command()
def token(
    user_id: Annotated[str, typer.Argument(help="The user id (the token's sub)")],
    ttl: Annotated[str, typer.Option(help="Lifetime: 90s, 15m, 1h, 2d")] = "1h",
    role: Annotated[list[str] | None, typer.Option(help="Role claim; repeatable")] = None,
) -> None:
    """Print an HS256 token signed with BETTER_AUTH_SECRET (for development)."""
    settings = _settings()
    secret = settings.shared_secret()
    if secret is None:
        err.print("[red]No shared secret:[/red] set BETTER_AUTH_SECRET to sign tokens.")
        raise typer.Exit(2)
    match = _DURATION.match(ttl.strip())
    if match is None:
        err.print(f"[red]Bad --ttl {ttl!r}:[/red] use e.g. 90s, 15m, 1h or 2d.")
        raise typer.Exit(2)
    lifetime = int(match[1]) * _UNIT_SECONDS[match[2]]
    if lifetime > settings.jwt_max_ttl_seconds:
        err.print(
            f"[red]--ttl {ttl} is longer than JWT_MAX_TTL_SECONDS[/red] "
            f"({settings.jwt_max_ttl_seconds:g} s): the service would refuse the token."
        )
        raise typer.Exit(2)
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + lifetime}
    if settings.issuer:
        claims["iss"] = settings.issuer
    if settings.audience:
        claims["aud"] = settings.audience
    if role:
        claims["role"] = role[0] if len(role) == 1 else role
    typer.echo(jwt.encode(claims, secret, algorithm="HS256"))


# Events per page of `history --all` when --limit is not given.
_ALL_PAGE = 1000


@app.command()
def history(
    user_id: Annotated[str, typer.Argument(help="Whose history")],
    *,
    until: Annotated[
        str | None, typer.Option(help="Replay only up to this moment (ISO 8601, UTC if no zone)")
    ] = None,
    after: Annotated[
        int, typer.Option(min=0, help="Start after this version (the HTTP view's cursor)")
    ] = 0,
    limit: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="Events per page (default 100; 1,000 with --all)"),
    ] = None,
    every_page: Annotated[
        bool, typer.Option("--all", help="Every page from --after on, printed as it is read")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables")] = False,
) -> None:
    """A page of a user's events from the log (or --all of them, streamed), and their
    tasks as of --until (default: now). The HTTP history's pages, printed."""
    from write_side import TaskLedger  # noqa: PLC0415 - heavy, only for this command

    moment = _moment(until)
    page_size = limit or (_ALL_PAGE if every_page else 100)
    storage = _settings().storage
    with _reading():
        ledger = TaskLedger(env=storage.event_store_env, connect_options=storage.connect_options)
        try:
            pages = _pages(ledger, user_id, after, page_size, until=moment, every=every_page)
            printer = _JsonHistory(user_id, moment) if as_json else _TableHistory(user_id, moment)
            next_after = printer.pages(pages)
            printer.tasks(ledger.tasks_at(user_id, until=moment or datetime.now(UTC)).tasks)
            printer.end(next_after)
        finally:
            ledger.close()
    if next_after is not None:
        more = f"taskledger history {user_id} --after {next_after} --limit {page_size}"
        err.print(_plain(f"more events follow: {more}" + (f" --until {until}" if until else "")))


def _moment(until: str | None) -> datetime | None:
    if until is None:
        return None
    try:
        moment = datetime.fromisoformat(until.replace("Z", "+00:00"))
    except ValueError:
        err.print(f"[red]Bad --until {until!r}:[/red] use ISO 8601, e.g. 2026-11-28T09:30:00Z")
        raise typer.Exit(2) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _pages(
    ledger: TaskLedger,
    user_id: str,
    after: int,
    limit: int,
    *,
    until: datetime | None,
    every: bool,
) -> Iterator[HistoryPage]:
    """The history's pages from ``after``: one, or ``every`` one, read as they are used."""
    while True:
        page = ledger.history_page(user_id, after, limit, until=until)
        yield page
        if not every or page.next_after is None:
            return
        after = page.next_after


class _JsonHistory:
    """One JSON document, written as its pages are read: ``{"user_id", "until",
    "entries": [...], "tasks": [...], "next_after"}``. ASCII only: a C1 control or a bidi
    override in a title reaches no terminal raw."""

    def __init__(self, user_id: str, until: datetime | None) -> None:
        head = {"user_id": user_id, "until": until}
        typer.echo(_json(head)[:-1] + ', "entries": [')

    def pages(self, pages: Iterator[HistoryPage]) -> int | None:
        first, next_after = True, None
        for page in pages:
            for entry in page.entries:
                row = {"position": page.positions.get(entry.version, 0)} | asdict(entry)
                typer.echo(("" if first else ",") + _json(row))
                first = False
            next_after = page.next_after
        return next_after

    def tasks(self, tasks: list[Task]) -> None:
        typer.echo('], "tasks": [')
        typer.echo(",\n".join(_json(task) for task in tasks))

    def end(self, next_after: int | None) -> None:
        typer.echo(f'], "next_after": {_json(next_after)}}}')


def _json(value: object) -> str:
    plain = orjson.loads(orjson.dumps(value, option=orjson.OPT_UTC_Z))
    return json.dumps(plain, ensure_ascii=True)


class _TableHistory:
    """A table per page, so that a big history is never one giant table in memory."""

    def __init__(self, user_id: str, until: datetime | None) -> None:
        self.out = Console()
        self.user_id, self.until = user_id, until

    def pages(self, pages: Iterator[HistoryPage]) -> int | None:
        next_after = None
        for page in pages:
            title = f"history of {self.user_id}"
            if page.entries:
                title += f", versions {page.entries[0].version}-{page.entries[-1].version}"
            table = Table("version", "at (UTC)", "event", "task", "details", title=_plain(title))
            for entry in page.entries:
                details = ", ".join(f"{key}={value!r}" for key, value in entry.details.items())
                table.add_row(
                    str(entry.version),
                    entry.at.isoformat(),
                    entry.event,
                    str(entry.task_id or ""),
                    _plain(details),
                )
            self.out.print(table)
            next_after = page.next_after
        return next_after

    def tasks(self, tasks: list[Task]) -> None:
        as_of = f"as of {self.until.isoformat()}" if self.until else "now"
        for start in range(0, max(len(tasks), 1), _ALL_PAGE):
            table = Table("task", "title", "completed", "version", title=f"tasks {as_of}")
            for task in tasks[start : start + _ALL_PAGE]:
                table.add_row(
                    str(task.id),
                    _plain(task.title),
                    "yes" if task.completed else "no",
                    str(task.version),
                )
            self.out.print(table)

    def end(self, next_after: int | None) -> None:
        pass


projections = typer.Typer(help="Operator tools for the read-side projections.")
app.add_typer(projections, name="projections")


@projections.command("status")
def projections_status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per build.")] = False,
) -> None:
    """Show every build of the read model against the log: position, lag (events, and
    the age of the oldest event not yet applied), last applied, the process holding
    its projection, and its state: live, building (n%), behind and moving, stalled
    (behind with nothing applied for PROJECTION_STALL_SECONDS). Exits 0 when the live
    build is projected and moving, 1 when a build is stalled, 2 when no projector
    holds the live build."""
    from api.services import Services  # noqa: PLC0415 - heavy, only for this command

    settings = _settings()
    with _reading():
        services = Services(settings, with_projector=False)
        try:
            report = services.projection_report()
        finally:
            services.close()
    table = Table(
        "build",
        "version",
        "state",
        "position",
        "log end",
        "lag (events)",
        "lag (s)",
        "last applied",
        "held by",
        title="read model builds",
    )
    for status, holder in report:
        applied = status.applied_at.strftime("%Y-%m-%d %H:%M:%S") if status.applied_at else "-"
        table.add_row(
            str(status.build.id),
            str(status.build.version),
            status.state,
            str(status.position),
            str(status.log_position),
            str(status.lag_events),
            f"{status.lag_seconds:.1f}",
            applied,
            holder or "nobody",
        )
    if as_json:
        rows = [status.fields() | {"held_by": holder} for status, holder in report]
        typer.echo(json.dumps(rows, indent=2))
    else:
        out = Console()
        # Off a terminal (a script, a log) the table keeps every column whole.
        (out if out.is_terminal else Console(width=160)).print(table)
    live = [(status, holder) for status, holder in report if status.build.state == "live"]
    if not live or live[0][1] is None:
        err.print("no projector holds the live build: start `taskledger project` (or serve)")
        raise typer.Exit(2)
    if any(status.stalled for status, _ in report):
        err.print(
            "a projection is stalled: behind the log with nothing applied for "
            f"{settings.projection_stall_seconds:g} s (PROJECTION_STALL_SECONDS)"
        )
        raise typer.Exit(1)


@projections.command("rebuild")
def projections_rebuild(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Rebuild the read model blue/green: build this code's version from the start of
    the log beside the live one (which keeps serving), catch up, switch every process
    to it (within a second, no restart), then drop the one before. Ctrl-C or a crash
    before the switch leaves the live build serving; a rebuild already under way makes
    this one refuse."""
    from api.services import Services, leadership_for, retired_grace  # noqa: PLC0415
    from read_side.catalogue import live_build  # noqa: PLC0415
    from read_side.rebuild import RebuildRefused, rebuild  # noqa: PLC0415
    from read_side.runtime.engine import create_read_tables  # noqa: PLC0415

    settings = _settings()
    _logging(settings)
    _warn_if_pooled(settings)
    services = Services(settings, with_projector=False)
    try:
        with _reading():
            log_end = services.ledger.last_position()
            create_read_tables(services.read_engine, services.version, log_end=log_end)
            with services.read_engine.connect() as conn:
                live = live_build(conn)
        live_label = live.label if live is not None else "none"
        if not yes:
            typer.confirm(
                f"Build read model version {services.version} from {log_end} events beside "
                f"the live {live_label}, then switch to it?",
                abort=True,
            )
        try:
            with replay_progress(f"building v{services.version}") as advance:
                result = rebuild(
                    services.ledger,
                    services.read_engine,
                    lambda name: leadership_for(settings, name),
                    version=services.version,
                    batch_size=settings.rebuild_batch_size,
                    on_progress=advance,
                    on_step=lambda message: err.print(message, highlight=False, markup=False),
                    grace_seconds=retired_grace(settings).total_seconds(),
                    still_projected=lambda build: (
                        leadership_for(settings, build.projection).holder() is not None
                    ),
                )
        except RebuildRefused as refused:
            err.print(f"[red]Refused:[/red] {refused}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    finally:
        services.close()
    rate = result.events / result.seconds if result.seconds > 0 else 0.0
    typer.echo(
        f"rebuilt: {result.build.label} live at position {result.position}; "
        f"{result.events} events in {result.seconds:.1f} s ({rate:,.0f} events/s)"
    )


@projections.command("verify")
def projections_verify(
    build_id: Annotated[
        int | None,
        typer.Option("--build", help="The build to verify (default: the live one)."),
    ] = None,
) -> None:
    """Read a build of the read model (the live one unless --build) and its position
    at one moment, replay the log up to that position into scratch tables and list
    every difference. Projectors may keep running. Exits 1 when there is any
    difference."""
    from api.services import Services  # noqa: PLC0415
    from read_side import catalogue, versions  # noqa: PLC0415
    from read_side.verify import verify  # noqa: PLC0415

    settings = _settings()
    with _reading():
        services = Services(settings, with_projector=False)
        try:
            with services.read_engine.connect() as conn:
                builds = catalogue.builds(conn)
            wanted = [
                build
                for build in builds
                if (build.id == build_id if build_id is not None else build.state == "live")
            ]
            if not wanted:
                err.print(f"[red]No such build:[/red] the builds are {[b.id for b in builds]}")
                raise typer.Exit(2)
            build = wanted[0]
            with replay_progress(f"verifying {build.label}") as advance:
                result = verify(
                    services.ledger,
                    services.read_engine,
                    tables=build.tables,
                    name=build.projection,
                    on_progress=advance,
                    counts=versions.holds_task_counts(build.version),
                )
        finally:
            services.close()
    out = Console()
    out.print(
        f"{build.label} at position {result.position}: {result.live_rows} live rows, "
        f"{result.replayed_rows} replayed rows, {len(result.differences)} differences"
    )
    if result.differences:
        table = Table("task or user", "difference", "fields (live -> replayed or counted)")
        for difference in result.differences:
            fields = ", ".join(
                f"{name}: {live!r} -> {replayed!r}"
                for name, (live, replayed) in difference.fields.items()
            )
            table.add_row(difference.task_id, difference.kind, _plain(fields))
        out.print(table)
        raise typer.Exit(1)


def main() -> None:
    app()
