"""docs/settings.md is generated from the registry; this fails when it is stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from forkhorn.config import SETTINGS
from forkhorn.config.docs import render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "settings.md"


def test_settings_doc_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/settings.md is stale: run `python -m forkhorn.config.docs > docs/settings.md`"
    )


def test_every_setting_is_documented() -> None:
    text = render()
    for name in SETTINGS:
        assert f"### `{name}`" in text


def test_docs_module_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forkhorn.config.docs"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert result.stdout == render()
