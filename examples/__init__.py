"""Example WSGI apps bundled with forkhorn: ``examples.hello:app`` and ``examples.todo:app``."""
