"""A private network namespace for a test that starts passt or any network path: nothing it does can reach
beyond this machine.

The namespace is made with `unshare -rnm` (a user namespace too, so no root is needed; a mount namespace for
its own /etc/resolv.conf) and holds: loopback up, `nameserver 127.0.0.1` in /etc/resolv.conf (passt then
offers the guest the gateway as its DNS server and forwards its queries to a server the test runs on the
namespace's 127.0.0.1:53), and a veth pair going nowhere -- `mg0` with 10.0.2.15/24 and the default route via 10.0.2.2, its peer `mg1`
up without an address -- which passt takes as its template interface. passt gives the guest mg0's address by
DHCP (10.0.2.15) and the gateway 10.0.2.2, and maps the gateway to the namespace's 127.0.0.1: a server the
test runs on 127.0.0.1 inside the namespace is what the guest reaches at 10.0.2.2. Anything else the guest
sends leaves through mg0 into mg1 and is dropped there. The namespace lives as long as a holder process
(which also exits when the test process dies: its stdin is our pipe); every program of the test runs in it
through `nsenter`.

    with NetNs() as ns:
        server = ns.popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", "8080"])
        ns.run([miniguest, "boot", ..., "--net", "user"])

`NetNs.unavailable()` says why this machine cannot make one (tests skip with that reason).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Optional

GATEWAY = "10.0.2.2"
GUEST_ADDRESS = "10.0.2.15"
PREFIX = 24
IFACE, PEER = "mg0", "mg1"

_HOLDER = f"""
import os, subprocess, sys, tempfile
def ip(*a):
    subprocess.run(["ip", *a], check=True)
# The namespace's own resolver configuration: the host's name server on the namespace's 127.0.0.1, which
# passt offers the guest as the gateway address. Needs the mount namespace; without it the host's file stays.
fd, conf = tempfile.mkstemp(prefix="miniguest-resolv-")
os.write(fd, b"nameserver 127.0.0.1\\n")
os.close(fd)
dns = subprocess.run(["mount", "--bind", conf, "/etc/resolv.conf"], capture_output=True).returncode == 0
os.unlink(conf)
ip("link", "set", "lo", "up")
ip("link", "add", "{IFACE}", "type", "veth", "peer", "name", "{PEER}")
ip("addr", "add", "{GUEST_ADDRESS}/{PREFIX}", "dev", "{IFACE}")
ip("link", "set", "{IFACE}", "up")
ip("link", "set", "{PEER}", "up")
ip("route", "add", "default", "via", "{GATEWAY}", "dev", "{IFACE}")
sys.stdout.write("ready dns\\n" if dns else "ready\\n")
sys.stdout.flush()
sys.stdin.read()
"""

_unavailable: Optional[str] = None
_checked = False


class NetNs:
    def __init__(self) -> None:
        self.holder: Optional[subprocess.Popen] = None
        self.children: list[subprocess.Popen] = []
        self.dns = False            # /etc/resolv.conf in the namespace says: nameserver 127.0.0.1

    @staticmethod
    def unavailable() -> Optional[str]:
        """None if a namespace can be made here, else why not (checked once per test session)."""
        global _unavailable, _checked
        if _checked:
            return _unavailable
        _checked = True
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                _unavailable = f"`{tool}` is not installed (util-linux / iproute2)"
                return _unavailable
        try:
            with NetNs() as ns:
                out = ns.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True, timeout=10)
                if GATEWAY not in out.stdout:
                    _unavailable = f"the namespace has no default route via {GATEWAY}: {out.stdout!r}"
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _unavailable = f"cannot make a private network namespace (unshare -rn): {e}"
        return _unavailable

    def start(self) -> "NetNs":
        self.holder = subprocess.Popen(["unshare", "-rnm", "--", sys.executable, "-c", _HOLDER],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.holder.stdout.readline() if self.holder.stdout else b""
        self.dns = line.strip() == b"ready dns"
        if not line.startswith(b"ready"):
            err = self.holder.stderr.read().decode(errors="replace").strip() if self.holder.stderr else ""
            self.close()
            raise RuntimeError(err.splitlines()[-1] if err else "the namespace holder did not start")
        return self

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def argv(self, argv: list[str], cwd: Optional[str] = None) -> list[str]:
        """`argv` as run inside the namespace (same user, same files and directory, only the network and
        /etc/resolv.conf differ)."""
        return ["nsenter", "--preserve-credentials", "-U", "-n", "-m", f"--wd={os.path.abspath(cwd or '.')}",
                "-t", str(self.pid), "--", *argv]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(argv, kwargs.get("cwd")), **kwargs)
        self.children.append(proc)
        return proc

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv, kwargs.get("cwd")), **kwargs)

    def wait_for_port(self, port: int, timeout: float = 10.0) -> None:
        """Until something listens on the namespace's 127.0.0.1:port (TCP)."""
        probe = ("import socket,sys\ns=socket.socket()\ns.settimeout(0.5)\n"
                 f"sys.exit(s.connect_ex(('127.0.0.1',{port})))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run([sys.executable, "-c", probe], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on 127.0.0.1:{port} in the namespace")

    def close(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.children.clear()
        holder, self.holder = self.holder, None
        if holder is not None:
            for f in (holder.stdin, holder.stdout, holder.stderr):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass
            try:
                holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()

    def __enter__(self) -> "NetNs":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def free_port_hint() -> int:
    """A port number for a server inside a fresh namespace (nothing else listens there)."""
    return 8000 + os.getpid() % 1000
