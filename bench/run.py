"""Run the taskledger benchmarks against real `taskledger serve` processes.

    .venv/bin/python -m bench.run --backend postgres|sqlite|both [options]   (from the repo root)

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench import harness as h
from bench import lag as lag_bench
from bench.crud_floor import running_crud_floor
from bench.floor import running_floor
from tests.support import ROOT, bearer

LIST_USER = "bench-list"
LIST_TASKS = 1000
CREATE_USERS = 32
FILL_USERS = 100

# Issue 14's targets: speed as a ratio to a floor measured in the same run (absolute
# req/s do not travel between machines), latency at 32 connections.
TARGET_TEXT = {"list_ratio": ">=1.0", "create_ratio": ">=0.5 on PostgreSQL"}
TARGETS = {
    "list_ratio": (">=", 1.0),
    "list_p99_ms": ("<=", 50),
    "create_ratio": (">=", 0.5),
    "create_p99_ms": ("<=", 100),
    "lag_p99_ms": ("<=", 20),
    "rss_after_events_mb": ("<=", 250),
}


@contextlib.contextmanager
def phase(
    name: str, out: dict[str, Any], server: h.Server, storage: h.Storage, opts: argparse.Namespace
) -> Iterator[None]:
    """A measured phase (harness.measured), its readings stored into out[...][name]."""
    with h.measured(server.pids, storage.dbname, quiet_wait=opts.quiet_wait) as measured:
        yield
    out.setdefault("others_before", {})[name] = measured.others_before
    out.setdefault("cpu", {})[name] = measured.cpu
    if measured.pg_sessions is not None:
        out.setdefault("pg_sessions", {})[name] = measured.pg_sessions


def seed_tasks(server: h.Server, tokens: Path, count: int, connections: int = 32) -> h.WrkResult:
    # wrk stops once every POST is answered; a POST lost on the way (a socket error
    # calls no response()) leaves it to its duration: a few minutes, not an hour, and
    # the count checked after says so.
    return h.wrk(
        "write.lua",
        server.url,
        connections=connections,
        duration=max(120, count // 10),
        args=[str(tokens), str(count)],
    )


def main_phases(storage: h.Storage, opts: argparse.Namespace, out: dict[str, Any]) -> None:
    with h.running_server(storage) as server:
        out["rss_idle_mb"] = server.rss_mb()[0]
        seed_list_user(server, storage, out)
        list_phase(server, storage, opts, out)
        users = [f"bench-u{i:03d}" for i in range(FILL_USERS)]
        create_phase(server, storage, opts, out, users[:CREATE_USERS])
        tokens = memory_phase(server, storage, opts, out, users)
        # 2b. create again, now that the 100 fill users hold ~1,000 tasks each (bigger
        # aggregates: snapshots and copies grow with them). After the RSS reading.
        if opts.create_big_seconds > 0:
            h.log(
                f"create on {FILL_USERS} users with ~1,000 tasks each, "
                f"{opts.create_big_seconds:.0f} s"
            )
            timed_writes(
                "create_big",
                server,
                storage,
                opts,
                out,
                tokens=tokens,
                seconds=opts.create_big_seconds,
            )


def seed_list_user(server: h.Server, storage: h.Storage, out: dict[str, Any]) -> None:
    """The list user's tasks, through the API (timed)."""
    tokens = h.write_tokens(storage.workdir / "list-token", [LIST_USER])
    started = time.monotonic()
    seed = seed_tasks(server, tokens, LIST_TASKS)
    h.wait_projected(server)
    seconds = time.monotonic() - started
    response = httpx.get(
        f"{server.url}/api/{LIST_USER}/tasks?limit=1",
        headers=bearer(h.token(LIST_USER)),
    )
    total = int(response.headers["x-total-count"])
    if total != LIST_TASKS:
        raise RuntimeError(f"list user has {total} tasks, wanted {LIST_TASKS}")
    out["seed_list"] = {
        "tasks": LIST_TASKS,
        "seconds": seconds,
        "rps": LIST_TASKS / seconds,
        "p99_ms": seed.p99_ms,
    }
    h.log(f"seeded {LIST_TASKS} tasks in {seconds:.1f} s")


