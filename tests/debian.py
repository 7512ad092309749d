"""Debian packages for the Linux-guest tests, fetched in the test set-up as a user would: `apt-get download`
into the cache ($MINIGUEST_CACHE/debian or ~/.cache/miniguest/debian), unpacked with `dpkg-deb -x`.

The kernel is the newest linux-image-6.1.0-NN-cloud-amd64 the archive serves (MINIGUEST_LINUX_PACKAGE
names another). Each helper skips the calling test, with the reason, when apt cannot provide the package.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Optional

import pytest

from miniguest.toolstack import debian

KERNEL_PATTERN = r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$"


def _need_apt() -> None:
    if not debian.have_apt():
        pytest.skip("apt-get is not available: the Linux guest tests fetch Debian packages with it")


def package_root(package: str) -> str:
    """The unpacked files of `package` (fetched once, then from the cache)."""
    found = debian.find_deb(package)
    if not found:
        _need_apt()
    try:
        return debian.unpack(debian.download(package))
    except debian.DebianError as e:
        pytest.skip(str(e))


def kernel_package() -> str:
    """The newest linux-image-6.1.0-NN-cloud-amd64 apt knows of, else the newest in the cache."""
    name = os.environ.get("MINIGUEST_LINUX_PACKAGE")
    if name:
        return name
    newest = debian.newest_package(KERNEL_PATTERN)
    if newest is None:
        cached = [os.path.basename(p).split("_", 1)[0]
                  for p in glob.glob(os.path.join(debian.cache_dir(), "linux-image-6.1.0-*-cloud-amd64_*.deb"))]
        if cached:
            return max(cached, key=lambda n: int(re.search(r"6\.1\.0-(\d+)", n).group(1)))
        _need_apt()
        pytest.skip("apt knows no linux-image-6.1.0-*-cloud-amd64 package (is bookworm in the sources, "
                    "and has `apt-get update` run?)")
    return newest


@dataclass
class LinuxPackages:
    package: str            # linux-image-6.1.0-NN-cloud-amd64
    release: str            # 6.1.0-NN-cloud-amd64
    root: str               # the unpacked kernel package
    vmlinuz: str
    busybox_root: str       # the unpacked busybox-static package

    @property
    def modules(self) -> str:
        return os.path.join(self.root, "lib", "modules", self.release)

    def vmlinux(self) -> Optional[str]:
        """The -dbg package's vmlinux (symbols), if it is in the cache or MINIGUEST_LINUX_DBG allows a
        download (it is about 280 MB)."""
        dbg = self.package + "-dbg"
        if not debian.find_deb(dbg) and not os.environ.get("MINIGUEST_LINUX_DBG"):
            return None
        root = package_root(dbg)
        path = os.path.join(root, "usr", "lib", "debug", "boot", f"vmlinux-{self.release}")
        return path if os.path.exists(path) else None


def linux_packages() -> LinuxPackages:
    package = kernel_package()
    root = package_root(package)
    release = package[len("linux-image-"):]
    vmlinuz = os.path.join(root, "boot", f"vmlinuz-{release}")
    if not os.path.exists(vmlinuz):
        pytest.skip(f"{package} holds no boot/vmlinuz-{release}")
    return LinuxPackages(package, release, root, vmlinuz, package_root("busybox-static"))
