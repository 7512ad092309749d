"""Debian's PV GRUB 2 (grub-xen-host's grub-x86_64-xen.bin, unmodified) on a disk image made without root
(`mke2fs -d`): it finds /boot/grub/grub.cfg on xvda through blkfront/blkback, shows its menu, runs an entry,
and loads a Linux kernel and initramfs from the disk with its own PV loader."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess

import pytest

from miniguest import Domain

from debian import linux_packages, package_root

pytestmark = pytest.mark.slow


def pvgrub() -> str:
    root = package_root("grub-xen-host")
    path = os.path.join(root, "usr", "lib", "grub-xen", "grub-x86_64-xen.bin")
    if not os.path.exists(path):
        pytest.skip("grub-xen-host has no grub-x86_64-xen.bin")
    return path


def e2fs_tool(name: str) -> str:
    """mke2fs/debugfs (e2fsprogs), also where a non-root PATH does not look (/sbin, /usr/sbin)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} (e2fsprogs) is not installed: sh tools/install-test-deps.sh")
    return path


def ext4_image(tmp_path, files: dict[str, bytes], size_mib: int = 16) -> str:
    mke2fs = e2fs_tool("mke2fs")
    root = tmp_path / "root"
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    img = tmp_path / "disk.img"
    subprocess.run([mke2fs, "-q", "-F", "-t", "ext4", "-d", str(root), str(img), f"{size_mib}M"], check=True,
                   capture_output=True)
    return str(img)


MENU = b"""set timeout=1
set default=1
menuentry 'First entry' {
  echo 'not this one'
}
menuentry 'Read a file from xvda' {
  echo "root is ${root}"
  cat /etc/motd
  halt
}
"""


def test_pvgrub_menu_from_an_ext4_disk(tmp_path):
    img = ext4_image(tmp_path, {"boot/grub/grub.cfg": MENU, "etc/motd": b"hello from the guest's own disk\n"})
    # GRUB counts its menu timeout down by polling the clock: a virtual second is a billion instructions,
    # so this one test runs on the host's clock and the menu shows for a real second.
    dom = Domain.from_elf(pvgrub(), memory_mib=64, disks=[f"{img},raw,xvda,rw"], realtime=True,
                          max_instructions=20_000_000_000)
    try:
        dom.run()
        text = dom.console.text
        assert "Reading (xen/xvda)/boot/grub/grub.cfg" in text
        assert "GNU GRUB  version 2.06" in text
        assert "First entry" in text and "*Read a file from xvda" in text     # the menu, default highlighted
        assert "The highlighted entry will be executed automatically in 1s." in text
        assert "Booting `Read a file from xvda'" in text
        assert "root is xen/xvda" in text
        assert "hello from the guest's own disk" in text
        assert dom.shutdown_reason == "poweroff"
    finally:
        dom.close()


def test_pvgrub_boots_linux_from_the_disk(tmp_path):
    from miniguest.toolstack.bzimage import extract
    from miniguest.toolstack.initramfs import build, busybox_binary
    pk = linux_packages()
    with open(pk.vmlinuz, "rb") as f:
        # GRUB 2.06's Xen loader reads gzip/xz/lzo payloads but not the LZ4 of Debian's cloud kernel: the
        # disk holds the same kernel as a gzip-compressed ELF, as extract-vmlinux + gzip would make it.
        elf, _ = extract(f.read(), pk.vmlinuz, 1 << 30)
    initrd, _ = build(busybox_binary(pk.busybox_root))
    cfg = b"""set timeout=0
menuentry 'Debian GNU/Linux' {
  echo 'Loading Linux ...'
  linux /boot/vmlinuz console=hvc0 root=/dev/xvda
  echo 'Loading initial ramdisk ...'
  initrd /boot/initrd.img
}
"""
    files = {"boot/grub/grub.cfg": cfg, "boot/vmlinuz": gzip.compress(bytes(elf), 1),
             "boot/initrd.img": bytes(initrd)}
    img = ext4_image(tmp_path, files, size_mib=96)
    dom = Domain.from_elf(pvgrub(), memory_mib=256, disks=[f"{img},raw,xvda,rw"],
                          max_instructions=8_000_000_000)
    try:
        dom.run(until=lambda d: "Freeing initrd memory" in d.console.text)
        text = dom.console.text
        assert "Booting `Debian GNU/Linux'" in text
        assert f"Linux version {pk.release}" in text
        assert "Command line: console=hvc0 root=/dev/xvda" in text
        assert "RAMDISK: [mem" in text and "Freeing initrd memory" in text
    finally:
        dom.close()
