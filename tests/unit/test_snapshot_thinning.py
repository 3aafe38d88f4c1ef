"""Which snapshots a stream keeps: at most a few, the latest always, the others spread
out over the stream and never where a replay without them would be short."""

from __future__ import annotations

import pytest

from write_side.store.snapshots import KEPT_PER_STREAM, MIN_STRETCH, to_thin


def kept_after_each(versions: list[int]) -> list[int]:
    """The kept versions when snapshots arrive one at a time, each thinning the rest."""
    kept: list[int] = []
    for version in versions:
        kept.append(version)
        thinned = set(to_thin(kept))
        kept = [v for v in kept if v not in thinned]
    return kept


def test_the_latest_is_always_kept() -> None:
    assert to_thin([]) == []
    assert to_thin([7]) == []
    assert to_thin([5, 10, 20, 31]) == [5, 10, 20]
    assert to_thin([100, 201]) == [100]


def test_a_snapshot_stays_where_without_it_a_replay_would_be_long() -> None:
    # Without 800, the moments before 1,600 would replay up to 1,600 events.
    assert to_thin([800, 1600]) == []
    assert to_thin([100, 200, 400, 800, 1200]) == [100, 200, 400]
    # A list that grows keeps every snapshot from 800 on (the intervals double).
    growing = [100 * 2**n for n in range(7)]
    assert kept_after_each(growing) == [800, 1600, 3200, 6400]
    assert to_thin(growing) == [100, 200, 400]


@pytest.mark.parametrize("interval", [100, 1024, 6400])
def test_a_long_stream_keeps_a_few_spread_over_it(interval: int) -> None:
    versions = list(range(interval, 100_000, interval))
    kept = kept_after_each(versions)
    assert len(kept) == KEPT_PER_STREAM
    assert kept[-1] == versions[-1]
    # Spread out: no moment is much farther from a kept snapshot before it than an even
    # spacing would leave it.
    gaps = [b - a for a, b in zip([0, *kept], kept, strict=False)]
    assert max(gaps) <= 2 * versions[-1] / KEPT_PER_STREAM
    assert min(gaps) > MIN_STRETCH
    # Thinning all at once keeps as many, spread as well.
    thinned = set(to_thin(versions))
    at_once = [v for v in versions if v not in thinned]
    assert len(at_once) == KEPT_PER_STREAM
    assert max(b - a for a, b in zip([0, *at_once], at_once, strict=False)) <= max(gaps) * 1.5


def test_on_a_tie_the_older_goes_and_the_rest_stay_even() -> None:
    assert to_thin([1000, 2000, 3000, 4000], keep=2) == [1000, 3000]
    assert to_thin([1000, 2000, 3000, 4000], keep=1) == [1000, 2000, 3000]