def list_phase(
    server: h.Server, storage: h.Storage, opts: argparse.Namespace, out: dict[str, Any]
) -> None:
    """1. GET one page of 100 of the list user's 1,000 tasks, between two runs of its
    floor (bench/floor.py: a bare FastAPI endpoint answering 100 typed tasks)."""
    args = [LIST_USER, h.token(LIST_USER), "limit=100"]
    floors = []
    with running_floor(storage.workdir) as floor:
        floors.append(_listed(floor, "list floor", opts, args))
        h.wrk("list.lua", server.url, connections=opts.connections, duration=2, args=args)
        with phase("list", out, server, storage, opts):
            out["list"] = _listed(server, "list", opts, args)
        floors.append(_listed(floor, "list floor, again", opts, args))
    out["list_floor"] = _floor_of(floors)
    out["rss_after_list_mb"] = server.rss_mb()[0]


def _listed(
    server: h.Server, name: str, opts: argparse.Namespace, args: list[str]
) -> dict[str, Any]:
    h.log(f"{name}: {opts.connections} connections for {opts.list_seconds:.0f} s")
    result = h.wrk(
        "list.lua", server.url, connections=opts.connections, duration=opts.list_seconds, args=args
    )
    return result.as_dict()


def _floor_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A floor measured before and after what is compared with it (the machine drifts
    within minutes): the mean of the two runs' figures, and each run."""
    return {
        "rps": sum(run["rps"] for run in runs) / len(runs),
        "p50_ms": sum(run["p50_ms"] for run in runs) / len(runs),
        "p99_ms": sum(run["p99_ms"] for run in runs) / len(runs),
        "runs": runs,
    }


def crud_floor_phase(
    storage: h.Storage, opts: argparse.Namespace, users: list[str]
) -> dict[str, Any]:
    """The create's floor (bench/crud_floor.py: a plain CRUD insert on the same
    database), with the same wrk script, connections and duration as the create."""
    tokens = h.write_tokens(storage.workdir / "floor-tokens", users)
    with running_crud_floor(storage) as floor:
        h.wrk("write.lua", floor.url, connections=opts.connections, duration=2, args=[str(tokens)])
        return _created(floor, "create floor", opts, tokens)


def _created(server: h.Server, name: str, opts: argparse.Namespace, tokens: Path) -> dict[str, Any]:
    h.log(f"{name}: {opts.connections} connections for {opts.create_seconds:.0f} s")
    result = h.wrk(
        "write.lua",
        server.url,
        connections=opts.connections,
        duration=opts.create_seconds,
        args=[str(tokens)],
    )
    return result.as_dict()


def create_phase(
    server: h.Server,
    storage: h.Storage,
    opts: argparse.Namespace,
    out: dict[str, Any],
    users: list[str],
) -> None:
    """2. POST tasks, round-robin over CREATE_USERS users, between two runs of its floor."""
    tokens = h.write_tokens(storage.workdir / "create-tokens", users)
    floors = [crud_floor_phase(storage, opts, users)]
    h.log(
        f"create: {opts.connections} connections, {len(users)} users, {opts.create_seconds:.0f} s"
    )
    timed_writes("create", server, storage, opts, out, tokens=tokens, seconds=opts.create_seconds)
    floors.append(crud_floor_phase(storage, opts, users))
    out["create_floor"] = _floor_of(floors)
    out["rss_after_create_mb"] = server.rss_mb()[0]


def timed_writes(
    name: str,
    server: h.Server,
    storage: h.Storage,
    opts: argparse.Namespace,
    out: dict[str, Any],
    *,
    tokens: Path,
    seconds: float,
) -> None:
    """POSTs round-robin over the users of ``tokens`` for ``seconds``, into out[name]."""
    before = _saved_and_transactions(server)
    with phase(name, out, server, storage, opts):
        result = h.wrk(
            "write.lua",
            server.url,
            connections=opts.connections,
            duration=seconds,
            args=[str(tokens)],
        )
    out[name] = result.as_dict()
    after = _saved_and_transactions(server)
    saved, transactions = (now - then for now, then in zip(after, before, strict=True))
    out[name]["commands_per_transaction"] = saved / transactions if transactions else None


