"""The settings registry: every setting declared once, resolved into a typed ``Config``.

Public API::

    load_config(argv: list[str], environ: Mapping[str, str]) -> Config
    Config: one read-only attribute per setting (gunicorn's names), plus
        source(name) -> str, reload() -> Config, print_config_text() -> str, as_dict()
    Setting: the declaration (see ``setting.py``); SETTINGS: name -> Setting

Layout: ``options/`` declares the settings (one module per section), ``registry.py``
builds ``Config`` and holds the cross-field ``validate()``, ``sources.py`` reads defaults,
config file, environment and argv, ``docs.py`` generates ``docs/settings.md``.
This package imports nothing else from forkhorn but ``forkhorn.errors``.
"""

from forkhorn.config.converters import BindAddress, parse_bind
from forkhorn.config.registry import SETTINGS, Config, validate
from forkhorn.config.setting import Setting
from forkhorn.config.sources import (
    CMD_ARGS_ENV,
    CommandLineRequest,
    help_text,
    load_config,
    peek_command_line,
)

__all__ = [
    "CMD_ARGS_ENV",
    "SETTINGS",
    "BindAddress",
    "CommandLineRequest",
    "Config",
    "Setting",
    "help_text",
    "load_config",
    "parse_bind",
    "peek_command_line",
    "validate",
]
