"""A minimal initramfs for a Linux PV guest, written in Python as a "newc" cpio archive (the format Linux's
init/initramfs.c unpacks; Documentation/driver-api/early-userspace/buffer-format.rst).

It holds Debian's busybox-static as /bin/busybox (with /bin/sh), /dev/console (the kernel opens it for init
before anything is mounted), an /init script that mounts proc, sys and devtmpfs, loads the chosen kernel
modules in dependency order, runs the user's script if there is one, and then starts a shell on the console
(`setsid cttyhack sh`, so that the shell owns hvc0 as its terminal). The archive is reproducible: fixed
inode numbers, owners and times, entries in a fixed order.

Sources for busybox and the modules are a .deb, an unpacked package directory, or (busybox) the binary
itself; `fetch=True` gets busybox-static with `apt-get download` (toolstack/debian.py).
"""
from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Iterable, Optional

import zstandard
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from miniguest.toolstack import debian

NEWC_MAGIC = b"070701"
DEFAULT_MODULES = ("xen-blkfront", "xen-netfront")
DIRS = ("bin", "dev", "etc", "lib", "proc", "root", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin")
MAX_DEPTH = 64


class InitramfsError(Exception):
    """str() is one line saying why the initramfs cannot be made."""


@dataclass
class Entry:
    name: str               # path inside the archive, no leading '/'
    mode: int               # st_mode: type and permissions
    data: bytes = b""       # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Archive:
    entries: dict[str, Entry] = field(default_factory=dict)

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path not in self.entries:
                self.entries[path] = Entry(path, stat.S_IFDIR | perm)

    def _parent(self, name: str) -> None:
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.add_dir(parent)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._parent(name)
        self.entries[name.strip("/")] = Entry(name.strip("/"), stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._parent(name)
        self.entries[name.strip("/")] = Entry(name.strip("/"), stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._parent(name)
        self.entries[name.strip("/")] = Entry(name.strip("/"), stat.S_IFCHR | perm, rdev=(major, minor))

    def write(self) -> bytes:
        """The newc cpio: each entry's header, NUL-terminated name padded to 4 bytes, data padded to 4;
        directories before what they hold; then the TRAILER!!! entry."""
        out = bytearray()
        ino = 1
        for name in sorted(self.entries, key=lambda n: (n.count("/"), n)):
            e = self.entries[name]
            out += _newc(ino, e.mode, 2 if stat.S_ISDIR(e.mode) else 1, e.name, e.data, e.rdev)
            ino += 1
        out += _newc(0, 0, 1, "TRAILER!!!", b"", (0, 0))
        return bytes(out)


def _pad4(n: int) -> int:
    return -n % 4


def _newc(ino: int, mode: int, nlink: int, name: str, data: bytes, rdev: tuple[int, int]) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    return (header + encoded + b"\0" * _pad4(len(header) + len(encoded)) + data + b"\0" * _pad4(len(data)))


# -- where busybox and the modules come from -----------------------------------------------------------

def _root_of(source: str) -> str:
    """A package given as a .deb (unpacked into the cache) or as an unpacked directory."""
    if os.path.isdir(source):
        return source
    if source.endswith(".deb") and os.path.isfile(source):
        try:
            return debian.unpack(source, os.path.join(debian.cache_dir(),
                                                      os.path.splitext(os.path.basename(source))[0]))
        except debian.DebianError as e:
            raise InitramfsError(str(e)) from None
    raise InitramfsError(f"{source}: not a .deb or a directory")


def busybox_binary(source: Optional[str], fetch: bool = False) -> bytes:
    """Debian's busybox-static from a .deb, an unpacked package directory or the binary; or fetched."""
    if source is None:
        if not fetch:
            raise InitramfsError("no busybox given: pass --busybox (busybox-static .deb, unpacked directory or "
                                 "binary) or --fetch to download busybox-static with apt-get")
        try:
            source = debian.download("busybox-static")
        except debian.DebianError as e:
            raise InitramfsError(str(e)) from None
    path = source
    if os.path.isdir(source) or source.endswith(".deb"):
        root = _root_of(source)
        path = os.path.join(root, "bin", "busybox")
        if not os.path.isfile(path):
            raise InitramfsError(f"{source}: no bin/busybox inside (is it busybox-static?)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InitramfsError(f"{path}: {e.strerror}") from None
    _check_static_x86_64(path, data)
    return data


def _check_static_x86_64(path: str, data: bytes) -> None:
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_machine"] != "EM_X86_64":
            raise InitramfsError(f"{path}: not an x86_64 program")
        if any(seg["p_type"] == "PT_INTERP" for seg in elf.iter_segments()):
            raise InitramfsError(f"{path}: dynamically linked: the initramfs needs busybox-static")
    except (ELFError, ValueError) as e:
        raise InitramfsError(f"{path}: not an ELF program ({e})") from None


def _norm(name: str) -> str:
    return name.replace("-", "_")


@dataclass
class KernelModules:
    """The modules of one kernel release: /lib/modules/<release>/ of an unpacked linux-image package."""
    root: str               # the lib/modules/<release> directory
    release: str
    paths: dict[str, str]   # normalized module name -> path relative to root

    @classmethod
    def find(cls, source: str, release: Optional[str] = None) -> "KernelModules":
        root = _root_of(source)
        base = os.path.join(root, "lib", "modules")
        if os.path.basename(os.path.dirname(root.rstrip("/"))) == "modules":
            base = os.path.dirname(root.rstrip("/"))               # given lib/modules/<release> itself
            release = release or os.path.basename(root.rstrip("/"))
        if not os.path.isdir(base):
            raise InitramfsError(f"{source}: no lib/modules directory (give the linux-image package)")
        releases = sorted(os.listdir(base))
        if release is None:
            if len(releases) != 1:
                raise InitramfsError(f"{source}: {len(releases)} kernel releases inside; name one")
            release = releases[0]
        mod_root = os.path.join(base, release)
        if not os.path.isdir(mod_root):
            raise InitramfsError(f"{source}: no modules for release {release}")
        paths: dict[str, str] = {}
        for dirpath, _, files in os.walk(mod_root):
            for fn in files:
                m = re.fullmatch(r"(.+)\.ko(\.xz|\.zst|\.gz)?", fn)
                if m:
                    rel = os.path.relpath(os.path.join(dirpath, fn), mod_root)
                    paths.setdefault(_norm(m.group(1)), rel)
        return cls(mod_root, release, paths)

    def depends(self, name: str) -> list[str]:
        """The modules `name` needs loaded first: from modules.dep when depmod has run, else from the
        module's own .modinfo `depends=` (what modpost recorded, and depmod reads)."""
        dep_file = os.path.join(self.root, "modules.dep")
        rel = self.paths[_norm(name)]
        if os.path.exists(dep_file):
            with open(dep_file) as f:
                for line in f:
                    target, _, deps = line.partition(":")
                    if target.strip() == rel:
                        return [_norm(os.path.basename(d).split(".ko")[0]) for d in deps.split()]
        return [_norm(d) for d in _modinfo(os.path.join(self.root, rel)).get("depends", "").split(",") if d]

    def closure(self, names: Iterable[str]) -> list[str]:
        """The modules to load, dependencies first."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, depth: int) -> None:
            key = _norm(name)
            if key in seen:
                return
            if depth > MAX_DEPTH:
                raise InitramfsError(f"module dependencies nest deeper than {MAX_DEPTH} at {name}")
            if key not in self.paths:
                raise InitramfsError(f"no module {name!r} in release {self.release}")
            seen.add(key)
            for dep in self.depends(key):
                visit(dep, depth + 1)
            order.append(key)

        for n in names:
            visit(n, 0)
        return order


def _modinfo(path: str) -> dict[str, str]:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        data = lzma.decompress(data)
    elif path.endswith(".zst"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    elif path.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        sec = ELFFile(io.BytesIO(data)).get_section_by_name(".modinfo")
    except (ELFError, ValueError) as e:
        raise InitramfsError(f"{path}: not a kernel module ({e})") from None
    info: dict[str, str] = {}
    if sec is not None:
        for item in sec.data().split(b"\0"):
            key, sep, value = item.decode("latin-1").partition("=")
            if sep:
                info.setdefault(key, value)
    return info


# -- the archive ---------------------------------------------------------------------------------------

INIT = """#!/bin/sh
# /init of a miniguest initramfs: mount the kernel's filesystems, load modules, run the user's script,
# then a shell on the console.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root TERM=${{TERM:-linux}}
{modules}[ -x /etc/init.user ] && /etc/init.user
echo "miniguest initramfs: starting a shell on the console"
exec setsid cttyhack /bin/sh
"""


def build(busybox: bytes, modules: Optional[KernelModules] = None, module_names: Iterable[str] = (),
          script: Optional[bytes] = None) -> tuple[bytes, list[str]]:
    """The cpio archive and the modules it loads (in order)."""
    a = Archive()
    for d in DIRS:
        a.add_dir(d)
    a.add_dir("tmp", 0o1777)
    a.add_file("bin/busybox", busybox, 0o755)
    a.add_symlink("bin/sh", "busybox")
    a.add_chardev("dev/console", 5, 1)
    a.add_chardev("dev/null", 1, 3, 0o666)
    loads: list[str] = []
    lines = ""
    if modules is not None:
        loads = modules.closure(module_names)
        for name in loads:
            rel = modules.paths[name]
            with open(os.path.join(modules.root, rel), "rb") as f:
                a.add_file(f"lib/modules/{modules.release}/{rel}", f.read())
            lines += f"insmod /lib/modules/{modules.release}/{rel}\n"
    a.add_file("init", INIT.format(modules=lines).encode(), 0o755)
    if script is not None:
        a.add_file("etc/init.user", script, 0o755)
    return a.write(), loads


def read_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    """Entries (name, mode, data) of a newc archive, up to its trailer (for tests and `--list`)."""
    out = []
    pos = 0
    while True:
        if data[pos:pos + 6] != NEWC_MAGIC:
            raise InitramfsError(f"bad newc header at {pos:#x}")
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize, mode = f[11], f[6], f[1]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        body = name_start + namesize + _pad4(110 + namesize)
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, data[body:body + filesize]))
        pos = body + filesize + _pad4(filesize)
