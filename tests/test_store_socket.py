"""A running guest's xenstore, reached from the host through the Unix socket with Xen's own tools
(Debian's xenstore-utils) and with `miniguest store`."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading

import pytest

from miniguest import Domain

from guestlib import SELFTEST, ROOT

needs_tools = pytest.mark.skipif(shutil.which("xenstore-ls") is None,
                                 reason="xenstore-utils not installed (tools/install-test-deps.sh installs it)")


def xs(tool: str, sock: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = dict(os.environ, XENSTORED_PATH=sock)
    return subprocess.run([tool, *args], capture_output=True, timeout=timeout, env=env)


@pytest.fixture
def running_guest(tmp_path):
    """A guest that idles with nothing to wake it but the host: the socket keeps it serving."""
    sock = str(tmp_path / "xenstored.sock")
    dom = Domain.from_elf(SELFTEST, cmdline="hang", name="guestA", store_socket=sock)
    t = threading.Thread(target=dom.run, daemon=True)
    t.start()
    yield dom, sock
    dom.pause()
    t.join(timeout=20)
    assert not t.is_alive()
    dom.close()


@needs_tools
def test_xen_tools_against_a_running_guest(running_guest):
    dom, sock = running_guest
    d = dom.domid
    r = xs("xenstore-read", sock, f"/local/domain/{d}/name")
    assert r.returncode == 0 and r.stdout == b"guestA\n"
    r = xs("xenstore-ls", sock, f"/local/domain/{d}")
    out = r.stdout.decode()
    assert r.returncode == 0 and 'name = "guestA"' in out and "console =" in out and "ring-ref" in out
    assert xs("xenstore-write", sock, f"/local/domain/{d}/data/answer", "42").returncode == 0
    assert xs("xenstore-read", sock, f"/local/domain/{d}/data/answer").stdout == b"42\n"
    # xenstore-watch prints the path at once (a new watch fires), then for each change.
    env = dict(os.environ, XENSTORED_PATH=sock)
    w = subprocess.Popen(["xenstore-watch", "-n", "2", f"/local/domain/{d}/data"], stdout=subprocess.PIPE,
                         env=env)
    try:
        first = w.stdout.readline()
        assert first.strip() == f"/local/domain/{d}/data".encode()
        assert xs("xenstore-write", sock, f"/local/domain/{d}/data/x", "1").returncode == 0
        assert w.stdout.readline().strip() == f"/local/domain/{d}/data/x".encode()
        w.wait(timeout=20)
    finally:
        w.kill()
    assert dom.state == "running"          # the guest idled throughout, serving the socket


@pytest.mark.slow
@needs_tools
def test_miniguest_store_client(running_guest):
    dom, sock = running_guest
    run = lambda *a: subprocess.run(["python3", "-m", "miniguest.cli", "store", "--socket", sock, *a],  # noqa
                                    capture_output=True, timeout=30, cwd=ROOT)
    assert run("write", f"/local/domain/{dom.domid}/data/k", "v").returncode == 0
    r = run("read", f"/local/domain/{dom.domid}/data/k")
    assert r.returncode == 0 and r.stdout.strip() == b"v"
    r = run("ls", f"/local/domain/{dom.domid}")
    assert b"name" in r.stdout
