"""Fixtures of the integration tests; the harness itself is in ``server.py``.

``server_factory(app, *args, **options)`` starts a master (``ServerProcess.start``: the port
from the ``Listening at`` line, readiness by handshake) and stops every server it started at
teardown (TERM, then KILL; no worker may outlive its master). ``todo_db`` gives the Flask
example its own database file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .server import ROOT, WORKER_CLASSES, ServerProcess, require_worker_class

ServerFactory = Callable[..., ServerProcess]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[ServerProcess] = []

    def factory(
        app: str,
        *args: str,
        start: bool = True,
        wait_ready: bool = True,
        **options: Any,
    ) -> ServerProcess:
        options.setdefault("log_dir", tmp_path)
        options.setdefault("cwd", ROOT)
        server = ServerProcess(app, args, **options)
        started.append(server)
        if start:
            server.start(wait_ready=wait_ready)
        return server

    yield factory
    problems = []
    for server in started:
        try:
            server.stop()
        except AssertionError as exc:
            problems.append(str(exc))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def todo_db(tmp_path: Path) -> dict[str, str]:
    """The environment that gives examples.todo a fresh database of its own."""
    return {"TODO_DB": str(tmp_path / "todo.db")}


@pytest.fixture(params=WORKER_CLASSES)
def worker_class(request: pytest.FixtureRequest) -> str:
    """Each worker class in turn; one whose module is missing fails, never skips. A test
    module with its own list (test_faults.py) overrides this fixture."""
    name: str = request.param
    require_worker_class(name)
    return name
