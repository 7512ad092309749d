"""Debian's stock Linux cloud kernel, unmodified, as a PV guest: to a busybox shell on hvc0, a scripted session,
poweroff and reboot, deterministic, and under gdb with the -dbg package's symbols.

The packages are fetched in the set-up as a user fetches them (tests/debian.py: `apt-get download` into
$MINIGUEST_CACHE or ~/.cache/miniguest): the newest linux-image-6.1.0-NN-cloud-amd64 apt knows and
busybox-static. Linux is booted as few times as possible: once for the shell the session runs in, once more to
compare (determinism), once from the command line (reboot). The gdb test needs the kernel's -dbg package
(280 MB): it runs when that is in the cache or MINIGUEST_LINUX_DBG=1 allows the download, else it skips.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from miniguest import Domain
from miniguest.debug.tracer import Tracer
from miniguest.toolstack.initramfs import KernelModules, build, busybox_binary

from debian import kernel_package, linux_packages
from miniguest.toolstack import debian as debpkg
from guestlib import ROOT

pytestmark = pytest.mark.slow
PROMPT = b"/ # "
CMDLINE = "console=hvc0"
needs_ptwr = pytest.mark.skipif(
    importlib.util.find_spec("miniguest.hypervisor.pv.ro_page_fault") is None,
    reason="Linux needs writable page tables (issue 11 item 5, hypervisor/pv/ro_page_fault.py): not there yet")


@pytest.fixture(scope="module")
def packages():
    return linux_packages()


@pytest.fixture(scope="module")
def initrd(packages, tmp_path_factory):
    modules = KernelModules.find(packages.root, packages.release)
    data, loads = build(busybox_binary(packages.busybox_root), modules, ["xen-blkfront", "xen-netfront"])
    assert loads == ["xen_blkfront", "xen_netfront"]
    path = tmp_path_factory.mktemp("linux") / "initrd.cpio"
    path.write_bytes(data)
    return str(path)


def boot_to_prompt(packages, initrd):
    """A Linux domain run until its shell prompt, with a trace of everything it did."""
    out = bytearray()
    dom = Domain.from_elf(packages.vmlinuz, module=initrd, cmdline=CMDLINE, console_output=out.extend,
                          max_instructions=20_000_000_000)
    tracer = Tracer(dom).attach()
    state = dom.run(until=lambda d: PROMPT in out)
    assert state == "paused", bytes(out[-3000:]).decode("latin-1")
    return dom, tracer, out


@pytest.fixture(scope="module")
def shell(packages, initrd):
    dom, tracer, out = boot_to_prompt(packages, initrd)
    at_prompt = (bytes(out), [(r.data, r.time) for r in tracer.records])
    yield dom, out, at_prompt
    dom.close()


def session(dom, out: bytearray, command: str) -> str:
    """Type a command on the console and return what the shell printed before its next prompt."""
    start = len(out)
    dom.console_backend.feed(command.encode() + b"\n")
    dom.run(until=lambda d: PROMPT in out[start:] or d.finished)
    text = bytes(out[start:]).decode("latin-1").replace("\r", "")
    lines = [line for line in text.split("\n")[1:] if not line.startswith("/ # ")]
    return "\n".join(lines).strip()


@needs_ptwr
def test_boots_to_a_shell(packages, shell):
    dom, out, (console, _) = shell
    text = console.decode("latin-1")
    assert f"Linux version {packages.release}" in text
    assert "Hypervisor detected: Xen PV" in text and "Booting kernel on Xen" in text
    assert "Run /init as init process" in text and "BusyBox v1" in text and "/ # " in text[-20:]
    for bad in ("Oops", "BUG:", "WARNING:", "Kernel panic", "unchecked MSR access", "Call Trace"):
        assert bad not in text, bad
    # Devices absent exactly as on a Xen host without them: the frontends load and find nothing.
    assert "xen_netfront: Initialising Xen virtual ethernet driver" in text


@needs_ptwr
def test_scripted_session_then_poweroff(packages, shell):
    dom, out, _ = shell
    assert session(dom, out, "uname -r") == packages.release
    assert session(dom, out, "cat /proc/cmdline") == CMDLINE
    assert session(dom, out, "cat /sys/hypervisor/type") == "xen"
    assert session(dom, out, "dmesg | grep -c 'Xen version'") == "1"
    assert set(session(dom, out, "ls /sys/class/net").split()) == {"lo"}              # no vif
    assert "xvd" not in session(dom, out, "cat /proc/partitions")                       # no vbd
    mods = session(dom, out, "cat /proc/modules")
    assert "xen_blkfront" in mods and "xen_netfront" in mods
    dom.console_backend.feed(b"poweroff -f\n")
    assert dom.run() == "shutdown" and dom.shutdown_reason == "poweroff"


@needs_ptwr
def test_boot_is_deterministic(packages, initrd, shell):
    _, _, (console, trace) = shell
    dom, tracer, out = boot_to_prompt(packages, initrd)
    try:
        assert bytes(out) == console
        assert [(r.data, r.time) for r in tracer.records] == trace
    finally:
        dom.close()


@needs_ptwr
def test_cli_with_typed_input_reboots(packages, initrd, tmp_path):
    log = tmp_path / "console.log"
    r = subprocess.run([sys.executable, "-m", "miniguest.cli", "boot", packages.vmlinuz, "--ramdisk", initrd,
                        "-c", CMDLINE, "--stdin", "--quiet", "--console-log", str(log)],
                       input=b"uname -r\nreboot -f\n", capture_output=True, timeout=1200, cwd=ROOT)
    text = log.read_bytes().decode("latin-1")
    assert r.returncode == 4, r.stderr.decode() + text[-2000:]
    assert f"\n{packages.release}" in text.replace("\r", "") and "reboot: Restarting system" in text


def test_gdb_stops_in_xen_start_kernel_then_start_kernel(request):
    if not shutil.which("gdb"):
        pytest.skip("gdb is not installed")
    package = kernel_package()
    if not debpkg.find_deb(package + "-dbg") and not os.environ.get("MINIGUEST_LINUX_DBG"):
        pytest.skip(f"no {package}-dbg in the cache (MINIGUEST_LINUX_DBG=1 lets the test fetch it, about 280 MB)")
    packages = request.getfixturevalue("packages")
    initrd = request.getfixturevalue("initrd")
    vmlinux = packages.vmlinux()
    assert vmlinux, f"{package}-dbg holds no vmlinux"
    cmd = [sys.executable, "-m", "miniguest.cli", "gdb", packages.vmlinuz, "--symbols", vmlinux, "--ramdisk",
           initrd, "-c", CMDLINE, "--quiet", "--gdb-arg=-batch", "--gdb-arg=-nx"]
    for ex in ("break xen_start_kernel", "continue", "bt", "break start_kernel", "continue", "bt", "next",
               "info registers rip cs", "kill"):
        cmd.append(f"--gdb-arg=-ex={ex}")
    r = subprocess.run(cmd, capture_output=True, timeout=600, cwd=ROOT, env=dict(os.environ, TERM="dumb"))
    text = r.stdout.decode("latin-1")
    assert "Breakpoint 1, xen_start_kernel (si=0x" in text, text + r.stderr.decode()
    assert "#0  xen_start_kernel" in text and "in startup_xen ()" in text
    assert "Breakpoint 2, start_kernel () at init/main.c" in text
    assert "#2  0x" in text and "in xen_start_kernel (si=" in text          # bt from start_kernel
    assert "<start_kernel+" in text and "cs             0xe033" in text     # after `next`
