"""The head parser has two equivalent paths (one fullmatch + findall for short field blocks,
one split for long ones, chosen by ``head._LONG_BLOCK``). Every corpus case must give the
same result through each: here the whole corpus runs again with the split path forced."""

from __future__ import annotations

import pytest
from corpus_cases import Case, load_cases, run_case
from test_corpus import check

from forkhorn.http import head


@pytest.fixture
def split_path_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(head, "_LONG_BLOCK", -1)


@pytest.mark.parametrize("case", load_cases(), ids=lambda case: case.name)
def test_corpus_through_the_split_path(case: Case, split_path_always: None) -> None:
    check(case, run_case(case, [case.raw]), "whole, split path")
