#!/usr/bin/env bash
# Every benchmark of issue 14's targets, both backends, then one table of the targets
# (bench/summary.py): bench.run (list and create against their floors, --workers 2, lag),
# bench.big_users (big users' creates, a small user's list beside them) and
# bench.big_lists (search and title sort on a 50,000-task user). About 15 minutes on 2
# cores. Extra arguments go to bench/run.py (as `python -m bench.run`), e.g. --nice -10
# on a shared machine, or --list-seconds 5 --create-seconds 5 --lag-seconds 8 for a
# quick look; --nice and --code-ref go to the other two as well.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }
[ -x .venv/bin/python ] || { echo "no .venv: pip install -e '.[bench]' first" >&2; exit 2; }

shared=()
args=("$@")
for i in "${!args[@]}"; do
    case "${args[$i]}" in
        --nice | --code-ref) shared+=("${args[$i]}" "${args[$((i + 1))]}") ;;
    esac
done

stamp="bench/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p bench/results
.venv/bin/python -m bench.run --backend both --quiet-wait 15 --lag-rate 500 \
    --json "$stamp-run.json" "$@"
.venv/bin/python -m bench.big_users --backend both --quick --json "$stamp-big-users.json" \
    "${shared[@]}"
.venv/bin/python -m bench.big_lists --backend both --json "$stamp-big-lists.json" "${shared[@]}"
echo
.venv/bin/python -m bench.summary "$stamp-run.json" "$stamp-big-users.json" \
    "$stamp-big-lists.json"
