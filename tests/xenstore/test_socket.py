"""The dom0 Unix socket, driven by Xen's real command-line tools (Debian's xenstore-utils, which find the
socket through XENSTORED_PATH) and by our own `miniguest store` client."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest
from xs_testlib import ROOT

from miniguest.abi import xs_wire as W
from miniguest.backends.xenstore.perms import Perm

HDR = struct.Struct("<IIII")
TOOLS = ["xenstore-ls", "xenstore-read", "xenstore-write", "xenstore-rm", "xenstore-watch", "xenstore-chmod"]
needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in TOOLS),
    reason="Xen's xenstore tools are not installed (install the Debian package xenstore-utils)")


def tool(path: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, XENSTORED_PATH=path)
    proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr}")
    return proc


def ours(path: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return tool(path, sys.executable, "-m", "miniguest.backends.xenstore.client", "--socket", path, *argv,
                check=check)


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)   # `python -m miniguest...` from the work tree


@needs_tools
def test_xenstore_write_read_ls_rm(served):
    d, path, lt = served
    tool(path, "xenstore-write", "/tools/a", "hello", "/tools/b/c", "world")
    assert lt.run(lambda: d.dom0.read("/tools/a")) == b"hello"
    assert tool(path, "xenstore-read", "/tools/a").stdout == "hello\n"
    assert tool(path, "xenstore-ls", "/tools").stdout == 'a = "hello"\nb = ""\n c = "world"\n'
    tool(path, "xenstore-rm", "/tools/b")
    assert lt.run(lambda: d.dom0.ls("/tools")) == ["a"]
    missing = tool(path, "xenstore-read", "/tools/nope", check=False)
    assert missing.returncode != 0


@needs_tools
def test_xenstore_chmod_and_ls_perms(served):
    d, path, lt = served
    tool(path, "xenstore-write", "/perm/x", "1")
    tool(path, "xenstore-chmod", "/perm/x", "n0", "r5")
    assert lt.run(lambda: d.dom0.get_perms("/perm/x")) == [Perm("n", 0), Perm("r", 5)]
    out = tool(path, "xenstore-ls", "-p", "/perm").stdout
    assert "(n0,r5)" in out
    bad = tool(path, "xenstore-chmod", "/perm/x", "q7", check=False)
    assert bad.returncode != 0


@needs_tools
def test_xenstore_ls_large_directory_uses_directory_part(served):
    d, path, lt = served
    names = [f"node-with-a-long-name-{i:04d}" for i in range(300)]   # ~8 KiB of names: DIRECTORY is E2BIG

    def fill():
        for n in names:
            d.dom0.write(f"/many/{n}", "v")
    lt.run(fill)
    out = tool(path, "xenstore-ls", "/many").stdout.splitlines()
    assert out == [f'{n} = "v"' for n in names]


@needs_tools
def test_xenstore_watch_sees_changes(served):
    d, path, lt = served
    env = dict(os.environ, XENSTORED_PATH=path)
    proc = subprocess.Popen(["xenstore-watch", "-n", "3", "/watched"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # wait until the watch is registered
            if lt.run(lambda: any(w.path == "/watched" for c in d.connections for w in c.watches)):
                break
            time.sleep(0.02)
        lt.run(lambda: d.dom0.write("/watched/a", "1"))
        lt.run(lambda: d.dom0.write("/elsewhere", "1"))
        lt.run(lambda: d.dom0.write("/watched/b/c", "1"))
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert out.split() == ["/watched", "/watched/a", "/watched/b/c"]


def test_our_client(served):
    d, path, lt = served
    ours(path, "write", "/cli/x", "1", "/cli/y/z", "2")
    assert lt.run(lambda: d.dom0.read("/cli/y/z")) == b"2"
    assert ours(path, "read", "/cli/x").stdout == "1\n"
    assert ours(path, "ls", "/cli").stdout == 'x = "1"\ny = ""\n z = "2"\n'
    ours(path, "rm", "/cli/y")
    assert lt.run(lambda: d.dom0.ls("/cli")) == ["x"]
    r = ours(path, "read", "/cli/missing", check=False)
    assert r.returncode == 1 and "ENOENT" in r.stderr


def test_our_client_watch(served):
    d, path, lt = served
    env = dict(os.environ, XENSTORED_PATH=path)
    proc = subprocess.Popen([sys.executable, "-m", "miniguest.backends.xenstore.client", "watch", "/cw",
                             "--count", "2"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if lt.run(lambda: any(w.path == "/cw" for c in d.connections for w in c.watches)):
                break
            time.sleep(0.02)
        lt.run(lambda: d.dom0.write("/cw/n", "1"))
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert out.split() == ["/cw", "/cw/n"]


def test_oversized_payload_drops_only_that_socket(served):
    d, path, lt = served
    good = socket.socket(socket.AF_UNIX)
    bad = socket.socket(socket.AF_UNIX)
    for s in (good, bad):
        s.settimeout(5)
        s.connect(path)
    bad.sendall(HDR.pack(W.XS_WRITE, 1, 0, W.XENSTORE_PAYLOAD_MAX + 1) + b"x" * 100)
    assert bad.recv(100) == b""        # the daemon closed it
    good.sendall(HDR.pack(W.XS_GET_DOMAIN_PATH, 3, 0, 2) + b"4\0")
    t, r, x, n = HDR.unpack(good.recv(16))
    assert (t, r, good.recv(n)) == (W.XS_GET_DOMAIN_PATH, 3, b"/local/domain/4\0")
    good.close()
    bad.close()


def test_socket_clients_are_privileged_and_see_errors(served):
    d, path, lt = served
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(HDR.pack(W.XS_IS_DOMAIN_INTRODUCED, 1, 0, 2) + b"0\0")
    t, r, x, n = HDR.unpack(s.recv(16))
    assert (t, s.recv(n)) == (W.XS_IS_DOMAIN_INTRODUCED, b"T\0")
    s.sendall(HDR.pack(W.XS_READ, 2, 0, 6) + b"/none\0")
    t, r, x, n = HDR.unpack(s.recv(16))
    assert (t, r, s.recv(n)) == (W.XS_ERROR, 2, b"ENOENT\0")
    s.close()
    # a closed client's watches disappear
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and lt.run(lambda: len(d.connections)) > 1:
        time.sleep(0.02)
    assert lt.run(lambda: len(d.connections)) == 1


def test_socket_is_for_its_owner_only(served):
    """Every socket client is dom0: the file mode is the boundary (C xenstored chmods its socket 0600)."""
    d, path, lt = served
    assert os.stat(path).st_mode & 0o777 == 0o600
