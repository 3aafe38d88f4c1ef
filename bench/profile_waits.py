"""Where do the server's threads spend wall time? For `py-spy record --idle -f raw`.

    python bench/profile_waits.py /tmp/x.txt [TOP]

Groups each sample by the innermost frame of project code (api/, read_side/,
write_side/) and the leaf frame, so that waits (pool, locks, read-your-writes,
database round trips) show up beside CPU work. Idle thread-pool workers
(waiting for a job) are reported separately.
"""

from __future__ import annotations

import collections
import re
import sys

OURS = re.compile(r"\((api|read_side|write_side)/")


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    total = idle = 0
    with open(path, encoding="utf-8", errors="replace") as file:
        lines = file.read().splitlines()
    for line in lines:
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        if "Queue.get (queue.py" in stack and "WorkerThread.run" in stack and len(frames) <= 6:
            idle += count
            continue
        fallback = frames[min(2, len(frames) - 1)]
        ours = next((f for f in reversed(frames) if OURS.search(f)), fallback)
        counts[(ours, frames[-1])] += count
    print(f"samples {total}; idle pool workers {100 * idle / total:.1f}%")
    busy = total - idle
    for (ours, leaf), count in counts.most_common(top):
        print(f"{100 * count / busy:5.1f}%  {ours}  <-  {leaf}")


if __name__ == "__main__":
    main()
