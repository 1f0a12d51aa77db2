"""The error log and the access log.

``Logger(cfg)`` (``logger.py``) is the one object the arbiter and the workers log through:
gunicorn's error-log format and settings, the access log, ``reopen_files()`` for SIGUSR1.
``access.py`` compiles an access-log format into the atoms it needs; it is pure (no clock,
no config, no I/O) and can be tested with plain values.

Imports: ``forkhorn.errors`` and the standard library only.
"""

from forkhorn.logs.access import DEFAULT_ACCESS_LOG_FORMAT, AccessFormat
from forkhorn.logs.logger import Logger, LogSettings, check_logging_config

__all__ = [
    "DEFAULT_ACCESS_LOG_FORMAT",
    "AccessFormat",
    "LogSettings",
    "Logger",
    "check_logging_config",
]
