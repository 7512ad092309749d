"""Fixtures for the debugger tests (see debuglib.py)."""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from debuglib import StubThread  # noqa: E402


@pytest.fixture
def stub_for() -> Iterator[Callable[..., StubThread]]:
    """stub_for(image, **domain options) -> a started StubThread, ended after the test."""
    made: list[StubThread] = []

    def make(image: str, **options) -> StubThread:
        s = StubThread(image, **options)
        made.append(s)
        return s.start()
    yield make
    for s in made:
        s.stop()
