"""Shared plumbing for the benchmarks: a real `taskledger serve` subprocess on a free
port with its own fresh database, tokens, wrk runs, and clean-up that also happens
on failure (try/finally, SIGTERM/SIGINT turned into exceptions, atexit as last resort).
What the tests do the same way (ports, tokens, stopping and waiting for a process)
comes from tests/support.py.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from tests import support
from tests.support import ROOT, free_port, mint

BENCH = ROOT / "bench"
LUA = BENCH / "lua"
TASKLEDGER = str(Path(sys.executable).parent / "taskledger")
# The product's packages: what --code-ref exports, and what the code label hashes.
PRODUCT = ("api", "read_side", "write_side", "infrastructure")
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", support.PG_ADMIN)
# Not the tests' prefix: a bench database names the run's pid, so that the next run can
# tell one left by a killed run (dropped) from one still in use.
DB_PREFIX = "taskledger_bench_"
SECRET = secrets.token_urlsafe(48)

# Niceness for everything the benchmark starts (negative = ahead of other work on a
# shared machine; needs root). 0 leaves scheduling alone. Set by run.py --nice.
NICE = int(os.environ.get("BENCH_NICE", "0"))

_procs: list[subprocess.Popen[bytes]] = []
_cleanups: list[Callable[[], None]] = []


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- clean-up ---------------------------------------------------------------------


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _on_signal)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a process started here (with its group: each has its own session), and
    forget it."""
    support.stop_process(proc, timeout)
    if proc in _procs:
        _procs.remove(proc)


@atexit.register
def _last_resort() -> None:
    for proc in list(_procs):
        stop_process(proc, timeout=3)
    for cleanup in reversed(_cleanups):
        with contextlib.suppress(Exception):
            cleanup()


def set_niceness(nice: int) -> None:
    """``--nice``: this process's niceness, and that of everything it starts."""
    global NICE  # noqa: PLW0603 - the one setting niced() reads
    if nice:
        NICE = nice
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def niced(args: list[str]) -> list[str]:
    # nice(1) execs the command in the same process, before it starts any thread, so
    # every thread inherits the niceness.
    return ["nice", "-n", str(NICE), *args] if NICE else args


def renice_postgres(dbname: str) -> int:
    """Give the backends serving dbname the benchmark's niceness (they are forked by
    the postmaster at its own); returns how many were changed."""
    if not NICE or not dbname:
        return 0
    changed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if cmdline.startswith("postgres:") and f" {dbname} " in cmdline:
                os.setpriority(os.PRIO_PROCESS, int(entry.name), NICE)
                changed += 1
        except OSError:
            continue
    return changed


