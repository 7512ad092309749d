"""Fixtures for the xenstore daemon tests: a daemon, a guest on a real 4096-byte ring page, and a daemon
served on a Unix socket by a HostLoop polled from a background thread."""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator

import pytest
from xs_testlib import LoopThread, make_guest

from miniguest.backends.xenstore.daemon import XenstoreDaemon
from miniguest.backends.xenstore.guestring import GuestRing


@pytest.fixture
def daemon() -> Iterator[XenstoreDaemon]:
    d = XenstoreDaemon()
    yield d
    d.close()


@pytest.fixture
def guest(daemon: XenstoreDaemon) -> GuestRing:
    return make_guest(daemon, 5)


@pytest.fixture
def served() -> Iterator[tuple[XenstoreDaemon, str, LoopThread]]:
    """(daemon, socket path, loop thread) with the daemon listening; use lt.run() to touch the daemon."""
    tmp = tempfile.mkdtemp(prefix="xs")
    path = os.path.join(tmp, "socket")
    d = XenstoreDaemon()
    lt = LoopThread()
    lt.run(lambda: d.listen_unix(path, lt.loop))
    yield d, path, lt
    lt.run(d.close)
    lt.stop()
    lt.loop.close()
    shutil.rmtree(tmp, ignore_errors=True)
