"""An app module that imports a dependency that is not installed: ``broken_dependency:app``.

Must be reported as an error inside the app's import, not as "module not found".
"""

import forkhorn_test_missing_dependency  # noqa: F401


def app(environ, start_response):  # pragma: no cover
    raise AssertionError("unreachable")
