"""Issue 14's targets in one table, from the JSON results of one bench/run_all.sh run.

    .venv/bin/python -m bench.summary RUN.json [BIG_USERS.json] [BIG_LISTS.json]

Each row is a target: our figure, what it is measured against (a floor measured in the
same run, a one-process or new-user or idle figure of the same run, or a fixed bound),
the ratio where there is one, and whether the target is met. The files are the ones
bench.run, bench.big_users and bench.big_lists write with --json; which is which is
told by what they hold, so any of the last two may be left out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import harness as h

Row = list[str]
COLUMNS = ("target", "backend", "ours", "against", "ratio", "wanted", "")


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _met(value: float | None, wanted: str) -> str:
    if value is None:
        return "-"
    bound = float(wanted[2:].rstrip("x ms"))
    good = value >= bound if wanted.startswith(">=") else value <= bound
    return "ok" if good else "MISS"


def _ratio_row(
    name: str,
    backend: str,
    ours: float,
    against: float,
    *,
    label: str,
    wanted: str | None,
    digits: int = 0,
) -> Row:
    ratio = ours / against if against else None
    return [
        name,
        backend,
        _f(ours, digits),
        f"{_f(against, digits)} {label}",
        _f(ratio, 2),
        wanted or "(none)",
        _met(ratio, wanted) if wanted else "",
    ]


def _bound_row(name: str, backend: str, value: float | None, wanted: str | None) -> Row:
    verdict = _met(value, wanted) if wanted else ""
    return [name, backend, f"{_f(value, 1)} ms", "", "", wanted or "(none)", verdict]


def run_rows(result: dict[str, Any]) -> list[Row]:
    """bench.run's figures: list and create against their floors, p99s, workers, lag."""
    backend, rows = result["backend"], []
    if "list" in result:
        lst, floor = result["list"], result["list_floor"]
        rows.append(
            _ratio_row(
                "list req/s", backend, lst["rps"], floor["rps"], label="floor", wanted=">=1.0x"
            )
        )
        rows.append(_bound_row("list p99", backend, lst["p99_ms"], "<=50 ms"))
        create, floor = result["create"], result["create_floor"]
        wanted = ">=0.5x" if backend == "postgres" else None
        rows.append(
            _ratio_row(
                "create req/s", backend, create["rps"], floor["rps"], label="floor", wanted=wanted
            )
        )
        wanted = "<=100 ms" if backend == "postgres" else None
        rows.append(_bound_row("create p99", backend, create["p99_ms"], wanted))
    if "workers" in result:
        n = result["workers"]
        for name in ("list", "create"):
            theirs, one = result[f"workers_{name}"], result[name]
            rows.append(
                _ratio_row(
                    f"{name} req/s, --workers {n}",
                    backend,
                    theirs["rps"],
                    one["rps"],
                    label="1 process",
                    wanted=">=1.7x",
                )
            )
    for key in [k for k in result if k.startswith("lag")]:
        lag = result[key]
        name = f"lag p99 at {lag['achieved_rate']:,.0f} writes/s"
        rows.append(_bound_row(name, backend, lag["lag"]["p99_ms"], "<=20 ms"))
    return rows


def big_user_rows(result: dict[str, Any]) -> list[Row]:
    """bench.big_users: creates on big users against a new user's, and a small user's
    list during a big user's writes against its idle figure (p99 ms)."""
    backend, rows = result["backend"], []
    create = result["create"]
    new = create["bench-new"]["p99_ms"]
    for user, tasks in (("bench-10k", "10,000"), ("bench-50k", "50,000")):
        rows.append(
            _ratio_row(
                f"create p99 ms, {tasks}-task user",
                backend,
                create[user]["p99_ms"],
                new,
                label="new user",
                wanted="<=1.5x",
                digits=1,
            )
        )
    lists = result["list"]
    # How much of it is any writing at all, beside the small user on the same cores.
    rows.append(
        _ratio_row(
            "small user's list p99 ms, new user writing",
            backend,
            lists["new"]["p99_ms"],
            lists["idle"]["p99_ms"],
            label="idle",
            wanted=None,
            digits=1,
        )
    )
    rows.append(
        _ratio_row(
            "small user's list p99 ms, big user writing",
            backend,
            lists["big"]["p99_ms"],
            lists["idle"]["p99_ms"],
            label="idle",
            wanted="<=1.5x",
            digits=1,
        )
    )
    return rows


def big_list_rows(result: dict[str, Any]) -> list[Row]:
    """bench.big_lists: search and title sort on a 50,000-task user, uncached (p99)."""
    backend = result["backend"]
    return [
        _bound_row(f"{name}, {result['tasks']:,} tasks", backend, page["p99_ms"], "<=20 ms")
        for name, page in result["pages"].items()
        if name.startswith(("search", "sort=title"))
    ]


def _kind(results: list[dict[str, Any]]) -> Callable[[dict[str, Any]], list[Row]]:
    first = results[0]
    if "first_write_ms" in first:
        return big_user_rows
    if "pages" in first:
        return big_list_rows
    return run_rows


def print_summary(paths: list[Path]) -> None:
    lines: list[Row] = []
    codes = set()
    for path in paths:
        results = json.loads(path.read_text())
        rows_of = _kind(results)
        for result in results:
            codes.add(result.get("code", "?"))
            lines.extend(rows_of(result))
    print(f"issue 14's targets (code {', '.join(sorted(codes))})")
    h.print_rows(list(COLUMNS), lines)


def main() -> None:
    paths = [Path(arg) for arg in sys.argv[1:]]
    if not paths or any(arg.startswith("-") for arg in sys.argv[1:]):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print_summary(paths)


if __name__ == "__main__":
    main()
