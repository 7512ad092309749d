"""Fixtures of the network tests: a Python-driven guest whose vif 0 is on a socket the test holds."""
from __future__ import annotations

import pytest

from netlib import NetGuest


@pytest.fixture
def net(tmp_path):
    guest = NetGuest(str(tmp_path))
    yield guest
    guest.close()
