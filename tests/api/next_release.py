"""`taskledger` as the next release would run: this code, with its read model version
one higher (a test-only bump: same tables, new version), for rolling upgrades.

    python -m tests.api.next_release serve ...
"""

from __future__ import annotations

from read_side import versions

versions.READ_MODEL_VERSION += 1
versions.SHAPES[versions.READ_MODEL_VERSION] = versions.SHAPES[versions.READ_MODEL_VERSION - 1]

from api.cli import main  # noqa: E402 - after the bump, which the code reads at start-up

main()
