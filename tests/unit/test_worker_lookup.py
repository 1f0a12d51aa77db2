"""Worker class lookup by -k name or dotted path."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator

import pytest

from forkhorn.errors import ConfigError
from forkhorn.workers import effective_worker_class, load_worker_class
from forkhorn.workers.base import Worker


class CustomWorker(Worker):
    def run(self) -> None:
        return None


class NotAWorker:
    pass


@pytest.fixture
def fake_module() -> Iterator[str]:
    mod = types.ModuleType("forkhorn_test_workers")
    mod.CustomWorker = CustomWorker  # type: ignore[attr-defined]
    mod.NotAWorker = NotAWorker  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    yield mod.__name__
    del sys.modules[mod.__name__]


def test_sync_is_found() -> None:
    cls = load_worker_class("sync")
    assert cls.__name__ == "SyncWorker" and issubclass(cls, Worker)


@pytest.mark.parametrize("sep", [":", "."])
def test_dotted_paths(fake_module: str, sep: str) -> None:
    assert load_worker_class(f"{fake_module}{sep}CustomWorker") is CustomWorker


def test_not_a_worker_subclass(fake_module: str) -> None:
    with pytest.raises(ConfigError, match="not a subclass"):
        load_worker_class(f"{fake_module}:NotAWorker")


def test_missing_attribute_and_module(fake_module: str) -> None:
    with pytest.raises(ConfigError, match="no attribute"):
        load_worker_class(f"{fake_module}:Nope")
    with pytest.raises(ConfigError, match="cannot import"):
        load_worker_class("no_such_pkg_xyz.mod:Worker")
    with pytest.raises(ConfigError, match="expected one of"):
        load_worker_class("bogus")


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("forkhorn_test_needs_gevent")

    def fail_import(name: str) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'gevent'", name="gevent")

    monkeypatch.setattr("importlib.import_module", fail_import)
    with pytest.raises(ConfigError, match=r"pip install 'forkhorn\[gevent\]'"):
        load_worker_class(f"{mod.__name__}:GeventWorker")


def test_threads_switch_sync_to_gthread() -> None:
    assert effective_worker_class("sync", 4) == "gthread"
    assert effective_worker_class("sync", 1) == "sync"
    assert effective_worker_class("gevent", 4) == "gevent"
