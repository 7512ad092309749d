"""PV kernel ELF parsing, as Xen's libelf does it: loadable segments, Xen notes, address defaults.

A Linux bzImage is accepted too: its compressed vmlinux is extracted first (toolstack/bzimage.py), as Xen's
bzImage loader hands the payload to the ELF loader.

Notes come from PT_NOTE segments; if none carries a "Xen" note, from SHT_NOTE sections (Mini-OS keeps its
notes in a non-allocated .note section); failing that, from the legacy `__xen_guest` string section. Defaults
follow libelf: VIRT_BASE 0; PADDR_OFFSET 0 with notes but VIRT_BASE with `__xen_guest`; ENTRY e_entry. Each
segment loads at virtual address p_paddr + (virt_base - paddr_offset).
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Optional

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from miniguest.abi import elfnote
from miniguest.abi.arch_x86 import HYPERVISOR_VIRT_END, HYPERVISOR_VIRT_START, canonical
from miniguest.toolstack import bzimage
from miniguest.toolstack.image_error import ImageError

MAX_NOTES = 1024
DEFAULT_MAX_SIZE = 1 << 30          # libxenguest's XC_DOM_DECOMPRESS_MAX, when no guest size is known
PT_LOAD = "PT_LOAD"


@dataclass
class XenNotes:
    """What the Xen notes (or `__xen_guest` string) say. Addresses already have libelf's defaults applied."""
    source: str = ""                       # "PT_NOTE", "SHT_NOTE" or "__xen_guest"
    guest_os: str = ""
    guest_version: str = ""
    xen_version: str = ""
    loader: str = ""
    features: str = ""
    pae_mode: str = ""
    virt_base: int = 0
    paddr_offset: int = 0
    entry: int = 0
    hypercall_page: Optional[int] = None
    hv_start_low: Optional[int] = None
    init_p2m: Optional[int] = None
    mod_start_pfn: bool = False
    suspend_cancel: bool = False
    l1_mfn_valid: Optional[tuple[int, ...]] = None   # (mask, value) pairs: which L1 bits mean "holds an MFN"
    phys32_entry: Optional[int] = None             # the PVH entry point (not used for PV)
    f_supported: int = 0                           # XENFEAT_* bits the kernel supports (FEATURES, SUPPORTED_FEATURES)
    f_required: int = 0                            # XENFEAT_* bits it requires ('!' in FEATURES)
    raw: dict[str, object] = field(default_factory=dict)


@dataclass
class Segment:
    vaddr: int          # where it loads (virtual)
    data: bytes         # file contents (filesz bytes)
    memsz: int          # >= len(data); the rest is BSS, zero-filled by the builder
    flags: int


@dataclass
class KernelImage:
    path: str
    raw: bytes              # the file as given (an ELF, or a bzImage)
    notes: XenNotes
    segments: list[Segment]
    virt_kstart: int
    virt_kend: int
    elf: bytes = b""        # the ELF (raw itself, or what a bzImage decompressed to)
    compression: str = ""   # a bzImage payload's compression format ("" for a plain ELF)

    @property
    def entry(self) -> int:
        return self.notes.entry

    @property
    def virt_base(self) -> int:
        return self.notes.virt_base


def _note_number(desc: bytes) -> int:
    if len(desc) in (1, 2, 4, 8):
        return int.from_bytes(desc, "little")
    raise ImageError(f"malformed Xen note: numeric descriptor of {len(desc)} bytes")


def _parse_note_blob(blob: bytes, found: dict[int, object]) -> int:
    """Parse an ELF note area (Elf64_Nhdr records, 4-byte aligned); return how many Xen notes it held."""
    count = 0
    off = 0
    total = 0
    while off + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, off)
        off += 12
        name = blob[off:off + namesz]
        off += (namesz + 3) & ~3
        desc = blob[off:off + descsz]
        off += (descsz + 3) & ~3
        if off > len(blob) + 3 or len(desc) < descsz:
            raise ImageError("malformed ELF note area (a note runs past its section)")
        total += 1
        if total > MAX_NOTES:
            raise ImageError("too many ELF notes")
        if name.rstrip(b"\0") != b"Xen":
            continue
        count += 1
        if ntype in elfnote.STRING_NOTES:
            found[ntype] = desc.split(b"\0", 1)[0].decode("latin-1")
        elif ntype == elfnote.XEN_ELFNOTE_SUPPORTED_FEATURES:
            # An array of 32-bit feature submaps (libelf: elf_note_numeric_array); ORed into FEATURES'.
            found[ntype] = (int.from_bytes(desc[:4], "little")
                            if descsz and descsz % 4 == 0 else 0)
        elif ntype == elfnote.XEN_ELFNOTE_L1_MFN_VALID:
            # A "name" note for libelf: (mask, value) pairs, 8 bytes each on x86_64 (Linux: 16 bytes).
            found[ntype] = tuple(struct.unpack_from(f"<{descsz // 8}Q", desc)) if descsz % 8 == 0 else ()
        elif ntype in (elfnote.XEN_ELFNOTE_INFO, elfnote.XEN_ELFNOTE_PHYS32_RELOC):
            found[ntype] = bytes(desc)
        elif ntype in elfnote.NAMES:
            found[ntype] = _note_number(desc) if descsz else 0
    return count


