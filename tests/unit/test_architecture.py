"""The import rules of STYLE.md, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

FORBIDDEN = {
    "write_side": {"read_side", "api", "fastapi", "starlette", "sqlmodel", "sqlalchemy"},
    "read_side": {"api", "fastapi", "starlette"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_in_their_layer(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = []
    for package in ("write_side", "read_side", "api"):
        for path in (ROOT / package).rglob("*.py"):
            source = path.read_text()
            if "os.environ.get" in source or "os.getenv" in source or "environ[" in source:
                readers.append(str(path.relative_to(ROOT)))
    # The CLI writes RUN_PROJECTOR for uvicorn's worker processes; it never reads.
    assert readers in ([], ["api/cli.py"])


def test_python_jose_is_not_used() -> None:
    for package in ("write_side", "read_side", "api"):
        for path in (ROOT / package).rglob("*.py"):
            assert "jose" not in imported_modules(path), path
