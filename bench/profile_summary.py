"""Summarise `py-spy record -f raw` output: where the busy samples go.

    python bench/profile_summary.py /tmp/x.txt [--top 30] [--match SUBSTRING ...]

Idle frames (threads waiting on a lock, a socket, a condition, epoll) are dropped, so
the percentages are of the samples where a thread was running Python or C code.
"""

from __future__ import annotations

import argparse
import collections
import re

IDLE = re.compile(
    r"\b(wait|_wait_for_tstate_lock|select|poll|epoll|_worker|get \(queue|accept|"
    r"run_forever|_run_once|notifies|sleep|recv_into|acquire)\b"
)


def parse(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for raw in file:
            line = raw.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py:123)"
    match = re.match(r"(.*) \((.*)/([^/]+):(\d+)\)$", frame)
    if match:
        return f"{match[1]} ({match[3]}:{match[4]})"
    return frame


def func_only(frame: str) -> str:
    match = re.match(r"(.*) \((.*)/([^/]+):\d+\)$", frame)
    return f"{match[1]} ({match[3]})" if match else frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", nargs="*", default=[])
    parser.add_argument(
        "--keep-idle",
        action="store_true",
        help="count waiting leaf frames too (py-spy without --idle already "
        "drops most idle samples)",
    )
    args = parser.parse_args()
    stacks = parse(args.path)
    total = sum(count for _, count in stacks)
    busy = [
        (frames, count) for frames, count in stacks if args.keep_idle or not IDLE.search(frames[-1])
    ]
    busy_total = sum(count for _, count in busy) or 1
    print(f"samples: {total}, busy: {busy_total} ({100 * busy_total / max(total, 1):.0f}%)")

    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, count in busy:
        leaf[short(frames[-1])] += count
        for name in {func_only(f) for f in frames}:
            inclusive[name] += count
    print(f"\n-- self time (top {args.top}) --")
    for name, count in leaf.most_common(args.top):
        print(f"{100 * count / busy_total:5.1f}%  {name}")
    print(f"\n-- inclusive time (top {args.top * 2}) --")
    for name, count in inclusive.most_common(args.top * 2):
        print(f"{100 * count / busy_total:5.1f}%  {name}")
    for pattern in args.match:
        hits = sum(c for frames, c in busy if any(pattern in f for f in frames))
        print(f"\nmatch {pattern!r}: {100 * hits / busy_total:.1f}%")


if __name__ == "__main__":
    main()
