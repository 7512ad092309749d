"""`miniguest initramfs`: a newc cpio written in Python with busybox, /dev/console, an /init that mounts proc,
sys and devtmpfs, loads modules in dependency order, runs the user's script and starts a shell. Checked by
reading the archive back, and with GNU cpio when it is installed. (Booting it is in test_linux.py.)"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from miniguest.toolstack.initramfs import InitramfsError, KernelModules, build, busybox_binary, read_newc

from guestlib import HELLO, cli

STATIC = HELLO          # a static x86_64 ELF stands in for busybox where only the archive is checked


def entries(data: bytes) -> dict[str, tuple[int, bytes]]:
    return {name: (mode, body) for name, mode, body in read_newc(data)}


def fake_modules(tmp_path, with_dep_file: bool = True) -> str:
    """lib/modules/<release> with a modules.dep as depmod writes it: a -> b -> c, d alone."""
    root = tmp_path / "pkg"
    mod = root / "lib" / "modules" / "6.1.0-99-cloud-amd64"
    for rel in ("kernel/drivers/block/xen-blkfront.ko", "kernel/lib/crc-b.ko", "kernel/lib/c_c.ko",
                "kernel/drivers/net/xen-netfront.ko"):
        (mod / rel).parent.mkdir(parents=True, exist_ok=True)
        (mod / rel).write_bytes(b"\x7fELF module " + rel.encode())
    if with_dep_file:
        (mod / "modules.dep").write_text(
            "kernel/drivers/block/xen-blkfront.ko: kernel/lib/crc-b.ko kernel/lib/c_c.ko\n"
            "kernel/lib/crc-b.ko: kernel/lib/c_c.ko\n"
            "kernel/lib/c_c.ko:\n"
            "kernel/drivers/net/xen-netfront.ko:\n")
    return str(root)


def test_archive_layout_and_init():
    data, loads = build(open(STATIC, "rb").read(), script=b"#!/bin/sh\necho hi\n")
    e = entries(data)
    assert loads == []
    assert e["bin/busybox"][1] == open(STATIC, "rb").read() and e["bin/busybox"][0] == stat.S_IFREG | 0o755
    assert e["bin/sh"] == (stat.S_IFLNK | 0o777, b"busybox")
    assert stat.S_ISCHR(e["dev/console"][0]) and stat.S_ISDIR(e["proc"][0]) and stat.S_ISDIR(e["sys"][0])
    init = e["init"][1].decode()
    assert e["init"][0] & 0o111 and init.startswith("#!/bin/sh\n")
    for line in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys", "mount -t devtmpfs devtmpfs /dev",
                 "[ -x /etc/init.user ] && /etc/init.user", "exec setsid cttyhack /bin/sh"):
        assert line in init
    assert e["etc/init.user"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n")
    # Parents come before what they hold; the archive is the same every time.
    names = [n for n, _, _ in read_newc(data)]
    assert names.index("lib") < names.index("bin/busybox") or names.index("bin") < names.index("bin/busybox")
    assert build(open(STATIC, "rb").read(), script=b"#!/bin/sh\necho hi\n")[0] == data


@pytest.mark.skipif(not shutil.which("cpio"), reason="GNU cpio is not installed")
def test_gnu_cpio_reads_it(tmp_path):
    data, _ = build(open(STATIC, "rb").read())
    r = subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True, check=True)
    listing = r.stdout.decode()
    assert "bin/busybox" in listing and "bin/sh -> busybox" in listing and "init" in listing
    console = [line for line in listing.splitlines() if line.endswith(" dev/console")]
    assert console and console[0].startswith("crw") and "5,   1" in console[0]


def test_modules_in_dependency_order(tmp_path):
    mods = KernelModules.find(fake_modules(tmp_path))
    assert mods.release == "6.1.0-99-cloud-amd64"
    data, loads = build(open(STATIC, "rb").read(), mods, ["xen-blkfront", "xen_netfront"])
    assert loads == ["c_c", "crc_b", "xen_blkfront", "xen_netfront"]
    init = entries(data)["init"][1].decode()
    order = [line.split("/")[-1] for line in init.splitlines() if line.startswith("insmod ")]
    assert order == ["c_c.ko", "crc-b.ko", "xen-blkfront.ko", "xen-netfront.ko"]
    assert "lib/modules/6.1.0-99-cloud-amd64/kernel/lib/crc-b.ko" in entries(data)


def test_unknown_module_is_an_error(tmp_path):
    mods = KernelModules.find(fake_modules(tmp_path))
    with pytest.raises(InitramfsError, match="no module 'nosuch'"):
        mods.closure(["nosuch"])


def test_dynamic_busybox_is_refused():
    with pytest.raises(InitramfsError, match="dynamically linked"):
        busybox_binary("/bin/ls")


def test_cli(tmp_path):
    script = tmp_path / "session.sh"
    script.write_text("#!/bin/sh\nuname -r\n")
    out = tmp_path / "initrd.cpio"
    r = cli("initramfs", str(out), "--busybox", STATIC, "--kernel-modules", fake_modules(tmp_path),
            "--script", str(script))
    assert r.returncode == 0, r.stderr
    assert b"modules: c_c crc_b xen_blkfront xen_netfront" in r.stdout
    e = entries(out.read_bytes())
    assert e["etc/init.user"][1] == b"#!/bin/sh\nuname -r\n"


@pytest.mark.parametrize("argv,message", [
    ([], "no busybox given"),
    (["--busybox", "/bin/ls"], "dynamically linked"),
    (["--busybox", "/nonexistent"], "No such file"),
    (["--busybox", STATIC, "--add-module", "x"], "--add-module needs --kernel-modules"),
])
def test_cli_errors_are_one_line(tmp_path, argv, message):
    r = cli("initramfs", str(tmp_path / "x.cpio"), *argv)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1 and message in err, err
    assert not os.path.exists(tmp_path / "x.cpio")
