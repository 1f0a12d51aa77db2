"""Worker class lookup by -k name or dotted path."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkhorn.config import load_config
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


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("uvicorn.workers.UvicornWorker", "uvicorn's worker for ASGI apps"),
        ("uvicorn.workers.UvicornH11Worker", "uvicorn's worker for ASGI apps"),
        ("uvicorn_worker.UvicornWorker", "uvicorn's worker for ASGI apps"),
        ("meinheld.gmeinheld.MeinheldWorker", "-k fast replaces it"),
        ("egg:meinheld#gunicorn_worker", "-k fast replaces it"),  # meinheld's docs' form
        ("asgi", "names an ASGI worker"),  # gunicorn 27's own
        ("egg:gunicorn#asgi", "names an ASGI worker"),
        ("gunicorn.workers.gtornado.TornadoWorker", "gunicorn's classes that forkhorn"),
    ],
)
def test_other_projects_worker_classes_get_advice(name: str, says: str) -> None:
    """Named in many gunicorn configs: the answer says what to do, not that gunicorn (which
    uvicorn's worker imports) is missing, whether or not those packages are installed."""
    with pytest.raises(ConfigError, match=says) as caught:
        load_worker_class(name)
    assert "sync, gthread, gevent, eventlet, fast" in str(caught.value)


def test_gunicorns_own_names_for_forkhorns_classes_still_work() -> None:
    assert load_worker_class("gunicorn.workers.sync.SyncWorker").__name__ == "SyncWorker"


def test_another_projects_entry_point_is_answered_with_the_form_to_use() -> None:
    with pytest.raises(ConfigError, match=r"reads no entry points but gunicorn's"):
        load_worker_class("egg:someproject#worker")
    assert load_config(["-k", "egg:someproject#worker"], {}).worker_class == (
        "egg:someproject#worker"
    )


def test_a_worker_module_whose_own_import_fails_is_named_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "cannot import badw" (which reads as if badw were missing): the module was
    found, and an import inside it failed, at this line."""
    (tmp_path / "forkhorn_test_badw.py").write_text(
        "import os\nimport nosuch_module_xyz\nfrom forkhorn.workers.sync import SyncWorker\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        load_worker_class("forkhorn_test_badw:SyncWorker")
    line = str(caught.value)
    assert line.startswith(
        "worker_class 'forkhorn_test_badw:SyncWorker': importing forkhorn_test_badw raised "
        "ModuleNotFoundError: No module named 'nosuch_module_xyz' ("
    )
    assert line.endswith("forkhorn_test_badw.py, line 2)")
    with pytest.raises(ConfigError, match=r"cannot import forkhorn_test_nosuch_pkg.sub: No module"):
        load_worker_class("forkhorn_test_nosuch_pkg.sub:Worker")
