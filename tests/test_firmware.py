"""The shipped guest ELFs are exactly what the firmware sources build to (gcc + GNU ld, reproducible), on the
toolchain they were built with: firmware/toolchain.txt pins it, and the ELFs' own debug info agrees."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from guestlib import GUESTS, ROOT, SAMPLES

PIN = os.path.join(ROOT, "firmware", "toolchain.txt")
ELFS = sorted([os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES) if f.endswith(".elf")]
              + [os.path.join(GUESTS, f) for f in os.listdir(GUESTS) if f.endswith(".elf")])


def pinned() -> list[str]:
    with open(PIN, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def local_toolchain() -> list[str]:
    r = subprocess.run(["make", "-s", "-C", f"{ROOT}/firmware", "toolchain"], capture_output=True, text=True,
                       timeout=60)
    return [line for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def producers(path: str) -> set[str]:
    """DW_AT_producer of every compilation unit: `GNU C11 12.2.0 -O...`, `GNU AS 2.40`."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if not elf.has_dwarf_info():
            return set()
        out = set()
        for cu in elf.get_dwarf_info().iter_CUs():
            attr = cu.get_top_DIE().attributes.get("DW_AT_producer")
            if attr is not None:
                value = attr.value.decode() if isinstance(attr.value, bytes) else str(attr.value)
                out.add(" ".join(value.split()[:3]))
        return out


def test_the_pin_names_the_toolchain_the_committed_elfs_were_built_with():
    """gcc's and gas's versions are in each ELF's DWARF: a rebuild with another toolchain committed without
    `make -C firmware pin` (or the other way round) is caught here, on any machine."""
    gcc_line, ld_line = pinned()
    gcc = re.match(r"gcc version (\S+) ", gcc_line)
    ld = re.search(r"(\d+(?:\.\d+)+)$", ld_line)
    assert gcc and ld, pinned()
    for path in ELFS:
        seen = producers(path)
        assert seen, f"{path}: no DWARF producers (built without -g?)"
        for p in seen:
            assert p in (f"GNU C11 {gcc.group(1)}", f"GNU AS {ld.group(1)}"), \
                f"{os.path.basename(path)} was built by {p!r}, the pin says {pinned()}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None, reason="needs gcc and make")
def test_committed_elfs_match_a_rebuild():
    here = local_toolchain()
    if here != pinned():
        pytest.skip(f"the committed ELFs were built with {' / '.join(pinned())} (firmware/toolchain.txt); "
                    f"this machine has {' / '.join(here) or 'no usable toolchain'}, which emits other bytes")
    r = subprocess.run(["make", "-s", "-C", f"{ROOT}/firmware", "check"], capture_output=True, timeout=300)
    out = r.stdout.decode() + r.stderr.decode()
    assert r.returncode == 0, out
    assert "differs" not in out and "hello.elf matches" in out
