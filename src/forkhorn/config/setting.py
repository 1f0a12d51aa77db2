"""The ``Setting`` descriptor: one declaration holds everything about one setting.

A setting is declared once, as a class attribute of its section's options class
(``config/options/<section>.py``)::

    workers = Setting(default=1, convert=positive_int, flags=("-w", "--workers"), ...)

From that single declaration the registry derives the typed ``Config`` attribute (the
descriptor's ``__get__`` returns ``T``, so ``cfg.workers`` is an ``int`` to mypy and
``cfg.wokers`` is an error), the argparse flag, the environment names, config-file
handling and the generated ``docs/settings.md``.

Rules kept here:
- ``convert`` takes a raw value (a string from the command line or environment, or any
  Python object from a config file) and returns the typed value or raises ``ValueError``
  whose text is the expectation ("expected a positive integer"); the caller adds the
  setting name, the offending value and its source.
- A ``Config`` is read-only: assigning to a setting attribute is a type error and raises.
- Nothing here reads the environment or any process state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Literal, NoReturn, TypeVar, overload

T = TypeVar("T")

# How the command-line flag takes its value:
#   store      FLAG VALUE          the last one wins
#   append     FLAG VALUE ...      repeatable, collected into a list
#   flag       FLAG                sets True
#   flag_false FLAG                sets False (gunicorn's --no-sendfile)
Action = Literal["store", "append", "flag", "flag_false"]


class Setting(Generic[T]):
    """One setting: its type (via ``convert``), default, flags, env names, section and doc."""

    __slots__ = (
        "action",
        "arity",
        "convert",
        "default",
        "default_doc",
        "doc",
        "env",
        "env_convert",
        "flags",
        "metavar",
        "name",
        "section",
    )

    def __init__(
        self,
        *,
        default: T,
        convert: Callable[[object], T],
        doc: str,
        flags: tuple[str, ...] = (),
        metavar: str | None = None,
        action: Action = "store",
        env: tuple[str, ...] = (),
        env_convert: Callable[[str], object] | None = None,
        default_doc: str | None = None,
        arity: int | None = None,
        key: str | None = None,
    ) -> None:
        self.default = default
        self.convert = convert
        self.doc = doc
        self.flags = flags
        self.metavar = metavar
        self.action: Action = action
        # Environment variables that replace the *default* (gunicorn's WEB_CONCURRENCY and
        # PORT): a config file or a flag still overrides them.
        self.env = env
        self.env_convert = env_convert
        self.default_doc = default_doc
        self.arity = arity  # hooks only: the number of positional arguments passed
        # The setting's name (config-file key, print-config, source()) when it cannot be the
        # attribute name: gunicorn's ``reload`` setting vs the ``Config.reload()`` method.
        self.name = key or ""  # otherwise filled by __set_name__
        self.section = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name
        self.section = str(owner.__dict__.get("SECTION", owner.__name__))

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Setting[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> Setting[T] | T:
        if obj is None:
            return self
        values: dict[str, Any] = obj._values  # type: ignore[attr-defined]
        value: T = values[self.name]
        return value

    def __set__(self, obj: object, value: NoReturn) -> NoReturn:
        raise AttributeError(f"Config is read-only; cannot set {self.name!r}")

    def __repr__(self) -> str:
        return f"Setting({self.name!r}, section={self.section!r})"
