"""An app module whose own import fails: ``broken_import:app``."""

raise RuntimeError("broken_import fails at import on purpose")

app = None  # never reached
