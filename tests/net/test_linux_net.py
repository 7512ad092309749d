"""Debian's Linux, unmodified, with its own xen-netfront (the module from the kernel package, loaded from the
initramfs) on `--net user`: an address from passt by DHCP, a name resolved through passt's DNS forwarding,
a page fetched with wget from an HTTP server on the host's 127.0.0.1 through the gateway address, 300 KB
down and 229 KB up (TCP with scatter-gather, checksum offload and GSO on netfront's side).

Everything runs inside a private network namespace (tests/netns.py): passt, the guest's HTTP and DNS
servers (tests/net/httpserver.py, dnsserver.py on the namespace's 127.0.0.1), and `miniguest boot` itself.
Linux boots in about a minute: one boot does it all."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
from httpserver import big

from miniguest.toolstack.initramfs import KernelModules, build, busybox_binary

from debian import linux_packages
from netns import GATEWAY, GUEST_ADDRESS, NetNs

pytestmark = pytest.mark.slow
MINIGUEST = [sys.executable, "-m", "miniguest.cli.main"]
HERE = os.path.dirname(os.path.abspath(__file__))
UPLOAD = "".join(f"{i}\n" for i in range(1, 40001)).encode()      # what `seq 1 40000` writes

SCRIPT = b"""#!/bin/sh
ip link set lo up
ip link set eth0 up
cat > /tmp/udhcpc.sh <<'EOS'
#!/bin/sh
case "$1" in
bound|renew)
  ip addr add "$ip/$mask" dev "$interface"
  ip route add default via "$router" dev "$interface"
  echo "nameserver $dns" > /etc/resolv.conf
  echo "net test: lease $ip/$mask router $router dns $dns";;
esac
EOS
chmod +x /tmp/udhcpc.sh
udhcpc -i eth0 -s /tmp/udhcpc.sh -q -f -n -t 5 -T 3
nslookup host.miniguest.test
wget -q -O - http://host.miniguest.test:8080/hello.txt
wget -q -O /tmp/big http://10.0.2.2:8080/big && sha256sum /tmp/big
seq 1 40000 > /tmp/up.txt
wget -q -O - --post-file /tmp/up.txt http://10.0.2.2:8080/upload
echo "net test: done"
poweroff -f
"""


@pytest.fixture(scope="module")
def netns():
    why = NetNs.unavailable()
    if why:
        pytest.skip(why)
    if shutil.which("passt") is None:
        pytest.skip("passt is not installed (Debian package `passt`; tools/install-test-deps.sh installs it)")
    with NetNs() as ns:
        if not ns.dns:
            pytest.skip("the namespace cannot have its own /etc/resolv.conf (no mount namespace)")
        yield ns


def test_linux_netfront_dhcp_dns_and_http_through_passt(netns, tmp_path):
    packages = linux_packages()
    modules = KernelModules.find(packages.root, packages.release)
    initrd, loads = build(busybox_binary(packages.busybox_root), modules, ["xen-netfront"], script=SCRIPT)
    assert loads == ["xen_netfront"]
    (tmp_path / "initrd.cpio").write_bytes(initrd)
    http = netns.popen([sys.executable, f"{HERE}/httpserver.py", "8080"], stdout=subprocess.PIPE,
                       text=True)
    dns = netns.popen([sys.executable, f"{HERE}/dnsserver.py", f"host.miniguest.test={GATEWAY}"],
                      stdout=subprocess.PIPE, text=True)
    netns.wait_for_port(8080)
    pcap = tmp_path / "vif.pcap"
    r = netns.run(MINIGUEST + ["boot", packages.vmlinuz, "--ramdisk", str(tmp_path / "initrd.cpio"),
                               "-c", "console=hvc0", "--net", "user", "--net-pcap", str(pcap)],
                  capture_output=True, text=True, timeout=1200)
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr
    assert "xen_netfront: Initialising Xen virtual ethernet driver" in out
    assert f"net test: lease {GUEST_ADDRESS}/24 router {GATEWAY} dns {GATEWAY}" in out
    assert f"Name:\thost.miniguest.test\nAddress: {GATEWAY}" in out.replace("\r", "")
    assert "hello from the host" in out
    assert f"{hashlib.sha256(big()).hexdigest()}  /tmp/big" in out
    assert f"received {len(UPLOAD)} bytes sha256 {hashlib.sha256(UPLOAD).hexdigest()}" in out
    assert "net test: done" in out
    for bad in ("Oops", "BUG:", "WARNING:", "Call Trace", "xen_netfront: ", "disabling the device"):
        if bad == "xen_netfront: ":
            assert out.count(bad) == 1, out          # only the "Initialising" line: no errors from netfront
        else:
            assert bad not in out + r.stderr, bad
    assert pcap.stat().st_size > len(big()) + len(UPLOAD)     # every frame, both ways
    for p in (http, dns):
        p.terminate()
    assert "POST /upload" in http.communicate(timeout=10)[0]
    assert "query host.miniguest.test type 1 -> answer" in dns.communicate(timeout=10)[0]
