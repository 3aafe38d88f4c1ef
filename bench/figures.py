"""How the single-purpose benchmarks (edge, aggregate_memory, snapshots) print what they
measure: one figure a line, its name, value and unit in columns, on stdout (progress goes
to stderr through harness.log), so that a run can be read, diffed or grepped."""

from __future__ import annotations

from collections import Counter

MIB = 2**20


def figure(what: str, value: float | str, unit: str = "", digits: int = 1) -> None:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:,.{digits}f}"
    else:
        text = value
    print(f"{what:<52} {text:>14} {unit}".rstrip(), flush=True)


def tally(counts: Counter[str]) -> str:
    """An answer count as "431:20 reset:2", commonest first."""
    return " ".join(f"{key}:{n}" for key, n in counts.most_common()) or "none"
