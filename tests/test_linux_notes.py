"""The ELF notes Linux 6.1 carries, handled as libxenguest does: INIT_P2M (the p2m list mapped at the
kernel's address with its own page tables), MOD_START_PFN (an unmapped initrd given by pfn), a 16-byte
L1_MFN_VALID, FEATURES with a required feature, SUPPORTED_FEATURES; and hypercalls made with a bare
`syscall`, without a hypercall page. The linuxabi test guest carries those notes and reads back what the
domain builder did."""
from __future__ import annotations

import os
import struct

import pytest

from miniguest.toolstack.layout import compute_layout
from miniguest.toolstack.libelf import ImageError, parse_kernel

from guestlib import GUESTS, boot, cli, facts

LINUXABI = os.path.join(GUESTS, "linuxabi.elf")
PAGE = 4096
P2M_VA = 0x8000000000
INITRD = b"INITRD!!" + bytes(range(256)) * 20 + b"end"   # 5131 bytes: two pages, the second partly


def test_notes_are_parsed():
    n = parse_kernel(LINUXABI).notes
    assert n.init_p2m == P2M_VA and n.mod_start_pfn and n.suspend_cancel
    assert n.l1_mfn_valid == (1, 1)                     # (mask, value): 16 bytes
    assert n.hypercall_page is None                      # Linux 6.1 has none
    assert n.f_required == 1 << 0                        # !writable_page_tables
    assert n.f_supported == 0x8801 | 1 << 0 | 1 << 4     # SUPPORTED_FEATURES | FEATURES' names
    assert n.hv_start_low == 0xFFFF800000000000 and n.pae_mode == "yes"


@pytest.mark.parametrize("scramble", [False, True])
def test_p2m_at_init_p2m_and_unmapped_initrd(scramble):
    dom = boot(LINUXABI, module=INITRD, scramble_mfns=scramble)
    try:
        text = dom.console.text
        assert dom.shutdown_reason == "poweroff", text
        assert "FAIL" not in text and "linuxabi: all ok" in text, text
        f = facts(text)
        lay = dom.layout
        h = lambda key: int(f[key], 16)  # noqa: E731
        # The p2m list where the kernel asked, after everything else; its range counts the tables mapping it.
        assert h("mfn_list") == P2M_VA == lay.p2m_start
        p2m_pages = dom.nr_pages * 8 // PAGE
        assert h("first_p2m_pfn") == lay.p2m_pfn == lay.mod_pfn + 2
        assert int(f["nr_p2m_frames"]) == lay.p2m_seg_pages == p2m_pages + 3     # + one L3, L2 and L1
        # The initrd: after the bootstrap mapping, by pfn, its length in whole pages (libxenguest).
        assert h("flags") == 8                                                   # SIF_MOD_START_PFN
        assert h("mod_start") == lay.mod_pfn == (h("mapped_end") - lay.virt_base) // PAGE
        assert int(f["mod_len"]) == 2 * PAGE
        assert f["initrd_head"] == "INITRD!!"
        assert int(f["initrd_sum"]) == sum(INITRD)                               # zero-padded to the page
        # The bootstrap tables do not count the p2m mapping's.
        assert int(f["nr_pt_frames"]) == lay.nr_pt_frames
    finally:
        dom.close()


@pytest.mark.slow
def test_ramdisk_option_and_module_alias(tmp_path):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(INITRD)
    for option in ("--ramdisk", "--module"):
        r = cli("boot", LINUXABI, option, str(initrd))
        assert r.returncode == 0, r.stderr
        assert f"initrd_sum = {sum(INITRD)}".encode() in r.stdout


def test_xl_cfg_ramdisk(tmp_path):
    (tmp_path / "initrd.img").write_bytes(INITRD)
    cfg = tmp_path / "guest.cfg"
    cfg.write_text(f'kernel = "{LINUXABI}"\nramdisk = "initrd.img"\nmemory = 48\n')
    r = cli("boot", str(cfg))
    assert r.returncode == 0, r.stderr
    assert f"initrd_sum = {sum(INITRD)}".encode() in r.stdout
    assert b"mod_len = 8192" in r.stdout


def test_init_p2m_ignored_at_or_above_virt_base():
    # libxenguest drops an INIT_P2M address >= virt_base (or unaligned): the list stays in the mapping.
    base = 0xFFFFFFFF80000000
    for p2m_base in (base, base + 0x100000, P2M_VA + 8):
        lay = compute_layout(base, base, base + 0x9000, 8192, 0, p2m_base=p2m_base)
        assert lay.p2m_base is None and lay.p2m_start == base + 0x9000 and not lay.p2m_tables


INIT_P2M_NOTE = struct.pack("<III", 4, 8, 15) + b"Xen\0"      # the INIT_P2M note's header and name


def patched(tmp_path, old: bytes, new: bytes) -> str:
    data = open(LINUXABI, "rb").read()
    assert data.count(old) == 1
    path = tmp_path / "linuxabi-patched.elf"
    path.write_bytes(data.replace(old, new))
    return str(path)


@pytest.mark.parametrize("case,old,new,message", [
    ("unknown_required_feature", b"!writable_page_tables", b"!writable_pagexxables",
     "requires the unknown Xen feature 'writable_pagexxables'"),
    ("p2m_in_hypervisor_area", INIT_P2M_NOTE + (P2M_VA).to_bytes(8, "little"),
     INIT_P2M_NOTE + (0xFFFF800000000000).to_bytes(8, "little"),
     "INIT_P2M: the p2m list at 0xffff800000000000"),
])
def test_bad_linux_notes_are_one_line(tmp_path, case, old, new, message):
    path = patched(tmp_path, old, new)
    r = cli("boot", path)
    err = r.stderr.decode()
    assert r.returncode == 9 and err.count("\n") == 1 and message in err, err


def test_unknown_optional_feature_is_ignored(tmp_path):
    path = patched(tmp_path, b"|pae_pgdir_above_4gb", b"|pae_pgdir_above_4xx")
    dom = boot(path, module=INITRD)
    try:
        assert dom.shutdown_reason == "poweroff" and "linuxabi: all ok" in dom.console.text
    finally:
        dom.close()



def test_default_memory_grows_with_a_large_image(tmp_path):
    """Without -m a domain gets xl's 32 MiB, or twice a kernel image that does not fit there (Debian's Linux
    needs 62 MiB from its VIRT_BASE: it gets 128)."""
    from guestlib import HELLO
    data = bytearray(open(HELLO, "rb").read())
    phoff = struct.unpack_from("<Q", data, 32)[0]
    struct.pack_into("<Q", data, phoff + 56 * 1 + 40, 40 << 20)           # data segment p_memsz: 40 MiB of BSS
    path = tmp_path / "big.elf"
    path.write_bytes(bytes(data))
    dom = boot(str(path))
    try:
        assert dom.shutdown_reason == "poweroff" and dom.nr_pages == 96 * 256      # 2 x 41 MiB -> 96
    finally:
        dom.close()
    dom = boot(LINUXABI, module=INITRD)
    try:
        assert dom.nr_pages == 32 * 256
    finally:
        dom.close()
    r = cli("boot", str(path), "-m", "32")
    assert r.returncode == 9 and "more than the 32768 KiB of memory given" in r.stderr.decode()