def _saved_and_transactions(server: h.Server) -> tuple[float, float]:
    """Commands saved, and the event-store transactions that saved them, from /metrics
    (as prometheus_client shows them; before it, for --code-ref, as hand-made text)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    saved = transactions = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "taskledger_commands_total":
                saved += sample.value if sample.labels.get("outcome") == "saved" else 0
            elif sample.name == "taskledger_save_transaction_commands_count":
                transactions += sample.value
            elif sample.name == "taskledger_commands_saved_total":
                saved += sample.value
            elif sample.name == "taskledger_save_transactions_total":
                transactions += sample.value
    return saved, transactions


def memory_phase(
    server: h.Server,
    storage: h.Storage,
    opts: argparse.Namespace,
    out: dict[str, Any],
    users: list[str],
) -> Path:
    """4. RSS once the log holds opts.events events, across the fill users."""
    position = h.wait_projected(server)["log_position"]
    out["events_via_api_before_fill"] = position
    missing = opts.events - position
    tokens = h.write_tokens(storage.workdir / "fill-tokens", users)
    if missing > 0 and opts.fill == "api":
        h.log(f"memory: writing {missing} more events over {len(users)} users (API)")
        with phase("fill", out, server, storage, opts):
            started = time.monotonic()
            fill = seed_tasks(server, tokens, missing)
            seconds = time.monotonic() - started
        created = fill.counters.get("created", 0)
        out["fill"] = {
            "mode": "api",
            "tasks": created,
            "seconds": seconds,
            "rps": created / seconds,
            "p50_ms": fill.p50_ms,
            "p99_ms": fill.p99_ms,
        }
    elif missing > 0:
        h.log(f"memory: appending {missing} events over {len(users)} users to the store")
        started = time.monotonic()
        appended = append_directly(storage, missing, users)
        h.wait_projected(server, timeout=600)
        seconds = time.monotonic() - started
        out["fill"] = {
            "mode": "direct",
            "events": appended,
            "seconds": seconds,
            "projected_per_s": appended / seconds,
        }
        out["rss_after_projecting_mb"] = server.rss_mb()[0]
        # Load every fill user's aggregate into the server: one API write each.
        seed_tasks(server, tokens, len(users))
    ready = h.wait_projected(server)
    time.sleep(1)
    rss, hwm = server.rss_mb()
    out["events_written"] = ready["log_position"]
    out["rss_after_events_mb"] = rss
    out["rss_peak_mb"] = hwm
    h.log(f"memory: {ready['log_position']} events, RSS {rss:.0f} MiB (peak {hwm:.0f})")
    return tokens


def append_directly(storage: h.Storage, events: int, users: list[str]) -> int:
    """bench/fill_direct.py, in a process of its own; returns the events it appended."""
    env = h.base_env(storage)
    # bench and tests from this tree, after the code under test (which --code-ref puts
    # first on PYTHONPATH); the temporary cwd holds nothing importable.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    args = [storage.database_url, str(storage.data_dir or ""), str(events), *users]
    command = [sys.executable, "-m", "bench.fill_direct", *args]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        cwd=storage.workdir,
        env=env,
        timeout=600,
    )
    return int(done.stdout.split()[0])


def workers_phases(storage: h.Storage, opts: argparse.Namespace, out: dict[str, Any]) -> None:
    """5. The list and the create again, on ``serve --workers N`` (a fresh database),
    to compare with the one process measured before them in this run."""
    with h.running_server(storage, workers=opts.workers) as server:
        tokens = h.write_tokens(storage.workdir / "list-token", [LIST_USER])
        seed_tasks(server, tokens, LIST_TASKS)
        h.wait_projected(server)
        args = [LIST_USER, h.token(LIST_USER), "limit=100"]
        h.wrk("list.lua", server.url, connections=opts.connections, duration=2, args=args)
        with phase("workers_list", out, server, storage, opts):
            out["workers_list"] = _listed(server, f"list, --workers {opts.workers}", opts, args)
        users = [f"bench-w{i:03d}" for i in range(CREATE_USERS)]
        tokens = h.write_tokens(storage.workdir / "create-tokens", users)
        with phase("workers_create", out, server, storage, opts):
            label = f"create, --workers {opts.workers}"
            out["workers_create"] = _created(server, label, opts, tokens)
    out["workers"] = opts.workers


def run_backend(backend: str, opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "backend": backend,
        "code": h.git_state(),
        "nice": opts.nice,
        "loadavg_start": h.loadavg(),
    }
    started = time.monotonic()
    if not opts.skip_main:
        with h.fresh_storage(backend, "main") as storage:
            main_phases(storage, opts, out)
    if not opts.skip_main and opts.workers > 1:
        with h.fresh_storage(backend, "workers") as storage:
            workers_phases(storage, opts, out)
    if not opts.skip_lag:
        with h.fresh_storage(backend, "lag") as storage:
            out["lag"] = lag_bench.measure_lag(
                storage, rate=opts.lag_rate, seconds=opts.lag_seconds, quiet_wait=opts.quiet_wait
            )
        for extra in opts.lag_env:
            key, _, value = extra.partition("=")
            with h.fresh_storage(backend, "lag2") as storage:
                out[f"lag[{extra}]"] = lag_bench.measure_lag(
                    storage,
                    rate=opts.lag_rate,
                    seconds=opts.lag_seconds,
                    extra_env={key: value},
                    quiet_wait=opts.quiet_wait,
                )
    out["wall_seconds"] = time.monotonic() - started
    return out


# -- table --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _verdict(key: str, value: Any) -> str:
    if key not in TARGETS or value is None:
        return ""
    op, limit = TARGETS[key]
    good = value >= limit if op == ">=" else value <= limit
    return " ok" if good else " MISS"


def rows_for(result: dict[str, Any]) -> dict[str, str]:
    rows: dict[str, str] = {}
    if "list" in result:
        _main_rows(result, rows)
    for key in [k for k in result if k.startswith("lag")]:
        _lag_rows(key, result[key], rows)
    for name, cpu in result.get("cpu", {}).items():
        rows[f"cpu {name}: ours/postgres/others (cores)"] = (
            f"{cpu['ours']:.2f}/{cpu['postgres']:.2f}/{cpu['others']:.2f}"
        )
    for name, count in result.get("pg_sessions", {}).items():
        rows[f"new pg connections during {name}"] = str(count)
    rows["wall time (s)"] = _fmt(result["wall_seconds"])
    rows["code"] = result.get("code", "")
    return rows


Put = Callable[..., None]


def _putter(rows: dict[str, str]) -> Put:
    def put(label: str, value: Any, digits: int = 0, key: str = "") -> None:
        rows[label] = _fmt(value, digits) + _verdict(key, value)

    return put


def _main_rows(result: dict[str, Any], rows: dict[str, str]) -> None:
    put = _putter(rows)
    put("seed 1,000 tasks, 1 user (s)", result["seed_list"]["seconds"], 1)
    lst = result["list"]
    _against_floor(rows, "1 list", lst, result.get("list_floor"), key="list_ratio", target=">=1.0")
    put("1 list p99 ms (target <=50)", lst["p99_ms"], 1, "list_p99_ms")
    rows["1 list errors"] = str(sum(lst["errors"].values()))
    _cpu_per_request(result, "list", "1 list", put)
    c = result["create"]
    target = ">=0.5" if result["backend"] == "postgres" else "none"
    _against_floor(
        rows, "2 create", c, result.get("create_floor"), key="create_ratio", target=target
    )
    put("2 create p99 ms (target <=100)", c["p99_ms"], 1, "create_p99_ms")
    rows["2 create errors"] = str(sum(c["errors"].values()) + c["counters"].get("failed", 0))
    _cpu_per_request(result, "create", "2 create", put)
    put("2 create commands per save transaction", c.get("commands_per_transaction"), 2)
    if "create_big" in result:
        c = result["create_big"]
        put("2b create on 100 users x ~1,000 tasks req/s", c["rps"], 0)
        put("2b create on 100 users x ~1,000 tasks p99 ms", c["p99_ms"], 1)
        _cpu_per_request(result, "create_big", "2b create", put)
        put("2b create commands per save transaction", c.get("commands_per_transaction"), 2)
    _memory_rows(result, put)
    _workers_rows(result, rows)


def _workers_rows(result: dict[str, Any], rows: dict[str, str]) -> None:
    if "workers" not in result:
        return
    n = result["workers"]
    for name, label in (("list", "list"), ("create", "create")):
        theirs, one = result[f"workers_{name}"], result[name]
        rows[f"5 {label}, --workers {n}: req/s, p50/p99 ms"] = _rate_and_latency(theirs)
        ratio = theirs["rps"] / one["rps"] if one["rps"] else None
        rows[f"5 {label}, --workers {n}: ratio to 1 process (target >=1.7)"] = _fmt(ratio, 2) + (
            " ok" if ratio is not None and ratio >= 1.7 else " MISS"
        )
        # Whether the workers scale with the cores they get: req/s per core of server
        # CPU against the one process's, and how full the machine was (wrk and the
        # database share its cores).
        cpu = result.get("cpu", {})
        many, single = cpu.get(f"workers_{name}"), cpu.get(name)
        if many and single and many["server"] and single["server"] and one["rps"]:
            per_core = (theirs["rps"] / many["server"]) / (one["rps"] / single["server"])
            rows[f"5 {label}, --workers {n}: server cores used (1 process)"] = (
                f"{many['server']:.2f} ({single['server']:.2f})"
            )
            rows[f"5 {label}, --workers {n}: req/s per server core, ratio to 1"] = _fmt(per_core, 2)
            rows[f"5 {label}, --workers {n}: machine cores busy (1 process)"] = (
                f"{many['total']:.2f} ({single['total']:.2f}) of {os.cpu_count()}"
            )


def _against_floor(
    rows: dict[str, str],
    label: str,
    ours: dict[str, Any],
    floor: dict[str, Any] | None,
    *,
    key: str,
    target: str,
) -> None:
    """req/s and p50/p99 of ours and of the floor, and the ratio of the req/s."""
    rows[f"{label} req/s, p50/p99 ms"] = _rate_and_latency(ours)
    if floor is None:
        return
    runs = " then ".join(_fmt(run["rps"]) for run in floor["runs"])
    rows[f"{label} floor req/s, p50/p99 ms (runs before, after)"] = (
        f"{_rate_and_latency(floor)} ({runs})"
    )
    ratio = ours["rps"] / floor["rps"] if floor["rps"] else None
    # One label on every backend (a row each), the target said in the value.
    verdict = "" if target == "none" else _verdict(key, ratio)
    rows[f"{label} ratio to floor (target {TARGET_TEXT[key]})"] = _fmt(ratio, 2) + (
        verdict if target != "none" else " (no target)"
    )


def _rate_and_latency(figures: dict[str, Any]) -> str:
    return f"{_fmt(figures['rps'])}, {_fmt(figures['p50_ms'], 1)}/{_fmt(figures['p99_ms'], 1)}"


def _cpu_per_request(result: dict[str, Any], name: str, label: str, put: Put) -> None:
    cpu = result.get("cpu", {}).get(name)
    rps = result[name]["rps"]
    if cpu and rps:
        put(f"{label} server CPU ms/request", 1000 * cpu["server"] / rps, 2)


def _memory_rows(result: dict[str, Any], put: Put) -> None:
    put("4 events written via the API", result.get("events_via_api_before_fill"))
    fill = result.get("fill")
    if fill and fill["mode"] == "api":
        put("4 fill via API writes/s (32 conns, 100 users)", fill["rps"], 0)
        put("4 fill via API p99 ms", fill["p99_ms"], 1)
        put("4 fill via API time (s)", fill["seconds"], 0)
    elif fill:
        put("4 fill appended to store + projected (events)", fill["events"])
        put("4 fill projected events/s (in-process projector)", fill["projected_per_s"], 0)
        put("4 RSS after projecting fill MiB", result.get("rss_after_projecting_mb"), 0)
    put("4 events in the log at the end", result["events_written"])
    put("4 RSS idle MiB", result["rss_idle_mb"], 0)
    put(
        "4 RSS after events MiB (target <=250)",
        result["rss_after_events_mb"],
        0,
        "rss_after_events_mb",
    )
    put("4 RSS peak (VmHWM) MiB", result["rss_peak_mb"], 0)


def _lag_rows(key: str, lag: dict[str, Any], rows: dict[str, str]) -> None:
    put = _putter(rows)
    tag = "" if key == "lag" else key[3:]
    put(f"3 lag{tag} p50 ms", lag["lag"]["p50_ms"], 1)
    put(f"3 lag{tag} p99 ms (target <=20)", lag["lag"]["p99_ms"], 1, "lag_p99_ms")
    put(f"3 lag{tag} max ms", lag["lag"]["max_ms"], 1)
    put(f"3 lag{tag} write p50 ms", lag["write_latency"]["p50_ms"], 1)
    put(f"3 lag{tag} write p99 ms", lag["write_latency"]["p99_ms"], 1)
    put(f"3 lag{tag} write max ms", lag["write_latency"]["max_ms"], 1)
    put(f"3 lag{tag} write p99 ms from its schedule", lag["write_latency_from_due"]["p99_ms"], 1)
    put(f"3 lag{tag} commit p50/p99 ms", lag["commit_delay"]["p50_ms"], 1)
    rows[f"3 lag{tag} commit p50/p99 ms"] += f"/{lag['commit_delay']['p99_ms']:.1f}"
    put(f"3 lag{tag} notice p99 ms", lag["notice_delay"]["p99_ms"], 1)
    put(f"3 lag{tag} sent writes/s (client late p99 ms)", lag["achieved_rate"], 1)
    rows[f"3 lag{tag} sent writes/s (client late p99 ms)"] += f" ({lag['send_late_p99_ms']:.1f})"
    rows[f"3 lag{tag} errors/pending/unmatched"] = (
        f"{lag['errors']}/{lag['projection_pending']}/{lag['unmatched']}"
    )
    cpu, rate = lag["cpu"], lag["achieved_rate"]
    if rate:
        rows[f"3 lag{tag} CPU ms/write server/projector"] = (
            f"{1000 * cpu['server'] / rate:.2f}/{1000 * cpu['projector'] / rate:.2f}"
        )
    rows[f"cpu lag{tag}: ours/postgres/others (cores)"] = (
        f"{cpu['ours']:.2f}/{cpu['postgres']:.2f}/{cpu['others']:.2f}"
    )
    if lag.get("pg_sessions") is not None:
        rows[f"new pg connections during lag{tag}"] = str(lag["pg_sessions"])


def print_table(results: list[dict[str, Any]]) -> None:
    per = [rows_for(r) for r in results]
    labels: list[str] = []
    for rows in per:
        labels += [label for label in rows if label not in labels]
    width = max(len(label) for label in labels)
    cols = [
        max([16, len(r["backend"]), *map(len, rows.values())])
        for r, rows in zip(results, per, strict=True)
    ]
    header = f"{'metric':<{width}} | " + " | ".join(
        f"{r['backend']:>{w}}" for r, w in zip(results, cols, strict=True)
    )
    print(header)
    print("-" * len(header))
    for label in labels:
        print(
            f"{label:<{width}} | "
            + " | ".join(f"{rows.get(label, ''):>{w}}" for rows, w in zip(per, cols, strict=True))
        )
    for result in results:
        for key in [k for k in result if k.startswith("lag")]:
            if result[key].get("note"):
                print(f"note ({result['backend']} {key}): {result[key]['note']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--list-seconds", type=float, default=15)
    parser.add_argument("--create-seconds", type=float, default=15)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--create-big-seconds",
        type=float,
        default=10,
        help="create phase on the 100 fill users after the memory reading (0 skips it)",
    )
    parser.add_argument(
        "--fill",
        choices=["direct", "api"],
        default="direct",
        help="how the memory phase tops the log up to --events: appended "
        "by bench/fill_direct.py (fast), or POSTed through the API (slow)",
    )
    parser.add_argument("--lag-rate", type=float, default=100)
    parser.add_argument("--lag-seconds", type=float, default=20)
    parser.add_argument(
        "--lag-env",
        action="append",
        default=[],
        help="extra lag run with KEY=VALUE in the server/projector env",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="seconds to wait, before each phase, for other processes to calm down",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the server, projector, wrk and our database's "
        "backends, e.g. -10 on a shared machine (root only)",
    )
    parser.add_argument(
        "--code-ref",
        help="benchmark this commit (git archive) instead of "
        "the working tree, e.g. HEAD while the tree is being edited",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="list and create again on `serve --workers N` (1 skips it)",
    )
    parser.add_argument("--skip-main", action="store_true")
    parser.add_argument("--skip-lag", action="store_true")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    opts = parser.parse_args()
    h.install_signal_handlers()
    h.set_niceness(opts.nice)
    if opts.code_ref:
        h.use_code_ref(opts.code_ref)
    h.drop_stale_databases()
    backends = ["postgres", "sqlite"] if opts.backend == "both" else [opts.backend]
    results = []
    for backend in backends:
        h.log(f"=== {backend} ===")
        results.append(run_backend(backend, opts))
    h.save_results(opts.json, results)
    print()
    print_table(results)


if __name__ == "__main__":
    main()
