"""Debian packages as a user fetches them for a Linux guest: `apt-get download` into a cache, unpack with
`dpkg-deb -x` (or, without dpkg, by reading the .deb's ar archive and data tarball in Python).

The cache is $MINIGUEST_CACHE/debian, else ~/.cache/miniguest/debian. Nothing here installs anything on the
host: packages are downloaded as files and unpacked into the cache.
"""
from __future__ import annotations

import glob
import io
import os
import re
import shutil
import subprocess
import tarfile
from typing import Optional

import zstandard


class DebianError(Exception):
    """A package cannot be had or unpacked; str() is one line saying why."""


def cache_dir() -> str:
    base = os.environ.get("MINIGUEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "miniguest")
    path = os.path.join(base, "debian")
    os.makedirs(path, exist_ok=True)
    return path


def have_apt() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("apt-cache") is not None


def _deb_name(package: str) -> str:
    return package.replace("/", "_")


def find_deb(package: str, directory: Optional[str] = None) -> Optional[str]:
    """A .deb of `package` already in the cache (the newest by name), or None."""
    directory = directory or cache_dir()
    hits = sorted(glob.glob(os.path.join(directory, f"{_deb_name(package)}_*.deb")))
    return hits[-1] if hits else None


def download(package: str, directory: Optional[str] = None, timeout: float = 1800) -> str:
    """The path of `package`'s .deb, fetched with `apt-get download` unless it is in the cache."""
    directory = directory or cache_dir()
    found = find_deb(package, directory)
    if found:
        return found
    if not have_apt():
        raise DebianError(f"cannot fetch {package}: apt-get is not available on this host")
    r = subprocess.run(["apt-get", "download", "-q", package], cwd=directory, capture_output=True, text=True,
                       timeout=timeout)
    found = find_deb(package, directory)
    if r.returncode != 0 or not found:
        why = (r.stderr.strip().splitlines() or ["no .deb was written"])[-1]
        raise DebianError(f"apt-get download {package} failed: {why}")
    return found


def unpack(deb: str, dest: Optional[str] = None) -> str:
    """Unpack a .deb's files into `dest` (default: next to it, named after it); returns the directory.
    An existing, complete unpacking is reused."""
    dest = dest or os.path.splitext(deb)[0]
    stamp = os.path.join(dest, ".unpacked")
    if os.path.exists(stamp):
        return dest
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if shutil.which("dpkg-deb"):
            r = subprocess.run(["dpkg-deb", "-x", deb, tmp], capture_output=True, text=True)
            if r.returncode != 0:
                raise DebianError(f"dpkg-deb -x {deb} failed: {r.stderr.strip()}")
        else:
            _unpack_python(deb, tmp)
        open(os.path.join(tmp, ".unpacked"), "w").close()
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _unpack_python(deb: str, dest: str) -> None:
    """A .deb is an ar archive holding debian-binary, control.tar.* and data.tar.* (xz, gz, zst...)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DebianError(f"{deb}: not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise DebianError(f"{deb}: no data.tar member")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip() or 0)
            if name.startswith("data.tar"):
                body = f.read(size)
                if name.endswith(".zst"):
                    body = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read()
                with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                    try:
                        tar.extractall(dest, filter="tar")
                    except TypeError:                   # Python before 3.11.4: no extraction filters
                        tar.extractall(dest)
                return
            f.seek(size + (size & 1), 1)


def newest_package(pattern: str) -> Optional[str]:
    """The package whose name matches the regular expression `pattern` with the highest version-like name
    in the archive apt knows (`apt-cache search --names-only`), e.g. the newest linux-image-6.1.0-NN-cloud-amd64."""
    if not have_apt():
        return None
    r = subprocess.run(["apt-cache", "search", "--names-only", pattern], capture_output=True, text=True)
    names = [line.split(" - ", 1)[0].strip() for line in r.stdout.splitlines()]
    names = [n for n in names if re.fullmatch(pattern.strip("^$"), n)]
    if not names:
        return None

    def key(name: str) -> list:
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return max(names, key=key)
