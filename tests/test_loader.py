"""The ELF loader: where the Xen notes come from, libelf's address defaults, and one clear line for every
image that cannot be booted."""
from __future__ import annotations

import os
import struct

import pytest

from miniguest.toolstack.libelf import ImageError, parse_kernel

from guestlib import GUESTS, HELLO, boot, cli

LEGACY = os.path.join(GUESTS, "legacy.elf")


def test_notes_from_pt_note_segment():
    k = parse_kernel(HELLO)
    assert k.notes.source == "PT_NOTE"
    assert k.notes.guest_os == "miniguest-hello" and k.notes.loader == "generic"
    assert k.notes.virt_base == 0xFFFFFFFF80000000 and k.notes.paddr_offset == 0   # default with notes
    assert k.virt_kstart == 0xFFFFFFFF80000000            # p_paddr 0 + (VIRT_BASE - 0)
    assert k.notes.hypercall_page == 0xFFFFFFFF80001000
    assert k.entry == 0xFFFFFFFF80000000                   # no ENTRY note: e_entry


def test_legacy_xen_guest_section_boots():
    k = parse_kernel(LEGACY)
    assert k.notes.source == "__xen_guest"
    # No ELF_PADDR_OFFSET in the string: libelf defaults it to VIRT_BASE (p_paddr == p_vaddr here).
    assert k.notes.paddr_offset == k.notes.virt_base == 0xFFFFFFFF80000000
    assert k.notes.hypercall_page == 0xFFFFFFFF80001000   # HYPERCALL_PAGE=0x1 is a page number
    dom = boot(LEGACY)
    assert dom.shutdown_reason == "poweroff" and "7/7 checks passed" in dom.console.text
    dom.close()


def patched(tmp_path, name: str, edit) -> str:
    data = bytearray(open(HELLO, "rb").read())
    edit(data)
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return str(path)


def replace_all(old: bytes, new: bytes):
    def edit(data: bytearray) -> None:
        assert old in data
        data[:] = data.replace(old, new)
    return edit


def set_phdr(index: int, field_offset: int, value: int):
    def edit(data: bytearray) -> None:
        phoff = struct.unpack_from("<Q", data, 32)[0]
        struct.pack_into("<Q", data, phoff + 56 * index + field_offset, value)
    return edit


CASES = {
    "not_elf": (lambda d: d.__setitem__(slice(0, 4), b"MZ\0\0"), "not an ELF file"),
    "aarch64": (lambda d: struct.pack_into("<H", d, 18, 183), "not an x86_64 ELF"),
    "elf32": (lambda d: d.__setitem__(4, 1), "not an x86_64 ELF"),
    "no_notes": (replace_all(b"Xen\0", b"Xyz\0"), "no Xen ELF notes and no __xen_guest section"),
    "bad_loader": (replace_all(b"generic\0", b"gen3ric\0"), "generic loader"),
    "bad_xen_version": (replace_all(b"xen-3.0\0", b"xen-2.0\0"), "not 'xen-3.0'"),
    "overlap": (set_phdr(1, 24, 0x1000), "segments overlap"),
    "hypervisor_area": (set_phdr(1, 24, 0xFFFF800080000000), "overlaps the hypervisor area"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unbootable_images_give_one_line(tmp_path, case):
    edit, message = CASES[case]
    path = patched(tmp_path, case + ".elf", edit)
    with pytest.raises(ImageError, match=message):
        parse_kernel(path)
    r = cli("boot", path)
    err = r.stderr.decode()
    assert r.returncode == 9
    assert err.count("\n") == 1 and err.startswith("miniguest: ") and message in err


def test_image_larger_than_memory(tmp_path):
    module = tmp_path / "big.img"
    module.write_bytes(b"\0" * (2 << 20))
    r = cli("boot", HELLO, "--memory", "2", "--module", str(module))
    assert r.returncode == 9
    assert "more than the 2048 KiB of memory given" in r.stderr.decode()
    assert r.stderr.decode().count("\n") == 1


def test_missing_file():
    r = cli("boot", "/nonexistent/kernel.elf")
    assert r.returncode == 9
    assert r.stderr.decode() == "miniguest: /nonexistent/kernel.elf: No such file or directory\n"
