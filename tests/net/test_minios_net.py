"""Our minios sample's netfront (firmware/minios/netfront.c, nettest.c) against netback, as a user runs it:
`miniguest boot minios -c net=echo --net ...`, checked by its console and exit status.

Over `--net socket:` the gateway is played in Python by the test; over `--net user` it is passt, inside a
private network namespace (tests/netns.py), with a UDP echo server on the namespace's 127.0.0.1 that the
guest reaches at passt's gateway address."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from netlib import Gateway

from netns import GATEWAY, GUEST_ADDRESS, NetNs

MINIGUEST = [sys.executable, "-m", "miniguest.cli.main"]
ECHO_CHECKS = ["net: ARP for the gateway ok", "net: UDP echo, one slot (59-byte frame) ok",
               "net: UDP echo, a full frame across a page boundary (1514-byte frame) ok",
               "net: UDP echo, checksum offloaded to the backend (375-byte frame) ok",
               "net: UDP echo, 6000 bytes over several slots each way (6042-byte frame) ok"]


def boot(args: list[str], runner=subprocess.run, timeout: float = 120) -> subprocess.CompletedProcess:
    return runner(MINIGUEST + ["boot", "minios"] + args, capture_output=True, text=True, timeout=timeout)


def test_minios_netfront_over_a_socket_to_a_gateway_played_in_python(tmp_path):
    gw = Gateway(str(tmp_path / "seg.sock"))
    try:
        r = boot(["-c", f"net=echo ip={GUEST_ADDRESS} gw={GATEWAY}", "--net", f"socket:{gw.wire.path}",
                  "--net-pcap", str(tmp_path / "vif.pcap")])
    finally:
        gw.close()
    out = r.stdout
    assert r.returncode == 0, r.stderr
    assert "netfront: backend at /local/domain/0/backend/vif/1/0 connected" in out
    assert "scatter-gather on" in out
    for line in ECHO_CHECKS:
        assert line in out
    assert "netfront test passed: 5/5 checks ok" in out
    assert "netfront: device/vif/0 closed" in out
    assert gw.checksums == [True] * 5            # every datagram (and the final "bye") arrived with a valid
                                                 # checksum, the offloaded ones too
    assert (tmp_path / "vif.pcap").stat().st_size > 24 + 4 * (16 + 59)


def test_minios_gets_an_address_from_passt_and_echoes_through_the_host(tmp_path):
    why = NetNs.unavailable()
    if why:
        pytest.skip(why)
    if shutil.which("passt") is None:
        pytest.skip("passt is not installed (Debian package `passt`; tools/install-test-deps.sh installs it)")
    echo = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('127.0.0.1',7777))\n"
            "while True:\n d,a=s.recvfrom(65536)\n s.sendto(d,a)\n")
    with NetNs() as ns:
        ns.popen([sys.executable, "-c", echo])
        r = boot(["-c", "net=echo", "--net", "user"], runner=lambda argv, **kw: ns.run(argv, **kw))
    out = r.stdout
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert f"net: DHCP: address {GUEST_ADDRESS}/24 gateway {GATEWAY}" in out
    for line in ECHO_CHECKS:
        assert line in out
    assert "netfront test passed: 6/6 checks ok" in out


def test_two_minios_guests_on_one_segment(tmp_path):
    """One guest is the gateway (`net=responder`, listening on the socket), the other runs the echo test
    against it (connecting), as two `miniguest boot` processes."""
    path = str(tmp_path / "segment.sock")
    gw = subprocess.Popen(MINIGUEST + ["boot", "minios", "--name", "gw", "-c", f"net=responder ip={GATEWAY}",
                                       "--net", f"socket:{path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and gw.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        r = boot(["-c", f"net=echo ip={GUEST_ADDRESS} gw={GATEWAY}", "--net", f"socket:{path}"])
        out, err = gw.communicate(timeout=60)
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    assert r.returncode == 0 and gw.returncode == 0, r.stdout[-2000:] + err
    assert "netfront test passed: 5/5 checks ok" in r.stdout
    assert f"net: responder at {GATEWAY}" in out and "net: responder echoed 4 datagrams" in out
    assert not os.path.exists(path)                  # the listening side removed its socket


def test_boot_refuses_a_vif_whose_host_side_cannot_start(tmp_path):
    r = boot(["--net", f"socket:{tmp_path}/no/such/dir/sock"])
    assert r.returncode == 1
    assert "cannot listen" in r.stderr and "Traceback" not in r.stderr
