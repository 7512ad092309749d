"""Virtual disks: xl's disk specifications (xl-disk-configuration(5)), libxl's vdev numbering
(xen-vbd-interface(7), libxl__device_disk_dev_number), the block hotplug step and libxl's device_disk_add.

    disk = [ 'format=raw, vdev=xvda, access=rw, target=/images/guest.img' ]
    disk = [ '/images/guest.img,raw,xvda,rw' ]               (positional: target, format, vdev, access)
    miniguest boot ... --disk /images/guest.img[,vdev=xvda][,ro][,format=qcow2]

The hotplug step (Xen's block script) checks the image before the domain is built -- a missing, unreadable,
truncated (not a whole number of 512-byte sectors) or unsupported image is one line and no domain -- and
writes `physical-device-path` and `hotplug-status` into the backend directory, where blkback looks for
what to open. A qcow2 image is converted with `qemu-img` (Debian's qemu-utils) to a private raw copy that the
guest gets read-only; without qemu-img it is refused with a message saying so.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from miniguest.toolstack.device import device_generic_add
from miniguest.toolstack.xlcfg import ConfigError

if TYPE_CHECKING:
    from miniguest.backends.xenstore import Dom0Store

SECTOR = 512
FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed")
QEMU_IMG_TIMEOUT = 600


class DiskError(ConfigError):
    """A disk that cannot be given to the guest: the message is one line for the user."""


@dataclass
class DiskSpec:
    """libxl_device_disk, the fields miniguest uses."""
    target: str = ""
    format: str = "raw"
    vdev: str = ""
    readwrite: bool = True
    is_cdrom: bool = False
    discard: bool = True
    trusted: bool = True
    direct_io_safe: bool = False
    backendtype: Optional[str] = None
    script: Optional[str] = None
    # set by the hotplug step
    physical_path: Optional[str] = None
    size: int = 0
    private_copy: Optional[str] = field(default=None, repr=False)

    @property
    def devid(self) -> int:
        return vdev_to_devid(self.vdev)


# -- vdev names (libxl__device_disk_dev_number) ---------------------------------------------------------------
def _virtdisk(name: str, prefix: str, max_index: int, max_partition: int) -> Optional[tuple[int, int]]:
    if not name.startswith(prefix):
        return None
    p = len(prefix)
    index = -1
    while p < len(name) and "a" <= name[p] <= "z":
        index = (index + 1) * 26 + (ord(name[p]) - ord("a"))
        if index > max_index:
            return None
        p += 1
    if index < 0:
        return None
    rest = name[p:]
    if not rest:
        return index, 0
    if rest[0] == "0" or not rest.isdigit() or int(rest) > max_partition:
        return None
    return index, int(rest)


def vdev_to_devid(vdev: str) -> int:
    """The vbd number of a vdev name (xvda 51712, xvdb 51728, xvdq 268439552, hda 768, sdb 2064, d1p2, or a
    number given as is). DiskError if it is none of those."""
    m = None
    if vdev.startswith("d") and "p" in vdev:
        d, _, part = vdev[1:].partition("p")
        if d.isdigit() and part.isdigit() and int(d) < 1 << 20 and int(part) < 256:
            m = int(d), int(part)
    m = m or _virtdisk(vdev, "xvd", (1 << 20) - 1, 255)
    if m is not None:
        disk, part = m
        return (202 << 8) | (disk << 4) | part if disk <= 15 and part <= 15 else (1 << 28) | (disk << 8) | part
    try:
        value = int(vdev, 0)
        if 0 <= value <= 0x7FFFFFFF:
            return value
    except ValueError:
        pass
    m = _virtdisk(vdev, "hd", 3, 63)
    if m is not None:
        disk, part = m
        return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | part
    m = _virtdisk(vdev, "sd", 15, 15)
    if m is not None:
        disk, part = m
        return (8 << 8) | (disk << 4) | part
    raise DiskError(f"invalid or unsupported virtual disk identifier {vdev!r}")


def xvd_name(index: int) -> str:
    """xvda, xvdb, ... xvdz, xvdaa (libxl's encode_disk_name)."""
    name = ""
    n = index
    while True:
        name = chr(ord("a") + n % 26) + name
        if n < 26:
            break
        n = n // 26 - 1
    return "xvd" + name


# -- xl's DISKSPEC (tools/libs/util/libxlu_disk_l.l) ----------------------------------------------------------
_FLAGS = {"cdrom": ("is_cdrom", True), "devtype=cdrom": ("is_cdrom", True), "devtype=disk": ("is_cdrom", False),
          "direct-io-safe": ("direct_io_safe", True), "discard": ("discard", True),
          "no-discard": ("discard", False), "trusted": ("trusted", True), "untrusted": ("trusted", False)}
_IGNORED_PREFIXES = ("tapdisk:", "tap2:", "tap:", "aio:", "ioemu:", "file:", "phy:")


def _access(spec: DiskSpec, value: str, text: str) -> None:
    if value in ("", "rw", "w"):
        spec.readwrite = True
    elif value in ("ro", "r"):
        spec.readwrite = False
    else:
        raise DiskError(f"disk {text!r}: unknown value for access: {value!r}")


def _format(spec: DiskSpec, value: str, text: str) -> None:
    value = value or "raw"
    if value not in FORMATS:
        raise DiskError(f"disk {text!r}: unknown value for format: {value!r}")
    spec.format = value


def parse_disk_spec(text: str) -> DiskSpec:
    """One DISKSPEC of an xl.cfg `disk = [...]` list."""
    if not isinstance(text, str) or "\0" in text:
        raise DiskError("a disk specification must be a string")
    spec = DiskSpec()
    positional = 0                     # next positional: 0 target, 1 format, 2 vdev, 3 access
    had_prefix = False
    seen: set[str] = set()
    rest = text
    while rest:
        rest = rest.lstrip(" \t\n")
        if not rest:
            break
        if rest.startswith("target="):
            spec.target = rest[len("target="):]
            seen.add("target")
            break
        # deprecated prefixes: "raw:/path", "phy:/dev/..", "tap:aio:/path" (stripped)
        lowered = rest.split(",", 1)[0]
        if positional == 0 and ":" in lowered and lowered.split(":", 1)[0].isalnum() and "=" not in lowered:
            prefix = lowered.split(":", 1)[0] + ":"
            if prefix[:-1] in ("raw", "qcow", "qcow2", "vhd"):
                _format(spec, prefix[:-1], text)
                had_prefix = True
                rest = rest[len(prefix):]
                continue
            if prefix in _IGNORED_PREFIXES:
                had_prefix = True
                rest = rest[len(prefix):]
                continue
        item, sep, rest = rest.partition(",")
        key, eq, value = item.partition("=")
        if item in _FLAGS:
            attr, flag = _FLAGS[item]
            setattr(spec, attr, flag)
            continue
        if eq and key and key[0].isalpha() and all(c.isalnum() or c == "-" or c == "_" for c in key):
            if key in seen:
                raise DiskError(f"disk {text!r}: {key} given twice")
            seen.add(key)
            if key == "format":
                _format(spec, value, text)
            elif key == "access":
                _access(spec, value, text)
            elif key == "vdev":
                spec.vdev = value
            elif key == "devtype":
                raise DiskError(f"disk {text!r}: unknown value for devtype: {value!r}")
            elif key == "backendtype":
                if value not in ("", "phy", "qdisk", "tap", "standalone"):
                    raise DiskError(f"disk {text!r}: unknown value for backendtype: {value!r}")
                spec.backendtype = value or None
            elif key == "script":
                spec.script = value
            elif key in ("backend", "specification"):
                if key == "backend" and value not in ("", "0", "Domain-0"):
                    raise DiskError(f"disk {text!r}: only dom0 serves disks here (backend={value})")
                if key == "specification" and value not in ("", "xen"):
                    raise DiskError(f"disk {text!r}: only the Xen PV block protocol is served "
                                    f"(specification={value})")
            else:
                raise DiskError(f"disk {text!r}: unknown parameter {key!r}")
            continue
        if eq:
            raise DiskError(f"disk {text!r}: bad disk syntax at {item!r}")
        # a positional parameter
        if positional == 0:
            spec.target, positional = item, 1
            if had_prefix:
                positional = 2
        elif positional == 1:
            if ":" in item and not spec.target:           # ",hdc:cdrom,r": empty cdrom
                positional = 2
                vdev, _, devtype = item.partition(":")
                spec.vdev, spec.is_cdrom = vdev, devtype == "cdrom"
                positional = 3
            else:
                _format(spec, item, text)
                positional = 2
        elif positional == 2:
            vdev, _, devtype = item.partition(":")
            spec.vdev = vdev
            if devtype:
                spec.is_cdrom = devtype == "cdrom"
            positional = 3
        elif positional == 3:
            _access(spec, item, text)
            positional = 4
        else:
            raise DiskError(f"disk {text!r}: too many positional parameters")
        if not sep:
            break
    if spec.is_cdrom:
        spec.readwrite = False           # (xlu_disk_parse: a cdrom is always read-only)
    if not spec.vdev:
        raise DiskError(f"disk {text!r}: no vdev (the guest's name for the disk, e.g. xvda)")
    vdev_to_devid(spec.vdev)
    if spec.target and not spec.target.startswith("/"):
        spec.target = "/dev/" + spec.target
    return spec


def parse_cli_disk(text: str, index: int) -> DiskSpec:
    """`--disk PATH[,vdev=NAME][,ro|rw][,format=FMT]`; the vdev defaults to xvda, xvdb, ... by position."""
    parts = text.split(",")
    spec = DiskSpec(target=parts[0], vdev=xvd_name(index))
    if not spec.target:
        raise DiskError(f"--disk {text!r}: no image path")
    for item in parts[1:]:
        item = item.strip()
        key, eq, value = item.partition("=")
        if item in ("ro", "r"):
            spec.readwrite = False
        elif item in ("rw", "w"):
            spec.readwrite = True
        elif eq and key == "vdev" and value:
            spec.vdev = value
        elif eq and key == "format":
            _format(spec, value, text)
        elif eq and key == "access":
            _access(spec, value, text)
        else:
            raise DiskError(f"--disk {text!r}: unknown option {item!r} (vdev=NAME, ro, rw, format=FMT)")
    vdev_to_devid(spec.vdev)
    return spec


# -- the hotplug step (Xen's block script) --------------------------------------------------------------------
def prepare_disk(spec: DiskSpec) -> DiskSpec:
    """Check the image the way the guest will use it and settle what blkback opens (`physical_path`, `size`).
    DiskError with one line if it cannot be used."""
    path = spec.target
    if not path:
        raise DiskError(f"{spec.vdev}: no image (an empty drive is not supported)")
    try:
        st = os.stat(path)
    except OSError as e:
        raise DiskError(f"disk {path}: {e.strerror}") from None
    except ValueError:
        raise DiskError(f"disk {path!r}: not a valid path") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise DiskError(f"disk {path}: not a regular file or block device")
    if not os.access(path, os.R_OK):
        raise DiskError(f"disk {path}: not readable (permission denied)")
    if spec.format in ("qcow2", "qcow", "vhd", "qed"):
        return _convert(spec)
    if spec.format != "raw":
        raise DiskError(f"disk {path}: format {spec.format} is not supported")
    if spec.readwrite and not os.access(path, os.W_OK):
        raise DiskError(f"disk {path}: not writable (use ro / access=ro for a read-only disk)")
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            f.read(min(size, SECTOR))
    except OSError as e:
        raise DiskError(f"disk {path}: cannot be read: {e.strerror}") from None
    if size == 0:
        raise DiskError(f"disk {path}: empty image")
    if size % SECTOR:
        raise DiskError(f"disk {path}: {size} bytes is not a whole number of {SECTOR}-byte sectors "
                        "(truncated image?)")
    spec.physical_path = os.path.abspath(path)
    spec.size = size
    return spec


def _convert(spec: DiskSpec) -> DiskSpec:
    """qcow2 & co: a private raw copy made by qemu-img, given to the guest read-only."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise DiskError(f"disk {spec.target}: {spec.format} images need qemu-img (Debian's qemu-utils); "
                        "install it or convert the image to raw")
    fd, raw = tempfile.mkstemp(prefix="miniguest-disk-", suffix=".raw")
    os.close(fd)
    try:
        proc = subprocess.run([qemu_img, "convert", "-q", "-f", spec.format, "-O", "raw", spec.target, raw],
                              capture_output=True, timeout=QEMU_IMG_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.unlink(raw)
        raise DiskError(f"disk {spec.target}: qemu-img failed: {e}") from None
    if proc.returncode != 0:
        os.unlink(raw)
        why = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DiskError(f"disk {spec.target}: not a readable {spec.format} image"
                        f"{': ' + why[-1] if why else ''}")
    size = os.path.getsize(raw)
    if size == 0 or size % SECTOR:
        os.unlink(raw)
        raise DiskError(f"disk {spec.target}: the {spec.format} image has a virtual size of {size} bytes, "
                        f"not a whole number of {SECTOR}-byte sectors")
    spec.readwrite = False
    spec.physical_path = raw
    spec.private_copy = raw
    spec.size = size
    return spec


def release_disk(spec: DiskSpec) -> None:
    """The hotplug step's cleanup: a private copy is deleted."""
    if spec.private_copy:
        try:
            os.unlink(spec.private_copy)
        except OSError:
            pass
        spec.private_copy = None


# -- libxl's device_disk_add ----------------------------------------------------------------------------------
def device_disk_add(store: "Dom0Store", domid: int, spec: DiskSpec) -> int:
    """Write the vbd's frontend and backend directories (libxl_disk.c, backend "phy" = blkback, then what the
    block hotplug script adds). Returns the devid. The spec must have been through prepare_disk."""
    devid = spec.devid
    back = {"params": spec.target, "script": "/etc/xen/scripts/block", "removable": "0", "bootable": "1",
            "dev": spec.vdev, "type": "phy", "mode": "w" if spec.readwrite else "r",
            "device-type": "cdrom" if spec.is_cdrom else "disk", "discard-enable": "1" if spec.discard else "0",
            "specification": "xen"}
    if spec.direct_io_safe:
        back["direct-io-safe"] = "1"
    # the block script, run by libxl before it waits for the device: what the backend opens
    back["physical-device-path"] = spec.physical_path or spec.target
    back["hotplug-status"] = "connected"
    front = {"virtual-device": str(devid), "device-type": "cdrom" if spec.is_cdrom else "disk",
             "trusted": "1" if spec.trusted else "0", "protocol": "x86_64-abi"}
    device_generic_add(store, domid, "vbd", devid, back, front)
    return devid