# XENFEAT_* names FEATURES may use (libelf's elf_xen_feature_names).
FEATURE_NAMES = {"writable_page_tables": 0, "writable_descriptor_tables": 1, "auto_translated_physmap": 2,
                 "supervisor_mode_kernel": 3, "pae_pgdir_above_4gb": 4, "hvm_callback_vector": 8, "dom0": 11}


def parse_features(text: str) -> tuple[int, int]:
    """FEATURES ("a|!b|..."): (supported, required) bitmaps. A required feature Xen does not know makes the
    image unloadable (libelf's elf_xen_parse_features); unknown optional ones are ignored."""
    supported = required = 0
    for item in text.split("|"):
        item = item[:63]
        if not item:
            continue
        name = item[1:] if item.startswith("!") else item
        bit = FEATURE_NAMES.get(name)
        if bit is None:
            if item.startswith("!"):
                raise ImageError(f"the kernel requires the unknown Xen feature {name!r}")
            continue
        supported |= 1 << bit
        if item.startswith("!"):
            required |= 1 << bit
    return supported, required


def _file_bytes(path: str, data: bytes, offset: int, size: int, what: str) -> bytes:
    """`size` bytes at `offset` of the file, read raw as Xen's libelf reads notes (no decompression); a
    range outside the file makes the image broken (elf_access_ok), as it makes libelf's."""
    if offset < 0 or size < 0 or offset + size > len(data):
        raise ImageError(f"{path}: malformed ELF ({what} at file offset {offset:#x}+{size:#x} lies outside "
                         f"the {len(data):#x}-byte file)")
    return data[offset:offset + size]


def _parse_guest_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item:
            continue
        name, _, value = item.partition("=")
        out[name] = value
    return out


#: the largest kernel or module the toolstack reads (libxenguest's XC_DOM_DECOMPRESS_MAX, "image too large")
MAX_IMAGE_FILE = 1 << 30


