"""forkhorn: a pre-fork HTTP/1.1 WSGI server with gunicorn's interface.

The package is laid out by role (see docs/design/architecture.md): ``http`` is the
sans-IO protocol core, ``wsgi`` the request cycle, ``workers`` and ``arbiter`` the
processes, ``config`` the settings registry and ``logs`` the error and access logs.
"""

__version__ = "0.1.0"
