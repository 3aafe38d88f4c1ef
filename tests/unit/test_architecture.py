"""The import rules of docs/architecture.md, checked on the source itself."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT
from write_side.domain import TaskList

PRODUCT = ("write_side", "read_side", "api", "infrastructure")
WEB = {"fastapi", "starlette", "uvicorn"}
DATABASES = {"psycopg", "psycopg_pool", "sqlite3", "sqlalchemy", "sqlmodel"}

# Package (or module) -> top-level names it must not import.
FORBIDDEN = {
    "write_side": {"read_side", "api", *WEB, "sqlalchemy", "sqlmodel", "pydantic"},
    "read_side": {"api", *WEB},
    "infrastructure": {"write_side", "read_side", "api", *WEB},
    # The domain and the command engine: no database, no machinery, no library storage.
    "write_side/domain.py": {*DATABASES, "infrastructure", "write_side.store"},
    "write_side/idempotency.py": {*DATABASES, "infrastructure", "write_side.store"},
    "write_side/history.py": {*DATABASES, "infrastructure", "write_side.store"},
    "write_side/commands.py": {*DATABASES, "infrastructure", "write_side.store", "eventsourcing"},
}


def sources(package: str) -> Iterator[Path]:
    path = ROOT / package
    yield from [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def imports(path: Path) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def imported_modules(path: Path) -> set[str]:
    """Every module imported, with each of its parents (``a.b.c`` gives a, a.b, a.b.c)."""
    names: set[str] = set()
    for node in imports(path):
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        for module in modules:
            parts = module.split(".")
            names.update(".".join(parts[: n + 1]) for n in range(len(parts)))
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_it_may(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in sources(package)
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_only_api_imports_the_web_framework() -> None:
    for package in PRODUCT:
        if package != "api":
            for path in sources(package):
                assert not imported_modules(path) & WEB, path


def test_the_read_side_takes_only_event_classes_from_the_write_side() -> None:
    """The events (nested in TaskList) and the stream id they carry are the contract
    between the sides; nothing else of the write side is seen from the read side."""
    events = {
        name
        for name, value in vars(TaskList).items()
        if isinstance(value, type) and issubclass(value, TaskList.Event)
    }
    for path in sources("read_side"):
        for node in imports(path):
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("write_side") for a in node.names), path
            elif node.module and node.module.startswith("write_side"):
                assert (node.module, [a.name for a in node.names]) == (
                    "write_side.domain",
                    ["TaskList"],
                ), path
        used = {
            node.attr
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "TaskList"
        }
        assert used <= events | {"create_id"}, (path, used - events)


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = []
    for package in PRODUCT:
        for path in sources(package):
            source = path.read_text()
            if "os.environ.get" in source or "os.getenv" in source or "environ[" in source:
                readers.append(str(path.relative_to(ROOT)))
    # The CLI writes RUN_PROJECTOR for uvicorn's worker processes; it never reads.
    assert readers in ([], ["api/cli.py"])


def test_python_jose_is_not_used() -> None:
    for package in PRODUCT:
        for path in sources(package):
            assert "jose" not in imported_modules(path), path
