"""Imports point one way (STYLE.md, docs/design/architecture.md); this walks the AST to keep it.

- ``forkhorn.http`` is sans-IO: it imports only a small allow-list of pure stdlib modules
  and itself; socket, threading, time, os, logging, select, asyncio and friends are named
  explicitly as forbidden so the failure message says why. ``__import__``/``importlib``
  tricks count as imports.
- Package rules between forkhorn packages (runtime imports: ``if TYPE_CHECKING:`` blocks
  are annotations only), checked for every package that exists:
  ``arbiter`` never imports ``forkhorn.http``; ``config`` imports nothing from forkhorn
  except ``forkhorn.errors``; the rest follow the architecture table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "forkhorn"

HTTP_STDLIB_ALLOWED = frozenset(
    # http: the stdlib's HTTPStatus table (an enum), for reason phrases.
    ("re", "dataclasses", "enum", "typing", "__future__", "collections.abc", "http")
)
HTTP_FORBIDDEN = frozenset(
    (
        "socket",
        "ssl",
        "threading",
        "_thread",
        "time",
        "os",
        "sys",
        "logging",
        "select",
        "selectors",
        "asyncio",
        "subprocess",
        "signal",
        "io",
        "importlib",
        "multiprocessing",
        "concurrent",
        "datetime",
    )
)

# Which forkhorn packages each package may import (architecture.md). A package always may
# import itself. Keys are top-level packages/modules under forkhorn.
FORKHORN_ALLOWED = {
    "http": {"http"},
    "config": {"config", "errors"},
    "wsgi": {"wsgi", "http", "errors"},
    "logs": {"logs", "config", "errors"},
    "workers": {"workers", "http", "wsgi", "logs", "config", "errors", "arbiter.scoreboard"},
    "arbiter": {"arbiter", "config", "logs", "workers", "wsgi.loader", "errors"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def typing_only_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (no runtime dependency)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            for child in node.body:
                inside.update(id(sub) for sub in ast.walk(child))
    return inside


def imports_of(path: Path, *, runtime_only: bool = False) -> list[tuple[str, int]]:
    """Absolute names of everything ``path`` imports, with line numbers. ``runtime_only``
    leaves out imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = typing_only_nodes(tree) if runtime_only else set()
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level:
                # "from . import x" may import submodule x: record both.
                found.extend((f"{target}.{alias.name}", node.lineno) for alias in node.names)
            found.append((target, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            found.append(("__import__", node.lineno))
    return found


def modules_of(package: str) -> list[Path]:
    root = PACKAGE / package
    if root.is_dir():
        return sorted(root.rglob("*.py"))
    module = PACKAGE / f"{package}.py"
    return [module] if module.exists() else []


HTTP_MODULES = modules_of("http")


def test_http_package_exists() -> None:
    assert HTTP_MODULES, "src/forkhorn/http is missing"


@pytest.mark.parametrize("path", HTTP_MODULES, ids=lambda p: p.name)
def test_http_imports_only_pure_stdlib(path: Path) -> None:
    for name, line in imports_of(path):
        where = f"{path.relative_to(SRC)}:{line} imports {name}"
        if name == "__import__":
            pytest.fail(f"{where}: dynamic imports are not allowed in the sans-IO core")
        top = name.split(".")[0]
        assert top not in HTTP_FORBIDDEN, f"{where}: I/O, clocks and logging stay out of http"
        if name == "forkhorn.http" or name.startswith("forkhorn.http."):
            continue
        assert name in HTTP_STDLIB_ALLOWED or top in HTTP_STDLIB_ALLOWED, (
            f"{where}: not in the allow-list {sorted(HTTP_STDLIB_ALLOWED)}"
        )


def forkhorn_imports(package: str) -> list[tuple[Path, str, int]]:
    out = []
    for path in modules_of(package):
        for name, line in imports_of(path, runtime_only=True):
            if name.startswith("forkhorn.") or name == "forkhorn":
                out.append((path, name.removeprefix("forkhorn").lstrip("."), line))
    return out


@pytest.mark.parametrize("package", sorted(FORKHORN_ALLOWED))
def test_package_imports_point_one_way(package: str) -> None:
    if not modules_of(package):
        pytest.skip(f"forkhorn.{package} does not exist yet")
    allowed = FORKHORN_ALLOWED[package]
    for path, name, line in forkhorn_imports(package):
        if not name:
            continue  # "import forkhorn" / "from forkhorn import x": checked as forkhorn.x
        ok = any(name == a or name.startswith(a + ".") for a in allowed)
        # "from forkhorn.wsgi import loader" records both forkhorn.wsgi and
        # forkhorn.wsgi.loader; allow the parent when a submodule of it is allowed.
        ok = ok or any(a.startswith(name + ".") for a in allowed)
        assert ok, (
            f"{path.relative_to(SRC)}:{line}: forkhorn.{package} may not import "
            f"forkhorn.{name} (allowed: {sorted(allowed)})"
        )


def test_arbiter_never_imports_http() -> None:
    for path, name, line in forkhorn_imports("arbiter"):
        assert not (name == "http" or name.startswith("http.")), (
            f"{path.relative_to(SRC)}:{line}: the master never parses HTTP"
        )


def test_config_imports_only_errors_from_forkhorn() -> None:
    for path, name, line in forkhorn_imports("config"):
        assert name in ("", "errors") or name == "config" or name.startswith("config."), (
            f"{path.relative_to(SRC)}:{line}: config imports forkhorn.{name}"
        )


def test_checker_sees_relative_imports() -> None:
    """The walker itself: relative imports resolve to absolute names."""
    fake = PACKAGE / "http" / "connection.py"
    names = {name for name, _ in imports_of(fake)}
    assert any(name.startswith("forkhorn.http.") for name in names)