def spawn(
    args: list[str], *, env: dict[str, str], log_path: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        niced(args),
        env=env,
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    out.close()
    _procs.append(proc)
    return proc


# -- storage ------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_stale_databases() -> None:
    """Drop bench databases left by runs whose process is gone (e.g. SIGKILLed)."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "%",)
            )
        ]
        for name in names:
            match = re.match(rf"{DB_PREFIX}(\d+)_", name)
            if match and not _pid_alive(int(match[1])):
                log(f"dropping stale database {name}")
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@dataclass
class Storage:
    backend: str
    env: dict[str, str]
    workdir: Path
    dbname: str = ""
    data_dir: Path | None = None

    @property
    def database_url(self) -> str:
        return self.env.get("DATABASE_URL", "")


@contextlib.contextmanager
def fresh_storage(backend: str, label: str) -> Iterator[Storage]:
    workdir = Path(tempfile.mkdtemp(prefix=f"taskledger-bench-{backend}-{label}-"))
    removed = False

    def remove_dir() -> None:
        nonlocal removed
        if not removed:
            shutil.rmtree(workdir, ignore_errors=True)
            removed = True

    if backend == "postgres":
        dbname = f"{DB_PREFIX}{os.getpid()}_{label}_{secrets.token_hex(3)}"

        def drop() -> None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        _cleanups.append(drop)
        _cleanups.append(remove_dir)
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
        try:
            yield Storage(backend, {"DATABASE_URL": url}, workdir, dbname=dbname)
        finally:
            drop()
            _cleanups.remove(drop)
            remove_dir()
    else:
        data_dir = workdir / "data"
        _cleanups.append(remove_dir)
        try:
            yield Storage(backend, {"DATA_DIR": str(data_dir)}, workdir, data_dir=data_dir)
        finally:
            remove_dir()


# -- processes --------------------------------------------------------------------------


def base_env(storage: Storage, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # Nothing from the caller's shell may select another database or auth mode.
        if key.upper()
        not in {
            "DATABASE_URL",
            "DATA_DIR",
            "BETTER_AUTH_URL",
            "JWKS_URL",
            "RUN_PROJECTOR",
            "APP_ENV",
            "LOG_LEVEL",
        }
        and not key.upper().startswith(("POSTGRES_", "SQLITE_", "PG"))
    }
    env.update(storage.env)
    env["BETTER_AUTH_SECRET"] = SECRET
    env["LOG_LEVEL"] = os.environ.get("BENCH_LOG_LEVEL", "info")
    env.update(extra or {})
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    projector: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        """The server's, then the separate projector's if there is one."""
        return [p.pid for p in (self.proc, self.projector) if p is not None]

    def rss_mb(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the server process in MiB."""
        return rss_mb(self.proc.pid)

    def readyz(self) -> dict[str, Any]:
        ready: dict[str, Any] = httpx.get(self.url + "/readyz", timeout=10).json()
        return ready

    def metrics(self) -> dict[str, float]:
        """The server's /metrics, by name (no labels are used)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return {
            name: float(value)
            for name, _, value in (line.partition(" ") for line in text.splitlines())
            if name and not name.startswith("#")
        }


def rss_mb(pid: int) -> tuple[float, float]:
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


@contextlib.contextmanager
def running_server(
    storage: Storage,
    *,
    separate_projector: bool = False,
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[Server]:
    port = free_port()
    env = base_env(storage, extra_env)
    log_path = storage.workdir / "server.log"
    args = [TASKLEDGER, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    if separate_projector:
        args.append("--no-projector")
    # cwd is the temp dir, so no stray ./.env or ./data is picked up.
    proc = spawn(args, env=env, log_path=log_path, cwd=storage.workdir)
    server = Server(proc, port, log_path)
    try:
        _wait_ready(server)
        if separate_projector:
            # Started after the server is up: two processes creating the event store's
            # tables at once on a fresh Postgres database can crash one of them
            # (duplicate key on pg_type: CREATE TABLE IF NOT EXISTS is not race-safe).
            projector_log = storage.workdir / "projector.log"
            server.projector = spawn(
                [TASKLEDGER, "project"],
                env=env,
                log_path=projector_log,
                cwd=storage.workdir,
            )
            wait_for_line(server.projector, projector_log, "projector running", timeout=30)
        yield server
    except BaseException:
        for path in (log_path, storage.workdir / "projector.log"):
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-25:]
                log(f"--- last lines of {path.name} ---\n" + "\n".join(tail))
        raise
    finally:
        if server.projector is not None:
            stop_process(server.projector)
        stop_process(proc)


def _wait_ready(server: Server, timeout: float = 60) -> None:
    # The tests' wait, on a process started here (niced, in its own session, from a
    # temporary folder) rather than by LiveProcess.start().
    started = support.LiveProcess([], {}, server.log_path)
    started.proc = server.proc
    support.wait_until_ready(server.url, started, timeout)


def wait_for_line(
    proc: subprocess.Popen[bytes], log_path: Path, text: str, *, timeout: float
) -> None:
    """Wait until a process started by spawn() writes ``text`` to its log."""

    def written() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{log_path.stem} exited with {proc.returncode}")
        return log_path.exists() and text in log_path.read_text(errors="replace")

    support.wait_for(written, timeout, f"{text!r} in {log_path.name}")


def wait_projected(server: Server, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        ready = server.readyz()
        if ready["projection_lag_events"] == 0 or time.monotonic() > deadline:
            return ready
        time.sleep(0.1)


# -- tokens -----------------------------------------------------------------------------


def token(user_id: str) -> str:
    """An HS256 token for user_id, signed with this run's secret (given to the server)."""
    return mint(user_id, secret=SECRET, ttl=3600)


def write_tokens(path: Path, users: list[str]) -> Path:
    path.write_text("".join(f"{user} {token(user)}\n" for user in users))
    return path


# -- wrk --------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    errors: dict[str, int]
    counters: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def wrk(
    script: str,
    url: str,
    *,
    connections: int,
    duration: float,
    args: list[str],
) -> WrkResult:
    """Run wrk (one thread) with one of bench/lua/*.lua; its done() prints one WRKJSON line."""
    command = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:.0f}s"]
    command += ["--timeout", "30s", "-s", str(LUA / script), url, "--", *args]
    proc = subprocess.Popen(
        niced(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    _procs.append(proc)
    lines: list[str] = []
    try:
        for raw in proc.stdout or ():
            lines.append(raw.decode(errors="replace").rstrip("\n"))
            if raw.startswith(b"QUOTA_DONE"):
                proc.send_signal(signal.SIGINT)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        proc.wait(timeout=duration + 120)
    finally:
        stop_process(proc)
    stdout = "\n".join(lines)
    line = next((ln for ln in lines if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout}\n{stderr}")
    data = json.loads(line[len("WRKJSON ") :])
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        seconds=seconds,
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
        mean_ms=data["mean"] / 1000,
        errors=data["errors"],
        counters=data.get("counters", {}),
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def save_results(path: Path | None, results: list[dict[str, Any]]) -> None:
    """The raw results as JSON at ``path`` (None: not kept)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


def print_rows(titles: list[str], lines: list[list[str]]) -> None:
    """A table: each line's first cell (its name) left-aligned, the figures right-aligned
    under their titles."""
    widths = [max(len(cell) for cell in column) for column in zip(titles, *lines, strict=True)]
    first, *rest = titles
    print(
        " | ".join(
            [first.ljust(widths[0])] + [t.rjust(w) for t, w in zip(rest, widths[1:], strict=True)]
        )
    )
    print("-+-".join("-" * width for width in widths))
    for label, *cells in lines:
        aligned = (cell.rjust(width) for cell, width in zip(cells, widths[1:], strict=True))
        print(" | ".join([label.ljust(widths[0]), *aligned]))


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- CPU accounting (the machine may be shared) ------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")


def _total_busy() -> int:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


def _proc_ticks(pid: int | str, children: bool = False) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (reaped children: wrk…)
    return ticks


def _children(pid: int) -> list[str]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(entry.name)
    return found


def _postgres_ticks() -> dict[str, int]:
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("postgres"):
            ticks[entry.name] = _proc_ticks(entry.name)
    return ticks


class CpuMeter:
    """CPU used during a phase, in cores: ours (this process and reaped children such
    as wrk, the server, the projector), postgres (all its processes alive at the end),
    and everything else on the machine (other users of a shared box)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.total0 = _total_busy()
        self.ours0 = self._ours()
        self.each0 = self._each()
        self.pg0 = _postgres_ticks()

    def _ours(self) -> int:
        return _proc_ticks("self", children=True) + sum(self._each())

    def _each(self) -> list[int]:
        # With their live children: the workers of `serve --workers N`.
        return [_proc_ticks(p) + sum(map(_proc_ticks, _children(p))) for p in self.pids]

    def stop(self) -> dict[str, float]:
        seconds = time.monotonic() - self.t0
        total = (_total_busy() - self.total0) / _HZ / seconds
        ours = (self._ours() - self.ours0) / _HZ / seconds
        pg1 = _postgres_ticks()
        pg = sum(t - self.pg0.get(pid, 0) for pid, t in pg1.items()) / _HZ / seconds
        each = [(b - a) / _HZ / seconds for a, b in zip(self.each0, self._each(), strict=True)]
        return {
            "total": round(total, 2),
            "ours": round(ours, 2),
            "postgres": round(pg, 2),
            "others": round(max(total - ours - pg, 0.0), 2),
            # pids[0] is the server, pids[1] the separate projector if any.
            "server": round(each[0], 3) if each else 0.0,
            "projector": round(each[1], 3) if len(each) > 1 else 0.0,
        }


def wait_for_quiet(pids: list[int], *, limit: float = 0.4, max_wait: float = 30) -> float:
    """Wait (up to max_wait s) until other processes use less than `limit` cores; returns
    what they used in the last 2 s sample."""
    deadline = time.monotonic() + max_wait
    while True:
        meter = CpuMeter(pids)
        time.sleep(2)
        others = meter.stop()["others"]
        if others <= limit or time.monotonic() > deadline:
            if others > limit:
                log(f"machine busy: other processes use {others:.2f} cores; measuring anyway")
            return others
        log(f"waiting for a quieter machine (others use {others:.2f} cores)")


@dataclass
class Measured:
    others_before: float
    cpu: dict[str, float] = field(default_factory=dict)
    pg_sessions: int | None = None  # Postgres only


@contextlib.contextmanager
def measured(pids: list[int], dbname: str, *, quiet_wait: float) -> Iterator[Measured]:
    """Around a measured phase: wait (up to quiet_wait s) for a quiet machine, then count
    the CPU used while the block runs and (Postgres) the database connections it opened."""
    result = Measured(others_before=wait_for_quiet(pids, max_wait=quiet_wait))
    renice_postgres(dbname)
    sessions = pg_sessions(dbname) if dbname else 0
    meter = CpuMeter(pids)
    yield result
    result.cpu = meter.stop()
    time.sleep(0.6)  # session counts (and NOTIFYs to a watcher) arrive with a little delay
    if dbname:
        result.pg_sessions = pg_sessions(dbname) - sessions


# Set by use_code_ref(): the code under test is an export of a commit, not the tree.
CODE_LABEL = ""


def use_code_ref(ref: str) -> None:
    """Benchmark the project as committed at `ref` (while the working tree may be
    mid-edit): export it with `git archive` into a temporary folder and put that first
    on PYTHONPATH for every process started from here (the console script's imports
    then resolve there, before the editable install)."""
    global CODE_LABEL  # noqa: PLW0603 - one setting for the whole run
    sha = _git("rev-parse", "--short", ref, check=True)
    folder = Path(tempfile.mkdtemp(prefix=f"taskledger-bench-code-{sha}-"))
    _cleanups.append(lambda: shutil.rmtree(folder, ignore_errors=True))
    # The product packages that exist at ref (infrastructure/ came with 0d11b84).
    packages = [p for p in _git("ls-tree", "--name-only", sha, check=True).split() if p in PRODUCT]
    archive = subprocess.run(
        ["git", "archive", sha, *packages], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    CODE_LABEL = f"{sha} (exported)"


def _git(*args: str, check: bool = False) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=check)
    return done.stdout.strip()


def git_state() -> str:
    if CODE_LABEL:
        return CODE_LABEL
    dirty = _git("status", "--porcelain", "--", *PRODUCT)
    head = _git("rev-parse", "--short", "HEAD")
    if not dirty:
        return head
    # Which uncommitted state: a hash of the diff (and of untracked files' names).
    diff = _git("diff", "HEAD", "--", *PRODUCT) + dirty
    return f"{head}+dirty-{hashlib.sha256(diff.encode()).hexdigest()[:7]}"


def pg_sessions(dbname: str) -> int:
    """Connections ever opened to dbname (pg_stat_database.sessions, PostgreSQL 14+)."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