def read_image_file(path: str, what: str = "kernel") -> bytes:
    """A kernel or module file's bytes, bounded like libxenguest's xc_dom_malloc_filemap: a larger file (or
    a device that never ends) is an ImageError, not an unbounded read. A NUL in the path is an ImageError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_FILE + 1)
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror}") from None
    except ValueError:
        raise ImageError(f"{path!r}: not a valid path") from None
    if len(data) > MAX_IMAGE_FILE:
        raise ImageError(f"{path}: {what} image too large (more than {MAX_IMAGE_FILE >> 20} MiB)")
    return data


def parse_kernel(path: str, data: Optional[bytes] = None, max_size: Optional[int] = None) -> KernelImage:
    """Parse a PV kernel: an ELF, or a Linux bzImage whose payload is one (decompressed to at most
    `max_size` bytes: the guest's memory). Raises ImageError with a one-line reason."""
    if data is None:
        data = read_image_file(path)
    raw = data
    compression = ""
    if data[:4] != b"\x7fELF":
        if not bzimage.is_bzimage(data):
            raise ImageError(f"{path}: not an ELF file or a Linux bzImage")
        data, compression = bzimage.extract(data, path, DEFAULT_MAX_SIZE if max_size is None else max_size)
        if data[:4] != b"\x7fELF":
            raise ImageError(f"{path}: the bzImage payload ({compression}) is not an ELF file")
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
            raise ImageError(f"{path}: not an x86_64 ELF (class {elf.elfclass}, machine {elf['e_machine']}); "
                             "miniguest boots 64-bit PV kernels")
        image = _parse(path, data, elf)
        image.raw, image.elf, image.compression = raw, data, compression
        return image
    except ImageError:
        raise
    except (ELFError, struct.error, ValueError, KeyError, IndexError, AttributeError, TypeError,
            OverflowError) as e:
        raise ImageError(f"{path}: malformed ELF ({e})") from None


def _parse(path: str, data: bytes, elf: ELFFile) -> KernelImage:
    found: dict[int, object] = {}
    source = ""
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_NOTE" and seg["p_offset"] != 0:
            blob = _file_bytes(path, data, seg["p_offset"], seg["p_filesz"], "a PT_NOTE segment")
            if _parse_note_blob(blob, found):
                source = "PT_NOTE"
    if not source:
        for sec in elf.iter_sections():
            if sec["sh_type"] == "SHT_NOTE":
                blob = _file_bytes(path, data, sec["sh_offset"], sec["sh_size"], "an SHT_NOTE section")
                if _parse_note_blob(blob, found):
                    source = "SHT_NOTE"
    notes = XenNotes()
    virt_base: Optional[int] = None
    paddr_offset: Optional[int] = None
    entry: Optional[int] = None
    if source:
        notes.source = source
        notes.raw = {elfnote.NAMES.get(k, str(k)): v for k, v in found.items()}
        notes.guest_os = str(found.get(elfnote.XEN_ELFNOTE_GUEST_OS, ""))
        notes.guest_version = str(found.get(elfnote.XEN_ELFNOTE_GUEST_VERSION, ""))
        notes.xen_version = str(found.get(elfnote.XEN_ELFNOTE_XEN_VERSION, ""))
        notes.loader = str(found.get(elfnote.XEN_ELFNOTE_LOADER, ""))
        notes.features = str(found.get(elfnote.XEN_ELFNOTE_FEATURES, ""))
        notes.pae_mode = str(found.get(elfnote.XEN_ELFNOTE_PAE_MODE, ""))
        virt_base = found.get(elfnote.XEN_ELFNOTE_VIRT_BASE)          # type: ignore[assignment]
        paddr_offset = found.get(elfnote.XEN_ELFNOTE_PADDR_OFFSET)    # type: ignore[assignment]
        entry = found.get(elfnote.XEN_ELFNOTE_ENTRY)                  # type: ignore[assignment]
        notes.hypercall_page = found.get(elfnote.XEN_ELFNOTE_HYPERCALL_PAGE)  # type: ignore[assignment]
        notes.hv_start_low = found.get(elfnote.XEN_ELFNOTE_HV_START_LOW)      # type: ignore[assignment]
        notes.init_p2m = found.get(elfnote.XEN_ELFNOTE_INIT_P2M)              # type: ignore[assignment]
        notes.mod_start_pfn = bool(found.get(elfnote.XEN_ELFNOTE_MOD_START_PFN, 0))
        notes.suspend_cancel = bool(found.get(elfnote.XEN_ELFNOTE_SUSPEND_CANCEL, 0))
        notes.l1_mfn_valid = found.get(elfnote.XEN_ELFNOTE_L1_MFN_VALID)     # type: ignore[assignment]
        notes.phys32_entry = found.get(elfnote.XEN_ELFNOTE_PHYS32_ENTRY)     # type: ignore[assignment]
        notes.f_supported = int(found.get(elfnote.XEN_ELFNOTE_SUPPORTED_FEATURES, 0))   # type: ignore[arg-type]
    else:
        sec = elf.get_section_by_name("__xen_guest")
        if sec is None:
            raise ImageError(f"{path}: not a Xen PV kernel: no Xen ELF notes and no __xen_guest section")
        raw = b"" if sec["sh_type"] == "SHT_NOBITS" else _file_bytes(
            path, data, sec["sh_offset"], sec["sh_size"], "the __xen_guest section")
        text = raw.split(b"\0", 1)[0].decode("latin-1")
        info = _parse_guest_info(text)
        notes.source = "__xen_guest"
        notes.raw = dict(info)
        notes.guest_os = info.get("GUEST_OS", "")
        notes.guest_version = info.get("GUEST_VER", "")
        notes.xen_version = info.get("XEN_VER", "")
        notes.loader = info.get("LOADER", "")
        notes.features = info.get("FEATURES", "")
        notes.pae_mode = info.get("PAE", "")

        def num(key: str) -> Optional[int]:
            if key not in info:
                return None
            try:
                return int(info[key], 0)
            except ValueError:
                raise ImageError(f"{path}: __xen_guest: {key}={info[key]!r} is not a number") from None

        virt_base = num("VIRT_BASE")
        paddr_offset = num("ELF_PADDR_OFFSET")
        entry = num("VIRT_ENTRY")
        hc = num("HYPERCALL_PAGE")
        if hc is not None:
            notes.hypercall_page = (hc << 12) + (virt_base or 0) if virt_base is not None else hc << 12

    try:
        supported, notes.f_required = parse_features(notes.features)
    except ImageError as e:
        raise ImageError(f"{path}: {e}") from None
    notes.f_supported |= supported
    if not notes.loader.startswith("generic") and not notes.guest_os.startswith("linux"):
        raise ImageError(f"{path}: Xen will only load images built for the generic loader or Linux "
                         f"(LOADER {notes.loader!r}, GUEST_OS {notes.guest_os!r})")
    if not notes.xen_version.startswith("xen-3.0"):
        raise ImageError(f"{path}: image built for XEN_VERSION {notes.xen_version!r}, not 'xen-3.0'")

    if paddr_offset is not None and virt_base is None:
        raise ImageError(f"{path}: PADDR_OFFSET set but VIRT_BASE unset")
    if virt_base is None:
        virt_base = 0
    if paddr_offset is None:
        paddr_offset = 0 if notes.source != "__xen_guest" else virt_base
    notes.virt_base = virt_base
    notes.paddr_offset = paddr_offset
    virt_offset = (virt_base - paddr_offset) & 0xFFFFFFFFFFFFFFFF

    segments: list[Segment] = []
    pstart, pend = None, None
    for seg in elf.iter_segments():
        if seg["p_type"] != PT_LOAD or seg["p_memsz"] == 0:
            continue
        paddr, memsz, filesz = seg["p_paddr"], seg["p_memsz"], seg["p_filesz"]
        if filesz > memsz:
            raise ImageError(f"{path}: segment at {paddr:#x} has filesz > memsz")
        if seg["p_offset"] + filesz > len(data):
            raise ImageError(f"{path}: segment at {paddr:#x} runs past the end of the file")
        va = (paddr + virt_offset) & 0xFFFFFFFFFFFFFFFF
        segments.append(Segment(va, data[seg["p_offset"]:seg["p_offset"] + filesz], memsz, seg["p_flags"]))
        pstart = paddr if pstart is None else min(pstart, paddr)
        pend = paddr + memsz if pend is None else max(pend, paddr + memsz)
    if not segments or pstart is None or pend is None:
        raise ImageError(f"{path}: no loadable segments")

    segments.sort(key=lambda s: s.vaddr)
    for a, b in zip(segments, segments[1:]):
        if a.vaddr + a.memsz > b.vaddr:
            raise ImageError(f"{path}: segments overlap ({a.vaddr:#x}+{a.memsz:#x} and {b.vaddr:#x})")
    for s in segments:
        end = s.vaddr + s.memsz
        if end > 1 << 64 or not canonical(s.vaddr) or not canonical(end - 1) or (
                s.vaddr < HYPERVISOR_VIRT_END and end > HYPERVISOR_VIRT_START):
            raise ImageError(f"{path}: segment {s.vaddr:#x}-{end:#x} overlaps the hypervisor area or is "
                             "not canonical")

    virt_kstart = (pstart + virt_offset) & 0xFFFFFFFFFFFFFFFF
    virt_kend = (pend + virt_offset) & 0xFFFFFFFFFFFFFFFF
    notes.entry = entry if entry is not None else elf["e_entry"]
    if virt_kstart > virt_kend or not virt_kstart <= notes.entry <= virt_kend or virt_base > virt_kstart:
        raise ImageError(f"{path}: ELF start or entry out of bounds (entry {notes.entry:#x}, image "
                         f"{virt_kstart:#x}-{virt_kend:#x}, VIRT_BASE {virt_base:#x})")
    hc = notes.hypercall_page
    if hc is not None and not (virt_kstart <= hc < virt_kend and hc % 4096 == 0):
        raise ImageError(f"{path}: HYPERCALL_PAGE {hc:#x} is not a page inside the image")
    if notes.init_p2m is not None and virt_kstart <= notes.init_p2m < virt_kend:
        raise ImageError(f"{path}: INIT_P2M base {notes.init_p2m:#x} is inside the image")
    return KernelImage(path, data, notes, segments, virt_kstart, virt_kend, elf=data)
