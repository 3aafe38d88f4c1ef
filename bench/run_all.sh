#!/usr/bin/env bash
# Every benchmark, both backends, one table at the end (~5 minutes on 2 cores).
# Extra arguments go to bench/run.py (as `python -m bench.run`), e.g. --nice -10 on a
# shared machine, or --list-seconds 5 --create-seconds 5 --lag-seconds 8 for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo "no .venv: pip install -e '.[bench]' first" >&2; exit 2; }
mkdir -p bench/results
exec .venv/bin/python -m bench.run --backend both --quiet-wait 15 \
    --json "bench/results/$(date +%Y%m%d-%H%M%S).json" "$@"
