"""``python -m forkhorn``: the same as the ``forkhorn`` command."""

from forkhorn.cli import main

raise SystemExit(main())
